"""The realistic generated sets (scripts.datasets): determinism, published layouts through the real
prepare adapters, anatomy and lesion rules, physical agreement of 3D storings, and hardness."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from scripts.datasets import brain_mri, brain_mri_3d, ultrasound
from scripts.datasets.brain_atlas import SELLA, load_atlas
from scripts.datasets.brain_lesions import GLIOMA, MENINGIOMA, NO_TUMOR, PITUITARY
from scripts.datasets.brain_render import draw_patient, render, to_patient
from scripts.datasets.common import DatasetError
from scripts.datasets.hardness import measure
from scripts.prepare.__main__ import main as prepare
from scripts.prepare.validate import validate

BRISC_NAME = re.compile(r"^brisc2025_(train|test)_\d{5}_(gl|me|pi|no)_(ax|co|sa)_t1$")
CODE_CLASS = {"gl": "glioma", "me": "meningioma", "pi": "pituitary", "no": "no_tumor"}


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _grey(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


@pytest.fixture(scope="module")
def brisc(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("brisc") / "set"
    brain_mri.generate(out, seed=5, n_train=40, n_test=12, size=128, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def busi(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("busi") / "set"
    ultrasound.generate(out, seed=5, n=12, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def msd(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("msd") / "set"
    brain_mri_3d.generate(out, seed=5, n=4, base_mm=4.0, workers=1, progress=False)
    return out


# ------------------------------------------------------------------ determinism and atomic output


def test_brain_set_is_a_function_of_the_seed(tmp_path):
    args = {"n_train": 6, "n_test": 4, "size": 64, "workers": 1, "progress": False}
    brain_mri.generate(tmp_path / "a", seed=1, **args)
    brain_mri.generate(tmp_path / "b", seed=1, **args)
    brain_mri.generate(tmp_path / "c", seed=2, **args)
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")
    assert _hashes(tmp_path / "a") != _hashes(tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temporary folders left


def test_ultrasound_set_is_a_function_of_the_seed(tmp_path):
    ultrasound.generate(tmp_path / "a", seed=3, n=6, workers=1, progress=False)
    ultrasound.generate(tmp_path / "b", seed=3, n=6, workers=1, progress=False)
    assert _hashes(tmp_path / "a") == _hashes(tmp_path / "b")


def test_volume_is_a_function_of_the_seed():
    a = brain_mri_3d.render_volume((9, 1), MENINGIOMA, "LPS", (6.0, 6.0, 6.0))
    b = brain_mri_3d.render_volume((9, 1), MENINGIOMA, "LPS", (6.0, 6.0, 6.0))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])


def test_an_existing_output_folder_is_kept_unless_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    with pytest.raises(DatasetError, match="not an empty folder"):
        ultrasound.generate(tmp_path / "out", n=6, workers=1, progress=False)
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep"
    ultrasound.generate(tmp_path / "out", n=6, workers=1, progress=False, overwrite=True)
    assert not (tmp_path / "out" / "mine.txt").exists() and (tmp_path / "out" / "Dataset_BUSI_with_GT").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ------------------------------------------------------------------ BRISC layout through prepare brisc


def test_brisc_layout_and_names(brisc):
    images = sorted((brisc / "classification_task").rglob("*.jpg"))
    assert len(images) == 52
    for f in images:
        split, cls = f.parts[-3], f.parts[-2]
        m = BRISC_NAME.match(f.stem)
        assert m and m.group(1) == split and CODE_CLASS[m.group(2)] == cls
        seg = brisc / "segmentation_task" / split
        assert (seg / "images" / f.name).is_file() == (cls != "no_tumor")
        assert (seg / "masks" / f"{f.stem}.png").is_file() == (cls != "no_tumor")  # no-tumour: no mask file
    image = Image.open(images[0])
    assert image.format == "JPEG" and image.mode == "RGB" and image.size == (128, 128)
    for mask_file in (brisc / "segmentation_task").rglob("*.png"):
        mask = np.asarray(Image.open(mask_file))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255} and mask.any()


def test_brisc_patients_never_straddle_splits_and_names_hide_them(brisc):
    with open(brisc / "slices.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    by_split = {s: {r["patient"] for r in rows if r["image"].startswith(f"brisc2025_{s}_")} for s in ("train", "test")}
    assert by_split["train"] and by_split["test"] and not by_split["train"] & by_split["test"]
    indices = [int(r["image"].split("_")[2]) for r in rows if r["image"].startswith("brisc2025_train_")]
    assert sorted(indices) == list(range(1, 41))  # 1..N, shuffled across patients
    first = [int(r["image"].split("_")[2]) for r in rows if r["patient"] == rows[0]["patient"]]
    assert len(first) >= 2 and max(first) - min(first) >= len(first)  # one patient's slices are not consecutive


def test_brisc_set_passes_prepare_and_validate(brisc, tmp_path, capsys):
    assert prepare(["brisc", str(brisc), "--out", str(tmp_path / "p")]) == 0
    report = json.loads((tmp_path / "p" / "prepare_report.json").read_text())
    assert not report.get("problems")
    result = validate(tmp_path / "p" / "datalist.json")
    assert result.ok, result.problems
    datalist = json.loads((tmp_path / "p" / "datalist.json").read_text())
    assert len(datalist["test"]) == 12 and len(datalist["training"]) + len(datalist["validation"]) == 40
    assert {s["class"] for s in datalist["training"]} == {0, 1, 2, 3}


# ------------------------------------------------------------------ BUSI layout through prepare busi


def test_busi_layout(busi):
    root = busi / "Dataset_BUSI_with_GT"
    counts = {c: len(list((root / c).glob("*).png"))) for c in ("benign", "malignant", "normal")}
    assert counts == {"benign": 7, "malignant": 3, "normal": 2}  # BUSI's 437 / 210 / 133 scaled
    for f in (root / "benign").glob("*.png"):
        assert re.fullmatch(r"benign \(\d+\)(_mask(_\d)?)?", f.stem)
    for f in root.rglob("*).png"):
        image = Image.open(f)
        assert image.mode == "RGB" and 400 <= image.height <= 620 and 450 <= image.width <= 700
        mask = _grey(f.with_name(f"{f.stem}_mask.png"))
        assert mask.shape == (image.height, image.width) and set(np.unique(mask)) <= {0, 255}
        assert mask.any() == (f.parent.name != "normal")
        grey = _grey(f)
        rows, cols = np.nonzero(grey > 0)  # the lesion lies inside the ultrasound field of view
        mr, mc = np.nonzero(mask)
        if mr.size:
            assert rows.min() <= mr.min() and mr.max() <= rows.max()
            assert cols.min() <= mc.min() and mc.max() <= cols.max()


def test_busi_set_passes_prepare_and_validate(busi, tmp_path):
    assert prepare(["busi", str(busi), "--out", str(tmp_path / "p")]) == 0
    assert validate(tmp_path / "p" / "datalist.json").ok


def test_second_lesions_are_merged_by_prepare(tmp_path, monkeypatch):
    monkeypatch.setattr(ultrasound, "SECOND_LESION_SHARE", 1.0)
    ultrasound.generate(tmp_path / "set", seed=2, n=6, workers=1, progress=False)
    extra = sorted((tmp_path / "set").rglob("*_mask_1.png"))
    root = tmp_path / "set" / "Dataset_BUSI_with_GT"
    lesion_images = [f for c in ("benign", "malignant") for f in (root / c).glob("*).png")]
    assert len(extra) == len(lesion_images) == 5  # every benign and malignant image
    assert prepare(["busi", str(tmp_path / "set"), "--out", str(tmp_path / "p")]) == 0
    for f in extra:
        stem = f.name[: -len("_mask_1.png")]
        union = (_grey(f) > 127) | (_grey(f.with_name(f"{stem}_mask.png")) > 127)
        merged = np.asarray(Image.open(tmp_path / "p" / "masks" / f.parent.name / f"{stem}.png"))
        assert np.array_equal(merged.astype(bool), union)


# ------------------------------------------------------------------ MSD layout through prepare msd


def test_msd_set_passes_prepare_and_validate(msd, tmp_path):
    dataset = json.loads((msd / "dataset.json").read_text())
    assert dataset["modality"] == {"0": "T1c"} and len(dataset["training"]) == 4
    with open(msd / "volumes.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["orientation"] for r in rows} == {"RAS", "LPS", "LAS", "oblique"}
    assert {r["class"] for r in rows} == set(brain_mri_3d.CLASSES)
    las = next(r for r in rows if r["orientation"] == "LAS")
    assert np.linalg.det(nib.load(msd / "imagesTr" / f"{las['case']}.nii.gz").affine[:3, :3]) < 0  # left-handed
    out = tmp_path / "p"
    assert prepare(["msd", str(msd), "--out", str(out), "--classes-csv", str(msd / "classes.csv"),
                    "--class-names", ",".join(brain_mri_3d.CLASSES)]) == 0
    assert validate(out / "datalist.json").ok


def _resample(moving: np.ndarray, moving_affine: np.ndarray, fixed_shape: tuple, fixed_affine: np.ndarray,
              order: int) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in fixed_shape], indexing="ij"), -1).reshape(-1, 3)
    world = ijk @ fixed_affine[:3, :3].T + fixed_affine[:3, 3]
    src = (world - moving_affine[:3, 3]) @ np.linalg.inv(moving_affine[:3, :3]).T
    return ndimage.map_coordinates(moving, src.T, order=order, cval=np.nan).reshape(fixed_shape)


@pytest.mark.parametrize(("orientation", "spacing"), [("LPS", (3.0, 3.0, 3.0)), ("LAS", (2.7, 2.7, 9.0)),
                                                      ("oblique", (3.0, 3.0, 3.0))])
def test_storings_of_one_patient_agree_in_physical_space(orientation, spacing):
    """The same patient stored RAS 3 mm and another way: resampled onto the RAS grid they coincide."""
    seed = (11, 4)
    ref, ref_mask, ref_affine, _ = brain_mri_3d.render_volume(seed, MENINGIOMA, "RAS", (3.0, 3.0, 3.0), scanner=False)
    vol, mask, affine, _ = brain_mri_3d.render_volume(seed, MENINGIOMA, orientation, spacing, scanner=False)
    assert not np.allclose(affine, ref_affine)
    moved = _resample(vol, affine, ref.shape, ref_affine, 1)
    moved_mask = _resample(mask.astype(np.float32), affine, ref.shape, ref_affine, 1) > 0.5
    both = ~np.isnan(moved)
    assert both.mean() > 0.8
    corr = np.corrcoef(moved[both], ref[both])[0, 1]
    dice = 2 * (moved_mask & ref_mask.astype(bool)).sum() / (moved_mask.sum() + ref_mask.sum())
    assert corr > (0.8 if spacing[2] > 3 else 0.9) and dice > (0.75 if spacing[2] > 3 else 0.85), (corr, dice)


# ------------------------------------------------------------------ anatomy and lesion rules


def _around_lesion(patient, atlas, half_mm: float = 40.0, step: float = 1.5):
    """Render a cube of patient points around the lesion, with details (template points, envelope distance)."""
    centre = to_patient(patient, patient.lesion.centre)
    axis = np.arange(-half_mm, half_mm + 1e-3, step, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1) + centre
    _, mask, info = render(patient, atlas, grid, details=True)
    return mask, info


@pytest.mark.parametrize("kind", [GLIOMA, MENINGIOMA, PITUITARY])
def test_lesions_grow_where_their_kind_grows(kind):
    atlas = load_atlas()
    for k in range(8):
        patient = draw_patient(np.random.default_rng([kind, k, 77]), kind, atlas)
        lesion = patient.lesion
        mask, info = _around_lesion(patient, atlas, half_mm=min(45.0, 2.2 * lesion.radius + 8))
        assert mask.any()
        q, sd = info["q"][mask], info["sd"][mask]
        if kind != PITUITARY:  # inside the skull (the sella lies below the brain, in the skull base)
            assert (sd < patient.shells.csf + 0.5).all()
        if kind == GLIOMA:  # intra-axial, centred in white matter
            assert atlas.brain(lesion.centre[None])[1][0] > 0.5 and (sd < -0.9).all()
        elif kind == MENINGIOMA:  # extra-axial: reaches the dura (convexity or base) or the falx
            assert np.abs(sd - patient.shells.csf).min() < 2.0 or np.abs(q[:, 0]).min() < 2.0
        else:  # in the sella: low, on the midline
            assert abs(lesion.centre[0]) < 3.5 and np.linalg.norm(lesion.centre - SELLA) < 12
            assert abs(q[:, 0].mean()) < 5 and q[:, 2].mean() < SELLA[2] + 20


def test_healthy_patients_have_no_tumour():
    atlas = load_atlas()
    patient = draw_patient(np.random.default_rng(3), NO_TUMOR, atlas)
    axis = np.arange(-90, 90, 6.0, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1) + to_patient(patient, np.float32([0, -12, 2]))
    image, mask = render(patient, atlas, grid)
    assert patient.lesion is None and not mask.any() and image.max() > 0.5


# ------------------------------------------------------------------ hardness


@pytest.fixture(scope="module")
def brisc_hardness(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("brisc_hard")
    brain_mri.generate(root / "set", seed=21, n_train=120, n_test=48, size=128, workers=1, progress=False)
    assert prepare(["brisc", str(root / "set"), "--out", str(root / "p"), "--no-duplicate-check"]) == 0
    return measure(root / "p" / "datalist.json")


def test_brain_threshold_segmentation_fails(brisc_hardness):
    print(f"\nbrain-mri baselines: {brisc_hardness}")
    assert max(brisc_hardness["threshold_dice"].values()) < 0.3


def test_brain_diagnosis_needs_the_image(brisc_hardness):
    assert brisc_hardness["majority_balanced_accuracy"] == pytest.approx(0.25)
    assert brisc_hardness["majority_accuracy"] < 0.35 and brisc_hardness["prior_accuracy"] < 0.3
    assert brisc_hardness["global_stats_balanced_accuracy"] < 0.5  # no global-statistics shortcut


def test_ultrasound_baselines_fail(tmp_path):
    ultrasound.generate(tmp_path / "set", seed=21, n=36, workers=1, progress=False)
    assert prepare(["busi", str(tmp_path / "set"), "--out", str(tmp_path / "p"), "--no-duplicate-check",
                    "--test-fraction", "0.3"]) == 0
    scores = measure(tmp_path / "p" / "datalist.json")
    print(f"\nultrasound baselines: {scores}")
    assert max(scores["threshold_dice"].values()) < 0.35
    assert scores["majority_balanced_accuracy"] == pytest.approx(1 / 3)
    assert scores["global_stats_balanced_accuracy"] < 0.6
