"""The built-in synthetic dataset: determinism, caching, splits, partial labels and hardness."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from scripts.datasets import synthetic
from scripts.datasets.synthetic import CLASSES, GLIOMA, MENINGIOMA, NO_TUMOR, PITUITARY, ensure_dataset, make_slice, make_volume
from scripts.core.transforms import normalize_intensity

SMALL = {"n_train": 40, "n_val": 12, "n_test": 12, "size": 48}
SPLITS = ("training", "validation", "test")


def _read(datalist_path: Path) -> dict:
    return json.loads(datalist_path.read_text())


def _file_hashes(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256), lock file excluded."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".synthetic.lock"}


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    return ensure_dataset(tmp_path_factory.mktemp("small"), seed=3, **SMALL)


# ------------------------------------------------------------------ make_slice / make_volume


@pytest.mark.parametrize("label", range(len(CLASSES)))
def test_make_slice_shapes_and_mask(label):
    image, mask = make_slice(np.random.default_rng(label), label, size=64)
    assert image.shape == mask.shape == (64, 64)
    assert image.dtype == np.float32 and mask.dtype == np.uint8
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert set(np.unique(mask)) <= {0, 1}
    assert mask.any() == (label != NO_TUMOR)


def test_make_slice_is_a_function_of_the_rng_state():
    a = make_slice(np.random.default_rng(11), None, 48)
    b = make_slice(np.random.default_rng(11), None, 48)
    c = make_slice(np.random.default_rng(12), None, 48)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize(("label", "size", "match"), [(4, 64, "class index"), (-1, 64, "class index"),
                                                      ("glioma", 64, "class index"), (0, 8, "at least 16")])
def test_make_slice_rejects_bad_arguments(label, size, match):
    with pytest.raises(ValueError, match=match):
        make_slice(np.random.default_rng(0), label, size)


@pytest.mark.parametrize("label", [GLIOMA, MENINGIOMA, PITUITARY])
def test_make_volume_tumor_spans_several_slices(label):
    vol, mask = make_volume(7, label, shape=(48, 48, 24), spacing=(2.0, 2.0, 2.0))
    assert vol.shape == mask.shape == (48, 48, 24)
    assert vol.dtype == np.float32 and mask.dtype == np.uint8
    assert mask.any(axis=(0, 1)).sum() >= 3  # a 3D lesion, not one painted slice
    again = make_volume(7, label, shape=(48, 48, 24), spacing=(2.0, 2.0, 2.0))
    assert np.array_equal(vol, again[0]) and np.array_equal(mask, again[1])


def test_make_volume_without_tumor_has_empty_mask():
    vol, mask = make_volume(1, NO_TUMOR, shape=(32, 32, 8), spacing=(4.0, 4.0, 8.0))
    assert not mask.any() and vol.max() > 0.5  # a head is there


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"label": 9}, "class index"),
    ({"shape": (8, 32, 16)}, "shape must be"),
    ({"shape": (32, 32)}, "shape must be"),
    ({"spacing": (1.0, 0.0, 1.0)}, "spacing must be"),
])
def test_make_volume_rejects_bad_arguments(kwargs, match):
    args = {"seed": 0, "label": 0, "shape": (32, 32, 8), "spacing": (1.0, 1.0, 3.0)} | kwargs
    with pytest.raises(ValueError, match=match):
        make_volume(**args)


def test_volume_affine_stores_lps_axes():
    np.testing.assert_array_equal(synthetic.volume_affine((1.5, 2.0, 5.0)), np.diag([-1.5, -2.0, 5.0, 1.0]))
    with pytest.raises(ValueError, match=r"spacing must be three positive sizes in mm, got \(1\.0, -2\.0, 3\.0\)"):
        synthetic.volume_affine((1.0, -2.0, 3.0))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_volume_shown_by_a_viewer_is_oriented_like_the_2d_images(seed, tmp_path):
    """Through the real reader and the display rule: X = columns, Y = rows, anterior at the top."""
    from scripts.inference.orientation import display_view
    from scripts.inference.readers import read_study

    spacing = (3.0, 3.0, 6.0)
    vol, mask = make_volume(seed, PITUITARY, shape=(64, 48, 16), spacing=spacing)  # X != Y: a transpose shows
    nib.save(nib.Nifti1Image(mask, synthetic.volume_affine(spacing)), tmp_path / "m.nii.gz")
    study = read_study(tmp_path / "m.nii.gz")
    shown = display_view(study.geometry.direction, 2).to_slices(study.image)[0]  # (N, rows, cols)
    assert shown.shape == (16, 48, 64)
    np.testing.assert_array_equal(shown, np.moveaxis(mask, -1, 0).transpose(0, 2, 1))  # slice k shown = mask[:, :, k].T
    _, rows, cols = np.nonzero(shown)
    _, mask2d = make_slice(np.random.default_rng(seed), PITUITARY, 64)
    rows2d, cols2d = np.nonzero(mask2d)
    # the pituitary sits on the midline in the lower part of every synthetic 2D image: so in the volume
    assert rows2d.mean() / 64 > 0.55 and rows.mean() / 48 > 0.58
    assert 0.35 < cols2d.mean() / 64 < 0.65 and 0.35 < cols.mean() / 64 < 0.65


# ------------------------------------------------------------------ ensure_dataset: contract, cache


def test_datalist_follows_the_contract(small):
    datalist = _read(small)
    assert small.name == "datalist.json"
    assert datalist["spatial_dims"] == 2 and datalist["channels"] == ["T1c"]
    assert datalist["segments"] == ["background", "tumor"] and datalist["classes"] == CLASSES
    assert [len(datalist[s]) for s in SPLITS] == [SMALL["n_train"], SMALL["n_val"], SMALL["n_test"]]
    for sample in (s for split in SPLITS for s in datalist[split]):
        assert set(sample) <= {"image", "label", "class", "group"} and sample["group"].startswith("patient-")
        for key in ("image", "label"):
            if key in sample:
                assert not Path(sample[key]).is_absolute() and (small.parent / sample[key]).is_file()
        image = _png(small.parent / sample["image"])
        assert image.dtype == np.uint8 and image.shape == (SMALL["size"],) * 2
        if "label" in sample:
            mask = _png(small.parent / sample["label"])
            assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
            if "class" in sample:  # the mask agrees with the diagnosis
                assert mask.any() == (sample["class"] != NO_TUMOR)


def test_groups_never_cross_splits_and_hold_several_slices(small):
    datalist = _read(small)
    groups = {split: {s["group"] for s in datalist[split]} for split in SPLITS}
    for a, b in [("training", "validation"), ("training", "test"), ("validation", "test")]:
        assert not groups[a] & groups[b]
    sizes = Counter(s["group"] for s in datalist["training"])
    assert max(sizes.values()) == synthetic.SLICES_PER_PATIENT
    for group in sizes:  # one patient, one diagnosis
        assert len({s.get("class") for s in datalist["training"] if s["group"] == group} - {None}) == 1


def test_same_seed_gives_identical_bytes_other_seed_differs(small, tmp_path):
    again = ensure_dataset(tmp_path / "again", seed=3, **SMALL)
    assert _file_hashes(again.parent) == _file_hashes(small.parent)
    other = ensure_dataset(tmp_path / "other", seed=4, **SMALL)
    pairs = zip(_read(other)["training"], _read(again)["training"])
    assert any(not np.array_equal(_png(other.parent / a["image"]), _png(again.parent / b["image"])) for a, b in pairs)


def test_cache_is_reused_while_parameters_match(tmp_path):
    path = ensure_dataset(tmp_path, seed=1, **SMALL)
    stamp = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.png")}
    assert ensure_dataset(tmp_path, seed=1, **SMALL) == path
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.png")} == stamp
    assert _read(path)["synthetic"]["seed"] == 1 and _read(path)["synthetic"]["n_train"] == SMALL["n_train"]


def test_changed_parameter_regenerates_and_removes_the_old_files(tmp_path):
    first = _read(ensure_dataset(tmp_path, seed=1, **SMALL))
    old_dir = tmp_path / Path(first["training"][0]["image"]).parts[0]
    second = _read(ensure_dataset(tmp_path, seed=1, **(SMALL | {"n_train": 20})))
    assert len(second["training"]) == 20 and second["synthetic"]["n_train"] == 20
    assert not old_dir.exists()
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [Path(second["training"][0]["image"]).parts[0]]


@pytest.mark.parametrize("damage", ["delete_image", "delete_mask"])
def test_dataset_with_missing_files_is_rebuilt(tmp_path, damage):
    path = ensure_dataset(tmp_path, seed=2, **SMALL)
    before = _file_hashes(tmp_path)
    key = "image" if damage == "delete_image" else "label"
    (tmp_path / next(s[key] for s in _read(path)["test"] if key in s)).unlink()
    assert ensure_dataset(tmp_path, seed=2, **SMALL) == path
    assert _file_hashes(tmp_path) == before


@pytest.mark.parametrize("content", ['{"name": "my BRISC", "training": []}', "{ not json"])
def test_a_datalist_not_made_here_is_never_overwritten(tmp_path, content):
    (tmp_path / "datalist.json").write_text(content)
    with pytest.raises(ValueError, match="is not a synthetic datalist"):
        ensure_dataset(tmp_path, **SMALL)
    assert (tmp_path / "datalist.json").read_text() == content
    assert not list(tmp_path.glob("synthetic_*")) and not list(tmp_path.glob(".synthetic_tmp_*"))


def test_volumes_in_3d(tmp_path):
    path = ensure_dataset(tmp_path, seed=0, n_train=4, n_val=1, n_test=2, size=32, spatial_dims=3)
    datalist = _read(path)
    assert datalist["spatial_dims"] == 3 and [len(datalist[s]) for s in SPLITS] == [4, 1, 2]
    sample = next(s for s in datalist["training"] if "label" in s and s.get("class", NO_TUMOR) != NO_TUMOR)
    image = nib.load(tmp_path / sample["image"])
    mask = np.asarray(nib.load(tmp_path / sample["label"]).dataobj)
    assert image.shape == mask.shape == (32, 32, 16)
    assert np.allclose(image.header.get_zooms(), synthetic.VOLUME_SPACING)
    np.testing.assert_array_equal(image.affine, synthetic.volume_affine(synthetic.VOLUME_SPACING))
    np.testing.assert_array_equal(nib.load(tmp_path / sample["label"]).affine, image.affine)  # the set agrees with itself
    assert mask.any(axis=(0, 1)).sum() >= 2
    before = _file_hashes(tmp_path)
    again = ensure_dataset(tmp_path / "again", seed=0, n_train=4, n_val=1, n_test=2, size=32, spatial_dims=3)
    assert _file_hashes(again.parent) == before


@pytest.mark.parametrize(("kwargs", "match"), [({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
                                               ({"n_train": 0}, "n_train >= 1"), ({"n_val": -1}, "n_val, n_test >= 0"),
                                               ({"size": 8}, "too small")])
def test_ensure_dataset_rejects_bad_parameters(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ensure_dataset(tmp_path, **kwargs)
    assert not list(tmp_path.glob("synthetic_*")) and not (tmp_path / "datalist.json").exists()


# ------------------------------------------------------------------ partial labels and balance


def test_partial_labels_like_real_data(small):
    samples = [s for split in SPLITS for s in _read(small)[split]]
    # classes are known for every sample that lost its mask (no sample is left without a task)
    assert all("label" in s or "class" in s for s in samples)
    tumor = [s for s in samples if s.get("class", NO_TUMOR) != NO_TUMOR]
    normal = [s for s in samples if s.get("class") == NO_TUMOR]
    no_mask = sum("label" not in s for s in tumor) / len(tumor)
    assert 0.05 <= no_mask <= 0.15
    assert any("label" in s for s in normal) and any("label" not in s for s in normal)  # BRISC style
    for s in normal:
        if "label" in s:
            assert not _png(small.parent / s["label"]).any()
    no_class = sum("class" not in s for s in samples) / len(samples)
    assert 0.02 <= no_class <= 0.08


def test_classes_are_balanced_by_patient(small):
    for split in SPLITS:
        per_patient = {s["group"]: s["class"] for s in _read(small)[split] if "class" in s}
        counts = [Counter(per_patient.values())[c] for c in range(len(CLASSES))]
        assert max(counts) - min(counts) <= 1, (split, counts)


# ------------------------------------------------------------------ hardness and learnability


@pytest.fixture(scope="module")
def realistic(tmp_path_factory) -> Path:
    """Default image size and seed, fewer samples: the data the demo trains on, scaled down."""
    return ensure_dataset(tmp_path_factory.mktemp("realistic"), seed=0, n_train=200, n_val=0, n_test=120)


def _lesions(datalist_path: Path, split: str) -> list[tuple[np.ndarray, np.ndarray, int | None]]:
    out = []
    for s in _read(datalist_path)[split]:
        if "label" in s:
            mask = _png(datalist_path.parent / s["label"]).astype(bool)
            if mask.any():
                out.append((_png(datalist_path.parent / s["image"]), mask, s.get("class")))
    return out


def _mean_threshold_dice(lesions, threshold: float) -> float:
    dices = [2 * (m & (im > threshold)).sum() / (m.sum() + (im > threshold).sum() + 1e-9) for im, m, _ in lesions]
    return float(np.mean(dices))


def test_a_classifier_ignoring_the_image_stays_at_chance(realistic):
    datalist = _read(realistic)
    train = Counter(s["class"] for s in datalist["training"] if "class" in s)
    test = [s["class"] for s in datalist["test"] if "class" in s]
    majority = train.most_common(1)[0][0]
    majority_acc = float(np.mean([c == majority for c in test]))
    prior = {c: n / sum(train.values()) for c, n in train.items()}  # guessing by the training prior
    prior_acc = float(sum(prior.get(c, 0.0) for c in test) / len(test))
    print(f"\nimage-blind baselines on the test split: majority {majority_acc:.3f}, prior {prior_acc:.3f}")
    assert majority_acc <= 0.35 and prior_acc <= 0.35


def test_a_global_intensity_threshold_cannot_segment(realistic):
    train, test = _lesions(realistic, "training"), _lesions(realistic, "test")
    assert len(train) > 50 and len(test) > 30
    scores = {}
    for name, prep in {"raw 8-bit": lambda a: a.astype(np.float32),
                       "normalised": lambda a: normalize_intensity(a[None].astype(np.float32))[0] * 255}.items():
        tr = [(prep(im), m, c) for im, m, c in train]
        te = [(prep(im), m, c) for im, m, c in test]
        best = max(range(0, 256, 2), key=lambda t: _mean_threshold_dice(tr, t))
        scores[name] = _mean_threshold_dice(te, best)
        print(f"\nbest global threshold ({name}) {best}: test lesion Dice {scores[name]:.3f}")
    assert max(scores.values()) < 0.5


def test_tumor_types_have_their_location_and_size(realistic):
    lesions = _lesions(realistic, "training") + _lesions(realistic, "test")
    size = _png(realistic.parent / _read(realistic)["test"][0]["image"]).shape[0]
    offset, area = {}, {}
    for kind in (GLIOMA, MENINGIOMA, PITUITARY):
        masks = [m for _, m, c in lesions if c == kind]
        cols = [np.nonzero(m)[1].mean() for m in masks]
        offset[kind] = float(np.median(np.abs(np.asarray(cols) - size / 2)))  # distance from the midline
        area[kind] = float(np.median([m.sum() for m in masks]))
    assert offset[PITUITARY] < 0.1 * size and offset[PITUITARY] < 0.5 * offset[GLIOMA]
    assert area[PITUITARY] < area[GLIOMA] and area[PITUITARY] < area[MENINGIOMA]
    # a meningioma sits on the skull: its mask reaches further from the head centre than a glioma's
    reach = {k: float(np.median([np.hypot(*(np.argwhere(m) - size / 2).T).max() for _, m, c in lesions if c == k]))
             for k in (GLIOMA, MENINGIOMA)}
    assert reach[MENINGIOMA] > reach[GLIOMA]


def test_head_model_rejects_an_unknown_class():
    from scripts.datasets.synthetic_anatomy import draw_patient  # the renderer behind make_slice / make_volume

    with pytest.raises(ValueError, match="no head model for class index 5"):
        draw_patient(np.random.default_rng(0), 5)
