"""Datalist loading and the header checks that stop a run before training starts."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from scripts.core.datalist import DatalistError, check_samples, load_datalist, read_header


def _png(path: Path, shape: tuple, value: int = 0) -> str:
    Image.fromarray(np.full(shape, value, np.uint8)).save(path)
    return path.name


def _write(tmp_path: Path, training: list, **header) -> Path:
    doc = {"name": "t", "spatial_dims": 2, "channels": ["T1c"], "segments": ["background", "tumor"],
           "classes": ["a", "b", "c"], "training": training, "validation": [], **header}
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    return {
        "img": _png(tmp_path / "img.png", (32, 40)),
        "mask": _png(tmp_path / "mask.png", (32, 40)),
        "wide_mask": _png(tmp_path / "wide.png", (32, 41)),
        "rgb": _png(tmp_path / "rgb.png", (32, 40, 3)),
    }


def test_paths_resolve_against_the_datalist_folder_and_class_names_map(tmp_path: Path, files: dict) -> None:
    dl = load_datalist(_write(tmp_path, [{"image": files["img"], "label": files["mask"], "class": "b"},
                                         {"image": files["rgb"], "class": 2}]))
    first = dl.split("training")[0]
    assert Path(first["image"]) == tmp_path / "img.png" and Path(first["label"]) == tmp_path / "mask.png"
    assert first["class"] == 1 and dl.in_channels == 1 and dl.split("test") == []
    check_samples(dl)  # RGB-stored grey is accepted for a 1-channel datalist


def test_partial_labels_are_valid(tmp_path: Path, files: dict) -> None:
    dl = load_datalist(_write(tmp_path, [{"image": files["img"], "label": files["mask"]}, {"image": files["img"], "class": 0}]))
    assert len(dl.split("training")) == 2


@pytest.mark.parametrize(
    "training,header,match",
    [
        ([{"image": "img.png", "class": 3}], {}, r"class 3 is out of range for 3 classes"),
        ([{"image": "img.png", "class": "d"}], {}, r"class 'd' is out of range"),
        ([{"image": "img.png"}], {}, "has neither 'label' nor 'class'"),
        ([{"label": "mask.png", "class": 0}], {}, "no 'image'"),
        ([], {}, "the 'training' split is empty"),
        ([{"image": "img.png", "class": 0}], {"spatial_dims": 4}, "'spatial_dims' must be 2 or 3, got 4"),
        ([{"image": "img.png", "class": 0}], {"classes": ["only"]}, "'classes' needs at least 2 entries"),
        ([{"image": "img.png", "class": 0}], {"channels": "T1c"}, "'channels' must be a list"),
    ],
)
def test_structure_errors(tmp_path: Path, files: dict, training: list, header: dict, match: str) -> None:
    with pytest.raises(DatalistError, match=match):
        load_datalist(_write(tmp_path, training, **header))


def test_every_problem_is_listed_not_only_the_first(tmp_path: Path, files: dict) -> None:
    with pytest.raises(DatalistError) as e:
        load_datalist(_write(tmp_path, [{"image": "img.png", "class": 7}, {"image": "img.png", "class": -1}]))
    assert len(e.value.problems) == 2 and "2 problem(s)" in str(e.value)


def test_missing_and_not_json_files(tmp_path: Path) -> None:
    with pytest.raises(DatalistError, match="datalist file not found"):
        load_datalist(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DatalistError, match=r"bad.json: 1 problem\(s\):\n  - not valid JSON"):
        load_datalist(bad)


def test_header_checks_name_the_file(tmp_path: Path, files: dict) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    vol = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), vol)
    dl = load_datalist(_write(tmp_path, [
        {"image": "img.png", "label": "wide.png", "class": 0},
        {"image": "missing.png", "class": 0},
        {"image": "broken.png", "class": 0},
        {"image": "img.png", "label": "gone.png"},
        {"image": "vol.nii.gz", "class": 1},
    ], channels=["R", "G", "B", "A", "X"]))
    with pytest.raises(DatalistError) as e:
        check_samples(dl)
    text = str(e.value)
    assert "wide.png: mask size (32, 41) differs from its image" in text
    assert "missing.png: file not found (training)" in text
    assert "gone.png: file not found (training)" in text
    assert "broken.png: cannot read image header" in text
    assert "img.png: has 1 channel(s), the datalist declares 5" in text
    assert "vol.nii.gz: is 3D (8, 8, 4), the datalist declares spatial_dims 2" in text


def test_read_header_of_raster_and_volume(tmp_path: Path, files: dict) -> None:
    assert read_header(tmp_path / "rgb.png") == ((32, 40), 3)
    vol = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 7), np.int16), np.eye(4)), vol)
    assert read_header(vol) == ((5, 6, 7), 1)
    with pytest.raises(ValueError, match="cannot read image header"):
        read_header(tmp_path / "absent.nii.gz")


def test_multi_file_channels_add_up(tmp_path: Path) -> None:
    for name in ("t1", "t2"):
        nib.save(nib.Nifti1Image(np.zeros((6, 6, 4), np.float32), np.eye(4)), tmp_path / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((6, 6, 5), np.float32), np.eye(4)), tmp_path / "odd.nii.gz")
    dl = load_datalist(_write(tmp_path, [{"image": ["t1.nii.gz", "t2.nii.gz"], "class": 0}], spatial_dims=3, channels=["T1", "T2"]))
    check_samples(dl)
    dl = load_datalist(_write(tmp_path, [{"image": ["t1.nii.gz", "odd.nii.gz"], "class": 0}], spatial_dims=3, channels=["T1", "T2"]))
    with pytest.raises(DatalistError, match="the channel files of one image differ in size"):
        check_samples(dl)
