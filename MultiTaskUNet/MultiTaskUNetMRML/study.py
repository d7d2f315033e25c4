"""One study's result on a segmentation node: import, diagnosis attributes, review, export.

The diagnosis, the full result JSON and the review record are node attributes (prefix
``MultiTaskUNet.``), so they are saved with the scene (``.mrml``/``.mrb``) and restored with it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

from MultiTaskUNetLib.exports import export_paths, segment_algorithm, write_review_report
from MultiTaskUNetLib.results import ATTRIBUTE_PREFIX, StudyResult, result_attributes, result_from_attributes
from MultiTaskUNetLib.review import ReviewError, ReviewRecord, label_digest
from MultiTaskUNetLib.structured_report import ReportWriter
from MultiTaskUNetLib.terminology import Code, segment_terminologies
from MultiTaskUNetMRML.segmentation import (attach_to_reference, export_dicom_seg, export_label_map, exported_segments,
                                            get_attributes, import_label_map, label_map_array, place_under_study, read_segmentation,
                                            set_attributes, set_segment_algorithm, write_segmentation)

REVIEW_ATTRIBUTE = ATTRIBUTE_PREFIX + "Review"
#: formats :func:`export_study` writes; ``dicom-seg`` works inside 3D Slicer only
EXPORT_FORMATS = ("seg.nrrd", "nifti", "dicom-seg")


def import_study(scene, result: StudyResult, reference, name: Optional[str] = None, segmentation_node=None,
                 anatomic_region: Optional[Code] = None):
    """Turn a worker result into a segmentation of ``reference`` with terminology, attributes and a
    pending review record. Each segment's terminology and colour are the ones the worker wrote into the
    result; nothing is added to the scene for a result without them. Returns the segmentation node.

    Raises:
        MissingTerminology: a segment of the result has no terminology or colour (a result of an older
            worker, or hand-made); the message names the result file and says to run the model again.
        ValueError: the label map cannot be imported (see :func:`import_label_map`), or a segment's
            terminology or colour is malformed.
    """
    terms = segment_terminologies(result.segments, anatomic_region, source=result.path)  # as the worker wrote them
    name = name or f"{reference.GetName()} MultiTaskUNet"
    seg = import_label_map(scene, result.segmentation_path, reference, terms, name, segmentation_node)
    set_segment_algorithm(seg, *segment_algorithm(False, result.model_name, result.model_version))
    set_attributes(seg, result_attributes(result))
    record = ReviewRecord.from_result(result, original_digest=label_digest(label_map_array(scene, seg, reference)))
    set_review(seg, record)
    return seg


def restore_study(scene, result: StudyResult, reference, record: ReviewRecord, path: str | os.PathLike,
                  name: Optional[str] = None):
    """A study as the reviewer left it: the segmentation saved as ``.seg.nrrd`` (their edits, segment
    names, terminology and label values), with the model's result and the saved review record, on
    ``reference`` (the study's volume, loaded again). Returns the segmentation node.

    Raises:
        ValueError: the file is missing or unreadable (names it).
    """
    seg = read_segmentation(scene, path, name or f"{reference.GetName()} MultiTaskUNet")
    attach_to_reference(seg, reference)
    set_attributes(seg, result_attributes(result))
    set_review(seg, record)
    place_under_study(scene, seg, reference)
    return seg


def get_result(segmentation_node) -> StudyResult:
    """The model's result stored on the node.

    Raises:
        ResultError: the node holds no MultiTaskUNet result.
    """
    return result_from_attributes(get_attributes(segmentation_node, ATTRIBUTE_PREFIX))


def get_review(segmentation_node) -> ReviewRecord:
    """The node's review record.

    Raises:
        ReviewError: the node has no (valid) review record.
    """
    text = segmentation_node.GetAttribute(REVIEW_ATTRIBUTE)
    if not text:
        raise ReviewError(f"{segmentation_node.GetName()}: no MultiTaskUNet review record on this segmentation")
    return ReviewRecord.from_json(text)


def set_review(segmentation_node, record: ReviewRecord) -> None:
    """Store the review record (and the reviewer's diagnosis, readable without parsing JSON)."""
    set_attributes(segmentation_node, {REVIEW_ATTRIBUTE: record.to_json(),
                                       ATTRIBUTE_PREFIX + "FinalDiagnosis": record.final_diagnosis,
                                       ATTRIBUTE_PREFIX + "ReviewDecision": record.decision.value})


def refresh_edit_state(scene, segmentation_node, reference, reviewer: str = "") -> ReviewRecord:
    """Compare the segments with the model's output, update and store the record, return it.

    The model's segments are marked ``SEMIAUTOMATIC`` once edited (``AUTOMATIC`` otherwise), which
    the ``.seg.nrrd`` and DICOM SEG exports carry.
    """
    record = get_review(segmentation_node)
    record.note_segment_state(label_digest(label_map_array(scene, segmentation_node, reference)), reviewer)
    set_review(segmentation_node, record)
    set_segment_algorithm(segmentation_node, *segment_algorithm(record.segment_edited, record.model_name,
                                                                record.model_version))
    return record


def _default_formats(formats: Optional[Iterable[str]]) -> list[str]:
    formats = list(EXPORT_FORMATS if formats is None else formats)
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; expected some of {list(EXPORT_FORMATS)}")
    return formats


def export_study(scene, segmentation_node, reference, out_dir: str | os.PathLike,
                 formats: Optional[Iterable[str]] = None, reviewer: str = "",
                 report_writer: Optional[ReportWriter] = None) -> dict[str, Path]:
    """Write the segmentation (``.seg.nrrd``, NIfTI label map, DICOM SEG), the DICOM SR beside the
    SEG, and ``<name>_review.json``.

    The review record is brought up to date (was the segment edited?) before anything is written, so
    the SR carries the decision as it stands (:mod:`MultiTaskUNetLib.structured_report`). The SR is
    written with the DICOM SEG when a ``report_writer`` is given (the module gives one where Slicer
    has highdicom).

    Returns:
        ``{format: path}`` of everything written, including ``"review"`` (and ``"dicom-sr"``).

    Raises:
        ValueError: unknown format, or a file could not be written (names it).
        RuntimeError: DICOM SEG requested without a DICOM SEG exporter (outside Slicer, or Slicer 5.10
            without QuantitativeReporting), for a non-DICOM input, or for empty segments only;
            ``ReportError`` (a RuntimeError) when the SR could not be written.
        ResultError, ReviewError: the node holds no MultiTaskUNet result / review.
    """
    formats = _default_formats(formats)
    result = get_result(segmentation_node)
    record = refresh_edit_state(scene, segmentation_node, reference, reviewer)
    with_report = "dicom-seg" in formats and report_writer is not None
    paths = export_paths(out_dir, segmentation_node.GetName(), formats + ["review"] + (["dicom-sr"] if with_report else []))
    written: dict[str, Path] = {}
    if "seg.nrrd" in paths:
        written["seg.nrrd"] = write_segmentation(scene, segmentation_node, paths["seg.nrrd"])
    if "nifti" in paths:
        written["nifti"] = export_label_map(scene, segmentation_node, reference, paths["nifti"])
    if "dicom-seg" in paths:
        written["dicom-seg"] = export_dicom_seg(scene, segmentation_node, reference, paths["dicom-seg"], reviewer)
    if with_report:
        written["dicom-sr"] = report_writer.write(result.raw, written["dicom-seg"], paths["dicom-sr"], record.to_dict(),
                                                  exported_segments(scene, segmentation_node, reference))
    files = {k: Path(v).name for k, v in written.items()}
    written["review"] = write_review_report(paths["review"], record, result, files)
    return written
