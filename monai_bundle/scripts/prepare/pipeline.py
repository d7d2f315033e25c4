"""From a :class:`Collection` to datalist files: problems, duplicates, splits, atomic writes.

Output folder (``--out``):

* ``datalist.json`` — the bundle's datalist (``docs/README.md``); with ``folds=k``, ``datalist_fold0.json`` ..
  ``datalist_fold{k-1}.json`` instead (same ``test``; fold i is fold i's ``validation``);
* ``prepare_report.json`` — counts per split and class, duplicate clusters (sample keys, their
  splits, exact/near), problems and warnings; written even when the command fails;
* derived files the adapter wrote (``masks/``, ``images/``, ``labels/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.core.atomic import write_json_atomic
from scripts.prepare.common import (SPLITS, Collection, PrepareError, apply_groups, count_table, read_group_table,
                                    sample_entry)
from scripts.prepare.duplicates import NEAR_THRESHOLD, cluster_report, find_clusters, fingerprints, regroup
from scripts.prepare.splits import split_samples

REPORT_FILE = "prepare_report.json"


@dataclass
class Options:
    """What the common ``prepare`` options set (see ``python -m scripts.prepare <format> --help``)."""

    val_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 0
    folds: int = 0
    check_duplicates: bool = True
    near_threshold: int = NEAR_THRESHOLD
    regroup_duplicates: bool = False
    absolute_paths: bool = False
    skip_bad: bool = False
    #: ``case,group`` CSV naming each case's patient (:func:`scripts.prepare.common.read_group_table`)
    groups_csv: Path | None = None


def datalist_names(folds: int) -> list[str]:
    """The datalist file names written for ``folds`` (0: one datalist)."""
    return [f"datalist_fold{k}.json" for k in range(folds)] if folds else ["datalist.json"]


def build(collection: Collection, out: Path, options: Options) -> dict[str, Any]:
    """Check, split and write the datalist(s) and the report of a collected data set.

    Args:
        collection: what an adapter found (its derived files already under ``out``).
        out: the output folder.
        options: split / duplicate / path options.

    Returns:
        the report written to ``out/prepare_report.json``.

    Raises:
        PrepareError: the collection has problems (each listed) and ``skip_bad`` is off, or no
            sample is left; the report is written first so the problems can be read there too.
    """
    out = Path(out)
    groups = read_group_table(options.groups_csv) if options.groups_csv is not None else None  # fail before any work
    out.mkdir(parents=True, exist_ok=True)
    samples = collection.samples
    report: dict[str, Any] = {"name": collection.name, "datalists": [], "warnings": collection.warnings}
    clusters = []
    if options.check_duplicates and samples:
        errors: list[str] = []
        exact, near, bad = fingerprints(samples, errors)
        collection.problems += errors
        keep = [i for i in range(len(samples)) if i not in bad]
        samples = [samples[i] for i in keep]
        clusters = find_clusters([exact[i] for i in keep], [near[i] for i in keep], options.near_threshold)
    report["problems"] = collection.problems
    if collection.problems and not options.skip_bad:
        write_json_atomic(out / REPORT_FILE, report)
        raise PrepareError(_problem_message(collection.name, collection.problems))
    if not samples:
        write_json_atomic(out / REPORT_FILE, report)
        raise PrepareError(f"{collection.name}: no usable sample found")
    if groups is not None:
        report["groups"], warnings = apply_groups(samples, groups, options.groups_csv)
        collection.warnings += warnings
    note = _no_patient_note(collection.spatial_dims, samples, options)  # before duplicates are merged: not patients
    if note:
        collection.warnings.append(note)
    if options.regroup_duplicates:
        report["groups_merged_for_duplicates"] = regroup(samples, clusters)
    assignments = split_samples(
        samples, options.val_fraction, options.test_fraction, options.seed, options.folds, collection.warnings
    )
    for name, assignment in zip(datalist_names(options.folds), assignments):
        datalist = _datalist(collection, samples, assignment, out, options.absolute_paths)
        write_json_atomic(out / name, datalist)
        report["datalists"].append({"file": name, "counts": count_table(datalist, collection.classes)})
    report["duplicates"] = cluster_report(samples, clusters, assignments[0]) if options.check_duplicates else None
    write_json_atomic(out / REPORT_FILE, report)
    return report


def _no_patient_note(spatial_dims: int, samples: list, options: Options) -> str | None:
    """The warning for a validation split drawn image by image, when nothing says which images share a patient.

    Layouts such as BRISC and BUSI carry no patient ids, so every image is its own group. A patient's
    other slices then sit in training while one is validated, and the validation scores -- what picks
    the best checkpoint, stops training early and fits the calibration -- read better than the same
    model does on new patients (on the generated brain set, 232 of 240 validation images had a slice of
    their patient in training, and the best validation balanced accuracy was 0.816 against 0.777 with
    validation drawn by patient: the benchmarks README, *Session 12*).

    2D layouts only: a 3D case (MSD, nnU-Net, BraTS) is a patient's volume, and cases of one patient
    are grouped where the layout says so (BraTS 2023+ timepoints).
    """
    if spatial_dims != 2:
        return None
    drawn = options.folds >= 2 or (options.val_fraction > 0 and not any(s.split == "validation" for s in samples))
    if not drawn or len(samples) < 2 or len({s.group for s in samples}) < len(samples):
        return None
    return ("no patient ids: every image is its own group, so validation is drawn image by image. If a patient has "
            "several images, validation shares patients with training and its scores (the best checkpoint, early "
            "stopping, the calibration) are optimistic; --groups-csv FILE (columns case,group) keeps each "
            "patient's images in one split")


def _datalist(
    collection: Collection, samples: list, assignment: dict[int, str], out: Path, absolute: bool
) -> dict[str, Any]:
    dl: dict[str, Any] = {
        "name": collection.name,
        "spatial_dims": collection.spatial_dims,
        "channels": collection.channels,
        "segments": collection.segments,
        "classes": collection.classes,
    }
    for split in SPLITS:
        dl[split] = [sample_entry(s, out, absolute) for i, s in enumerate(samples) if assignment[i] == split]
    for key, listed in collection.listed.items():
        dl[key] = [sample_entry(s, out, absolute) for s in listed]
    return dl


def _problem_message(name: str, problems: list[str], shown: int = 50) -> str:
    lines = "\n  - ".join(problems[:shown])
    more = f"\n  ... and {len(problems) - shown} more (all in {REPORT_FILE})" if len(problems) > shown else ""
    return f"{name}: {len(problems)} problem(s) (rerun with --skip-bad to leave these samples out):\n  - {lines}{more}"
