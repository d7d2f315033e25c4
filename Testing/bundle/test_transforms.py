"""Transforms: loading conventions, partial labels, mask values, channels, chains and augmentation alignment."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, get_track_meta, set_track_meta
from PIL import Image

from scripts.core.tasks import MISSING_CLASS, Keys, tumor_free_index
from scripts.core.transforms import (
    LABEL_SOURCE,
    LesionFreePatchClassd,
    MapMaskValuesd,
    MatchChannelsd,
    PartialLabelsd,
    PercentileNormalized,
    augmentations,
    map_mask_values,
    normalize_intensity,
    train_transforms,
    val_transforms,
)

IMAGE, LABEL, CLASS = Keys.IMAGE.value, Keys.LABEL.value, Keys.CLASS.value
HAS_SEG, HAS_CLS = Keys.HAS_SEG.value, Keys.HAS_CLS.value
NO_AUGMENT = {"p_flip": 0.0, "p_rot90": 0.0, "p_affine": 0.0, "p_elastic": 0.0, "p_intensity": 0.0,
              "p_gamma": 0.0, "p_noise": 0.0}


@pytest.fixture(autouse=True)
def _restore_track_meta():
    before = get_track_meta()
    yield
    set_track_meta(before)


def _blob_mask(shape: tuple[int, ...]) -> np.ndarray:
    """An asymmetric L-shaped lesion, so every flip / rotation / shift changes where it is."""
    mask = np.zeros(shape, dtype=np.uint8)
    h, w = shape[:2]
    mask[h // 5: h // 2, w // 6: w // 3] = 1
    mask[h // 5: h // 3, w // 3: 2 * w // 3] = 1
    return mask


def _write_png(path: Path, array: np.ndarray) -> str:
    Image.fromarray(array).save(path)
    return str(path)


def _write_nii(path: Path, array: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(array, np.diag([1.0, 1.0, 2.0, 1.0])), path)
    return str(path)


def _sample_2d(tmp_path: Path, channels: int, size: int = 40, mask_scale: int = 255) -> dict:
    """A PNG whose bright region IS the mask (stored 0/``mask_scale``)."""
    mask = _blob_mask((size, size))
    grey = (40 + 160 * mask + np.linspace(0, 40, size)[None, :]).astype(np.uint8)  # a ramp: gamma has an effect
    image = grey if channels == 1 else np.stack([grey] * channels, axis=-1)
    return {IMAGE: _write_png(tmp_path / f"img{channels}.png", image),
            LABEL: _write_png(tmp_path / "mask.png", (mask * mask_scale).astype(np.uint8)), CLASS: 1, "group": "p1"}


def _sample_3d(tmp_path: Path, channels: int, shape=(24, 28, 12)) -> dict:
    mask = np.repeat(_blob_mask(shape[:2])[:, :, None], shape[2], axis=2)
    mask[:, :, : shape[2] // 4] = 0
    files = [_write_nii(tmp_path / f"ch{c}.nii.gz", (100 + 500 * mask.astype(np.int16) + 10 * c).astype(np.int16))
             for c in range(channels)]
    return {IMAGE: files if channels > 1 else files[0], LABEL: _write_nii(tmp_path / "seg.nii.gz", mask), CLASS: 2}


def _dice(image: torch.Tensor, label: torch.Tensor) -> float:
    bright = image.mean(0) > 0.5 * (image.max() + image.min())
    lesion = label[0] > 0
    return float(2 * (bright & lesion).sum() / (bright.sum() + lesion.sum()))


# ------------------------------------------------------------------ shapes and types


@pytest.mark.parametrize(("stored", "in_channels"), [(1, 1), (3, 3), (1, 3), (3, 1), (4, 1), (4, 3)])
@pytest.mark.parametrize("train", [True, False])
def test_2d_chain_shapes_and_types(tmp_path, stored, in_channels, train):
    sample = _sample_2d(tmp_path, stored)
    chain = train_transforms(2, (32, 32), in_channels, 2) if train else val_transforms(2, (32, 32), in_channels, 2)
    out = chain(sample)
    assert out[IMAGE].shape == (in_channels, 32, 32) and out[IMAGE].dtype == torch.float32
    assert out[LABEL].shape == (1, 32, 32) and out[LABEL].dtype == torch.uint8
    assert out[CLASS].dtype == torch.int64 and int(out[CLASS]) == 1
    assert out[HAS_SEG].dtype == out[HAS_CLS].dtype == torch.float32
    assert float(out[HAS_SEG]) == float(out[HAS_CLS]) == 1.0


@pytest.mark.parametrize("channels", [1, 4])
def test_3d_chains_crop_for_training_and_keep_the_volume_for_validation(tmp_path, channels):
    sample = _sample_3d(tmp_path, channels)
    train = train_transforms(3, (16, 16, 8), channels, 2)(sample)
    assert isinstance(train, list) and len(train) == 1  # RandCropByPosNegLabeld: a list of one patch
    assert train[0][IMAGE].shape == (channels, 16, 16, 8) and train[0][LABEL].shape == (1, 16, 16, 8)
    val = val_transforms(3, (16, 16, 8), channels, 2)(sample)
    assert val[IMAGE].shape == (channels, 24, 28, 12) and val[LABEL].shape == (1, 24, 28, 12)
    assert val[IMAGE].dtype == torch.float32 and val[LABEL].dtype == torch.uint8


def test_3d_training_pads_a_small_volume_to_the_patch(tmp_path):
    out = train_transforms(3, (32, 32, 16), 1, 2, augment=False)(_sample_3d(tmp_path, 1))
    assert out[0][IMAGE].shape == (1, 32, 32, 16)


def test_raster_images_are_rows_first_and_values_normalised(tmp_path):
    image = np.zeros((30, 40), dtype=np.uint8)
    image[3:6, 25:29] = 255  # rows 3-5, columns 25-28 (a single pixel would fall above the 99.5th percentile)
    mask = np.zeros_like(image)
    out = val_transforms(2, (30, 40), 1, 2)({IMAGE: _write_png(tmp_path / "a.png", image),
                                              LABEL: _write_png(tmp_path / "m.png", mask)})
    assert out[IMAGE].shape == (1, 30, 40)
    assert tuple(torch.nonzero(out[IMAGE][0] == out[IMAGE].max())[0].tolist()) == (3, 25)
    assert float(out[IMAGE].min()) >= 0.0 and float(out[IMAGE].max()) <= 1.0


def test_list_of_files_loads_as_channels_in_list_order(tmp_path):
    shape = (12, 12, 6)
    files = []
    for c in range(3):  # channel c is bright only in the c-th corner block
        vol = np.zeros(shape, dtype=np.float32)
        vol[4 * c: 4 * c + 4, :4, :] = 1000.0
        files.append(_write_nii(tmp_path / f"seq{c}.nii.gz", vol))
    out = val_transforms(3, shape, 3, 2)({IMAGE: files, CLASS: 0})
    assert out[IMAGE].shape == (3, *shape)
    for c in range(3):
        assert float(out[IMAGE][c, 4 * c: 4 * c + 4, :4].mean()) == pytest.approx(1.0)
        assert float(out[IMAGE][c].sum()) == pytest.approx(4 * 4 * 6)


# ------------------------------------------------------------------ partial labels


@pytest.mark.parametrize(("drop", "has_seg", "has_cls"), [((), 1.0, 1.0), ((LABEL,), 0.0, 1.0), ((CLASS,), 1.0, 0.0)])
def test_partial_labels_are_filled_and_flagged(tmp_path, drop, has_seg, has_cls):
    sample = {k: v for k, v in _sample_2d(tmp_path, 1).items() if k not in drop}
    out = train_transforms(2, (24, 24), 1, 2, **NO_AUGMENT)(sample)
    assert float(out[HAS_SEG]) == has_seg and float(out[HAS_CLS]) == has_cls
    assert out[LABEL].shape == (1, 24, 24) and out[LABEL].dtype == torch.uint8
    assert bool(out[LABEL].any()) == bool(has_seg)
    assert int(out[CLASS]) == (1 if has_cls else MISSING_CLASS)


def test_partial_label_samples_collate_with_full_ones(tmp_path):
    full = _sample_2d(tmp_path, 1)
    samples = [full, {IMAGE: full[IMAGE], CLASS: 0}, {IMAGE: full[IMAGE], LABEL: full[LABEL]}]
    dataset = CacheDataset(samples, val_transforms(2, (24, 24), 1, 2), progress=False)
    batch = next(iter(DataLoader(dataset, batch_size=3)))
    assert batch[HAS_SEG].tolist() == [1.0, 0.0, 1.0] and batch[HAS_CLS].tolist() == [1.0, 1.0, 0.0]
    assert batch[CLASS].tolist() == [1, 0, MISSING_CLASS] and batch["group"] == ["p1", "", ""]


def test_partial_labels_reject_a_mask_of_another_shape():
    d = {IMAGE: torch.zeros(1, 8, 8), LABEL: torch.zeros(1, 8, 9), LABEL_SOURCE: "m/case7.png", CLASS: 0}
    with pytest.raises(ValueError, match=r"m/case7.png: mask shape \(8, 9\) differs"):
        PartialLabelsd()(d)


@pytest.mark.parametrize("cls", ["glioma", 1.5, -3])
def test_partial_labels_reject_a_class_that_is_not_an_index(cls):
    with pytest.raises(ValueError, match="is not a class index"):
        PartialLabelsd()({IMAGE: torch.zeros(1, 4, 4), "image_source": "x.png", CLASS: cls})


# ------------------------------------------------------------------ mask values and channels


@pytest.mark.parametrize(("values", "segments", "expected"), [
    ([0, 255], 2, [0, 1]), ([0, 1], 2, [0, 1]), ([0, 7], 2, [0, 1]),
    ([0, 1, 2], 3, [0, 1, 2]), ([0, 255], 3, [0, 1]),
])
def test_mask_values_become_segment_indices(values, segments, expected):
    mask = np.array(values, dtype=np.float32).reshape(1, 1, -1)
    out = map_mask_values(mask, segments)
    assert out.dtype == np.uint8 and out.reshape(-1).tolist() == expected


@pytest.mark.parametrize("channels", [3, 4])
def test_identical_mask_channels_are_reduced_to_one(tmp_path, channels):
    sample = _sample_2d(tmp_path, 1)
    mask = np.asarray(Image.open(sample[LABEL]))
    stored = np.stack([mask] * 3 + [np.full_like(mask, 255)] * (channels - 3), axis=-1)  # RGB or RGBA
    sample[LABEL] = _write_png(tmp_path / "rgbmask.png", stored)
    out = val_transforms(2, (40, 40), 1, 2)(sample)
    assert out[LABEL].shape == (1, 40, 40) and np.array_equal(out[LABEL][0].numpy(), (mask > 0).astype(np.uint8))


def test_mask_value_out_of_range_names_file_and_value():
    d = {LABEL: torch.tensor([[[0.0, 1.0, 3.0]]]), LABEL_SOURCE: "labelsTr/case_001.nii.gz"}
    with pytest.raises(ValueError, match=r"labelsTr/case_001.nii.gz: mask value 3 is outside .* 0..2"):
        MapMaskValuesd(3)(d)


def test_mask_with_differing_channels_raises():
    mask = np.zeros((3, 2, 2), dtype=np.uint8)
    mask[1, 0, 0] = 1
    with pytest.raises(ValueError, match="seg.png: mask has 3 channels that differ"):
        map_mask_values(mask, 2, "seg.png")


def test_out_of_range_mask_fails_the_chain_naming_the_file(tmp_path):
    sample = _sample_2d(tmp_path, 1, mask_scale=4)  # values 0/4 with 3 segments
    with pytest.raises(RuntimeError) as err:
        val_transforms(2, (40, 40), 1, 3)(sample)
    assert isinstance(err.value.__cause__, ValueError) and "mask.png: mask value 4" in str(err.value.__cause__)


def test_channel_count_that_cannot_be_matched_names_the_file():
    d = {IMAGE: torch.zeros(2, 4, 4), "image_source": "case9_t1.nii.gz, case9_t2.nii.gz"}
    with pytest.raises(ValueError, match="case9_t1.nii.gz, case9_t2.nii.gz: has 2 channel"):
        MatchChannelsd(3)(d)


def test_percentile_normalisation_dict_wrapper():
    image = torch.arange(200, dtype=torch.float32).reshape(2, 10, 10) * torch.tensor([1.0, 50.0]).view(2, 1, 1)
    out = PercentileNormalized()({IMAGE: image})[IMAGE]
    assert out.dtype == torch.float32 and out.shape == image.shape
    for c in range(2):
        assert float(out[c].min()) == 0.0 and float(out[c].max()) == 1.0


@pytest.mark.parametrize("layout", ["C", "F", "flipped", "tensor"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.float64])
def test_percentile_normalisation_is_the_one_line_formula_in_any_memory_order(layout, dtype):
    """Slab-wise float64 work gives the bits of ``clip((x - p0.5) / (p99.5 - p0.5), 0, 1)`` as NumPy
    computes it for float32 x and float64 percentiles, whatever the layout; a constant channel is 0."""
    rng = np.random.default_rng(7)
    base = (rng.normal(100, 40, (3, 61, 47, 23)) * (1 if dtype != np.int16 else 10)).astype(dtype)
    base[2] = 5  # constant
    image = {"C": base, "F": np.moveaxis(np.asfortranarray(np.moveaxis(base, 0, -1)), -1, 0),
             "flipped": np.ascontiguousarray(base[:, :, ::-1])[:, :, ::-1], "tensor": torch.from_numpy(base)}[layout]
    out = normalize_intensity(image)
    assert isinstance(out, torch.Tensor) == (layout == "tensor")
    out = np.asarray(out)
    for c in range(2):
        x = base[c].astype(np.float32)
        lo, hi = np.percentile(x, [0.5, 99.5])
        np.testing.assert_array_equal(out[c], np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32))
    assert out.dtype == np.float32 and not out[2].any()


# ------------------------------------------------------------------ augmentation alignment


SPATIAL = ["p_flip", "p_rot90", "p_affine", "p_elastic"]
INTENSITY = ["p_intensity", "p_gamma", "p_noise"]


@pytest.mark.parametrize("knob", SPATIAL + ["all"])
def test_2d_spatial_augmentations_move_image_and_mask_together(tmp_path, knob):
    sample = _sample_2d(tmp_path, 1, size=48)
    probs = {k: 1.0 for k in NO_AUGMENT} if knob == "all" else NO_AUGMENT | {knob: 1.0}
    chain = train_transforms(2, (48, 48), 1, 2, **probs)
    reference = val_transforms(2, (48, 48), 1, 2)(sample)[LABEL]
    moved = 0
    for seed in range(4):
        chain.set_random_state(seed)
        out = chain(sample)
        assert out[LABEL].dtype == torch.uint8 and set(out[LABEL].unique().tolist()) <= {0, 1}
        assert _dice(out[IMAGE], out[LABEL]) > 0.85, (knob, seed)
        moved += not torch.equal(out[LABEL], reference)
    assert moved >= 2  # the knob really moves things


@pytest.mark.parametrize("knob", SPATIAL)
def test_3d_spatial_augmentations_move_image_and_mask_together(tmp_path, knob):
    sample = _sample_3d(tmp_path, 2)
    chain = train_transforms(3, (24, 28, 12), 2, 2, **(NO_AUGMENT | {knob: 1.0}))
    for seed in range(2):
        chain.set_random_state(seed)
        out = chain(sample)[0]
        assert _dice(out[IMAGE], out[LABEL]) > 0.85, (knob, seed)


@pytest.mark.parametrize("knob", INTENSITY)
def test_intensity_augmentations_change_only_the_image(tmp_path, knob):
    sample = _sample_2d(tmp_path, 1)
    plain = train_transforms(2, (40, 40), 1, 2, **NO_AUGMENT)(sample)
    chain = train_transforms(2, (40, 40), 1, 2, **(NO_AUGMENT | {knob: 1.0}))
    chain.set_random_state(1)
    out = chain(sample)
    assert torch.equal(out[LABEL], plain[LABEL])
    assert not torch.allclose(out[IMAGE], plain[IMAGE])
    assert _dice(out[IMAGE], out[LABEL]) > 0.85


def test_augment_false_is_deterministic(tmp_path):
    sample = _sample_2d(tmp_path, 1)
    a = train_transforms(2, (40, 40), 1, 2, augment=False)(sample)
    b = val_transforms(2, (40, 40), 1, 2)(sample)
    assert torch.equal(a[IMAGE], b[IMAGE]) and torch.equal(a[LABEL], b[LABEL])


# ------------------------------------------------------------------ fast-training recipe


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_chains_run_in_cache_dataset_without_metadata(tmp_path, spatial_dims):
    set_track_meta(False)
    if spatial_dims == 2:
        samples, size = [_sample_2d(tmp_path, 3)] * 4, (32, 32)
    else:
        samples, size = [_sample_3d(tmp_path, 1)] * 4, (16, 16, 8)
    dataset = CacheDataset(samples, train_transforms(spatial_dims, size, 3 if spatial_dims == 2 else 1, 2),
                           progress=False)
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch[IMAGE].shape[0] == 4 and tuple(batch[IMAGE].shape[2:]) == size
    assert type(batch[IMAGE]) is torch.Tensor  # no MetaTensor: metadata tracking is off
    assert batch[LABEL].shape == (4, 1, *size) and batch[CLASS].dtype == torch.int64


# ------------------------------------------------------------------ argument checks


@pytest.mark.parametrize(("args", "match"), [
    ((4, (8, 8), 1, 2), "spatial_dims must be 2 or 3"),
    ((2, (8, 8, 8), 1, 2), "spatial_size must be 2 positive"),
    ((2, (8, 0), 1, 2), "spatial_size must be 2 positive"),
    ((2, (8, 8), 0, 2), "in_channels must be at least 1"),
    ((2, (8, 8), 1, 1), "num_segments must be at least 2"),
])
def test_chain_arguments_are_checked(args, match):
    with pytest.raises(ValueError, match=match):
        val_transforms(*args)
    with pytest.raises(ValueError, match=match):
        train_transforms(*args)


@pytest.mark.parametrize("knob", SPATIAL + INTENSITY)
def test_probability_knobs_are_checked(knob):
    with pytest.raises(ValueError, match=f"{knob} must be a probability"):
        augmentations(2, (8, 8), **{knob: 1.5})


def test_crop_odds_are_checked():
    with pytest.raises(ValueError, match="crop_pos and crop_neg"):
        train_transforms(3, (8, 8, 8), 1, 2, crop_pos=0.0, crop_neg=0.0)


def test_several_patches_per_volume_collate_into_one_batch(tmp_path):
    from monai.data import DataLoader, Dataset

    chain = train_transforms(3, (16, 16, 8), 1, 2, augment=False, num_samples=3)
    chain.set_random_state(seed=0)
    patches = chain(_sample_3d(tmp_path, 1))
    assert len(patches) == 3 and all(p[IMAGE].shape == (1, 16, 16, 8) for p in patches)
    assert len({p[IMAGE].numpy().tobytes() for p in patches}) >= 2  # three draws, not one patch three times
    batch = next(iter(DataLoader(Dataset([_sample_3d(tmp_path, 1)] * 2, chain), batch_size=2)))
    assert tuple(batch[IMAGE].shape) == (6, 1, 16, 16, 8) and tuple(batch[CLASS].shape) == (6,)
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="patches per volume"):
            train_transforms(3, (8, 8, 8), 1, 2, num_samples=bad)


def test_3d_patch_crop_works_for_a_sample_without_mask(tmp_path):
    sample = {k: v for k, v in _sample_3d(tmp_path, 1).items() if k != LABEL}  # classification-only volume
    out = train_transforms(3, (16, 16, 8), 1, 2)(sample)[0]
    assert out[IMAGE].shape == (1, 16, 16, 8) and not out[LABEL].any() and float(out[HAS_SEG]) == 0.0


@pytest.mark.parametrize("tumor_free", [0, None])
def test_lesion_free_3d_patches_keep_their_class_or_are_taught_the_tumour_free_one(tmp_path, tumor_free):
    sample = _sample_3d(tmp_path, 1)  # class 2, lesion in a corner of a 24x28x12 volume
    chain = train_transforms(3, (8, 8, 4), 1, 2, augment=False, num_samples=24, tumor_free_class=tumor_free,
                             lesion_free_patch_class="tumor_free")
    chain.set_random_state(seed=0)
    patches = chain(sample)
    with_lesion = [p for p in patches if p[LABEL].any()]
    without = [p for p in patches if not p[LABEL].any()]
    assert with_lesion and without  # the 2:1 odds draw both kinds among 24 patches
    assert all(int(p[CLASS]) == 2 and float(p[HAS_CLS]) == 1.0 for p in with_lesion)
    if tumor_free is None:  # classes without a tumour-free one: such a patch teaches no diagnosis
        assert all(int(p[CLASS]) == MISSING_CLASS and float(p[HAS_CLS]) == 0.0 for p in without)
    else:
        assert all(int(p[CLASS]) == tumor_free and float(p[HAS_CLS]) == 1.0 for p in without)
    assert all(float(p[HAS_SEG]) == 1.0 for p in patches)
    keep = train_transforms(3, (8, 8, 4), 1, 2, augment=False, num_samples=24, tumor_free_class=tumor_free)
    keep.set_random_state(seed=0)
    assert all(int(p[CLASS]) == 2 and float(p[HAS_CLS]) == 1.0 for p in keep(sample))  # the default: the study's class
    ignore = train_transforms(3, (8, 8, 4), 1, 2, augment=False, num_samples=24, tumor_free_class=tumor_free,
                              lesion_free_patch_class="ignore")
    ignore.set_random_state(seed=0)
    ignored = ignore(sample)
    assert [bool(p[LABEL].any()) for p in ignored] == [bool(p[LABEL].any()) for p in patches]  # the same draws
    for p in ignored:  # lesion-free patches train the segmentation only
        assert (int(p[CLASS]), float(p[HAS_CLS])) == ((2, 1.0) if p[LABEL].any() else (MISSING_CLASS, 0.0))
    with pytest.raises(ValueError, match="lesion_free_patch_class must be one of"):
        train_transforms(3, (8, 8, 4), 1, 2, lesion_free_patch_class="study")


def test_lesion_free_patch_rule_leaves_unlabelled_and_tumour_free_patches_alone():
    rule = LesionFreePatchClassd(tumor_free=1, rule="tumor_free")
    empty = torch.zeros((1, 4, 4, 4), dtype=torch.uint8)
    no_mask = {LABEL: empty, CLASS: torch.tensor(3), HAS_SEG: torch.tensor(0.0), HAS_CLS: torch.tensor(1.0)}
    assert int(rule(no_mask)[CLASS]) == 3  # a mask-less volume: no lesion is not known to be absent
    no_class = {LABEL: empty, CLASS: torch.tensor(MISSING_CLASS), HAS_SEG: torch.tensor(1.0), HAS_CLS: torch.tensor(0.0)}
    assert int(rule(no_class)[CLASS]) == MISSING_CLASS and float(rule(no_class)[HAS_CLS]) == 0.0
    free = {LABEL: empty, CLASS: torch.tensor(1), HAS_SEG: torch.tensor(1.0), HAS_CLS: torch.tensor(1.0)}
    assert int(rule(free)[CLASS]) == 1


def test_tumour_free_index_by_name_else_from_the_plan():
    assert tumor_free_index(["glioma", "No Tumor", "pituitary"]) == 1
    assert tumor_free_index(["benign", "malignant", "clear"], {"no_tumor_class": "clear"}) == 2
    assert tumor_free_index(["benign", "malignant"], {"no_tumor_class": None}) is None
    assert tumor_free_index(["benign", "malignant"]) is None


# ------------------------------------------------------------------ non-square sizes


@pytest.mark.parametrize("size", [(48, 32), (32, 48)])
def test_rotate_knob_keeps_a_non_square_size_and_still_moves_the_sample(tmp_path, size):
    sample = _sample_2d(tmp_path, 1, size=48)
    chain = train_transforms(2, size, 1, 2, **(NO_AUGMENT | {"p_rot90": 1.0}))
    reference = val_transforms(2, size, 1, 2)(sample)
    for seed in range(6):  # rotate-90 would swap the sizes for half of these draws
        chain.set_random_state(seed)
        out = chain(sample)
        assert out[IMAGE].shape == (1, *size) and out[LABEL].shape == (1, *size), seed
        # a non-square plane turns by 180 degrees: both axes flipped
        assert torch.equal(out[LABEL], reference[LABEL].flip(1, 2)) and _dice(out[IMAGE], out[LABEL]) > 0.85


def test_non_square_2d_training_step(tmp_path):
    from scripts.train.losses import MultiTaskLoss
    from scripts.core.networks import MultiTaskUNet
    from scripts.train.training import prepare_batch

    set_track_meta(False)
    size = (48, 32)
    chain = train_transforms(2, size, 1, 2, **{k: 1.0 for k in NO_AUGMENT})  # every augmentation, rotate included
    chain.set_random_state(0)
    dataset = CacheDataset([_sample_2d(tmp_path, 1, size=48)] * 8, chain, progress=False)
    image, targets = prepare_batch(next(iter(DataLoader(dataset, batch_size=8))))
    assert image.shape == (8, 1, *size) and targets["seg"].shape == (8, 1, *size)
    torch.manual_seed(0)
    net, loss = MultiTaskUNet(2, 1, 2, 4, channels=(4, 8, 16)), MultiTaskLoss(2, 4)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    value = loss(net(image), targets)
    value.backward()
    opt.step()
    assert torch.isfinite(value) and any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
