"""BUSI adapter: counts, merged extra masks, empty normal masks, grey conversion, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts.core.datalist import load_datalist
from scripts.prepare.__main__ import main
from scripts.prepare.busi import CLASSES, collect_busi
from scripts.prepare.common import PrepareError
from scripts.prepare.pipeline import Options, build
from scripts.prepare.validate import validate


def _prepare(source: Path, out: Path, *extra: str) -> dict:
    assert main(["busi", str(source), "--out", str(out), *extra]) == 0
    return json.loads((out / "datalist.json").read_text())


def _all(dl: dict) -> list[dict]:
    return dl["training"] + dl["validation"] + dl["test"]


def test_counts_classes_and_header(busi_replica, tmp_path):
    dl = _prepare(busi_replica(per_class=4), tmp_path / "out")
    assert dl["classes"] == ["normal", "benign", "malignant"]
    assert dl["channels"] == ["US"] and dl["spatial_dims"] == 2 and dl["segments"] == ["background", "lesion"]
    samples = _all(dl)
    assert len(samples) == 12
    assert sorted(np.bincount([s["class"] for s in samples]).tolist()) == [4, 4, 4]
    assert all("label" in s for s in samples)


def test_extra_masks_are_or_merged(busi_replica, tmp_path):
    source = busi_replica()
    out = tmp_path / "out"
    col = collect_busi(source, out)
    sample = next(s for s in col.samples if s.key == "benign (1)")
    merged = np.asarray(Image.open(sample.label))
    main_mask = np.asarray(Image.open(source / "benign" / "benign (1)_mask.png")) > 0
    extra = np.asarray(Image.open(source / "benign" / "benign (1)_mask_1.png")) > 0
    assert set(np.unique(merged).tolist()) == {0, 1}
    np.testing.assert_array_equal(merged == 1, main_mask | extra)
    assert extra.sum() > 0 and (extra & ~main_mask).sum() > 0  # the extra mask adds pixels
    assert Path(sample.label).is_relative_to(out)


def test_normal_images_get_empty_masks_even_without_a_file(busi_replica, tmp_path):
    source = busi_replica()
    (source / "normal" / "normal (2)_mask.png").unlink()
    col = collect_busi(source, tmp_path / "out")
    normals = [s for s in col.samples if s.class_index == CLASSES.index("normal")]
    assert len(normals) == 4
    for s in normals:
        assert np.asarray(Image.open(s.label)).max() == 0
    assert any("normal (2).png: normal image without a mask" in w for w in col.warnings)


def test_grey_rgb_images_become_one_channel_copies_under_out(busi_replica, tmp_path):
    source = busi_replica()
    out = tmp_path / "out"
    col = collect_busi(source, out)
    s = col.samples[0]
    copy = np.asarray(Image.open(s.image))
    original = np.asarray(Image.open(source / CLASSES[s.class_index] / f"{s.key}.png"))
    assert original.ndim == 3 and copy.ndim == 2
    np.testing.assert_array_equal(copy, original[..., 0])
    assert Path(s.image).is_relative_to(out)
    assert not list(source.rglob("*.tmp")) and len(list(source.rglob("*.png"))) == 12 * 2 + 1  # source untouched


def test_single_channel_images_are_used_in_place(busi_replica, tmp_path):
    source = busi_replica()
    path = source / "malignant" / "malignant (1).png"
    Image.fromarray(np.asarray(Image.open(path))[..., 0]).save(path)
    col = collect_busi(source, tmp_path / "out")
    assert next(s for s in col.samples if s.key == "malignant (1)").image == str(path)


def test_lesion_image_without_mask_is_a_problem(busi_replica, tmp_path, capsys):
    source = busi_replica()
    (source / "malignant" / "malignant (3)_mask.png").unlink()
    with pytest.raises(PrepareError, match=r"malignant \(3\)\.png: malignant image has no mask file"):
        build(collect_busi(source, tmp_path / "out"), tmp_path / "out", Options())
    assert not (tmp_path / "out" / "datalist.json").exists()
    assert main(["busi", str(source), "--out", str(tmp_path / "out")]) == 1
    assert "ERROR" in capsys.readouterr().err
    dl = _prepare(source, tmp_path / "out2", "--skip-bad")
    assert len(_all(dl)) == 11


def test_mask_of_another_size_is_a_problem(busi_replica, tmp_path):
    source = busi_replica()
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(source / "benign" / "benign (2)_mask.png")
    col = collect_busi(source, tmp_path / "out")
    assert any(
        r"benign (2)_mask.png: mask size (30, 30) differs from its image benign (2).png (48, 48)" in p
        for p in col.problems
    )


def test_not_a_busi_folder(tmp_path):
    with pytest.raises(PrepareError, match="not a BUSI folder"):
        collect_busi(tmp_path, tmp_path / "out")


def test_out_inside_the_source_is_refused(busi_replica, capsys):
    source = busi_replica()
    assert main(["busi", str(source.parent), "--out", str(source.parent / "prepared")]) == 1
    assert "the output folder must not be the source folder or inside it" in capsys.readouterr().err


def test_parent_folder_accepted_and_prepared_datalist_validates(busi_replica, tmp_path_factory):
    source = busi_replica()
    out = tmp_path_factory.mktemp("elsewhere") / "out"
    dl = _prepare(source.parent, out)
    assert len(_all(dl)) == 12
    assert _all(dl)[0]["label"].startswith("masks/")  # paths relative to the datalist's folder
    report = validate(out / "datalist.json")
    assert report.ok, report.problems
    loaded = load_datalist(out / "datalist.json")
    assert Path(loaded.split("training")[0]["image"]).is_file()
