"""``python -m scripts.prepare <format> SOURCE --out DIR [options]``, ``... validate DATALIST`` and ``... plan DATALIST``.

``reviewed REVIEW_DIR --out DIR [--merge DATALIST]`` turns reviewed studies into a datalist with
provenance (:mod:`scripts.prepare.reviewed`); with ``--merge`` also ``DIR/merged.json``.

Run with the bundle root as working directory (``cd monai_bundle``) or on ``PYTHONPATH``.
Exit status: 0 done, 1 the data set or datalist has problems (all listed on stderr), 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scripts.core.datalist import provenance_counts
from scripts.prepare.brats import SEGMENT_MODES, collect_brats
from scripts.prepare.brisc import NO_TUMOR_MODES, collect_brisc
from scripts.prepare.busi import collect_busi
from scripts.prepare.common import PrepareError, check_out_dir, count_table, format_counts
from scripts.prepare.duplicates import NEAR_THRESHOLD
from scripts.prepare.msd import collect_msd, collect_nnunet
from scripts.prepare.pipeline import REPORT_FILE, Options, build
from scripts.prepare.plain_csv import collect_csv
from scripts.prepare.reviewed import ACCEPTED_MASKS, collect_reviewed, merge_datalists


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("source", type=Path, help="the data set folder (the CSV file for 'csv')")
    common.add_argument("--out", type=Path, required=True, help="output folder: datalist(s), report, derived masks")
    common.add_argument("--seed", type=int, default=0, help="random seed of the split")
    common.add_argument(
        "--val-fraction", type=float, default=0.2, help="validation share, when the data set has no official one"
    )
    common.add_argument(
        "--test-fraction", type=float, default=0.2, help="test share, when the data set has no official test split"
    )
    common.add_argument(
        "--folds", type=int, default=0, help="k >= 2: write datalist_fold0..k-1.json for k-fold cross-validation"
    )
    common.add_argument("--no-duplicate-check", action="store_true", help="skip hashing images for duplicates (faster)")
    common.add_argument(
        "--near-threshold",
        type=int,
        default=NEAR_THRESHOLD,
        help="pHash bits (of 64) two near-duplicates may differ in; -1: exact only",
    )
    common.add_argument(
        "--regroup-duplicates",
        action="store_true",
        help="put exact and near duplicates in one group, so they share a split",
    )
    common.add_argument(
        "--absolute-paths",
        action="store_true",
        help="write absolute paths (default: relative to the datalist's folder)",
    )
    common.add_argument("--skip-bad", action="store_true", help="leave out samples with problems instead of failing")
    common.add_argument(
        "--groups-csv",
        type=Path,
        help="CSV with columns case,group (or image,patient): the patient of each case, so that a patient's "
        "images never straddle training, validation and test",
    )
    classes = argparse.ArgumentParser(add_help=False)
    classes.add_argument("--classes-csv", type=Path, help="CSV with columns case,class")
    classes.add_argument("--class-names", type=_names, help="class order, comma separated (default: sorted names)")

    p = argparse.ArgumentParser(
        prog="python -m scripts.prepare", description="Prepare a data set as a MultiTaskUNet datalist, or validate one."
    )
    sub = p.add_subparsers(dest="format", required=True)
    sub.add_parser("busi", parents=[common], help="BUSI Dataset_BUSI_with_GT/")
    brisc = sub.add_parser("brisc", parents=[common], help="BRISC 2025 (split or flat layout)")
    brisc.add_argument(
        "--no-tumor",
        choices=NO_TUMOR_MODES,
        default="empty-mask",
        help="no-tumour images without a mask: empty mask, or classification only",
    )
    for fmt, text in (
        ("msd", "MSD task folder (dataset.json, 4D NIfTI)"),
        ("nnunet", "nnU-Net v2 raw data set folder"),
    ):
        sub.add_parser(fmt, parents=[common, classes], help=text)
    brats = sub.add_parser(
        "brats", parents=[common, classes], help="BraTS 2020 (name_mapping.csv) or 2023+ training folder"
    )
    brats.add_argument(
        "--segments", choices=list(SEGMENT_MODES), default="subregions", help="tumour sub-regions, or whole tumour"
    )
    table = sub.add_parser("csv", parents=[common], help="plain CSV: image, mask, class, group[, split]")
    table.add_argument("--channels", type=_names, help="channel names, comma separated")
    table.add_argument(
        "--segments", type=_names, help="segment names for mask values 0..S-1 (default background,tumor)"
    )
    table.add_argument("--class-names", type=_names, help="class order, comma separated (default: sorted names)")
    reviewed = sub.add_parser(
        "reviewed", parents=[common], help="reviewed studies (Slicer worklist or per-study review JSONs)"
    )
    reviewed.add_argument("--merge", type=Path, metavar="DATALIST",
                          help="also write OUT/merged.json: this datalist with the reviewed studies in its training split")
    reviewed.add_argument("--channels", type=_names, help="channel names, comma separated (default: --merge's)")
    reviewed.add_argument("--accepted-masks", choices=ACCEPTED_MASKS, default="skip",
                          help="a segmentation accepted unedited is the model's own output: 'skip' (default) trains "
                               "only its diagnosis, 'train' also uses the mask as a label")
    val = sub.add_parser("validate", help="check a datalist and every file it names")
    val.add_argument("datalist", type=Path)
    plan = sub.add_parser("plan", help="fingerprint the training split and write plan.json beside the datalist")
    plan.add_argument("datalist", type=Path)
    plan.add_argument("--max-cases", type=int, default=None, help="analyse at most this many training cases (200)")
    plan.add_argument("--device", default="auto", help="what batch size and widths are for: auto, cpu, cuda")
    plan.add_argument("--workers", type=int, default=None, help="analysis worker processes (default: up to 2)")
    plan.add_argument("--force", action="store_true", help="measure again even if plan.json is current")
    plan.add_argument("--out", type=Path, default=None,
                      help="the plan file to write (default: plan.json beside the datalist; training then needs "
                           "--plan#plan_file FILE)")
    return p


def _collect(args: argparse.Namespace):
    fmt, src, out = args.format, args.source, args.out
    if fmt == "busi":
        return collect_busi(src, out)
    if fmt == "brisc":
        return collect_brisc(src, out, no_tumor=args.no_tumor)
    if fmt in ("msd", "nnunet"):
        if args.classes_csv is None:
            raise PrepareError(
                f"{src}: {fmt} data sets carry no diagnosis: give --classes-csv FILE (columns case,class)"
            )
        collect = collect_msd if fmt == "msd" else collect_nnunet
        return collect(src, out, args.classes_csv, args.class_names)
    if fmt == "brats":
        return collect_brats(src, out, args.segments, args.classes_csv, args.class_names)
    if fmt == "reviewed":
        return collect_reviewed(src, out, args.channels, args.merge, args.accepted_masks)
    return collect_csv(src, out, args.channels, args.segments, args.class_names)


def _run_validate(path: Path) -> int:
    from scripts.prepare.validate import validate  # imports MONAI (torch): only when validating

    report = validate(path)
    if report.counts:
        print(format_counts(report.counts))
    for p in report.problems:
        print(f"PROBLEM {p}", file=sys.stderr)
    print(f"{path}: {'OK' if report.ok else f'{len(report.problems)} problem(s)'}")
    return 0 if report.ok else 1


def _run_plan(args: argparse.Namespace) -> int:
    import time

    from scripts.core.datalist import DatalistError
    from scripts.core.plan import PLAN_FILE, load_or_create_plan  # the analysis imports MONAI (torch): only here

    start = time.perf_counter()
    try:
        plan = load_or_create_plan(args.datalist, device=args.device, plan_file=args.out, max_cases=args.max_cases,
                                   workers=args.workers, recompute=args.force)
    except (DatalistError, ValueError) as e:
        print(f"ERROR {e}", file=sys.stderr)
        return 1
    fp = plan["fingerprint"]
    print(f"{args.out or args.datalist.resolve().parent / PLAN_FILE}: plan of {fp['n_analysed']} of {fp['n_training']} training "
          f"cases (analysis {fp['seconds']:.1f} s, made {plan['created']}); {time.perf_counter() - start:.1f} s now")
    print(f"modality {fp['modality']} ({fp['modality_reason']}); median size {fp['image_size']['median']}")
    for key in ("spatial_size", "target_spacing", "orientation", "network_channels", "batch_size", "normalization",
                "augmentation", "mirror_axes", "rot90", "max_epochs", "time_budget_min", "no_tumor_class"):
        if plan.get(key) is not None:
            print(f"  {key:17s} {json.dumps(plan[key])}  [{plan['why'].get(key, '')}]")
    if plan.get("pinned"):
        print(f"pinned for the built-in demo: {', '.join(plan['pinned'])}")
    return 0


def _print_summary(args: argparse.Namespace, report: dict) -> None:
    for dl in report["datalists"]:
        total = sum(row["total"] for row in dl["counts"].values())
        print(f"{report['name']}: {total} samples -> {args.out / dl['file']}")
    print(format_counts(report["datalists"][0]["counts"]))
    dup = report.get("duplicates")
    if dup:
        print(
            f"duplicates: {dup['clusters']} cluster(s) of {dup['images_in_clusters']} images, "
            f"{dup['clusters_across_splits']} across splits"
            + (
                ""
                if args.regroup_duplicates or not dup["clusters_across_splits"]
                else " (--regroup-duplicates keeps them together)"
            )
        )
    if report.get("groups"):
        g = report["groups"]
        print(f"groups: {g['samples_grouped']} samples in {g['groups']} groups from {args.groups_csv}, each group "
              f"in one split ({g['samples_not_listed']} sample(s) not listed)")
    for w in report["warnings"][:5]:
        print(f"warning: {w}")
    if len(report["warnings"]) > 5:
        print(f"... {len(report['warnings']) - 5} more warning(s) in {args.out / REPORT_FILE}")
    if args.format == "reviewed":
        last = args.out / report["datalists"][-1]["file"]
        counts = provenance_counts(json.loads(last.read_text(encoding="utf-8")))
        print("provenance: " + "; ".join(f"{k} " + ", ".join(f"{p} {n}" for p, n in sorted(v.items()))
                                         for k, v in counts.items()))
    print(f"next: python -m scripts.prepare validate {args.out / report['datalists'][-1]['file']}")


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.format == "validate":
        return _run_validate(args.datalist)
    if args.format == "plan":
        return _run_plan(args)
    options = Options(
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        seed=args.seed,
        folds=args.folds,
        check_duplicates=not args.no_duplicate_check,
        near_threshold=args.near_threshold,
        regroup_duplicates=args.regroup_duplicates,
        absolute_paths=args.absolute_paths,
        skip_bad=args.skip_bad,
        groups_csv=args.groups_csv,
    )
    try:
        if not args.source.exists():
            raise PrepareError(f"{args.source}: not found")
        # a CSV's folder is not scanned, so only writing into that very folder is refused
        check_out_dir(
            args.source.parent if args.format == "csv" else args.source, args.out, inside=args.format != "csv"
        )
        if args.format == "reviewed" and args.merge is not None and not args.merge.is_file():
            raise PrepareError(f"{args.merge}: datalist to merge with not found")
        report = build(_collect(args), args.out, options)
        if args.format == "reviewed" and args.merge is not None:
            merged, warnings = merge_datalists(args.merge, args.out / report["datalists"][0]["file"], args.out,
                                               args.absolute_paths)
            report["warnings"] += warnings
            merged_dl = json.loads(merged.read_text(encoding="utf-8"))
            report["datalists"].append({"file": merged.name, "counts": count_table(merged_dl, merged_dl["classes"])})
    except PrepareError as e:
        print(f"ERROR {e}", file=sys.stderr)
        return 1
    _print_summary(args, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
