"""The canonical grid of 3D studies (scripts.core.canonical) and the 3D training chain built on it.

Expected values come from geometry, not from the module: voxel positions are ``affine @ index``,
interpolation is checked against ``scipy.ndimage.map_coordinates``, and a study stored in another
orientation must give the identical canonical volume.
"""

from __future__ import annotations

import itertools
import os
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import PersistentDataset, get_track_meta, set_track_meta
from scipy.ndimage import map_coordinates

from scripts.core.canonical import (
    Grid,
    affine_from_itk,
    canonical_grid,
    canonical_spacing,
    card_settings,
    foreground_box,
    label_on_grid,
    median_target_spacing,
    orientation_matrix,
    resample,
    target_spacing_from_spacings,
)
from scripts.core.sliding_window import label_map
from scripts.core.transforms import preprocess_cache_dir, sample_hash, train_transforms, val_transforms


@pytest.fixture(autouse=True)
def _restore_track_meta():
    before = get_track_meta()
    yield
    set_track_meta(before)


def _rotation(z_deg: float, x_deg: float) -> np.ndarray:
    a, b = np.radians(z_deg), np.radians(x_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def _affine(columns: np.ndarray, origin=(3.0, -4.0, 5.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = columns
    affine[:3, 3] = origin
    return affine


def _reference_sampling(volume: np.ndarray, src_affine: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Trilinear values of ``volume`` ``(X, Y, Z)`` at ``grid``'s voxel positions, and which lie well inside."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij")).reshape(3, -1)
    q = (np.linalg.inv(src_affine) @ grid.affine @ np.vstack([index, np.ones(index.shape[1])]))[:3]
    n = np.asarray(volume.shape)[:, None]
    values = map_coordinates(volume, np.clip(q, 0, n - 1), order=1).reshape(grid.shape)
    inside = ((q >= -0.49) & (q <= n - 0.51)).all(axis=0).reshape(grid.shape)
    return values, inside


# ------------------------------------------------------------------ the grid


def test_a_study_already_canonical_keeps_its_grid_voxel_for_voxel():
    affine = _affine(np.diag([0.9, 0.9, 3.0]))
    grid = canonical_grid(affine, (20, 24, 16), (0.9, 0.9, 3.0))
    assert grid.shape == (20, 24, 16)
    np.testing.assert_allclose(grid.affine, affine, atol=1e-9)
    volume = np.random.default_rng(0).random((2, 20, 24, 16)).astype(np.float32)
    np.testing.assert_array_equal(resample(volume, affine, grid).numpy(), volume)


@pytest.mark.parametrize("perm, signs", list(itertools.product(itertools.permutations(range(3)),
                                                               itertools.product((1, -1), repeat=3))))
def test_every_axis_aligned_storage_gives_the_same_canonical_volume_exactly(perm, signs):
    """48 signed permutations (right- and left-handed): the RAS volume comes back bit for bit, label too."""
    rng = np.random.default_rng(1)
    canonical = rng.random((1, 5, 6, 7)).astype(np.float32)
    labels = rng.integers(0, 3, (1, 5, 6, 7)).astype(np.uint8)
    ras = _affine(np.diag([1.0, 1.5, 2.0]))
    # stored array axis a holds canonical axis perm[a], reversed where signs[a] < 0
    stored, stored_labels = (np.transpose(v, (0, *(p + 1 for p in perm))) for v in (canonical, labels))
    flips = (slice(None), *(slice(None, None, s) for s in signs))
    stored, stored_labels = np.ascontiguousarray(stored[flips]), np.ascontiguousarray(stored_labels[flips])
    columns = np.zeros((3, 3))
    origin_index = np.zeros(3)
    for a, (p, s) in enumerate(zip(perm, signs)):
        columns[:, a] = s * ras[:3, p]
        origin_index[p] = 0 if s > 0 else canonical.shape[1 + p] - 1
    affine = _affine(columns, ras[:3, :3] @ origin_index + ras[:3, 3])
    grid = canonical_grid(affine, stored.shape[1:], (1.0, 1.5, 2.0))
    assert grid.shape == (5, 6, 7)
    np.testing.assert_allclose(grid.affine, ras, atol=1e-9)
    np.testing.assert_array_equal(resample(stored, affine, grid).numpy(), canonical)
    np.testing.assert_array_equal(resample(stored_labels, affine, grid, "nearest").numpy(), labels)


@pytest.mark.parametrize("columns, spacing", [
    (np.diag([-0.9, 0.9, 3.0]), (1.0, 1.0, 1.2)),  # axis-aligned, another spacing: one axis at a time
    (_rotation(20, 10) @ np.diag([1.0, 1.5, 2.0]), (1.1, 0.9, 1.3)),  # oblique: grid_sample
])
def test_linear_resampling_equals_trilinear_interpolation(columns, spacing):
    volume = np.random.default_rng(2).random((20, 24, 16)).astype(np.float32)
    affine = _affine(columns)
    grid = canonical_grid(affine, volume.shape, spacing)
    np.testing.assert_allclose(grid.spacing, spacing, atol=1e-9)
    np.testing.assert_allclose(grid.affine[:3, :3] / np.asarray(spacing), np.eye(3), atol=1e-9)  # RAS axes
    out = resample(volume[None], affine, grid).numpy()[0]
    expected, inside = _reference_sampling(volume, affine, grid)
    np.testing.assert_allclose(out[inside], expected[inside], atol=1e-5)
    far = np.ones(grid.shape, bool)  # voxels more than a voxel outside the stored field of view are 0
    index = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij")).reshape(3, -1)
    q = (np.linalg.inv(affine) @ grid.affine @ np.vstack([index, np.ones(index.shape[1])]))[:3]
    far = ((q < -1.5) | (q > np.asarray(volume.shape)[:, None] + 0.5)).any(axis=0).reshape(grid.shape)
    assert far.any() == (columns[0, 1] != 0) and (out[far] == 0).all()


def test_the_field_of_view_is_covered_and_centred():
    affine = _affine(np.diag([0.9, 0.9, 3.0]))
    grid = canonical_grid(affine, (100, 80, 30), (1.0, 1.0, 2.0))
    assert grid.shape == (90, 72, 45)  # 90 mm / 1, 72 mm / 1, 90 mm / 2
    centre = lambda a, shape: (a @ np.append((np.asarray(shape) - 1) / 2, 1.0))[:3]  # noqa: E731
    np.testing.assert_allclose(centre(grid.affine, grid.shape), centre(affine, (100, 80, 30)), atol=1e-9)


@pytest.mark.parametrize("orientation, columns", [("RAS", np.eye(3)), ("LPS", np.diag([-1.0, -1.0, 1.0])),
                                                  ("SAR", np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], float))])
def test_orientation_codes(orientation, columns):
    np.testing.assert_array_equal(orientation_matrix(orientation), columns)
    grid = canonical_grid(np.eye(4), (4, 5, 6), (1.0, 1.0, 1.0), orientation)
    np.testing.assert_allclose(grid.affine[:3, :3], columns)


@pytest.mark.parametrize("orientation", ["RA", "RAR", "XYZ", "RLS"])
def test_bad_orientation_codes(orientation):
    with pytest.raises(ValueError, match="orientation must be 3 axis codes"):
        orientation_matrix(orientation)


def test_itk_geometry_to_ras_affine():
    direction = _rotation(30, 0)
    affine = affine_from_itk((0.5, 0.6, 2.0), (10.0, 20.0, 30.0), direction.ravel())
    lps_point = np.asarray((10.0, 20.0, 30.0)) + direction @ (np.asarray([1, 2, 3]) * (0.5, 0.6, 2.0))
    np.testing.assert_allclose((affine @ [1, 2, 3, 1])[:3], lps_point * (-1, -1, 1))


# ------------------------------------------------------------------ back onto the study


def test_labels_come_back_by_resampling_the_logits():
    """On the same grid the result is the arg-max; on another grid, the arg-max of interpolated logits."""
    rng = np.random.default_rng(3)
    affine = _affine(np.diag([1.0, 1.0, 2.0]))
    grid = Grid((6, 7, 8), affine)
    for segments in (2, 3):
        logits = torch.from_numpy(rng.normal(size=(segments, 6, 7, 8)).astype(np.float32))
        np.testing.assert_array_equal(label_on_grid(logits, grid, grid), label_map(logits[None])[0].numpy())
    study = Grid((9, 10, 5), _affine(_rotation(15, 5) @ np.diag([0.8, 0.8, 3.0]), (1.0, 2.0, 4.0)))
    logits = torch.from_numpy(rng.normal(size=(3, 6, 7, 8)).astype(np.float32))
    label = label_on_grid(logits, grid, study)
    sampled = [_reference_sampling(logits[s].numpy(), affine, study) for s in range(3)]
    expected, inside = np.argmax(np.stack([v for v, _ in sampled]), axis=0), sampled[0][1]
    assert label.dtype == np.uint8 and label.shape == study.shape
    np.testing.assert_array_equal(label[inside], expected[inside])
    index = np.stack(np.meshgrid(*[np.arange(n) for n in study.shape], indexing="ij")).reshape(3, -1)
    q = (np.linalg.inv(affine) @ study.affine @ np.vstack([index, np.ones(index.shape[1])]))[:3]
    outside = ((q < -0.51) | (q > np.asarray(grid.shape)[:, None] - 0.49)).any(axis=0).reshape(study.shape)
    assert outside.any() and not label[outside].any()  # outside the canonical box: background


# ------------------------------------------------------------------ target spacing


def test_target_spacing_is_the_median_per_axis():
    spacings = [(1.0, 1.0, 1.0)] * 3 + [(0.9, 0.9, 3.0)] * 2
    assert target_spacing_from_spacings(spacings) == [1.0, 1.0, 1.0]
    assert target_spacing_from_spacings([(0.9, 0.9, 3.0), (1.0, 1.0, 1.0)]) == [0.95, 0.95, 2.0]


def test_anisotropic_data_take_the_10th_percentile_out_of_plane():
    spacings = [(0.5, 0.5, 5.0)] * 8 + [(0.5, 0.5, 1.0)] * 2  # median 0.5 x 0.5 x 5: ratio 10
    assert target_spacing_from_spacings(spacings) == [0.5, 0.5, round(float(np.percentile([5.0] * 8 + [1.0] * 2, 10)), 4)]
    # never finer than the in-plane axes
    assert target_spacing_from_spacings([(2.0, 2.0, 8.0)] * 8 + [(2.0, 2.0, 0.5)] * 2) == [2.0, 2.0, 2.0]


def test_bad_spacings():
    with pytest.raises(ValueError, match="one positive 3-value spacing per study"):
        target_spacing_from_spacings([])
    with pytest.raises(ValueError, match="one positive 3-value spacing per study"):
        target_spacing_from_spacings([(1.0, 0.0, 1.0)])


def test_spacing_is_measured_along_the_canonical_axes(tmp_path):
    """A sagittal stack (thick slices along L-R, stored first) counts its 3 mm for the R axis."""
    sagittal = np.array([[0, 0, 3.0], [0.9, 0, 0], [0, 0.9, 0]])  # array axes: A, S, R
    assert canonical_spacing(_affine(sagittal)) == (3.0, 0.9, 0.9)
    samples = []
    for name, columns in (("axial", np.diag([-0.9, 0.9, 3.0])), ("sagittal", sagittal), ("iso", np.eye(3))):
        nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.float32), _affine(columns)), tmp_path / f"{name}.nii.gz")
        samples.append({"image": str(tmp_path / f"{name}.nii.gz")})
    assert median_target_spacing(samples) == [1.0, 0.9, 1.0]  # medians of (0.9, 3, 1), (0.9, 0.9, 1), (3, 0.9, 1)
    samples[0]["image"] = [samples[0]["image"], samples[0]["image"]]  # one file per channel: the first counts
    assert median_target_spacing(samples) == [1.0, 0.9, 1.0]
    with pytest.raises(ValueError, match=r"missing\.nii\.gz: cannot read its header"):
        median_target_spacing([{"image": str(tmp_path / "missing.nii.gz")}])


# ------------------------------------------------------------------ foreground


def test_foreground_box_finds_the_anatomy_in_noise():
    rng = np.random.default_rng(4)
    volume = rng.normal(20.0, 5.0, (2, 40, 50, 30)).astype(np.float32)  # background noise
    volume[0, 10:20, 15:30, 5:25] += 300.0  # the anatomy: part of it bright in one channel,
    volume[1, 10:20, 25:40, 5:25] += 600.0  # part in the other
    volume[0, 2, 3, 4] = 400.0  # a lone bright noise voxel is no anatomy
    start, end = foreground_box(volume)
    anatomy_start, anatomy_end = np.array([10, 15, 5]), np.array([20, 40, 25])
    margin = 2  # voxels; found on a 2x2x2-averaged copy, so the box may be one voxel wider still
    assert ((anatomy_start - margin - 1 <= start) & (start <= anatomy_start - margin)).all(), start
    assert ((anatomy_end + margin <= end) & (end <= anatomy_end + margin + 1)).all(), end
    assert foreground_box(torch.from_numpy(volume)) == (start, end)
    assert foreground_box(np.full((1, 4, 5, 6), 7.0)) == ([0, 0, 0], [4, 5, 6])  # nothing stands out
    edge = np.zeros((1, 10, 11, 10), np.float32)
    edge[0, :4, 8:, 4:6] = 100.0
    assert foreground_box(edge) == ([0, 6, 2], [6, 11, 8])  # the margin stays within the volume


def test_card_settings():
    card = {"network": {"spatial_dims": 3}, "target_spacing": [1, 1, 2], "orientation": "LPS", "crop_foreground": True}
    assert card_settings(card) == {"target_spacing": [1.0, 1.0, 2.0], "orientation": "LPS", "crop_foreground": True}
    assert card_settings({"network": {"spatial_dims": 3}, "target_spacing": [1, 1, 2]})["crop_foreground"] is False
    assert card_settings({"network": {"spatial_dims": 3}}) is None  # models of the stored grid
    assert card_settings({"network": {"spatial_dims": 2}, "target_spacing": [1, 1, 2]}) is None


# ------------------------------------------------------------------ the 3D training chain


def _head(shape=(40, 48, 36)) -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric bright 'head' in a noisy field with an off-centre lesion mask."""
    rng = np.random.default_rng(5)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    head = ((x / 0.7) ** 2 + (y / 0.8) ** 2 + (z / 0.6) ** 2 < 1) * 500.0 + 100 * (x > 0.2)
    mask = ((x - 0.3) ** 2 + (y + 0.2) ** 2 + z ** 2 < 0.06).astype(np.uint8)
    return (head + rng.normal(10, 3, shape)).astype(np.float32), mask


def _store(tmp_path, name: str, volume: np.ndarray, mask: np.ndarray, perm, signs, spacing=(1.0, 1.2, 2.0)) -> dict:
    """Write the canonical (RAS) ``volume``/``mask`` as a NIfTI pair stored with axes ``perm`` flipped by ``signs``."""
    ras = _affine(np.diag(spacing), (-20.0, -30.0, -35.0))
    flips = tuple(slice(None, None, s) for s in signs)
    arrays = [np.ascontiguousarray(np.transpose(v, perm)[flips]) for v in (volume, mask)]
    columns, origin_index = np.zeros((3, 3)), np.zeros(3)
    for a, (p, s) in enumerate(zip(perm, signs)):
        columns[:, a] = s * ras[:3, p]
        origin_index[p] = 0 if s > 0 else volume.shape[p] - 1
    affine = _affine(columns, ras[:3, :3] @ origin_index + ras[:3, 3])
    paths = {}
    for key, arr in zip(("image", "label"), arrays):
        paths[key] = str(tmp_path / f"{name}_{key}.nii.gz")
        nib.save(nib.Nifti1Image(arr, affine), paths[key])
    return {**paths, "class": 1}


STORED = {"ras": ((0, 1, 2), (1, 1, 1)), "lps": ((0, 1, 2), (-1, -1, 1)), "las": ((0, 1, 2), (-1, 1, 1)),
          "sagittal": ((1, 2, 0), (-1, 1, 1))}


def test_3d_chain_gives_one_canonical_volume_whatever_the_storage(tmp_path):
    set_track_meta(False)  # as training runs
    volume, mask = _head()
    chain = val_transforms(3, (16, 16, 16), 1, 2, target_spacing=(1.0, 1.2, 2.0), crop_foreground=True)
    outs = {name: chain(_store(tmp_path, name, volume, mask, *how)) for name, how in STORED.items()}
    ref = outs["ras"]
    assert type(ref["image"]) is torch.Tensor and ref["image"].dtype == torch.float32 and ref["label"].dtype == torch.uint8
    assert not any(k.endswith("_meta_dict") or k == "foreground_box" for k in ref)  # metadata-free samples
    assert tuple(ref["image"].shape[1:]) < volume.shape and int(ref["label"].sum()) == int(mask.sum())  # cropped
    for name, out in outs.items():
        torch.testing.assert_close(out["image"], ref["image"], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(out["label"], ref["label"], rtol=0, atol=0, msg=name)


def test_3d_chain_resamples_to_the_target_spacing(tmp_path):
    set_track_meta(False)
    volume, mask = _head()
    sample = _store(tmp_path, "lps", volume, mask, *STORED["lps"])
    out = val_transforms(3, (16, 16, 16), 1, 2, target_spacing=(2.0, 2.0, 2.0))(sample)
    assert tuple(out["image"].shape) == (1, 20, 29, 36)  # 40 x 1, 48 x 1.2, 36 x 2 mm at 2 mm
    assert 0.8 < int(out["label"].sum()) * 8.0 / (int(mask.sum()) * 2.4) < 1.25  # the lesion keeps its volume
    patch = train_transforms(3, (16, 16, 16), 1, 2, augment=False, target_spacing=(2.0, 2.0, 2.0),
                             crop_foreground=True)(sample)[0]
    assert tuple(patch["image"].shape) == (1, 16, 16, 16)


def test_persistent_cache_is_keyed_by_settings_and_files(tmp_path):
    set_track_meta(False)
    volume, mask = _head()
    sample = _store(tmp_path, "ras", volume, mask, *STORED["ras"])
    chain = val_transforms(3, (16, 16, 16), 1, 2, target_spacing=(2.0, 2.0, 2.0), crop_foreground=True)
    folder = preprocess_cache_dir(tmp_path / "cache", chain)
    assert folder == preprocess_cache_dir(tmp_path / "cache", val_transforms(3, (16, 16, 16), 1, 2, target_spacing=(2.0, 2.0, 2.0),
                                                                             crop_foreground=True))
    others = [val_transforms(3, (16, 16, 16), 1, 2, target_spacing=(2.0, 2.0, 2.5), crop_foreground=True),
              val_transforms(3, (16, 16, 16), 1, 2, target_spacing=(2.0, 2.0, 2.0), orientation="LPS", crop_foreground=True),
              val_transforms(3, (16, 16, 16), 1, 2, target_spacing=(2.0, 2.0, 2.0)),
              val_transforms(3, (16, 16, 16), 1, 2, target_spacing=(2.0, 2.0, 2.0), crop_foreground=True,
                             normalization="zscore")]
    assert len({folder, *(preprocess_cache_dir(tmp_path / "cache", c) for c in others)}) == 5
    dataset = PersistentDataset([sample], chain, cache_dir=folder, hash_func=sample_hash)
    first = dataset[0]
    assert len(os.listdir(folder)) == 1
    again = PersistentDataset([sample], chain, cache_dir=folder, hash_func=sample_hash)[0]  # read back
    torch.testing.assert_close(again["image"], first["image"])
    key = sample_hash(sample)
    time.sleep(0.01)
    nib.save(nib.load(sample["image"]), sample["image"])  # the same name, a new file
    assert sample_hash(sample) != key


def test_3d_chain_refuses_a_mask_on_another_grid(tmp_path):
    set_track_meta(False)
    volume, mask = _head()
    sample = _store(tmp_path, "ras", volume, mask, *STORED["ras"])
    flipped = nib.load(sample["label"])
    nib.save(nib.Nifti1Image(np.asarray(flipped.dataobj), flipped.affine @ np.diag([-1.0, 1.0, 1.0, 1.0])),
             tmp_path / "flipped_label.nii.gz")
    sample["label"] = str(tmp_path / "flipped_label.nii.gz")
    with pytest.raises(RuntimeError) as raised:  # MONAI's Compose names the transform, the cause says why
        val_transforms(3, (16, 16, 16), 1, 2, target_spacing=(2.0, 2.0, 2.0))(sample)
    assert isinstance(raised.value.__cause__, ValueError)
    assert "flipped_label.nii.gz: the mask lies on another grid than its image" in str(raised.value.__cause__)
