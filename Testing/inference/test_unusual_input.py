"""Unusual but acceptable input: each one is read, and the result's ``warnings`` says what was done.

Every case goes through the Predictor (a tiny hand-wired model) and checks the line it adds to the
result JSON; a normal PNG and a normal axis-aligned series add none.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

from infer_helpers import CT_SERIES, mni_volume, oblique_direction, write_dicom_series

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _gradient(h: int = 24, w: int = 32) -> np.ndarray:
    return (np.add.outer(np.arange(h), np.arange(w)) * 255 / (h + w)).astype(np.uint8)


def _warnings(predictor, path: Path) -> list[str]:
    return predictor.predict(path).result["warnings"]


def _one(predictor, path: Path, pattern: str) -> str:
    found = [w for w in _warnings(predictor, path) if __import__("re").search(pattern, w)]
    assert len(found) == 1, _warnings(predictor, path)
    return found[0]


def test_plain_inputs_warn_nothing(predictor2d, tmp_path):
    Image.fromarray(_gradient()).save(tmp_path / "plain.png")
    write_dicom_series(mni_volume(3), tmp_path / "series")
    assert [w for w in _warnings(predictor2d, tmp_path / "plain.png") if "plain.png" in w] == []
    assert [w for w in _warnings(predictor2d, tmp_path / "series") if w.startswith("series")] == []


def test_16_bit_png(predictor2d, tmp_path):
    Image.fromarray(_gradient().astype(np.uint16) * 250).save(tmp_path / "deep.png")
    assert np.asarray(Image.open(tmp_path / "deep.png")).dtype == np.uint16  # really 16 bits on disk
    line = _one(predictor2d, tmp_path / "deep.png", r"^deep\.png: 16-bit grey image")
    assert "full range" in line


def test_rgba_png(predictor2d, tmp_path):
    rgba = np.dstack([_gradient()] * 3 + [np.full((24, 32), 128, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    assert "alpha (transparency) channel" in _one(predictor2d, tmp_path / "alpha.png", r"^alpha\.png: RGBA image")


def test_palette_png(predictor2d, tmp_path):
    Image.fromarray(_gradient()).convert("P").save(tmp_path / "indexed.png")
    assert "converted to RGB" in _one(predictor2d, tmp_path / "indexed.png", r"^indexed\.png: palette")


def test_cmyk_jpeg(predictor2d, tmp_path):
    Image.fromarray(np.dstack([_gradient()] * 3)).convert("CMYK").save(tmp_path / "print.jpg")
    assert Image.open(tmp_path / "print.jpg").mode == "CMYK"
    assert "converted to RGB" in _one(predictor2d, tmp_path / "print.jpg", r"^print\.jpg: CMYK image")


def test_png_named_jpg_is_read_by_content(predictor2d, tmp_path):
    Image.fromarray(_gradient()).save(tmp_path / "scan.jpg", format="PNG")
    pred = predictor2d.predict(tmp_path / "scan.jpg")
    np.testing.assert_array_equal(pred.image[0], _gradient())  # lossless: the PNG's pixels, not a JPEG decode
    assert "read by its content" in _one(predictor2d, tmp_path / "scan.jpg", r"^scan\.jpg: the file is a PNG image")


def test_oblique_volume(predictor2d, tmp_path):
    image = sitk.GetImageFromArray(np.ascontiguousarray(mni_volume(4).T))
    image.SetDirection(tuple(oblique_direction(20.0, 10.0).ravel()))
    sitk.WriteImage(image, str(tmp_path / "tilted.nii.gz"))
    line = _one(predictor2d, tmp_path / "tilted.nii.gz", r"^tilted\.nii\.gz: oblique volume")
    assert "own oblique grid" in line and "22." in line  # rotations of 20 and 10 degrees tilt one axis by 22.3


def test_one_voxel_thick_volume(predictor2d, tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(mni_volume(1).T)), str(tmp_path / "thin.nii.gz"))
    line = _one(predictor2d, tmp_path / "thin.nii.gz", r"^thin\.nii\.gz: the volume is one voxel thick")
    assert "read as a single slice" in line


def test_shuffled_instance_numbers_are_sorted_by_position(predictor2d, tmp_path):
    write_dicom_series(mni_volume(4), tmp_path / "shuffled")
    for path in (tmp_path / "shuffled").iterdir():
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = {1: 3, 2: 1, 3: 4, 4: 2}[int(ds.InstanceNumber)]
        ds.save_as(path)
    pred = predictor2d.predict(tmp_path / "shuffled")
    np.testing.assert_array_equal(pred.image[0], np.round(mni_volume(4)))  # in position order all the same
    line = _one(predictor2d, tmp_path / "shuffled", r"^shuffled: the instance numbers do not follow")
    assert "(3, 1, 4, 2 from the lowest slice up)" in line and "sorted by their position" in line


def test_junk_files_in_a_dicom_folder_are_skipped_and_counted(predictor2d, tmp_path):
    write_dicom_series(mni_volume(3), tmp_path / "series")
    (tmp_path / "series" / "readme.txt").write_text("notes")
    (tmp_path / "series" / "Thumbs.db").write_bytes(b"\0" * 300)
    line = _one(predictor2d, tmp_path / "series", r"^series: skipped 2 file\(s\) that are not DICOM images")
    assert "Thumbs.db" in line and "readme.txt" in line


def test_series_in_a_nested_folder(predictor2d, tmp_path):
    write_dicom_series(mni_volume(3), tmp_path / "patient" / "study" / "series")
    line = _one(predictor2d, tmp_path / "patient", r"^patient: the series lies in sub-folder")
    assert str(Path("study") / "series") in line


def test_single_slice_series(predictor2d, tmp_path):
    write_dicom_series(mni_volume(1), tmp_path / "one")
    assert "one-slice volume" in _one(predictor2d, tmp_path / "one", r"^one: the series holds a single slice")


def test_jpeg2000_dicom(predictor2d):
    line = _one(predictor2d, PYDICOM_FILES / "MR_small_jp2klossless.dcm", r"JPEG 2000")
    assert line.startswith("MR_small_jp2klossless.dcm: the pixel data is JPEG 2000 compressed") and "decoded" in line


def test_unknown_character_set(predictor2d, tmp_path):
    write_dicom_series(mni_volume(2), tmp_path / "charset")
    for path in (tmp_path / "charset").iterdir():
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = "ISO_IR 999"
        ds.save_as(path)
    line = _one(predictor2d, tmp_path / "charset", r"unknown character set 'ISO_IR 999'")
    assert "read as Latin-1" in line


def test_text_that_does_not_fit_the_character_set(predictor2d, tmp_path):
    write_dicom_series(mni_volume(2), tmp_path / "utf8")
    for path in (tmp_path / "utf8").iterdir():  # no SpecificCharacterSet (ASCII), a UTF-8 name in the bytes
        data = path.read_bytes()
        path.write_bytes(data.replace(b"Test^Phantom", "Mü^Phantom".encode("utf-8") + b" "))
    line = _one(predictor2d, tmp_path / "utf8", r"PatientName is not valid text")
    assert "ASCII" in line and "Latin-1" in line


def test_symlink_loops_are_skipped(predictor2d, tmp_path):
    shutil.copytree(CT_SERIES, tmp_path / "ct")
    os.symlink("..", tmp_path / "ct" / "up")  # a folder link to its parent
    os.symlink("b", tmp_path / "ct" / "a")  # a -> b -> a
    os.symlink("a", tmp_path / "ct" / "b")
    pred = predictor2d.predict(tmp_path / "ct")
    assert pred.label.shape == (16, 16, 5)
    line = _one(predictor2d, tmp_path / "ct", r"^ct: skipped 3 symbolic link")
    assert "loop" in line and all(name in line for name in ("up", "a", "b"))


def test_a_folder_of_studies_with_a_link_loop_is_searched_once(predictor2d, tmp_path):
    from scripts.inference.batch import expand_inputs

    write_dicom_series(mni_volume(2), tmp_path / "studies" / "a")
    os.symlink("..", tmp_path / "studies" / "a" / "up")
    os.symlink(tmp_path / "studies", tmp_path / "studies" / "again")  # a link back to the folder searched
    assert expand_inputs([tmp_path / "studies"]) == [tmp_path / "studies" / "a"]
