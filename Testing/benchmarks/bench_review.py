"""Learning from review: held-out balanced accuracy and Dice before / after fine-tuning on corrections.

    python Testing/benchmarks/bench_review.py [--seeds 0 1 2] [--scale 1] [--fraction 0.2]
           [--accepted-masks skip|train] [--finetune-lr LR] [--root DIR]

Per seed, on the built-in synthetic set (``Testing/prepare/review_simulation.py``): a model is
trained, deployed on a pool of studies, and a simulated reviewer corrects the ``--fraction`` worst
of them (true mask as an edit, true class as an overridden diagnosis; the rest accepted as given);
``prepare reviewed --merge`` and ``run training --init_from`` fine-tune it, with the product's
defaults (accepted, unedited masks do not train; a tenth of training's learning rate) unless
``--accepted-masks train`` / ``--finetune-lr`` say otherwise (``--accepted-masks train
--finetune-lr 0.0005`` is how it was measured before those defaults). The control fine-tunes
on the same studies all accepted uncorrected, for the same epochs. Printed side by side per seed and
as the mean over seeds: initial, fine-tuned on corrections, fine-tuned without, and the ratios
corrected / initial and corrected / uncorrected; and, per seed, how often each model gives the
reviewer's diagnosis on the studies the reviewer changed (what the test checks).

``--scale 1`` is the test's tiny setting (about 45 s per seed on one thread); ``--scale 4`` trains
on four times the data, pool and held-out set, with twice the epochs. Run on CPU with
``OMP_NUM_THREADS`` set to the cores you can spare.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "prepare"))
sys.path.insert(0, str(HERE.parents[1] / "monai_bundle"))

from review_simulation import Setting, combined, simulate  # noqa: E402

METRICS = ("balanced_accuracy", "dice")


def setting(scale: int, fraction: float, accepted_masks: str = "skip", finetune_lr: float | None = None) -> Setting:
    s = Setting(fraction=fraction, accepted_masks=accepted_masks, finetune_lr=finetune_lr)
    if scale > 1:
        s.n_train, s.n_val, s.n_test = s.n_train * scale, s.n_val * scale, s.n_test * scale
        s.epochs, s.finetune_epochs = s.epochs * 2, s.finetune_epochs * 2
    return s


def _row(label: str, values: list[float]) -> str:
    return f"{label:<28}" + "".join(f"{v:>12.3f}" for v in values)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--scale", type=int, default=1, help="1: the test's tiny setting; k: k times the data, 2x epochs")
    p.add_argument("--fraction", type=float, default=0.2, help="share of the pool the reviewer corrects")
    p.add_argument("--accepted-masks", choices=("skip", "train"), default="skip",
                   help="prepare reviewed --accepted-masks (default skip, the product's default)")
    p.add_argument("--finetune-lr", type=float, default=None,
                   help="fine-tuning peak learning rate (default: train.json's, a tenth of training's)")
    p.add_argument("--root", type=Path, default=None, help="working folder (default: a temporary one)")
    args = p.parse_args(argv)
    s = setting(args.scale, args.fraction, args.accepted_masks, args.finetune_lr)
    print(f"setting: {s}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_review_") as tmp:
        root = args.root or Path(tmp)
        for seed in args.seeds:
            res = simulate(root / f"seed{seed}", seed, s)
            runs.append(res)
            print(f"\nseed {seed}: pool {res['pool']}, held-out {res['held_out']}, "
                  f"review {json.dumps(res['review_corrected'])}, {res['seconds']:.0f} s")
            print(f"{'':<28}{'initial':>12}{'corrected':>12}{'uncorrected':>12}{'corr/init':>12}{'corr/uncorr':>12}")
            for m in METRICS:
                a, b, c = res["initial"][m], res["corrected"][m], res["uncorrected"][m]
                print(_row(m, [a, b, c, b / a if a else float("nan"), b / c if c else float("nan")]))
            on = res["on_changed"]
            print(_row(f"accuracy on the {res['changed']} changed", [on[k]["accuracy"] for k in
                                                                     ("initial", "corrected", "uncorrected")]))
    print(f"\nmean over seeds {args.seeds}")
    print(f"{'':<28}{'initial':>12}{'corrected':>12}{'uncorrected':>12}{'corr/init':>12}{'corr/uncorr':>12}")
    for m in METRICS + ("combined",):
        vals = [[(combined(r[k]) if m == "combined" else r[k][m]) for k in ("initial", "corrected", "uncorrected")]
                for r in runs]
        a, b, c = (sum(v[i] for v in vals) / len(vals) for i in range(3))
        print(_row(m, [a, b, c, b / a if a else float("nan"), b / c if c else float("nan")]))
    wins = sum(combined(r["corrected"]) > combined(r["uncorrected"]) for r in runs)
    print(f"corrected beats uncorrected (combined) on {wins} of {len(runs)} seeds")
    raised = {m: sum(r["corrected"][m] > r["initial"][m] for r in runs) for m in METRICS}
    print("corrected raises the initial model's " + ", ".join(f"{m} on {k} of {len(runs)} seeds"
                                                             for m, k in raised.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
