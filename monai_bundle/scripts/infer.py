"""Segment and diagnose studies from the command line; also the 3D Slicer worker (``--progress``).

    python -m scripts.infer INPUT [INPUT ...] --out DIR [--bundle DIR] [--checkpoint FILE] [--card FILE]
           [--format auto|png|nifti|seg.nrrd|dicom-seg] [--device auto|cpu|cuda] [--series-uid UID]
           [--axis N] [--no-overlay] [--tta | --no-tta] [--uncertainty-map] [--progress]
           [--push DICOMWEB-ROOT] [--resume] [--engine local|ray [--workers N] [--address ADDR] [--threads N]]

An INPUT is an image file (PNG/JPG, NIfTI, NRRD/MHA, DICOM), a DICOM series folder, a zip of a
DICOM series, a folder of studies (searched for image files, zips and DICOM folders), a DICOMweb
study or series URL (``http://HOST/dicom-web/studies/<UID>[/series/<UID>]``, retrieved with WADO-RS
into a temporary folder that is removed after the study) or a manifest ``.csv`` of such inputs, one a
row. ``--push`` stores each study's DICOM SEG and SR on a DICOMweb server (STOW-RS); a study whose
push fails is a failed study. Credentials come from the environment only: ``MTUNET_DICOMWEB_TOKEN``
(bearer) or ``MTUNET_DICOMWEB_USER`` + ``MTUNET_DICOMWEB_PASSWORD`` (basic auth);
``MTUNET_DICOMWEB_TIMEOUT`` (s) and ``MTUNET_DICOMWEB_RETRIES`` tune the network
(:mod:`scripts.inference.dicomweb`). ``--resume`` skips the studies whose results are already in
``--out``. ``--engine ray`` spreads the studies over Ray actors, each holding one Predictor: a local
Ray instance for the run, or the cluster at ``--address`` (:mod:`scripts.inference.distributed`); the
files, the progress and the summary are those of the single-process run. Per study,
in ``--out``: the label map ``<name>_seg.png`` (PNG/JPG input, on the image's pixel grid: 0/255 for
one segment, else the segment values) or ``<name>_seg.nii.gz`` (other input; ``--format`` picks
``.seg.nrrd``, DICOM SEG ``.dcm`` or NIfTI for any input), ``<name>_result.json``, ``<name>_overlay.png``;
with DICOM SEG also ``<name>_sr.dcm``, the diagnosis and tumour volume as a DICOM SR (TID 1500); with
``--tta --uncertainty-map`` also ``<name>_uncertainty.png`` / ``.nii.gz``, the flip disagreement. With
several studies, ``worklist.csv`` ranks them by review priority (:mod:`scripts.inference.worklist`)
and the summary table names the ones to review first.
With ``--progress`` stdout carries ``PROGRESS <0-100> <stage>`` lines and one
``RESULT <result json>`` line per study. Exit code 0 when every study succeeded, 1 otherwise; the
last line on stderr is then ``ERROR <message>``. ``--device`` and ``--tta`` override the bundle's
``configs/inference.json``, which holds every other inference setting. All work is done by
:class:`scripts.inference.Predictor`; this file only parses and presents.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

if __package__ in (None, ""):  # run as a file (python monai_bundle/scripts/infer.py): make the bundle importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import scripts  # noqa: E402
from scripts.inference import SEG_SUFFIXES, BatchRunner, InputError, Outcome, Predictor  # noqa: E402
from scripts.inference.predictor import AUTO_FORMAT  # noqa: E402
from scripts.inference.result import parse_result  # noqa: E402
from scripts.inference.worklist import ranked_rows, write_rows  # noqa: E402

REVIEW_FIRST = 3  # studies the summary names to review first


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m scripts.infer", description=__doc__.splitlines()[0],
                                 epilog="DICOM folders with several series: the one with the most instances is read "
                                        "(localizers last) unless --series-uid names one. Slices that are not "
                                        "parallel or not evenly spaced are refused.")
    ap.add_argument("inputs", nargs="+", help="image files, DICOM series folders, folders of studies, DICOMweb study "
                                              "or series URLs, or manifest .csv files of them")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--bundle", type=Path, default=Path(scripts.bundle_root()), help="bundle root")
    ap.add_argument("--checkpoint", type=Path, help="weights (default: BUNDLE/models/model.pt)")
    ap.add_argument("--card", type=Path, help="model card (default: BUNDLE/models/model_card.json)")
    ap.add_argument("--format", dest="seg_format", choices=[AUTO_FORMAT] + sorted(SEG_SUFFIXES), default=AUTO_FORMAT,
                    help="segmentation file format: auto = a PNG mask for PNG/JPG input, NIfTI otherwise "
                         "(png needs PNG/JPG input, dicom-seg DICOM input; dicom-seg also writes the diagnosis "
                         "as a DICOM SR)")
    ap.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the bundle's configs/inference.json, auto)")
    ap.add_argument("--series-uid", help="SeriesInstanceUID to read from a DICOM folder with several series")
    ap.add_argument("--axis", type=int, choices=(0, 1, 2), help="slice axis of a 2D model on a volume")
    ap.add_argument("--no-overlay", action="store_true", help="do not write the overlay PNG")
    ap.add_argument("--progress", action="store_true", help="PROGRESS / RESULT lines on stdout (Slicer worker)")
    ap.add_argument("--tta", action=argparse.BooleanOptionalAction,
                    help="flip test-time augmentation: average the network on the image and its mirror (2x time; "
                         "default: the bundle's configs/inference.json)")
    ap.add_argument("--uncertainty-map", action="store_true",
                    help="also write <name>_uncertainty.png (PNG/JPG input) or .nii.gz: the voxel-wise disagreement "
                         "of the image and its mirror (needs TTA)")
    ap.add_argument("--push", metavar="DICOMWEB-ROOT",
                    help="store each study's DICOM SEG and SR on this DICOMweb server with STOW-RS, e.g. "
                         "http://pacs:8042/dicom-web (implies --format dicom-seg); credentials from "
                         "MTUNET_DICOMWEB_TOKEN or MTUNET_DICOMWEB_USER + MTUNET_DICOMWEB_PASSWORD")
    ap.add_argument("--resume", action="store_true",
                    help="skip the studies whose <name>_result.json is already in --out (with --push: whose "
                         "result records a push to that server)")
    ap.add_argument("--engine", choices=("local", "ray"), default="local",
                    help="local: the studies one after the other in this process; ray: spread over Ray actors "
                         "(a local Ray instance, or the cluster at --address)")
    ap.add_argument("--workers", type=int, help="Ray actors (default: one per GPU, else one per --threads CPUs)")
    ap.add_argument("--address", help="a running Ray cluster to join (HOST:PORT or ray://HOST:PORT); its nodes must "
                                      "see the bundle, the inputs and --out at the same paths")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per Ray actor (default 1)")
    return ap


def summary_table(outcomes: list[Outcome], ranked: list[dict] | None = None, worklist: Path | None = None) -> str:
    """One line per study: name, status (ok, FAILED, or kept: resumed from an earlier run), diagnosis
    (probability), tumor volume, review priority, seconds;
    then the studies to review first (the top of the worklist's ``ranked`` rows, written to ``worklist``)."""
    rows = [("study", "status", "diagnosis", "p", "tumor", "priority", "seconds")]
    for o in outcomes:
        if o.ok:
            status = "kept" if o.resumed else "ok"
            r = parse_result(o.result, o.paths.get("result") or o.input.name)  # the contract: configs/result.schema.json
            seg, diag = r.segmentation, r.diagnosis
            tumor = f"{seg.tumor_ml:.2f} mL" if seg.tumor_ml is not None else f"{seg.tumor_voxels} px"
            priority = "-" if r.review_priority is None else f"{r.review_priority:.2f}"  # None: an older result
            rows.append((o.input.name, status, diag.label, f"{diag.probability:.2f}", tumor, priority, f"{o.seconds:.1f}"))
        else:
            rows.append((o.input.name, "FAILED", "-", "-", "-", "-", f"{o.seconds:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    top = [r for r in ranked or [] if r["status"] == "ok"][:REVIEW_FIRST]
    if top:
        first = ", ".join(f"{r['study']} ({r['review_priority']:.2f})" for r in top)
        lines.append(f"review first: {first}" + (f"; all ranked in {worklist}" if worklist else ""))
    done, kept = sum(o.ok for o in outcomes), sum(o.resumed for o in outcomes)
    tail = f" ({kept} kept from an earlier run)" if kept else ""
    return "\n".join(lines + [f"{done} of {len(outcomes)} studies done{tail}"])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ray = args.engine == "ray"
    if not ray and (args.workers is not None or args.address is not None):
        print("ERROR --workers and --address need --engine ray", file=sys.stderr)
        return 1
    try:  # with Ray the workers load their own; this one (on the CPU) checks the bundle and gives its card
        predictor = Predictor.from_bundle(args.bundle, device="cpu" if ray else args.device,
                                          checkpoint=args.checkpoint, card=args.card, tta=args.tta)
    except (InputError, ValueError) as e:
        print(f"ERROR {e}", file=sys.stderr)
        return 1
    if args.uncertainty_map and not predictor.settings.tta:
        print("ERROR --uncertainty-map needs flip TTA: add --tta (or set tta in the bundle's configs/inference.json)",
              file=sys.stderr)
        return 1
    options = dict(seg_format=args.seg_format, series_uid=args.series_uid, axis=args.axis, overlay=not args.no_overlay,
                   strict=False, uncertainty_map=args.uncertainty_map, push=args.push, resume=args.resume)
    try:
        if ray:
            from scripts.inference.distributed import PredictorSpec, RayBatchRunner

            spec = PredictorSpec(str(args.bundle), args.checkpoint and str(args.checkpoint),
                                 args.card and str(args.card), overrides={"device": args.device, "tta": args.tta})
            runner = RayBatchRunner(spec, args.inputs, args.out, workers=args.workers, address=args.address,
                                    threads=args.threads, **options)
        else:
            runner = BatchRunner(predictor, args.inputs, args.out, **options)
    except (InputError, ValueError) as e:
        print(f"ERROR {e}", file=sys.stderr)
        return 1
    n = len(runner.studies)
    bar = tqdm(total=n, unit="study", file=sys.stderr, disable=args.progress or n < 2)

    def progress(i: int, total: int, percent: int, stage: str) -> None:
        if args.progress:
            print(f"PROGRESS {(100 * i + percent) // total} {stage}", flush=True)

    def on_outcome(o: Outcome) -> None:
        bar.update(1)
        if o.ok and args.progress:
            print(f"RESULT {o.paths['result']}", flush=True)
        elif o.ok and n == 1:
            d = parse_result(o.result, o.paths["result"]).diagnosis
            print(f"{d.label} ({d.probability:.2f}); files in {args.out}")

    outcomes = runner.run(progress, on_outcome)
    bar.close()
    if n > 1:
        ranked = ranked_rows(outcomes, predictor.card.get("no_tumor_class"))
        worklist = write_rows(ranked, args.out)
        if not args.progress:
            print(summary_table(outcomes, ranked, worklist))
    errors = [o.error for o in outcomes if not o.ok]
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
