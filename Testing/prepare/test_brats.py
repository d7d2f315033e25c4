"""BraTS adapter: 2020 grades and label remap, 2023+ naming and patients, fixed channel order."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import Compose

from scripts.prepare.__main__ import main
from scripts.prepare.brats import CHANNELS, collect_brats
from scripts.prepare.common import PrepareError
from scripts.prepare.validate import validate
from scripts.core.transforms import load_transforms


def _bands(files) -> list[int]:
    arr = np.asarray(Compose(load_transforms())({"image": files})["image"])  # the bundle's own loading
    return [int(arr[c].mean() // 100) for c in range(arr.shape[0])]


def _values(path) -> list[int]:
    return np.unique(np.asarray(nib.load(path).dataobj)).astype(int).tolist()


def test_2020_grades_channels_and_remapped_labels(brats2020_replica, tmp_path):
    source = brats2020_replica(n=6)
    out = tmp_path / "out"
    assert main(["brats", str(source), "--out", str(out), "--val-fraction", "0.34", "--test-fraction", "0"]) == 0
    dl = json.loads((out / "datalist.json").read_text())
    assert dl["channels"] == CHANNELS == ["FLAIR", "T1", "T1c", "T2"]
    assert dl["segments"] == ["background", "necrosis", "edema", "enhancing"]
    assert dl["classes"] == ["HGG", "LGG"] and dl["spatial_dims"] == 3
    samples = dl["training"] + dl["validation"]
    assert len(samples) == 6 and sorted(s["class"] for s in samples) == [0, 0, 0, 0, 1, 1]
    first = samples[0]
    assert [p.rsplit("_", 1)[1] for p in first["image"]] == ["flair.nii.gz", "t1.nii.gz", "t1ce.nii.gz", "t2.nii.gz"]
    assert _bands([str(out / p) for p in first["image"]]) == [1, 2, 3, 4]  # FLAIR, T1, T1c, T2
    assert all(_values(out / s["label"]) == [0, 1, 2, 3] for s in samples)  # 4 -> 3
    assert {s["group"] for s in samples} == {f"BraTS20_Training_{i:03d}" for i in range(1, 7)}
    assert validate(out / "datalist.json").ok


def test_2020_odd_mask_name_is_found(brats2020_replica, tmp_path):
    col = collect_brats(brats2020_replica(), tmp_path / "out")
    case4 = next(s for s in col.samples if s.key == "BraTS20_Training_004")
    assert case4.label is not None and _values(case4.label) == [0, 1, 2, 3]


def test_2020_whole_tumour(brats2020_replica, tmp_path):
    col = collect_brats(brats2020_replica(n=2), tmp_path / "out", segments="whole-tumor")
    assert col.segments == ["background", "tumor"]
    assert all(_values(s.label) == [0, 1] for s in col.samples)


def test_2019_style_hgg_lgg_folders_give_grades(brats2020_replica, tmp_path):
    source = brats2020_replica(n=4)
    (source / "name_mapping.csv").unlink()
    for grade, cases in (("HGG", (1, 2)), ("LGG", (3, 4))):
        (source / grade).mkdir()
        for i in cases:
            shutil.move(source / f"BraTS20_Training_{i:03d}", source / grade)
    col = collect_brats(source, tmp_path / "out")
    assert {s.key: col.classes[s.class_index] for s in col.samples} == {
        "BraTS20_Training_001": "HGG",
        "BraTS20_Training_002": "HGG",
        "BraTS20_Training_003": "LGG",
        "BraTS20_Training_004": "LGG",
    }


def test_2020_unexpected_label_value_and_missing_sequence(brats2020_replica, tmp_path):
    source = brats2020_replica(n=4)
    seg = source / "BraTS20_Training_002" / "BraTS20_Training_002_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.full((12, 12, 6), 3, np.uint8), np.eye(4)), str(seg))
    (source / "BraTS20_Training_003" / "BraTS20_Training_003_t1ce.nii.gz").unlink()
    col = collect_brats(source, tmp_path / "out")
    assert any(
        "BraTS20_Training_002_seg.nii.gz: label values [3] are not BraTS labels [0, 1, 2, 4]" in p for p in col.problems
    )
    assert any("BraTS20_Training_003: missing BraTS20_Training_003_t1ce.nii.gz" in p for p in col.problems)
    assert len(col.samples) == 2


def test_2023_cohorts_are_classes_and_timepoints_share_a_patient(brats2023_replica, tmp_path):
    source = brats2023_replica(("GLI", "MEN"))
    out = tmp_path / "out"
    assert main(["brats", str(source), "--out", str(out)]) == 0
    dl = json.loads((out / "datalist.json").read_text())
    assert dl["classes"] == ["GLI", "MEN"]
    samples = dl["training"] + dl["validation"] + dl["test"]
    assert len(samples) == 8
    first = samples[0]
    assert [p.rsplit("-", 1)[1] for p in first["image"]] == ["t2f.nii.gz", "t1n.nii.gz", "t1c.nii.gz", "t2w.nii.gz"]
    assert _bands([str(out / p) for p in first["image"]]) == [1, 2, 3, 4]
    split_of = {s["image"][0]: split for split in ("training", "validation", "test") for s in dl[split]}
    tp0 = next(k for k in split_of if "BraTS-GLI-00000-000" in k)
    tp1 = next(k for k in split_of if "BraTS-GLI-00000-001" in k)
    assert split_of[tp0] == split_of[tp1]
    assert {s["group"] for s in samples if "GLI-00000" in s["image"][0]} == {"BraTS-GLI-00000"}
    assert all("label" in s and "/labels/" not in s["label"] for s in samples)  # 0..3 already: used in place
    assert validate(out / "datalist.json").ok


def test_2023_single_cohort_needs_a_class_table(brats2023_replica, tmp_path):
    source = brats2023_replica(("GLI",))
    with pytest.raises(PrepareError, match="no diagnosis to learn .* give --classes-csv"):
        collect_brats(source, tmp_path / "out")
    table = tmp_path / "idh.csv"
    table.write_text(
        "case,class\nBraTS-GLI-00000-000,IDH-wt\nBraTS-GLI-00000-001,IDH-wt\nBraTS-GLI-00002-000,IDH-mut\n"
    )
    col = collect_brats(source, tmp_path / "out", classes_csv=table)
    assert col.classes == ["IDH-mut", "IDH-wt"]
    assert sum(s.class_index is None for s in col.samples) == 1  # 00003 is not in the table: seg only


def test_case_without_mask_and_class_is_left_out(brats2023_replica, tmp_path):
    source = brats2023_replica(("GLI",))
    (source / "BraTS-GLI-00003-000" / "BraTS-GLI-00003-000-seg.nii.gz").unlink()
    table = tmp_path / "c.csv"
    table.write_text("case,class\nBraTS-GLI-00000-000,a\nBraTS-GLI-00002-000,b\n")
    col = collect_brats(source, tmp_path / "out", classes_csv=table)
    assert len(col.samples) == 3
    assert any("BraTS-GLI-00003-000: no mask and no class, left out" in w for w in col.warnings)


def test_errors(brats2020_replica, brats2023_replica, tmp_path):
    with pytest.raises(PrepareError, match="no BraTS case folder"):
        collect_brats(tmp_path, tmp_path / "out")
    with pytest.raises(PrepareError, match="segments must be one of"):
        collect_brats(tmp_path, tmp_path / "out", segments="all")
    source = brats2020_replica(n=2)
    shutil.copytree(brats2023_replica(("GLI", "MEN")) / "BraTS-GLI-00000-000", source / "BraTS-GLI-00000-000")
    with pytest.raises(PrepareError, match="mixes 2020 and 2023\\+ case naming"):
        collect_brats(source, tmp_path / "out")


def test_bad_name_mapping(brats2020_replica, tmp_path):
    source = brats2020_replica(n=2)
    (source / "name_mapping.csv").write_text("Grade,Subject\nHGG,BraTS20_Training_001\n")
    with pytest.raises(PrepareError, match="needs the columns 'Grade' and 'BraTS_2020_subject_ID'"):
        collect_brats(source, tmp_path / "out")
    (source / "name_mapping.csv").write_text("Grade,BraTS_2020_subject_ID\nGBM,BraTS20_Training_001\n")
    with pytest.raises(PrepareError, match=r"grades \['GBM'\] are not \['HGG', 'LGG'\]"):
        collect_brats(source, tmp_path / "out")
