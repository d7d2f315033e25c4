"""Reviewed studies in: ``python -m scripts.prepare reviewed REVIEW_DIR --out DIR [--merge DATALIST]``.

A radiologist's review of the model's results becomes training data, each entry marked with its
``provenance``. Two layouts are read (both may be present; see ``docs/prepare.md``):

* **Slicer worklist**: ``<stem>.csv`` written by the batch CLI, with the module's
  ``<stem>_review_state.json`` (per study a review record and the file of its segmentation) and
  ``<stem>_review/<study>.seg.nrrd`` beside it; results are the CSV's ``result`` column.
* **Per study**: ``<name>_review.json`` next to the CLI's ``<name>_result.json``. The review JSON
  is the Slicer export's (``{"review": {record}, "files": {...}}``; a node named ``<study>
  MultiTaskUNet`` is matched with ``<study>_result.json``) or a record a script writes:
  ``{"decision": "accepted|edited|rejected|overridden", "final_diagnosis": "<class>", "mask":
  "<file>", "image": "<file>", "result": "<file>"}`` (all but ``decision`` optional; paths relative
  to the JSON).

Rules, per study (``pending`` studies are left out with a warning):

=====================================  ===========  ==========================  ===================
decision / diagnosis                   provenance   label (mask)                class
=====================================  ===========  ==========================  ===================
accepted, the model's diagnosis        accepted     none (the model's: *)       the model's
edited, the model's diagnosis          edited       the reviewer's segmentation the model's
accepted, diagnosis changed            overridden   none (the model's: *)       the reviewer's
edited, diagnosis changed              overridden   the reviewer's segmentation the reviewer's
rejected, diagnosis changed            overridden   none (the mask was refused) the reviewer's
rejected, the model's diagnosis        rejected     none                        none
=====================================  ===========  ==========================  ===================

(*) ``accepted_masks="skip"``, the default (``--accepted-masks``): a segmentation the reviewer
accepted unedited is the model's own output, so it does not train the segmentation head -- the
entry keeps the confirmed (or overridden) diagnosis and has no ``label``. Training a model on its
own masks is self-training: it cannot add what the model does not already know, and it reinforces
its systematic errors, because accepting means "good enough to report", not "right to the voxel"
(``Testing/benchmarks/README.md``, learning from review: with the same models and reviews, leaving
them out gave the higher held-out Dice on 3 of 3 seeds). ``accepted_masks="train"`` uses the
model's label map as the label, as
if the reviewer had drawn it. A diagnosis is different: accepting it says it is the right class,
which is all a class label says, so accepted diagnoses always train.

Rejected studies train nothing (the reviewer refused the segmentation without saying what is
right); they are listed under the datalist's ``"rejected"`` key, which no split reads, so the
record of what was reviewed stays complete. ``--merge BASE`` also writes ``merged.json``: the base
datalist (paths rebased, entries marked ``original``) with every reviewed study added to its ``training`` split; its
``validation`` and ``test`` stay as they were, so the fine-tuned model is scored on the same cases.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.core.datalist import REJECTED_KEY
from scripts.prepare.common import Collection, PrepareError, Sample, class_lookup, path_for_datalist
from scripts.prepare.imageio import read_image, save_png

DECISIONS = ("pending", "accepted", "edited", "rejected", "overridden")
#: what an accepted, unedited segmentation becomes (``--accepted-masks``): no label (default) or a label
ACCEPTED_MASKS = ("skip", "train")
MERGED_NAME = "merged.json"
RESULT_SUFFIX, REVIEW_SUFFIX = "_result.json", "_review.json"
_WORKLIST_COLUMNS = ("study", "status", "result")


@dataclass
class Review:
    """One reviewed study as found on disk (paths absolute)."""

    name: str
    record_file: Path
    result_file: Path
    result: dict[str, Any]
    decision: str
    final_diagnosis: str | None
    reviewer_mask: Path | None
    image: Path | None = None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PrepareError(f"{path}: not readable JSON ({e})") from e


def _beside(folder: Path, value: str | None) -> Path | None:
    """A path written by the CLI or the module: as written if it exists, else relative to ``folder``,
    else the file of that name in ``folder`` (a moved review folder keeps its names)."""
    if not value:
        return None
    path = Path(value)
    for candidate in ([path] if path.is_absolute() else []) + [folder / path, folder / path.name]:
        if candidate.exists():
            return candidate.resolve()
    return None


def _worklist_reviews(table: Path, state_file: Path) -> tuple[list[Review], list[str]]:
    """The studies of a Slicer worklist with a saved review record; warnings for the others."""
    try:
        with open(table, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise PrepareError(f"{table}: cannot read the worklist ({e})") from e
    if not rows or any(c not in rows[0] for c in _WORKLIST_COLUMNS):
        raise PrepareError(f"{table}: not a MultiTaskUNet worklist (needs columns {list(_WORKLIST_COLUMNS)})")
    state = _read_json(state_file)
    if not isinstance(state, dict) or not isinstance(state.get("reviews"), dict):
        raise PrepareError(f"{state_file}: not a worklist review state (no 'reviews')")
    folder, seg_folder = table.parent, table.with_name(f"{table.stem}_review")
    reviews, warnings = [], []
    for row in rows:
        saved = state["reviews"].get(row["study"])
        if row["status"] != "ok" or not isinstance(saved, dict):
            warnings.append(f"{table}: study {row['study']!r} has no review; left out")
            continue
        result_file = _beside(folder, row["result"])
        if result_file is None:
            raise PrepareError(f"{table}: the result {row['result']!r} of study {row['study']!r} was not found")
        record = saved.get("record") or {}
        seg = seg_folder / saved["segmentation"] if saved.get("segmentation") else None
        reviews.append(Review(row["study"], state_file, result_file, _read_json(result_file),
                              str(record.get("decision", "pending")), record.get("final_diagnosis"), seg))
    return reviews, warnings


def _study_review(record_file: Path) -> Review:
    """A ``<name>_review.json`` (Slicer export or a script's record) with its ``_result.json``."""
    raw = _read_json(record_file)
    if not isinstance(raw, dict):
        raise PrepareError(f"{record_file}: a review record must be a JSON object")
    folder = record_file.parent
    name = record_file.name[: -len(REVIEW_SUFFIX)]
    exported = isinstance(raw.get("review"), dict)
    record = raw["review"] if exported else raw
    candidates = [raw.get("result"), name + RESULT_SUFFIX, re.sub(r"_MultiTaskUNet$", "", name) + RESULT_SUFFIX]
    result_file = next((p for p in (_beside(folder, c) for c in candidates if c) if p is not None), None)
    if result_file is None:
        raise PrepareError(f"{record_file}: no result JSON found ({name}{RESULT_SUFFIX} beside it, or name it "
                           "under \"result\")")
    if exported:  # the label map Slicer exported with the review: NIfTI preferred, else the .seg.nrrd
        files = raw.get("files") or {}
        mask_value = files.get("nifti") or files.get("seg.nrrd")
    else:
        mask_value = raw.get("mask")
    mask = _beside(folder, mask_value)
    if mask_value and mask is None:
        raise PrepareError(f"{record_file}: its mask {mask_value!r} was not found")
    image = _beside(folder, raw.get("image"))
    if raw.get("image") and image is None:
        raise PrepareError(f"{record_file}: its image {raw['image']!r} was not found")
    return Review(name, record_file, result_file, _read_json(result_file), str(record.get("decision", "")),
                  record.get("final_diagnosis"), mask, image)


def find_reviews(review_dir: Path) -> tuple[list[Review], list[str]]:
    """Every review in ``review_dir`` (worklists first, then per-study records), and warnings.

    Raises:
        PrepareError: a worklist, state file, record or result is unreadable or missing; no review found.
    """
    reviews, warnings = [], []
    for table in sorted(review_dir.rglob("*.csv")):
        state_file = table.with_name(f"{table.stem}_review_state.json")
        if state_file.is_file():
            found, warned = _worklist_reviews(table, state_file)
            reviews += found
            warnings += warned
    for record_file in sorted(review_dir.rglob("*" + REVIEW_SUFFIX)):
        reviews.append(_study_review(record_file))
    if not reviews:
        raise PrepareError(f"{review_dir}: no review found (expected a worklist .csv with its _review_state.json, "
                           f"or <name>{REVIEW_SUFFIX} files beside the CLI's <name>{RESULT_SUFFIX})")
    return reviews, warnings


def _header(review: Review) -> tuple[list[str], list[str]]:
    """``(classes, segments)`` a result JSON declares (segments with background first)."""
    try:
        classes = list(review.result["diagnosis"]["probabilities"])
        segs = sorted(review.result["segmentation"]["segments"], key=lambda s: int(s["value"]))
        return classes, ["background"] + [str(s["name"]) for s in segs]
    except (KeyError, TypeError, ValueError) as e:
        raise PrepareError(f"{review.result_file}: not a MultiTaskUNet result JSON (missing {e})") from e


def _image(review: Review) -> Path:
    if review.image is not None:
        return review.image
    value = str(review.result.get("input", ""))
    folder = review.result_file.parent
    path = Path(value)
    for candidate in ([path] if path.is_absolute() else [folder / path, folder.parent / path]) + [folder / path.name]:
        if value and candidate.exists():
            return candidate.resolve()
    raise PrepareError(f"{review.result_file}: its input {value!r} was not found; name the image under \"image\" "
                       f"in {review.record_file.name} or run the CLI with absolute paths")


def _label_file(review: Review, mask: Path, image: Path, segments: list[str], out: Path) -> str:
    """A mask the datalist can use: PNG / NIfTI as it is, a ``.seg.nrrd`` as a label map under ``out/masks``."""
    name = mask.name.lower()
    if name.endswith(".dcm") or mask.is_dir():
        raise PrepareError(f"{mask}: a DICOM SEG cannot be used as a mask; export NIfTI or .seg.nrrd "
                           f"({review.record_file})")
    if not name.endswith(".seg.nrrd"):
        return str(mask)
    from scripts.prepare.segnrrd import SegNrrdError, label_map_for_image

    try:
        label, raster = label_map_for_image(mask, image, segments)
    except SegNrrdError as e:
        raise PrepareError(f"{e} ({review.record_file})") from e
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", review.name)
    target = out / "masks" / f"{stem}{'.png' if raster else '.nii.gz'}"
    save_png(label, target) if raster else _save_volume(label, image, target)
    return str(target)


def _save_volume(label: Any, image: Path, target: Path) -> None:
    """A ``(X, Y, Z)`` label map as NIfTI on the image's grid (geometry read in LPS, as SimpleITK writes)."""
    import numpy as np
    import SimpleITK as sitk

    from scripts.core.atomic import atomic_path

    _, geom = read_image(image, header_only=True)
    img = sitk.GetImageFromArray(np.ascontiguousarray(label.T))  # numpy wants (Z, Y, X)
    img.SetSpacing([float(s) for s in geom.spacing])
    img.SetOrigin([float(o) for o in geom.origin])
    img.SetDirection([float(d) for d in np.asarray(geom.direction).ravel()])
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, suffix=".nii.gz") as tmp:
        sitk.WriteImage(img, str(tmp), True)


def to_sample(review: Review, classes: list[str], segments: list[str], out: Path,
              accepted_masks: str = "skip") -> Sample | None:
    """The datalist sample of one review by the rules of the module docstring (None: pending).

    ``accepted_masks``: ``"skip"`` (default) leaves the label out of a study whose segmentation was
    accepted unedited (the model's own output); ``"train"`` keeps the model's label map as its label.

    Raises:
        PrepareError: unknown decision or diagnosis, an edit without the reviewer's segmentation, a
            missing or unusable mask (each names the record file).
    """
    where = review.record_file
    decision = review.decision
    if accepted_masks not in ACCEPTED_MASKS:
        raise PrepareError(f"accepted_masks must be one of {list(ACCEPTED_MASKS)}, got {accepted_masks!r}")
    if decision not in DECISIONS:
        raise PrepareError(f"{where}: decision {decision!r} of {review.name!r} is not one of {list(DECISIONS)}")
    if decision == "pending":
        return None
    lookup = class_lookup(classes)
    model = str(review.result.get("diagnosis", {}).get("label", ""))
    final = review.final_diagnosis or model
    for label, who in ((model, "the model's"), (final, "the reviewer's")):
        if label.lower() not in lookup:
            raise PrepareError(f"{where}: {who} diagnosis {label!r} of {review.name!r} is not one of {classes}")
    if decision == "overridden" and final.lower() == model.lower():
        raise PrepareError(f"{where}: decision 'overridden' for {review.name!r} needs a final_diagnosis other "
                           f"than the model's {model!r}")
    overridden = final.lower() != model.lower()
    image = _image(review)
    sample = Sample(key=review.name, image=str(image), class_index=lookup[final.lower()], split=None)
    if decision == "rejected":
        if not overridden:
            sample.class_index, sample.provenance = None, "rejected"
        else:
            sample.provenance = "overridden"
        return sample
    sample.provenance = "overridden" if overridden else ("edited" if decision == "edited" else "accepted")
    if decision == "edited":
        if review.reviewer_mask is None:
            raise PrepareError(f"{where}: {review.name!r} was edited but the reviewer's segmentation is not there")
        mask = review.reviewer_mask
    elif accepted_masks == "skip":  # the model's own mask: no label (module docstring)
        return sample
    else:
        mask = _beside(review.result_file.parent, review.result.get("segmentation", {}).get("path"))
        if mask is None:
            raise PrepareError(f"{review.result_file}: the model's segmentation "
                               f"{review.result.get('segmentation', {}).get('path')!r} was not found")
    sample.label = _label_file(review, mask, image, segments, out)
    return sample


def collect_reviewed(source: Path, out: Path, channels: list[str] | None = None, merge: Path | None = None,
                     accepted_masks: str = "skip") -> Collection:
    """Collect reviewed studies (see the module docstring); with ``merge`` every sample is ``training``;
    ``accepted_masks``: see :func:`to_sample`.

    Raises:
        PrepareError: see :func:`find_reviews` and :func:`to_sample`; results of different classes or
            segments, or ones that differ from ``merge``'s.
    """
    source, out = Path(source), Path(out)
    reviews, warnings = find_reviews(source)
    classes, segments = _header(reviews[0])
    for r in reviews[1:]:
        if _header(r) != (classes, segments):
            raise PrepareError(f"{r.result_file}: classes / segments {_header(r)} differ from {(classes, segments)} "
                               f"of {reviews[0].result_file}: results of one model are needed")
    base = _read_json(merge) if merge is not None else None
    if base is not None:
        check_mergeable(merge, base, classes, segments)
        channels, segments = list(base["channels"]), list(base["segments"])
    first = _image(reviews[0])
    _, geom = read_image(first, header_only=True)
    dims = 2 if geom.spacing is None or sum(s > 1 for s in geom.shape) == 2 else 3
    names = channels or (["image"] if geom.channels in (1, 3, 4) else [f"ch{i}" for i in range(geom.channels)])
    col = Collection(f"reviewed-{source.name}", dims, names, segments, classes, warnings=warnings)
    col.listed[REJECTED_KEY] = []
    for review in reviews:
        sample = to_sample(review, classes, segments, out, accepted_masks)
        if sample is None:
            col.warnings.append(f"{review.record_file}: {review.name!r} is still pending; left out")
        elif sample.provenance == "rejected":
            col.listed[REJECTED_KEY].append(sample)
        else:
            sample.split = "training" if merge is not None else None
            col.samples.append(sample)
    return col


def check_mergeable(path: Path, base: Any, classes: list[str], segments: list[str]) -> None:
    """Raise :class:`PrepareError` unless the base datalist has these classes and segments (names, order)."""
    if not isinstance(base, dict) or not all(isinstance(base.get(k), list) for k in ("channels", "segments", "classes")):
        raise PrepareError(f"{path}: not a datalist (needs 'channels', 'segments' and 'classes' lists)")
    if [c.lower() for c in base["classes"]] != [c.lower() for c in classes]:
        raise PrepareError(f"{path}: classes {base['classes']} differ from the reviewed results' {classes}")
    if [s.lower() for s in base["segments"][1:]] != [s.lower() for s in segments[1:]]:
        raise PrepareError(f"{path}: segments {base['segments']} differ from the reviewed results' {segments}")


def _rebase(entry: dict[str, Any], base_dir: Path, out: Path, absolute: bool) -> dict[str, Any]:
    def conv(p: str) -> str:
        path = Path(p)
        return path_for_datalist(str(path if path.is_absolute() else base_dir / path), out, absolute)

    entry = dict(entry)
    for key in ("image", "label"):
        if isinstance(entry.get(key), str):
            entry[key] = conv(entry[key])
        elif isinstance(entry.get(key), list):
            entry[key] = [conv(p) for p in entry[key]]
    return entry


def _first_file(entry: dict[str, Any], folder: Path) -> Path:
    image = entry["image"][0] if isinstance(entry["image"], list) else entry["image"]
    return (folder / image).resolve()


def merge_datalists(base_file: Path, reviewed_file: Path, out: Path, absolute: bool = False) -> tuple[Path, list[str]]:
    """Write ``out/merged.json``: ``base_file`` with ``reviewed_file``'s studies in its training split.

    The base's other keys (name, description, ``synthetic`` for the demo's settings) are kept; its
    entries get ``"provenance": "original"`` unless they have one (all entries need the same keys). A
    reviewed image that is also a base training image replaces that entry (its reviewed labels win);
    one in the base's validation or test split is refused: the score would be of training data.

    Returns:
        (the merged file, warnings).

    Raises:
        PrepareError: a reviewed image is in the base's validation or test split (names both files).
    """
    from scripts.core.atomic import write_json_atomic

    base, reviewed = _read_json(base_file), _read_json(reviewed_file)
    base_dir = base_file.resolve().parent
    merged = {k: v for k, v in base.items() if k not in ("training", "validation", "test", REJECTED_KEY)}
    new = [_rebase(e, reviewed_file.parent, out, absolute) for e in reviewed.get("training", [])]
    new_files = {_first_file(e, out): e for e in new}
    warnings: list[str] = []
    for split in ("training", "validation", "test"):
        kept = []
        for entry in base.get(split, []):
            first = _first_file(entry, base_dir)
            if first in new_files and split != "training":
                raise PrepareError(f"{first}: reviewed, but in the {split} split of {base_file}; a study scored on "
                                   "must not be trained on (leave its review out or drop it from that split)")
            if first in new_files:
                warnings.append(f"{first}: in {base_file}'s training split; its reviewed labels replace it")
                continue
            # every entry carries a provenance: batches are collated key by key, so all need the same keys
            kept.append({"provenance": "original"} | _rebase(entry, base_dir, out, absolute))
        merged[split] = kept + (new if split == "training" else [])
    merged[REJECTED_KEY] = [_rebase(e, reviewed_file.parent, out, absolute) for e in reviewed.get(REJECTED_KEY, [])]
    return write_json_atomic(out / MERGED_NAME, merged), warnings
