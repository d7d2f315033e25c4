"""MultiTaskUNetLib.exports: export file names, atomic writes, the review report."""

import json
from types import SimpleNamespace

import pytest

from MultiTaskUNetLib.exports import (export_paths, review_report, safe_stem, segment_algorithm, write_review_report,
                                      write_text_atomic)
from MultiTaskUNetLib.results import SegmentInfo
from MultiTaskUNetLib.review import ReviewRecord


@pytest.mark.parametrize("name, stem", [("2: T1 post/contrast", "2_T1_post_contrast"), ("MRHead", "MRHead"),
                                        ("..hidden", "hidden"), ("a b", "a_b")])
def test_safe_stem(name, stem):
    assert safe_stem(name) == stem


def test_safe_stem_nothing_left():
    with pytest.raises(ValueError, match="cannot make a file name from '///'"):
        safe_stem("///")


def test_export_paths(tmp_path):
    assert export_paths(tmp_path, "case 1", ["seg.nrrd", "nifti", "review"]) == {
        "seg.nrrd": tmp_path / "case_1.seg.nrrd", "nifti": tmp_path / "case_1_label.nii.gz",
        "review": tmp_path / "case_1_review.json"}
    assert export_paths(tmp_path, "case 1", ["dicom-seg"]) == {"dicom-seg": tmp_path / "case_1_seg.dcm"}
    with pytest.raises(ValueError, match=r"unknown export format\(s\) \['png'\]"):
        export_paths(tmp_path, "x", ["png"])


@pytest.mark.parametrize("edited, name, version, expected", [
    (False, "MultiTaskUNet", "0.1.0", ("AUTOMATIC", "MultiTaskUNet 0.1.0")),
    (True, "MultiTaskUNet", "0.1.0", ("SEMIAUTOMATIC", "MultiTaskUNet 0.1.0")),
    (False, "", "", ("AUTOMATIC", "MultiTaskUNet")),  # DICOM needs a name for non-MANUAL segments
    (False, "x" * 70, "1", ("AUTOMATIC", "x" * 64)),  # LO: at most 64 characters
])
def test_segment_algorithm(edited, name, version, expected):
    assert segment_algorithm(edited, name, version) == expected


def test_write_text_atomic_leaves_no_temp_files(tmp_path):
    path = write_text_atomic(tmp_path / "sub" / "a.json", "1")
    write_text_atomic(path, "2")
    assert path.read_text() == "2" and [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_write_text_atomic_failure_keeps_old_file(tmp_path):
    path = write_text_atomic(tmp_path / "a.txt", "old")
    with pytest.raises(TypeError):
        write_text_atomic(path, 12345)  # not text: the write fails half-way
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_review_report(tmp_path):
    result = SimpleNamespace(diagnosis="glioma", probabilities={"glioma": 0.6, "meningioma": 0.4},
                             segments=(SegmentInfo("tumor", 1, 10, 0.5),), model_name="M", model_version="1",
                             model_sha256="s", device="cpu", warnings=("w",))
    record = ReviewRecord.from_result(result, original_digest="d")
    record.reject("dr.a")
    report = review_report(record, result, {"seg.nrrd": "x.seg.nrrd"})
    assert report["review"]["decision"] == "rejected"
    assert report["model_result"]["segments"] == [{"name": "tumor", "value": 1, "voxels": 10, "volume_ml": 0.5}]
    path = write_review_report(tmp_path / "x_review.json", record, result, {"seg.nrrd": "x.seg.nrrd"})
    assert json.loads(path.read_text()) == report
