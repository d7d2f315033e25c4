"""Plain CSV adapter: 2D and 3D rows, optional columns, official splits, groups, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prepare_replicas import channel_volume, save_nii, save_png, texture
from scripts.prepare.__main__ import main
from scripts.prepare.common import PrepareError
from scripts.prepare.plain_csv import collect_csv
from scripts.prepare.validate import validate


def _csv_2d(tmp_path: Path, n: int = 8) -> Path:
    """``data/img_i.png`` + 0/255 masks; class a/b; two images per patient; masks and classes partly missing."""
    rows = ["image,mask,class,group"]
    for i in range(n):
        img = texture(i, (32, 32))
        save_png(img, tmp_path / "data" / f"img_{i}.png")
        mask = "" if i == 0 else f"data/mask_{i}.png"
        if mask:
            save_png(np.where(img > 150, 255, 0).astype(np.uint8), tmp_path / mask)
        cls = "" if i == 1 else ("b" if i % 2 else "a")
        rows.append(f"data/img_{i}.png,{mask},{cls},patient-{i // 2}")
    path = tmp_path / "data" / ".." / "list.csv"
    path.write_text("\n".join(rows) + "\n")
    return path.resolve()


def test_2d_rows_masks_classes_groups(tmp_path):
    source = _csv_2d(tmp_path)
    out = tmp_path / "out"
    assert main(["csv", str(source), "--out", str(out), "--test-fraction", "0.25", "--val-fraction", "0.25"]) == 0
    dl = json.loads((out / "datalist.json").read_text())
    assert dl["spatial_dims"] == 2 and dl["channels"] == ["image"] and dl["classes"] == ["a", "b"]
    samples = {Path(s["image"]).name: s for split in ("training", "validation", "test") for s in dl[split]}
    assert len(samples) == 8
    assert "label" not in samples["img_0.png"] and "class" not in samples["img_1.png"]
    # 0/255 masks become 0/1 copies under --out
    mask = np.asarray(Image.open(out / samples["img_2.png"]["label"]))
    assert set(np.unique(mask).tolist()) == {0, 1}
    split_of = {Path(s["image"]).name: split for split in ("training", "validation", "test") for s in dl[split]}
    for p in range(4):
        assert split_of[f"img_{2 * p}.png"] == split_of[f"img_{2 * p + 1}.png"], "a patient's images share a split"
    assert validate(out / "datalist.json").ok


def test_3d_multi_channel_rows_with_official_split(tmp_path):
    rows = ["image,mask,class,split"]
    for i in range(6):
        files = []
        for c, seq in enumerate(("t1", "t2")):
            save_nii(channel_volume(c + 1, 10 * i + c), tmp_path / f"case{i}" / f"{seq}.nii.gz")
            files.append(f"case{i}/{seq}.nii.gz")
        save_nii((texture(i, (12, 12, 6)) > 120).astype(np.uint8), tmp_path / f"case{i}" / "seg.nii.gz")
        rows.append(f"{';'.join(files)},case{i}/seg.nii.gz,{'x' if i % 2 else 'y'},{'test' if i == 5 else ''}")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    col = collect_csv(tmp_path / "list.csv", tmp_path / "out", channels=["T1", "T2"], class_names=["y", "x"])
    assert col.spatial_dims == 3 and col.channels == ["T1", "T2"] and col.classes == ["y", "x"]
    assert all(isinstance(s.image, list) and len(s.image) == 2 for s in col.samples)
    assert [s.split for s in col.samples] == [None] * 5 + ["test"]
    assert col.samples[1].class_index == 1  # "x" is index 1 of --class-names
    assert col.samples[0].key != col.samples[1].key  # both named t1: keys kept apart


@pytest.mark.parametrize(
    "row, message",
    [
        ("data/missing.png,,a,", "missing.png: file not found"),
        ("data/img_2.png,,c,", "class 'c' is not one of"),
        ("data/img_2.png,,,", "neither mask nor class"),
        ("data/img_2.png,,a,,holdout", "split 'holdout' is not one of"),
        (",,a,", "empty 'image'"),
    ],
)
def test_row_problems(tmp_path, row, message):
    source = _csv_2d(tmp_path)
    source.write_text(source.read_text().replace("image,mask,class,group", "image,mask,class,group,split") + row + "\n")
    col = collect_csv(source, tmp_path / "out", class_names=["a", "b"])
    assert any(message in p for p in col.problems), col.problems
    assert any(p.startswith(f"{source}:10") or "file not found" in p for p in col.problems)


def test_file_level_errors(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("path,label\nx.png,\n")
    with pytest.raises(PrepareError, match="needs a header row with an 'image' column"):
        collect_csv(path, tmp_path / "out")
    path.write_text("image,mask,class\n")
    with pytest.raises(PrepareError, match="no rows"):
        collect_csv(path, tmp_path / "out")
    path.write_text("image,class\nnothere.png,a\n")
    with pytest.raises(PrepareError, match="the first image .*nothere.png cannot be read"):
        collect_csv(path, tmp_path / "out")
    with pytest.raises(PrepareError, match="cannot read the CSV"):
        collect_csv(tmp_path / "absent.csv", tmp_path / "out")


def test_channel_and_class_count_errors(tmp_path):
    source = _csv_2d(tmp_path)
    with pytest.raises(PrepareError, match=r"has 1 channel\(s\) but --channels names 2"):
        collect_csv(source, tmp_path / "out", channels=["T1", "T2"])
    source.write_text(source.read_text().replace(",b,", ",a,"))
    with pytest.raises(PrepareError, match=r"names 1 class\(es\) \['a'\]; the datalist needs at least 2"):
        collect_csv(source, tmp_path / "out")


def test_out_may_sit_beside_the_csv_but_not_be_its_folder(tmp_path, capsys):
    source = _csv_2d(tmp_path)
    assert main(["csv", str(source), "--out", str(source.parent)]) == 1
    assert "must not be the source folder" in capsys.readouterr().err
    assert main(["csv", str(source), "--out", str(source.parent / "prepared")]) == 0
