"""The whole path on the built-in synthetic data: train, evaluate, infer, print the metrics.

    python monai_bundle/scripts/demo.py            # what `make demo` runs

Each step is the command an ML engineer would type (printed before it runs), so the demo doubles
as a worked example. Training resumes from ``models/checkpoint_last.pt`` when one exists; delete
``monai_bundle/models`` to train from scratch.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

BUNDLE = Path(__file__).resolve().parents[1]
CONFIGS = BUNDLE / "configs"
# the targets the demo must reach on the held-out synthetic test split (issue: Dice >= 0.85, accuracy >= 0.95)
TARGETS = {"lesion Dice": 0.85, "diagnosis accuracy": 0.95}


def run(args: list[str], cwd: Path = BUNDLE.parent) -> float:
    """Run one command, echoing it; returns its wall time. Exits on failure."""
    print(f"\n$ {'cd ' + str(cwd) + ' && ' if cwd != BUNDLE.parent else ''}{' '.join(shlex.quote(a) for a in args)}", flush=True)
    t0 = time.perf_counter()
    done = subprocess.run(args, cwd=cwd)
    if done.returncode != 0:
        sys.exit(f"ERROR step failed with exit code {done.returncode}: {' '.join(args)}")
    return time.perf_counter() - t0


def summary(eval_dir: Path) -> dict[str, float]:
    """The headline numbers of ``metrics.json`` written by the evaluation step."""
    metrics = json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
    seg, cls = metrics["seg"], metrics["cls"]
    return {
        "lesion Dice": seg["lesion"]["dice"],
        "lesion IoU": seg["lesion"]["iou"],
        "diagnosis accuracy": cls["accuracy"],
        "balanced accuracy": cls["balanced_accuracy"],
        "macro F1": cls["macro"]["f1"],
        "MCC": cls["mcc"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-epochs", type=int, default=None, help="override the training config's max_epochs")
    parser.add_argument("--time-budget-min", type=float, default=15.0,
                        help="training stops when these minutes are spent, or at max_epochs if sooner (0: no cap)")
    parser.add_argument("--examples", type=int, default=4, help="test images (one per diagnosis) to run through the inference CLI")
    args = parser.parse_args(argv)
    py = sys.executable
    train = [py, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS / "train.json")]
    if args.max_epochs is not None:
        train += ["--max_epochs", str(args.max_epochs)]
    if args.time_budget_min:  # a cap for slow machines: on 2 idle cores the 30 epochs take about 7 minutes
        train += ["--time_budget_min", str(args.time_budget_min)]
    times = {"train": run(train)}
    times["evaluate"] = run([py, "-m", "monai.bundle", "run", "evaluating", "--config_file",
                             f"['{CONFIGS / 'train.json'}','{CONFIGS / 'evaluate.json'}']"])

    sys.path.insert(0, str(BUNDLE))
    from scripts.core.datalist import load_datalist
    from scripts.datasets.synthetic import ensure_dataset

    test = load_datalist(ensure_dataset(BUNDLE / "data" / "synthetic"), require_training=False).split("test")
    # one example image of each diagnosis (the test split lists a patient's slices together)
    first_of_class: dict[int, str] = {}
    for sample in test:
        if "class" in sample:
            first_of_class.setdefault(sample["class"], sample["image"])
    examples = list(first_of_class.values())[: args.examples]
    out = BUNDLE / "eval" / "examples"
    times["infer"] = run([py, "-m", "scripts.infer", *examples, "--out", str(out)], cwd=BUNDLE)

    numbers = summary(BUNDLE / "eval")
    metrics = json.loads((BUNDLE / "eval" / "metrics.json").read_text(encoding="utf-8"))
    cal, con = metrics["cls"].get("calibration") or {}, metrics.get("consistency") or {}
    print("\n=== MultiTaskUNet demo: held-out synthetic test split ===")
    for name, value in numbers.items():
        target = TARGETS.get(name)
        mark = "" if target is None else (f"  (target >= {target}: {'met' if value >= target else 'NOT met'})")
        print(f"{name:>20}: {value:.4f}{mark}")
    if cal.get("ece") is not None:
        floor = f"; {cal['ece_floor']:.4f} for perfect calibration on this many images" if cal.get("ece_floor") is not None else ""
        print(f"{'ECE':>20}: {cal['ece']:.4f} (network alone {cal['ece_uncalibrated']:.4f}; temperature {cal['temperature']}{floor})")
    if con.get("rate") is not None:
        print(f"{'heads contradict':>20}: {100 * con['rate']:.1f}% of {con['n_images']} images")
    print(f"{'time':>20}: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    print(f"{'report':>20}: {BUNDLE / 'eval' / 'report.md'}")
    print(f"{'overlays':>20}: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
