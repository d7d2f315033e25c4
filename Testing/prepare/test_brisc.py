"""BRISC 2025 adapter: both layouts, name parsing and cross-checks, mask-less no-tumour images."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from scripts.prepare.__main__ import main
from scripts.prepare.brisc import CLASSES, collect_brisc, parse_name
from scripts.prepare.common import PrepareError
from scripts.prepare.validate import validate


@pytest.mark.parametrize(
    "stem, expected",
    [
        ("brisc2025_train_00001_gl_ax_t1", ("glioma", "train")),
        ("brisc2025_test_00420_me_co_t1", ("meningioma", "test")),
        ("brisc2025_train_01234_pi_sa_t1", ("pituitary", "train")),
        ("brisc2025_train_00007_no_ax_t1", ("no_tumor", "train")),
        ("BRISC2025_TEST_00008_NT_SA_T1", ("no_tumor", "test")),
        ("brisc2025_train_00009_xx_ax_t1", None),
        ("scan_001", None),
    ],
)
def test_parse_name(stem, expected):
    assert parse_name(stem) == expected


def _count(col, **where) -> int:
    return sum(all(getattr(s, k) == v for k, v in where.items()) for s in col.samples)


def test_split_layout_counts_official_test_and_masks(brisc_replica, tmp_path):
    col = collect_brisc(brisc_replica("split"), tmp_path / "out")
    assert not col.problems
    assert len(col.samples) == 4 * 3 + 4 * 2
    assert _count(col, split="test") == 8 and _count(col, split=None) == 12
    for k in range(len(CLASSES)):
        assert _count(col, class_index=k) == 5
    tumour = [s for s in col.samples if CLASSES[s.class_index] != "no_tumor"]
    assert all(s.label and set(np.unique(np.asarray(Image.open(s.label))).tolist()) == {0, 1} for s in tumour)
    nt = next(s for s in col.samples if "_nt_" in s.key)  # the "nt" spelling parsed as no tumour
    assert CLASSES[nt.class_index] == "no_tumor" and nt.split == "test"


def test_no_tumour_images_get_an_empty_mask_or_none(brisc_replica, tmp_path):
    source = brisc_replica("split")
    col = collect_brisc(source, tmp_path / "a")
    normals = [s for s in col.samples if CLASSES[s.class_index] == "no_tumor"]
    assert len(normals) == 5
    for s in normals:
        mask = np.asarray(Image.open(s.label))
        assert mask.shape == (40, 40) and mask.max() == 0
        assert str(tmp_path / "a") in s.label
    col = collect_brisc(source, tmp_path / "b", no_tumor="cls-only")
    assert all(s.label is None for s in col.samples if CLASSES[s.class_index] == "no_tumor")
    assert _count(col, label=None) == 5


def test_flat_layout_takes_the_split_from_the_name(brisc_replica, tmp_path):
    col = collect_brisc(brisc_replica("flat"), tmp_path / "out")
    assert not col.problems
    assert len(col.samples) == 20 and _count(col, split="test") == 8


def test_cli_keeps_official_test_and_draws_validation_from_train(brisc_replica, tmp_path):
    out = tmp_path / "out"
    assert main(["brisc", str(brisc_replica("split")), "--out", str(out), "--val-fraction", "0.25"]) == 0
    dl = json.loads((out / "datalist.json").read_text())
    assert len(dl["test"]) == 8 and all("_test_" in s["image"] for s in dl["test"])
    assert len(dl["training"]) + len(dl["validation"]) == 12
    assert len(dl["validation"]) == 4  # one per class: stratified
    assert sorted(s["class"] for s in dl["validation"]) == [0, 1, 2, 3]
    assert validate(out / "datalist.json").ok


def test_folder_and_name_class_mismatch_is_a_problem(brisc_replica, tmp_path):
    source = brisc_replica("split")
    wrong = source / "classification_task" / "train" / "glioma" / "brisc2025_train_00001_gl_ax_t1.jpg"
    shutil.move(wrong, source / "classification_task" / "train" / "pituitary" / wrong.name)
    col = collect_brisc(source, tmp_path / "out")
    assert any(
        "brisc2025_train_00001_gl_ax_t1.jpg: in the pituitary folder but its name says glioma" in p
        for p in col.problems
    )
    assert not any(s.key == wrong.stem for s in col.samples)


def test_folder_and_name_split_mismatch_is_a_problem(brisc_replica, tmp_path):
    source = brisc_replica("split")
    name = "brisc2025_train_00002_gl_co_t1.jpg"
    shutil.move(source / "classification_task/train/glioma" / name, source / "classification_task/test/glioma" / name)
    shutil.rmtree(source / "segmentation_task")
    col = collect_brisc(source, tmp_path / "out")
    assert any(f"{name}: in the test folder but its name says train" in p for p in col.problems)


def test_image_filed_under_two_classes_is_a_problem(brisc_replica, tmp_path):
    source = brisc_replica("split")
    name = "brisc2025_train_00001_gl_ax_t1.jpg"
    shutil.copy(
        source / "classification_task/train/glioma" / name, source / "classification_task/train/meningioma" / name
    )
    col = collect_brisc(source, tmp_path / "out")
    assert any(f"{name}: also filed under glioma" in p for p in col.problems)


def test_unparsable_name_without_class_folder_is_a_problem(brisc_replica, tmp_path):
    source = brisc_replica("split")
    img = source / "segmentation_task/train/images/brisc2025_train_00001_gl_ax_t1.jpg"
    shutil.copy(img, img.with_name("scan_01.jpg"))
    col = collect_brisc(source, tmp_path / "out")
    assert any("scan_01.jpg: no class folder and the name does not follow" in p for p in col.problems)


def test_tumour_image_without_mask_trains_classification_only(brisc_replica, tmp_path):
    source = brisc_replica("split")
    (source / "segmentation_task/train/masks/brisc2025_train_00001_gl_ax_t1.png").unlink()
    col = collect_brisc(source, tmp_path / "out")
    s = next(s for s in col.samples if s.key == "brisc2025_train_00001_gl_ax_t1")
    assert s.label is None and CLASSES[s.class_index] == "glioma"
    assert any("1 tumour image(s) have no mask" in w for w in col.warnings)


def test_mask_size_mismatch_is_a_problem(brisc_replica, tmp_path):
    source = brisc_replica("split")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(
        source / "segmentation_task/train/masks/brisc2025_train_00001_gl_ax_t1.png"
    )
    col = collect_brisc(source, tmp_path / "out")
    assert any(
        "mask size (20, 20) differs from its image brisc2025_train_00001_gl_ax_t1.jpg (40, 40)" in p
        for p in col.problems
    )


def test_unknown_class_folder_is_ignored_with_a_warning(brisc_replica, tmp_path):
    source = brisc_replica("split")
    (source / "classification_task/train/unsorted").mkdir()
    col = collect_brisc(source, tmp_path / "out")
    assert any("unsorted: not a BRISC class folder" in w for w in col.warnings)


def test_errors(tmp_path):
    with pytest.raises(PrepareError, match="not a BRISC 2025 folder"):
        collect_brisc(tmp_path, tmp_path / "out")
    with pytest.raises(PrepareError, match="no_tumor must be one of"):
        collect_brisc(tmp_path, tmp_path / "out", no_tumor="drop")
