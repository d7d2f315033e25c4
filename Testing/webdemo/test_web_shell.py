"""Tests of the web shell beside ``app.py`` (``mtunet_web``): upload checks, run folders, the summary
text, the examples. The picture is the bundle's overlay renderer's (``Testing/inference/test_overlay.py``)."""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtunet_web import examples, text, uploads
from mtunet_web.uploads import UploadError
from scripts.inference.result import Result, ResultError, parse_result


# ---------------------------------------------------------------- uploads (a zip is the Predictor's reader's job:
# Testing/inference/test_archive.py tests its safety rules)


def test_plain_file_is_passed_through(tmp_path: Path) -> None:
    f = tmp_path / "scan.NII.GZ"
    f.write_bytes(b"x")
    assert uploads.check_upload(f) == f


def test_zip_is_passed_through_to_the_predictor(tmp_path: Path) -> None:
    z = tmp_path / "series.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("series/1.dcm", b"a")
    assert uploads.check_upload(z) == z and not (tmp_path / "series").exists()  # nothing unpacked here


def test_the_demo_has_no_zip_code_of_its_own() -> None:
    import inspect

    import mtunet_web

    for module in (mtunet_web, uploads, text, examples):
        assert "zipfile" not in inspect.getsource(module) and not hasattr(module, "extract_zip")


@pytest.mark.parametrize("name", ["a.png", "a.JPG", "a.jpeg", "a.nii", "a.nii.gz", "a.nrrd", "a.dcm", "a.zip"])
def test_supported_names(name: str) -> None:
    assert uploads.supported(name)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match=r"gone\.png: file not found"):
        uploads.check_upload(tmp_path / "gone.png")


def test_unsupported_type(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    with pytest.raises(UploadError, match=r"notes\.txt: unsupported file type"):
        uploads.check_upload(f)


def test_empty_file(tmp_path: Path) -> None:
    f = tmp_path / "empty.png"
    f.touch()
    with pytest.raises(UploadError, match=r"empty\.png: the file is empty"):
        uploads.check_upload(f)


def test_plain_error_names_the_upload_not_server_folders(tmp_path: Path) -> None:
    upload = tmp_path / "gradio" / "abc123" / "scan.png"
    assert uploads.plain_error(f"{upload}: cannot decode", upload) == "scan.png: cannot decode"
    zipped = tmp_path / "gradio" / "def456" / "study.zip"
    assert uploads.plain_error(f"{zipped}/series: no DICOM image series", zipped) == "study.zip/series: no DICOM image series"
    assert uploads.plain_error("nothing to strip", upload) == "nothing to strip"


def test_prune_runs_removes_only_old_folders(tmp_path: Path) -> None:
    old, new = tmp_path / "run-old", tmp_path / "run-new"
    old.mkdir()
    new.mkdir()
    past = time.time() - 7200
    os.utime(old, (past, past))
    assert uploads.prune_runs(tmp_path, max_age_s=3600) == 1
    assert not old.exists() and new.exists()


# ---------------------------------------------------------------- text

RESULT = {
    "input": "x.png",
    "diagnosis": {"label": "meningioma", "index": 1,
                  "probabilities": {"glioma": 0.1, "meningioma": 0.75, "no_tumor": 0.05, "pituitary": 0.1}},
    "segmentation": {"path": "x_seg.nii.gz", "format": "nifti",
                     "segments": [{"name": "tumor", "value": 1, "voxels": 321, "volume_ml": 4.25}]},
    "model": {"name": "MultiTaskUNet", "version": "0.1.0", "sha256": "ab"},
    "device": "cpu", "timings_s": {"load": 0.5, "infer": 1.0, "write": 0.25}, "warnings": ["slices unevenly spaced"],
}


def typed(data: dict) -> Result:
    """A result as the page reads it: through the result contract (scripts.inference.result)."""
    return parse_result(data, "x_result.json")


def test_probabilities() -> None:
    assert text.probabilities(typed(RESULT)) == RESULT["diagnosis"]["probabilities"]


def test_summary_of_an_image_gives_its_pixels() -> None:
    """A 2D image's result has pixels and no volume (volume_ml null); the page says what the result has."""
    image = {**RESULT, "segmentation": {**RESULT["segmentation"],
                                        "segments": [{"name": "tumor", "value": 1, "voxels": 321, "volume_ml": None}]}}
    said = text.summary_markdown(typed(image))
    assert "**Diagnosis: meningioma** (75.0 %)" in said and "tumor: area 321 pixels" in said
    assert "mm²" not in said and "mL" not in said
    assert "1.75 s (read, infer, write)" in said and "on cpu" in said and "⚠ slices unevenly spaced" in said


def test_summary_of_a_volume_gives_millilitres() -> None:
    assert "tumor: volume 4.25 mL (321 voxels)" in text.summary_markdown(typed(RESULT))


def test_summary_refuses_a_result_that_breaks_the_contract() -> None:
    broken = {**RESULT, "segmentation": {**RESULT["segmentation"], "segments": [{"name": "tumor", "value": 1,
                                                                                  "voxels": "many"}]}}
    with pytest.raises(ResultError, match=r"x_result\.json: 'segmentation\.segments\[0\]\.voxels' must be an integer"):
        text.summary_markdown(typed(broken))


def test_summary_says_whether_the_segmentation_uncertainty_was_measured() -> None:
    measured = {**RESULT, "tta": True, "segmentation": {**RESULT["segmentation"], "uncertainty": 0.123}}
    assert "segmentation uncertainty (flip TTA): 0.12 of 1" in text.summary_markdown(typed(measured))
    off = {**RESULT, "tta": False, "segmentation": {**RESULT["segmentation"], "uncertainty": None}}
    assert "segmentation uncertainty: not measured (flip TTA off)" in text.summary_markdown(typed(off))
    assert "uncertainty" not in text.summary_markdown(typed(RESULT))  # an older result: nothing said


# ---------------------------------------------------------------- examples


def test_examples_are_written_once_and_reused(tmp_path: Path) -> None:
    written = examples.write_examples(tmp_path / "ex", size=16)
    assert [p.name for p in written] == ["example_glioma.png", "example_meningioma.png", "example_no_tumor.png",
                                         "example_pituitary.png", "example_glioma_volume.nii.gz"]
    assert np.asarray(Image.open(written[0])).shape == (16, 16)
    assert sorted(p.name for p in (tmp_path / "ex").iterdir()) == sorted(p.name for p in written)  # no temporary left
    stamps = [p.stat().st_mtime_ns for p in written]
    assert examples.write_examples(tmp_path / "ex", size=16) == written  # a restart writes nothing
    assert [p.stat().st_mtime_ns for p in written] == stamps
