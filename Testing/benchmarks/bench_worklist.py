"""Review worklist: how many of the model's wrong diagnoses land in the first 30 % of ``worklist.csv``.

    python Testing/benchmarks/bench_worklist.py [--models DIR] [--seed 0] [--size 48] [--n-train 48]
           [--n-test 128] [--epochs 15] [--top 0.3] [--no-tta] [--root DIR]

On the built-in synthetic set (``scripts.datasets.synthetic.ensure_dataset``): a small model is trained
briefly (or ``--models DIR`` holding ``model.pt`` + ``model_card.json`` is used), the batch CLI
(``python -m scripts.infer --tta``) runs over the test split, and the studies whose diagnosis is
wrong are looked up in the worklist it wrote. Printed side by side, the share of wrong diagnoses in
the first ``--top`` of the list when it is ordered by

- the worklist's ``review_priority`` (its own order),
- diagnosis uncertainty alone, segmentation uncertainty alone (what each reason contributes),
- a random order (expected share = ``--top``; the 5th-95th percentile of 2000 shuffles shown).

Target (issue 13): at least 70 % in the first 30 %. Run on CPU with ``OMP_NUM_THREADS`` set to the
cores you can spare; the default setting trains for about a minute on one thread.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BUNDLE = REPO / "monai_bundle"
sys.path.insert(0, str(HERE.parent / "prepare"))
sys.path.insert(0, str(BUNDLE))


def train_model(root: Path, args: argparse.Namespace) -> Path:
    """A small model trained on the synthetic set's training split; returns its ``models`` folder."""
    from review_simulation import Setting, train

    s = Setting(size=args.size, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, epochs=args.epochs)
    return train(dataset(root, args), root / "models", args.seed, s, s.epochs).parent


def dataset(root: Path, args: argparse.Namespace) -> Path:
    from scripts.datasets.synthetic import ensure_dataset

    return ensure_dataset(root / "data", seed=args.seed, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                          size=args.size)


def run_cli(models: Path, images: list[str], out: Path, tta: bool) -> None:
    """The batch CLI over ``images`` into ``out`` (writes ``worklist.csv``)."""
    cmd = [sys.executable, "-m", "scripts.infer", *images, "--out", str(out), "--bundle", str(BUNDLE),
           "--checkpoint", str(models / "model.pt"), "--card", str(models / "model_card.json"), "--device", "cpu",
           "--no-overlay", "--tta" if tta else "--no-tta"]
    done = subprocess.run(cmd, cwd=BUNDLE, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the CLI failed ({done.returncode}):\n{done.stderr[-3000:]}")


def share_in_top(wrong: np.ndarray, order: np.ndarray, top: float) -> float:
    """Share of the ``wrong`` studies (bool per study) among the first ``ceil(top * n)`` of ``order``."""
    k = math.ceil(top * len(order))
    return float(wrong[order[:k]].sum() / wrong.sum())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=Path, help="a trained model's folder (model.pt + model_card.json); default: train one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--n-train", type=int, default=48)
    p.add_argument("--n-val", type=int, default=16)
    p.add_argument("--n-test", type=int, default=128)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--top", type=float, default=0.3, help="head of the worklist looked at (share of studies)")
    p.add_argument("--no-tta", dest="tta", action="store_false", help="run the CLI without flip TTA")
    p.add_argument("--root", type=Path, help="working folder (default: a temporary one)")
    args = p.parse_args(argv)
    print(f"setting: {vars(args)}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    with tempfile.TemporaryDirectory(prefix="bench_worklist_") as tmp:
        root = args.root or Path(tmp)
        models = args.models or train_model(root, args)
        from scripts.core.datalist import load_datalist

        test = [e for e in load_datalist(dataset(root, args), require_training=False).split("test") if "class" in e]
        truth = {str(Path(e["image"]).resolve()): int(e["class"]) for e in test}
        run_cli(models, [e["image"] for e in test], root / "out", args.tta)
        with open(root / "out" / "worklist.csv", encoding="utf-8", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["status"] == "ok"]
        results = [json.loads(Path(r["result"]).read_text(encoding="utf-8")) for r in rows]
    wrong = np.array([r["diagnosis"]["index"] != truth[str(Path(r["input"]).resolve())] for r in results])
    n = len(rows)
    if not wrong.any():
        print(f"{n} studies, no wrong diagnosis: nothing to rank (train less or on a harder set)")
        return 0
    u_dx = np.array([float(r["diagnosis_uncertainty"]) for r in rows])
    u_seg = np.array([float(r["segmentation_uncertainty"] or 0) for r in rows])
    rng = np.random.default_rng(args.seed)
    shuffles = [share_in_top(wrong, rng.permutation(n), args.top) for _ in range(2000)]
    orders = {"worklist (review_priority)": np.arange(n),  # the CSV is already ranked
              "diagnosis uncertainty only": np.argsort(-u_dx, kind="stable"),
              "segmentation uncertainty only": np.argsort(-u_seg, kind="stable")}
    print(f"{n} test studies, {int(wrong.sum())} wrong diagnoses ({wrong.mean():.1%}); "
          f"share of them in the first {args.top:.0%} ({math.ceil(args.top * n)} studies):")
    for name, order in orders.items():
        print(f"  {name:<32}{share_in_top(wrong, order, args.top):>8.1%}")
    print(f"  {'random order (mean of 2000)':<32}{np.mean(shuffles):>8.1%}   "
          f"(5-95 %: {np.percentile(shuffles, 5):.1%} - {np.percentile(shuffles, 95):.1%})")
    prio = np.array([float(r["review_priority"]) for r in rows])
    disagree = np.array([int(r["heads_disagree"]) for r in rows])
    print(f"means, wrong vs right diagnoses: review_priority {prio[wrong].mean():.3f} vs {prio[~wrong].mean():.3f}, "
          f"diagnosis uncertainty {u_dx[wrong].mean():.3f} vs {u_dx[~wrong].mean():.3f}, segmentation uncertainty "
          f"{u_seg[wrong].mean():.3f} vs {u_seg[~wrong].mean():.3f}, heads disagree {disagree[wrong].mean():.2f} vs "
          f"{disagree[~wrong].mean():.2f}")
    print(f"target >= 70 %: {'met' if share_in_top(wrong, np.arange(n), args.top) >= 0.7 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
