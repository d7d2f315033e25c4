"""MultiTaskUNetLib.structured_report: what the module asks the bundle's SR writer for (Slicer-free parts).

The writer itself, run out of process on a real export, is tested in ``test_mrml_study.py``.
"""

import sys
from pathlib import Path

import pytest

from MultiTaskUNetLib.structured_report import (NO_BUNDLE_PACKAGES, NO_HIGHDICOM, ExportedSegment, ReportError, ReportWriter,
                                                report_result, report_review, source_files, unavailable_reason)

RAW = {"input": "in.nrrd", "diagnosis": {"label": "glioma", "probabilities": {"glioma": 0.8, "no_tumor": 0.2}},
       "segmentation": {"path": "in_seg.nii.gz", "format": "nifti",
                        "segments": [{"name": "edema", "value": 1, "voxels": 10, "volume_ml": 1.0},
                                     {"name": "tumor core", "value": 2, "voxels": 5, "volume_ml": 0.5}]},
       "model": {"name": "M", "version": "1", "sha256": ""}}


def test_source_files_in_the_volumes_order():
    files = {"1.2.1": "/db/a.dcm", "1.2.2": "/db/b.dcm"}
    assert source_files(" 1.2.2  1.2.1 ", files.get) == ["/db/b.dcm", "/db/a.dcm"]


def test_source_files_refuses_a_volume_not_from_dicom_and_missing_instances():
    with pytest.raises(ReportError, match="loaded from DICOM"):
        source_files("", {}.get)
    with pytest.raises(ReportError, match=r"1 of 2 source instances are not in Slicer's DICOM database \(first: 1.2.2\)"):
        source_files("1.2.1 1.2.2", {"1.2.1": "/db/a.dcm", "1.2.2": ""}.get)


def test_report_result_numbers_segments_as_the_seg_and_measures_the_export():
    """The model's segment 1 was emptied by the reviewer (not in the SEG), segment 2 renamed and edited,
    and the reviewer drew a segment of their own: the SEG holds two segments, the report measures one."""
    exported = [ExportedSegment("core (edited)", 2, 7, 0.71234), ExportedSegment("my note", None, 3, 0.3)]
    result = report_result(RAW, "/out/x_seg.dcm", exported)
    assert result["segmentation"] == {"path": "x_seg.dcm", "format": "dicom-seg",
                                      "segments": [{"name": "tumor core", "value": 1, "voxels": 7, "volume_ml": 0.7123}]}
    assert result["diagnosis"] == RAW["diagnosis"] and RAW["segmentation"]["segments"][0]["value"] == 1  # a copy


def test_report_result_needs_one_of_the_models_segments():
    with pytest.raises(ReportError, match="none of the model's segments is in the DICOM SEG"):
        report_result(RAW, "x_seg.dcm", [ExportedSegment("mine", None, 3, 0.3)])


@pytest.mark.parametrize("record, kept", [
    ({"decision": "pending", "reviewer": ""}, False),  # nobody signed: the model's answer
    ({"decision": "pending", "reviewer": "Dr A"}, True),  # edited after a decision: the reviewer stays
    ({"decision": "rejected", "reviewer": "Dr A"}, True),
])
def test_report_review(record, kept):
    assert (report_review(record) == record) if kept else report_review(record) is None


def test_unavailable_reason(tmp_path, bundle_root):
    assert unavailable_reason(bundle_root) is None  # this environment has highdicom
    assert unavailable_reason(bundle_root, find_spec=lambda name: None) == NO_HIGHDICOM  # Slicer 5.10
    # Slicer 5.12 before the first Segment & Classify (or its self-test on the build machines)
    assert unavailable_reason(bundle_root, find_spec=lambda name: name == "highdicom" or None) == NO_BUNDLE_PACKAGES
    assert "has no scripts/inference/dicom_sr.py" in unavailable_reason(tmp_path)
    assert "has no scripts/inference/dicom_sr.py" in unavailable_reason(None)


def _bundle_with_writer(tmp_path: Path, source: str) -> Path:
    """A bundle folder whose ``scripts/inference/dicom_sr.py`` is ``source`` (a writer that misbehaves)."""
    bundle = tmp_path / "bundle"
    (bundle / "scripts" / "inference").mkdir(parents=True)
    (bundle / "scripts" / "__init__.py").write_text("")
    (bundle / "scripts" / "inference" / "__init__.py").write_text("")
    (bundle / "scripts" / "inference" / "dicom_sr.py").write_text(source)
    return bundle


def test_writer_failure_without_an_error_line_gives_its_last_line(tmp_path):
    """A writer that dies before the protocol (e.g. highdicom missing): its last stderr line is the message."""
    bundle = _bundle_with_writer(tmp_path, "import highdicom_that_is_not_there\n")
    writer = ReportWriter(sys.executable, bundle, ["/db/a.dcm"])
    with pytest.raises(ReportError, match="DICOM SR not written: ModuleNotFoundError: No module named 'highdicom_that_is_not_there'"):
        writer.write(RAW, tmp_path / "x_seg.dcm", tmp_path / "x_sr.dcm", {"decision": "accepted", "reviewer": "A"},
                     [ExportedSegment("tumor", 1, 3, 0.3)])
    assert not (tmp_path / "x_sr.dcm").exists()


def test_writer_timeout(tmp_path):
    bundle = _bundle_with_writer(tmp_path, "import time\ntime.sleep(30)\n")
    writer = ReportWriter(sys.executable, bundle, ["/db/a.dcm"], timeout_s=1)
    with pytest.raises(ReportError, match="did not finish within 1 s"):
        writer.write(RAW, tmp_path / "x_seg.dcm", tmp_path / "x_sr.dcm", {}, [ExportedSegment("tumor", 1, 3, 0.3)])
