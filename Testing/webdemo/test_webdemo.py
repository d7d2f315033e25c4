"""Tests of ``scripts.webdemo``: upload checks, overlay drawing, result text."""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from scripts import webdemo
from scripts.inference.result import Result, ResultError, parse_result
from scripts.webdemo import UploadError


# ---------------------------------------------------------------- uploads (a zip is the Predictor's reader's job:
# Testing/inference/test_archive.py tests its safety rules)


def test_plain_file_is_passed_through(tmp_path: Path) -> None:
    f = tmp_path / "scan.NII.GZ"
    f.write_bytes(b"x")
    assert webdemo.check_upload(f) == f


def test_zip_is_passed_through_to_the_predictor(tmp_path: Path) -> None:
    z = tmp_path / "series.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("series/1.dcm", b"a")
    assert webdemo.check_upload(z) == z and not (tmp_path / "series").exists()  # nothing unpacked here


def test_the_demo_has_no_zip_code_of_its_own() -> None:
    import inspect

    source = inspect.getsource(webdemo)
    assert "zipfile" not in source and not hasattr(webdemo, "extract_zip")


@pytest.mark.parametrize("name", ["a.png", "a.JPG", "a.jpeg", "a.nii", "a.nii.gz", "a.nrrd", "a.dcm", "a.zip"])
def test_supported_names(name: str) -> None:
    assert webdemo.supported(name)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UploadError, match=r"gone\.png: file not found"):
        webdemo.check_upload(tmp_path / "gone.png")


def test_unsupported_type(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    with pytest.raises(UploadError, match=r"notes\.txt: unsupported file type"):
        webdemo.check_upload(f)


def test_empty_file(tmp_path: Path) -> None:
    f = tmp_path / "empty.png"
    f.touch()
    with pytest.raises(UploadError, match=r"empty\.png: the file is empty"):
        webdemo.check_upload(f)


def test_plain_error_names_the_upload_not_server_folders(tmp_path: Path) -> None:
    upload = tmp_path / "gradio" / "abc123" / "scan.png"
    assert webdemo.plain_error(f"{upload}: cannot decode", upload) == "scan.png: cannot decode"
    zipped = tmp_path / "gradio" / "def456" / "study.zip"
    assert webdemo.plain_error(f"{zipped}/series: no DICOM image series", zipped) == "study.zip/series: no DICOM image series"
    assert webdemo.plain_error("nothing to strip", upload) == "nothing to strip"


def test_prune_runs_removes_only_old_folders(tmp_path: Path) -> None:
    old, new = tmp_path / "run-old", tmp_path / "run-new"
    old.mkdir()
    new.mkdir()
    past = time.time() - 7200
    os.utime(old, (past, past))
    assert webdemo.prune_runs(tmp_path, max_age_s=3600) == 1
    assert not old.exists() and new.exists()


# ---------------------------------------------------------------- drawing


def test_slices_of_a_volume() -> None:
    label = np.zeros((8, 6, 5), np.uint8)
    label[2:4, 1:3, 3] = 1
    label[2, 1, 1] = 1
    assert webdemo.num_slices(label) == 5 and webdemo.best_slice(label) == 3
    assert webdemo.best_slice(np.zeros((8, 6, 5), np.uint8)) == 2  # no tumor: the middle
    assert webdemo.num_slices(np.zeros((4, 4), np.uint8)) == 1 and webdemo.best_slice(np.zeros((4, 4))) == 0


def test_slice_view_is_what_a_2d_model_sees() -> None:
    image = np.arange(2 * 4 * 3 * 2, dtype=np.float32).reshape(2, 4, 3, 2)  # (C, X, Y, Z)
    label = np.zeros((4, 3, 2), np.uint8)
    label[3, 0, 1] = 1  # x=3, y=0, z=1
    img2d, lab2d = webdemo.slice_view(image, label, 1)
    assert img2d.shape == (2, 4, 3) and lab2d.shape == (4, 3)  # rows = X
    assert lab2d[3, 0] == 1 and img2d[1, 3, 2] == image[1, 3, 2, 1]


def test_display_arrays_show_a_volume_as_a_viewer_does() -> None:
    from scripts.inference.orientation import display_view

    image = np.random.default_rng(0).random((2, 4, 3, 5)).astype(np.float32)  # (C, X, Y, Z)
    label = np.zeros((4, 3, 5), np.uint8)
    label[3, 0, 1] = 1  # i=3 (left), j=0 (anterior), k=1
    img, lab = webdemo.display_arrays(image, label, display_view(np.eye(3), 2))  # LPS identity: axial
    assert img.shape == (2, 3, 4, 5) and lab.shape == (3, 4, 5)  # rows = Y (A->P), cols = X (R->L), slices last
    assert lab[0, 3, 1] == 1 and lab.sum() == 1  # top row (anterior), right-most column (patient left)
    np.testing.assert_array_equal(img[:, :, :, 1], image[:, :, :, 1].transpose(0, 2, 1))
    ras = display_view(np.diag([-1, -1, 1.0]), 2)
    ras_img, ras_lab = webdemo.display_arrays(image[:, ::-1, ::-1], label[::-1, ::-1], ras)
    np.testing.assert_array_equal(ras_lab, lab)  # the same head stored RAS shows the same picture
    np.testing.assert_array_equal(ras_img, img)
    flat_img, flat_lab = webdemo.display_arrays(image[..., 0], label[..., 1], display_view((1.0, 0.0, 0.0, 1.0), 2))
    assert flat_img.shape == (2, 3, 4) and flat_lab[0, 3] == 1  # a 2D grid (2D NIfTI): one axial picture
    raster = np.zeros((1, 4, 3), np.float32)
    assert webdemo.display_arrays(raster, np.zeros((4, 3), np.uint8))[0] is raster  # PNG/JPG: as it is
    with pytest.raises(ValueError, match=r"image grid \(4, 3\) differs from label grid \(3, 4\)"):
        webdemo.display_arrays(raster, np.zeros((3, 4), np.uint8))


def test_slice_view_errors() -> None:
    with pytest.raises(ValueError, match=r"image grid \(4, 4\) differs from label grid \(4, 5\)"):
        webdemo.slice_view(np.zeros((1, 4, 4)), np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match=r"slice 3 is outside 0\.\.2"):
        webdemo.slice_view(np.zeros((1, 4, 4, 3)), np.zeros((4, 4, 3), np.uint8), 3)


def test_overlay_at_original_resolution_with_fill_and_outline() -> None:
    image = np.zeros((1, 40, 60), np.float32)
    image[0, :, 30:] = 1.0  # right half bright: windowing keeps it white
    label = np.zeros((40, 60), np.uint8)
    label[10:30, 35:55] = 1
    rgb = webdemo.render_overlay(image, label, opacity=0.5, min_size=80)
    assert rgb.shape == (80, 120, 3) and rgb.dtype == np.uint8  # enlarged by 2: every pixel 2x2
    inside, outside = rgb[40, 90], rgb[10, 110]
    assert tuple(outside) == (255, 255, 255)
    np.testing.assert_allclose(inside, 0.5 * 255 + 0.5 * np.array(webdemo.PALETTE[0]), atol=1)
    assert tuple(rgb[20, 90]) == webdemo.CONTOUR_RGB and tuple(rgb[19, 90]) == (255, 255, 255)
    clear = webdemo.render_overlay(image, label, opacity=0.0, min_size=80)
    assert tuple(clear[40, 90]) == (255, 255, 255) and tuple(clear[20, 90]) == webdemo.CONTOUR_RGB


def test_overlay_of_rgb_and_volume() -> None:
    rgb_image = np.zeros((3, 8, 8), np.float32)
    rgb_image[0] = 1.0  # pure red image
    out = webdemo.render_overlay(rgb_image, np.zeros((8, 8), np.uint8), min_size=8)
    assert tuple(out[0, 0]) == (255, 0, 0)
    vol = np.random.default_rng(0).random((1, 16, 12, 4)).astype(np.float32)
    out = webdemo.render_overlay(vol, np.zeros((16, 12, 4), np.uint8), index=2, min_size=24)
    assert out.shape == (32, 24, 3)  # rows = X (16) x2, cols = Y (12) x2


def test_constant_image_is_black() -> None:
    assert webdemo.to_rgb(np.full((1, 4, 4), 7.0)).max() == 0


def test_opacity_out_of_range() -> None:
    with pytest.raises(ValueError, match=r"opacity must be within 0\.\.1, got 1\.5"):
        webdemo.render_overlay(np.zeros((1, 4, 4)), np.zeros((4, 4), np.uint8), opacity=1.5)


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
    assert webdemo.probabilities(typed(RESULT)) == RESULT["diagnosis"]["probabilities"]


def test_summary_of_an_image_gives_its_pixels() -> None:
    """A 2D image's result has pixels and no volume (volume_ml null); the page says what the result has."""
    image = {**RESULT, "segmentation": {**RESULT["segmentation"],
                                        "segments": [{"name": "tumor", "value": 1, "voxels": 321, "volume_ml": None}]}}
    text = webdemo.summary_markdown(typed(image))
    assert "**Diagnosis: meningioma** (75.0 %)" in text and "tumor: area 321 pixels" in text
    assert "mm²" not in text and "mL" not in text
    assert "1.75 s (read, infer, write)" in text and "on cpu" in text and "⚠ slices unevenly spaced" in text


def test_summary_of_a_volume_gives_millilitres() -> None:
    assert "tumor: volume 4.25 mL (321 voxels)" in webdemo.summary_markdown(typed(RESULT))


def test_summary_refuses_a_result_that_breaks_the_contract() -> None:
    broken = {**RESULT, "segmentation": {**RESULT["segmentation"], "segments": [{"name": "tumor", "value": 1,
                                                                                  "voxels": "many"}]}}
    with pytest.raises(ResultError, match=r"x_result\.json: 'segmentation\.segments\[0\]\.voxels' must be an integer"):
        webdemo.summary_markdown(typed(broken))


# ---------------------------------------------------------------- uncertainty map


def test_uncertainty_heat_by_hand() -> None:
    image = np.full((1, 2, 2), 7.0, np.float32)  # constant: shown black
    values = np.array([[0.0, 0.02], [0.5, 1.0]], np.float32)
    rgb = webdemo.render_uncertainty(image, values, min_size=2)
    assert rgb.shape == (2, 2, 3)
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 0])  # 0 and below SHOW_FROM: the image as it is
    np.testing.assert_array_equal(rgb[0, 1], [0, 0, 0])
    np.testing.assert_array_equal(rgb[1, 0], [128, 58, 0])  # half way: 0.5 * (255, 115, 0) over black
    np.testing.assert_array_equal(rgb[1, 1], [255, 0, 0])  # certain disagreement: HIGH_RGB, opaque
    assert webdemo.render_uncertainty(image, values).shape == (384, 384, 3)  # enlarged like the overlay


def test_uncertainty_map_is_shown_as_the_label_is() -> None:
    from scripts.inference.orientation import display_view

    rng = np.random.default_rng(0)
    label = (rng.random((6, 5, 4)) > 0.5).astype(np.uint8)
    view = display_view(np.array([[0, 0, -1], [-1, 0, 0], [0, 1, 0]], float), 0)  # a permuted, flipped cut
    _, shown_label = webdemo.display_arrays(np.zeros((1, 6, 5, 4), np.float32), label, view)
    np.testing.assert_array_equal(webdemo.display_map(label.astype(np.float32), view), shown_label)
    flat = rng.random((6, 5)).astype(np.float32)
    assert webdemo.display_map(flat, None) is flat


def test_summary_says_whether_the_segmentation_uncertainty_was_measured() -> None:
    measured = {**RESULT, "tta": True, "segmentation": {**RESULT["segmentation"], "uncertainty": 0.123}}
    assert "segmentation uncertainty (flip TTA): 0.12 of 1" in webdemo.summary_markdown(typed(measured))
    off = {**RESULT, "tta": False, "segmentation": {**RESULT["segmentation"], "uncertainty": None}}
    assert "segmentation uncertainty: not measured (flip TTA off)" in webdemo.summary_markdown(typed(off))
    assert "uncertainty" not in webdemo.summary_markdown(typed(RESULT))  # an older result: nothing said
