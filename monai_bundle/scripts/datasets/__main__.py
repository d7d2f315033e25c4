"""``python -m scripts.datasets {brain-mri,brain-mri-3d,ultrasound} --out DIR [options]``.

Run from ``monai_bundle/`` (or with it on ``PYTHONPATH``). Exit status: 0 done, 1 the set cannot be
generated (message on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scripts.datasets.common import DatasetError


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, required=True, help="output folder (created; must be empty or absent)")
    common.add_argument("--seed", type=int, default=0, help="random seed: the set is a function of it")
    common.add_argument("--workers", type=int, help="worker processes (default: up to 2)")
    common.add_argument("--overwrite", action="store_true", help="replace a non-empty --out once the new set is built")
    common.add_argument("--quiet", action="store_true", help="no progress line")
    p = argparse.ArgumentParser(prog="python -m scripts.datasets",
                                description="Generate a realistic synthetic data set in a published layout.")
    sub = p.add_subparsers(dest="kind", required=True)
    brain = sub.add_parser("brain-mri", parents=[common], help="2D brain MRI slices, BRISC 2025 layout")
    brain.add_argument("--n-train", type=int, default=1200, help="training images")
    brain.add_argument("--n-test", type=int, default=300, help="test images")
    brain.add_argument("--size", type=int, default=512, help="image size in pixels (square)")
    vol = sub.add_parser("brain-mri-3d", parents=[common], help="3D brain MRI volumes, MSD layout + classes.csv")
    vol.add_argument("--n", type=int, default=24, help="volumes")
    vol.add_argument("--base-mm", type=float, default=2.0, help="base voxel size in mm (iso; thick: 0.9/0.9/3 x)")
    us = sub.add_parser("ultrasound", parents=[common], help="2D breast ultrasound images, BUSI layout")
    us.add_argument("--n", type=int, default=780,
                    help="images, in BUSI's proportions (56 %% benign, 27 %% malignant, 17 %% normal)")
    hard = sub.add_parser("hardness", help="baselines a prepared 2D datalist must defeat (threshold Dice, blind guess)")
    hard.add_argument("datalist", type=Path)
    prev = sub.add_parser("preview", help="PNG contact sheet of a BRISC, BUSI or MSD-style set")
    prev.add_argument("source", type=Path)
    prev.add_argument("--out", type=Path, required=True, help="the PNG to write")
    prev.add_argument("--per-class", type=int, default=6)
    prev.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and generate; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.kind == "brain-mri":
            from scripts.datasets.brain_mri import generate

            result = generate(args.out, seed=args.seed, n_train=args.n_train, n_test=args.n_test, size=args.size,
                              workers=args.workers, overwrite=args.overwrite, progress=not args.quiet)
        elif args.kind == "brain-mri-3d":
            from scripts.datasets.brain_mri_3d import generate

            result = generate(args.out, seed=args.seed, n=args.n, base_mm=args.base_mm, workers=args.workers,
                              overwrite=args.overwrite, progress=not args.quiet)
        elif args.kind == "ultrasound":
            from scripts.datasets.ultrasound import generate

            result = generate(args.out, seed=args.seed, n=args.n, workers=args.workers, overwrite=args.overwrite,
                              progress=not args.quiet)
        elif args.kind == "hardness":
            import json

            from scripts.datasets.hardness import measure

            print(json.dumps(measure(args.datalist), indent=2))
            return 0
        else:
            from scripts.datasets.preview import contact_sheet

            try:
                print(contact_sheet(args.source, args.out, per_class=args.per_class, seed=args.seed))
            except ValueError as e:
                raise DatasetError(str(e)) from e
            return 0
    except DatasetError as e:
        print(f"ERROR {e}", file=sys.stderr)
        return 1
    print(f"{args.kind}: {args.out} ({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
