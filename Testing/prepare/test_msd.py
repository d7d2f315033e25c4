"""MSD and nnU-Net v2 adapters: channel order as the bundle loads it, class table, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from monai.transforms import Compose

from scripts.prepare.__main__ import main
from scripts.prepare.common import PrepareError, read_class_table
from scripts.prepare.msd import collect_msd, collect_nnunet
from scripts.prepare.validate import validate
from scripts.core.transforms import load_transforms


def _bands(image) -> list[int]:
    """Per loaded channel, the band its values lie in (the replica's channel i lies in band i+1)."""
    arr = np.asarray(Compose(load_transforms())({"image": image})["image"])  # the bundle's own loading
    return [int(arr[c].mean() // 100) for c in range(arr.shape[0])]


def test_msd_channels_follow_the_modality_index_order(msd_replica, tmp_path):
    source, table = msd_replica()
    out = tmp_path / "out"
    assert main(["msd", str(source), "--out", str(out), "--classes-csv", str(table)]) == 0
    dl = json.loads((out / "datalist.json").read_text())
    assert dl["channels"] == ["FLAIR", "T1w", "T1gd", "T2w"]  # keys were out of order in dataset.json
    assert dl["segments"] == ["background", "edema", "non-enhancing tumor", "enhancing tumour"]
    assert dl["classes"] == ["HGG", "LGG"] and dl["spatial_dims"] == 3
    # the bundle's loader (MONAI) gives channel i = modality i of the 4D channels-last file
    assert _bands(out / dl["training"][0]["image"]) == [1, 2, 3, 4]
    assert validate(out / "datalist.json").ok


def test_msd_official_test_kept_when_classified(msd_replica, tmp_path):
    source, table = msd_replica(n_train=6, n_test=2)
    col = collect_msd(source, tmp_path / "out", table)
    test = [s for s in col.samples if s.split == "test"]
    assert len(col.samples) == 8 and len(test) == 2 and all(s.label is None for s in test)
    table.write_text("case,class\n" + "".join(f"BRATS_{i:03d},{'HGG' if i % 2 else 'LGG'}\n" for i in range(1, 7)))
    col = collect_msd(source, tmp_path / "out", table)
    assert len(col.samples) == 6
    assert any("2 official test image(s) left out" in w for w in col.warnings)


def test_msd_unlisted_cases_train_segmentation_only_and_unknown_cases_warn(msd_replica, tmp_path):
    source, table = msd_replica()
    table.write_text("case,class\nBRATS_001,HGG\nBRATS_002,LGG\nBRATS_999,LGG\n")
    col = collect_msd(source, tmp_path / "out", table)
    by_key = {s.key: s for s in col.samples}
    assert by_key["BRATS_001"].class_index == 0 and by_key["BRATS_003"].class_index is None
    assert any("1 case(s) not in the data set" in w for w in col.warnings)


def test_msd_channel_count_mismatch_and_missing_file(msd_replica, tmp_path):
    source, table = msd_replica()
    meta = json.loads((source / "dataset.json").read_text())
    meta["modality"] = {"0": "FLAIR", "1": "T1w", "2": "T1gd"}
    meta["training"].append({"image": "./imagesTr/BRATS_100.nii.gz", "label": "./labelsTr/BRATS_100.nii.gz"})
    (source / "dataset.json").write_text(json.dumps(meta))
    col = collect_msd(source, tmp_path / "out", table)
    assert any(
        "BRATS_001.nii.gz: has 4 channel(s) on its last axis, dataset.json lists 3 modalities" in p
        for p in col.problems
    )
    assert any("BRATS_100.nii.gz: file not found (listed in dataset.json)" in p for p in col.problems)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"modality": {"0": "FLAIR", "2": "T2"}}, r"'modality' indices must be 0..1, got \[0, 2\]"),
        ({"modality": {"a": "FLAIR"}}, "'modality' keys must be integers"),
        ({"modality": []}, "'modality' must be a non-empty object"),
    ],
)
def test_msd_bad_dataset_json(msd_replica, tmp_path, change, message):
    source, table = msd_replica(n_train=2, n_test=0)
    meta = json.loads((source / "dataset.json").read_text()) | change
    (source / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(PrepareError, match=message):
        collect_msd(source, tmp_path / "out", table)


def test_dataset_json_missing_or_broken(tmp_path):
    with pytest.raises(PrepareError, match="no dataset.json"):
        collect_msd(tmp_path, tmp_path / "out", tmp_path / "c.csv")
    (tmp_path / "dataset.json").write_text("{oops")
    with pytest.raises(PrepareError, match="dataset.json: not valid JSON"):
        collect_nnunet(tmp_path, tmp_path / "out", tmp_path / "c.csv")
    (tmp_path / "dataset.json").write_text("[1, 2]")
    with pytest.raises(PrepareError, match="expected a JSON object"):
        collect_nnunet(tmp_path, tmp_path / "out", tmp_path / "c.csv")


def test_nnunet_channel_files_ordered_by_index(nnunet_replica, tmp_path):
    source, table = nnunet_replica(channels=("T2", "ADC", "DWI"))
    out = tmp_path / "out"
    assert (
        main(["nnunet", str(source), "--out", str(out), "--classes-csv", str(table), "--class-names", "benign,csPCa"])
        == 0
    )
    dl = json.loads((out / "datalist.json").read_text())
    assert dl["channels"] == ["T2", "ADC", "DWI"] and dl["segments"] == ["background", "lesion"]
    assert dl["classes"] == ["benign", "csPCa"]
    sample = dl["training"][0]
    assert [Path(p).name[-11:] for p in sample["image"]] == ["0000.nii.gz", "0001.nii.gz", "0002.nii.gz"]
    assert _bands([str(out / p) for p in sample["image"]]) == [1, 2, 3]
    assert validate(out / "datalist.json").ok


def test_nnunet_incomplete_and_misnamed_channel_files(nnunet_replica, tmp_path):
    source, table = nnunet_replica()
    (source / "imagesTr" / "prostate_00_0001.nii.gz").unlink()
    (source / "imagesTr" / "prostate_01_0000.nii.gz").rename(source / "imagesTr" / "prostate_01.nii.gz")
    col = collect_nnunet(source, tmp_path / "out", table)
    assert any(p.endswith("prostate_00: channel files [0], dataset.json lists 2 channels (0..1)") for p in col.problems)
    assert any("prostate_01.nii.gz: not named <case>_<XXXX>.nii.gz" in p for p in col.problems)
    assert len(col.samples) == 4


def test_nnunet_case_without_mask_and_class_is_a_problem(nnunet_replica, tmp_path):
    source, table = nnunet_replica()
    (source / "labelsTr" / "prostate_02.nii.gz").unlink()
    table.write_text("case,class\nprostate_00,benign\nprostate_01,csPCa\n")
    col = collect_nnunet(source, tmp_path / "out", table)
    assert any("prostate_02.nii.gz: no mask and no class for case prostate_02" in p for p in col.problems)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"labels": {"background": 0, "whole": [1, 2]}}, "region-based 'labels'"),
        ({"labels": {}}, "'labels' must be a non-empty object"),
        ({"file_ending": "nii.gz"}, "'file_ending' must be a string like '.nii.gz'"),
        ({"channel_names": {"1": "T2"}}, r"'channel_names' indices must be 0..0"),
    ],
)
def test_nnunet_bad_dataset_json(nnunet_replica, tmp_path, change, message):
    source, table = nnunet_replica(n=2)
    meta = json.loads((source / "dataset.json").read_text()) | change
    (source / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(PrepareError, match=message):
        collect_nnunet(source, tmp_path / "out", table)


def test_nnunet_without_images_tr(nnunet_replica, tmp_path):
    source, table = nnunet_replica(n=2)
    (source / "imagesTr").rename(source / "images")
    with pytest.raises(PrepareError, match="no imagesTr/ folder"):
        collect_nnunet(source, tmp_path / "out", table)


def test_nnunet_png_file_ending_is_2d(tmp_path):
    from PIL import Image

    root = tmp_path / "Dataset120_Road"
    for i in range(4):
        for c in range(2):
            (root / "imagesTr").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((16, 16), 50 * c + i, np.uint8)).save(root / "imagesTr" / f"road_{i}_{c:04d}.png")
        (root / "labelsTr").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / "labelsTr" / f"road_{i}.png")
    meta = {"channel_names": {"0": "R", "1": "G"}, "labels": {"background": 0, "road": 1}, "file_ending": ".png"}
    (root / "dataset.json").write_text(json.dumps(meta))
    (tmp_path / "c.csv").write_text("case,class\nroad_0,a\nroad_1,b\n")
    col = collect_nnunet(root, tmp_path / "out", tmp_path / "c.csv")
    assert col.spatial_dims == 2 and len(col.samples) == 4


def test_class_table_errors(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("id,label\na,b\n")
    with pytest.raises(PrepareError, match="needs a header with columns 'case' and 'class'"):
        read_class_table(path)
    path.write_text("case,class\na,x\na,y\nb,z\n")
    with pytest.raises(PrepareError, match=r"line 3: case 'a' listed twice; case 'b': class 'z' not in \['x', 'y'\]"):
        read_class_table(path, ["x", "y"])
    with pytest.raises(PrepareError, match="cannot read the class table"):
        read_class_table(tmp_path / "missing.csv")


def test_one_class_only_is_refused(msd_replica, tmp_path):
    source, table = msd_replica(n_train=2, n_test=0)
    table.write_text("case,class\nBRATS_001,HGG\nBRATS_002,HGG\n")
    with pytest.raises(PrepareError, match=r"names 1 class\(es\) \['HGG'\]; a diagnosis needs at least 2"):
        collect_msd(source, tmp_path / "out", table)


def test_cli_requires_the_class_table(msd_replica, tmp_path, capsys):
    source, _ = msd_replica(n_train=2, n_test=0)
    assert main(["msd", str(source), "--out", str(tmp_path / "out")]) == 1
    assert "give --classes-csv FILE" in capsys.readouterr().err
