"""Display orientation: 2D models see volume slices as a viewer (and a PNG export) shows them.

Expected values come from physics, not from the module under test: a voxel's LPS position is
``origin + direction @ (index * spacing)``, and the viewer's rules (axial: rows A->P, columns R->L;
coronal: rows S->I, columns R->L; sagittal: rows S->I, columns A->P) are checked on those positions.
"""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from infer_helpers import oblique_direction, tiny_card, write_dicom_series
from scripts.inference import Predictor
from scripts.imageio.geometry import nearest_axes
from scripts.inference.orientation import display_view, to_lps
from scripts.core.tasks import Task
from scripts.core.transforms import normalize_intensity

RAS_STORED = np.diag([-1.0, -1.0, 1.0])  # a NIfTI with a plain RAS affine, as ITK reports it in LPS
PERMUTED = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], float)  # array axes (S, L, P)
CORONAL = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float)  # DICOM coronal: rows -> L, columns -> I, slices -> P
SAGITTAL_ODD = np.array([[0, 0, -1], [-1, 0, 0], [0, 1, 0]], float)  # array axes (A, S, R)
DIRECTIONS = [np.eye(3), RAS_STORED, PERMUTED, CORONAL, SAGITTAL_ODD, oblique_direction(20, 10)]
# display rows, columns as (physical LPS axis, sign): what a viewer shows per plane
RULES = {"axial": (2, (1, 1), (0, 1)), "coronal": (1, (2, -1), (0, 1)), "sagittal": (0, (2, -1), (1, 1))}


def _lps_positions(direction: np.ndarray, shape: tuple[int, ...], spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """``(3, X, Y, Z)``: the LPS position of every voxel (origin 0)."""
    index = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"))
    return np.einsum("pa,a...->p...", direction, index * np.asarray(spacing, float)[:, None, None, None])


@pytest.mark.parametrize("direction", DIRECTIONS, ids=["lps", "ras", "permuted", "coronal", "sagittal", "oblique"])
@pytest.mark.parametrize("slice_axis", [0, 1, 2])
def test_display_follows_the_viewer_rules_and_inverts_exactly(direction, slice_axis):
    shape = (5, 6, 7)
    view = display_view(direction.ravel(), slice_axis)
    stack = view.to_slices(_lps_positions(direction, shape))  # (3, N, rows, cols) of LPS positions
    slice_phys, (row_phys, row_sign), (col_phys, col_sign) = RULES[view.plane]
    assert np.argmax(np.abs(direction[:, slice_axis])) == slice_phys  # the plane is the slice axis's nearest
    assert (np.diff(stack[slice_phys], axis=0) > 0).all()  # slices run along +L/+P/+S
    assert (row_sign * np.diff(stack[row_phys], axis=1) > 0).all()
    assert (col_sign * np.diff(stack[col_phys], axis=2) > 0).all()
    label = np.random.default_rng(0).integers(0, 9, shape).astype(np.uint8)
    np.testing.assert_array_equal(view.from_slices(view.to_slices(label[None])[0]), label)


@pytest.mark.parametrize("perm, signs", list(itertools.product(itertools.permutations(range(3)),
                                                               itertools.product((1, -1), repeat=3))))
def test_nearest_axes_and_canonical_lps_of_every_signed_permutation(perm, signs):
    direction = np.zeros((3, 3))
    for a in range(3):
        direction[perm[a], a] = signs[a]
    assert nearest_axes(direction.ravel()) == (perm, signs)
    canonical = to_lps(direction).forward(_lps_positions(direction, (3, 4, 5)))  # (3, L, P, S)
    for p in range(3):
        assert (np.diff(canonical[p], axis=p) > 0).all()  # axis p runs along +p
    vol = np.random.default_rng(1).random((2, 3, 4, 5))
    np.testing.assert_array_equal(to_lps(direction).inverse(to_lps(direction).forward(vol)), vol)


def test_2d_grid_is_an_axial_slice():
    view = display_view((1.0, 0.0, 0.0, 1.0), 2)
    image = np.arange(12.0).reshape(1, 4, 3, 1)  # (C, X, Y, 1)
    np.testing.assert_array_equal(view.to_slices(image)[0, 0], image[0, :, :, 0].T)  # rows = Y, cols = X


@pytest.mark.parametrize("direction, axis, match", [
    (np.eye(3).ravel(), 3, r"slice_axis must be 0, 1 or 2, got 3"),
    ((1.0, 0.0, 0.0), 2, r"direction must hold 4 or 9 finite values \(2x2 or 3x3, row-major\), got 3"),
    ((1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, float("nan")), 2, r"must hold 4 or 9 finite values"),
    ((1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0), 2, r"direction matrix is singular"),
])
def test_bad_arguments(direction, axis, match):
    with pytest.raises(ValueError, match=match):
        display_view(direction, axis)


# ------------------------------------------------------------------ through the readers and the Predictor

class SpyNet(torch.nn.Module):
    """Records what it is given; segments the top-left quarter of every slice it sees (display: anterior-right)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> dict[Task, torch.Tensor]:
        self.seen.append(x.detach().cpu().clone())
        b, _, h, w = x.shape
        seg = torch.zeros(b, 2, h, w)
        seg[:, 1] = -1.0
        seg[:, 1, : h // 2, : w // 2] = 1.0
        return {Task.SEG: seg, Task.CLS: torch.zeros(b, 4)}


def _picture() -> np.ndarray:
    """An asymmetric 2D image ``(rows, cols)`` as a PNG export would hold it (an L in the top-left corner)."""
    pic = np.full((12, 10), 100.0)
    pic[1:9, 1:3] = 900.0
    pic[7:9, 1:7] = 900.0
    pic += np.arange(10)[None, :] * 3 + np.arange(12)[:, None]  # gradients: no symmetry left
    return pic


def _spy_predictor(rows: int, cols: int) -> tuple[Predictor, SpyNet]:
    card = tiny_card(2)
    card["spatial_size"] = [rows, cols]  # no resize: the spy sees exact voxel values
    spy = SpyNet()
    return Predictor(spy, card, device="cpu"), spy


def _canonical_volume(pic: np.ndarray, plane: str, n: int) -> np.ndarray:
    """``(L, P, S)`` array whose every ``plane`` slice displays as ``pic``."""
    rows, cols = pic.shape
    if plane == "axial":  # rows = +P, cols = +L
        return np.repeat(pic.T[:, :, None], n, axis=2)
    return np.repeat(pic[::-1].T[:, None, :], n, axis=1)  # coronal: rows = -S, cols = +L


def _store(canonical: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """The file array of ``canonical`` stored with this (signed permutation) direction."""
    physical, signs = nearest_axes(direction)
    arr = np.transpose(canonical, physical)  # array axis a holds physical axis physical[a]
    return arr[tuple(slice(None, None, s) for s in signs)]


def _check_prediction(pred, spy: SpyNet, pic: np.ndarray, direction: np.ndarray, spacing, plane: str) -> None:
    seen = torch.cat(spy.seen)[:, 0].numpy()  # (N, rows, cols)
    # every slice is the picture: normalising the volume is normalising N copies of it
    expected = normalize_intensity(np.repeat(pic[None, None], len(seen), axis=1).astype(np.float32))[0, 0]
    for picture in seen:
        np.testing.assert_allclose(picture, expected, atol=1e-5)
    pos = _lps_positions(direction, pred.label.shape, spacing)  # (3, X, Y, Z)
    centre = pos.reshape(3, -1).mean(axis=1)
    vertical = pos[1] < centre[1] if plane == "axial" else pos[2] > centre[2]  # anterior / superior half
    right = pos[0] < centre[0]  # LPS: smaller x is patient right
    np.testing.assert_array_equal(pred.label, (vertical & right).astype(np.uint8))


@pytest.mark.parametrize("direction", [np.eye(3), RAS_STORED, PERMUTED], ids=["lps", "ras", "permuted"])
def test_nifti_axial_slices_reach_the_model_as_the_picture(direction, tmp_path):
    pic = _picture()
    arr = _store(_canonical_volume(pic, "axial", 4), direction)
    spacing = np.array([1.0, 1.0, 1.0])
    spacing[np.argmax(np.abs(direction[2]))] = 4.0  # thick slices along S: the acquisition axis
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ direction * spacing  # LPS direction -> nibabel RAS affine
    nib.save(nib.Nifti1Image(arr.astype(np.float32), affine), tmp_path / "v.nii.gz")
    predictor, spy = _spy_predictor(*pic.shape)
    pred = predictor.predict(tmp_path / "v.nii.gz", output_dir=tmp_path / "out")
    assert pred.view.plane == "axial" and len(spy.seen) == 1 and spy.seen[0].shape[0] == 4
    _check_prediction(pred, spy, pic, direction, spacing, "axial")
    overlay = np.asarray(Image.open(pred.paths["overlay"]).convert("RGB"))  # key slices side by side
    assert overlay.shape[0] == pic.shape[0]  # drawn in display orientation: rows = the picture's rows
    assert len(set(overlay[0, 0])) > 1  # tumor colour top-left
    assert len(set(overlay[-1, pic.shape[1] - 1])) == 1  # grey bottom-right
    back = sitk.ReadImage(str(pred.paths["segmentation"]))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back).T, pred.label)
    np.testing.assert_allclose(np.reshape(back.GetDirection(), (3, 3)), direction, atol=1e-6)


def test_one_slice_nifti(tmp_path):
    pic = _picture()
    arr = _store(_canonical_volume(pic, "axial", 1), RAS_STORED)
    nib.save(nib.Nifti1Image(arr.astype(np.float32), np.eye(4)), tmp_path / "one.nii.gz")  # RAS storage
    predictor, spy = _spy_predictor(*pic.shape)
    pred = predictor.predict(tmp_path / "one.nii.gz")
    assert pred.label.shape == arr.shape
    _check_prediction(pred, spy, pic, RAS_STORED, (1.0, 1.0, 1.0), "axial")


@pytest.mark.parametrize("direction, plane", [(np.eye(3), "axial"), (CORONAL, "coronal")])
def test_dicom_series_slices_reach_the_model_as_the_picture(direction, plane, tmp_path):
    pic = _picture()
    arr = _store(_canonical_volume(pic, plane, 3), direction)
    spacing = (1.0, 1.0, 5.0)  # the largest spacing between slices: on S (axial) or P (coronal)
    write_dicom_series(arr, tmp_path / "series", spacing=spacing, origin=(0.0, 0.0, 0.0), direction=direction)
    predictor, spy = _spy_predictor(*pic.shape)
    pred = predictor.predict(tmp_path / "series", output_dir=tmp_path / "out")
    assert pred.view.plane == plane and pred.label.shape == arr.shape
    _check_prediction(pred, spy, pic, direction, spacing, plane)
    # a DICOM slice's pixel data (rows = j, columns = i) is what the model saw, for these directions
    np.testing.assert_array_equal(spy.seen[0][0, 0].numpy() > 0.5, normalize_intensity(arr[None])[0, :, :, 0].T > 0.5)
