"""3D models on the canonical grid: one study stored five ways gives one segmentation and one diagnosis.

The same head (real anatomy: nilearn's packaged MNI152 template, 2 mm, with a bright 20 mm
"tumor") is stored RAS, LPS, left-handed LAS, oblique (rotated 20 and 10 degrees) and resliced to
0.9 x 0.9 x 3 mm. A 3D model card with ``target_spacing`` makes the Predictor bring each onto the
canonical grid (RAS, 2 mm) and map the label map back onto the stored grid.

The network is :class:`PhysicalProbe`, a deterministic stand-in that is *not* invariant to
orientation or voxel size, as a trained CNN is not: it marks a voxel as tumor when the voxel
``SHIFT`` voxels further along array axes 0 and 2 is bright. On the canonical grid that is a fixed
displacement in physical space (6 mm towards patient right and superior); on a grid stored LPS
without reorientation it points the other way (``test_the_probe_tells_storage_apart``), so
agreement below is only possible when orientation and spacing are handled exactly. Agreement is the
Dice of the predictions resampled onto the reference grid (linear on the mask, then 0.5).
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from infer_helpers import dice, oblique_direction, tiny_card, wire_threshold
from scripts.inference import InputError, Predictor
from scripts.core.model_card import build_network
from scripts.core.tasks import Task
from scripts.core.transforms import normalize_intensity

SHIFT, LEVEL, GAIN = 3, 0.75, 40.0
RAS_DIRECTION = np.diag([-1.0, -1.0, 1.0])  # ITK (LPS) direction of a RAS-stored volume
STORAGE = {  # name -> (ITK direction, spacing mm)
    "ras": (RAS_DIRECTION, (2.0, 2.0, 2.0)),
    "lps": (np.eye(3), (2.0, 2.0, 2.0)),
    "las_left_handed": (np.diag([1.0, -1.0, 1.0]) @ RAS_DIRECTION, (2.0, 2.0, 2.0)),
    "oblique": (RAS_DIRECTION @ oblique_direction(20, 10), (2.0, 2.0, 2.0)),
    "aniso_0.9x0.9x3": (RAS_DIRECTION, (0.9, 0.9, 3.0)),
}
EXACT = ("ras", "lps", "las_left_handed")  # re-indexing only: nothing is interpolated


class PhysicalProbe(torch.nn.Module):
    """Tumor where the voxel ``SHIFT`` further along axes 0 and 2 exceeds ``LEVEL``; glioma logit = tumor voxels / 500.

    Where that voxel lies outside the window both segment logits are 0, so sliding-window blending
    takes such voxels from the windows that contain it. ``no_tumor`` has logit 2 (glioma wins above
    1000 tumor voxels in a window).
    """

    def forward(self, x: torch.Tensor) -> dict[Task, torch.Tensor]:
        b, _, nx, _, nz = x.shape
        ahead = torch.zeros_like(x[:, :1])
        ahead[:, :, : nx - SHIFT, :, : nz - SHIFT] = x[:, :1, SHIFT:, :, SHIFT:]
        valid = torch.zeros_like(ahead, dtype=torch.bool)
        valid[:, :, : nx - SHIFT, :, : nz - SHIFT] = True
        margin = torch.where(valid, GAIN * (ahead - LEVEL), torch.zeros_like(ahead))
        cls = torch.zeros(b, 4)
        cls[:, 0] = (margin > 0).flatten(1).sum(1).float() / 500.0
        cls[:, 2] = 2.0
        return {Task.SEG: torch.cat([torch.zeros_like(margin), margin], 1), Task.CLS: cls}


def _reference() -> sitk.Image:
    """65 x 75 x 55 voxels of MNI152 at 2 mm, stored RAS, with a sharp-edged 20 mm bright sphere."""
    from nilearn.datasets import load_mni152_template

    head = np.asarray(load_mni152_template(resolution=2).get_fdata(), np.float32)[15:80, 20:95, 20:75] * 600
    i, j, k = np.meshgrid(*[np.arange(n) * 2.0 for n in head.shape], indexing="ij")
    tumor = (i - 40) ** 2 + (j - 70) ** 2 + (k - 60) ** 2 < 20.0 ** 2
    head[tumor] = 1200 + 50 * np.sin(i[tumor] / 5)
    image = sitk.GetImageFromArray(np.ascontiguousarray(head.T))
    image.SetSpacing((2.0, 2.0, 2.0))
    image.SetOrigin((60.0, 80.0, -30.0))
    image.SetDirection(tuple(RAS_DIRECTION.ravel()))
    return image


def _stored(reference: sitk.Image, direction: np.ndarray, spacing) -> sitk.Image:
    """``reference`` resampled (B-spline) onto a grid of this direction and spacing covering its field of view."""
    size = np.asarray(reference.GetSize())
    corners = np.array([reference.TransformContinuousIndexToPhysicalPoint([float(a), float(b), float(c)])
                        for a in (-0.5, size[0] - 0.5) for b in (-0.5, size[1] - 0.5) for c in (-0.5, size[2] - 0.5)])
    along = corners @ direction  # corner coordinates along the new axes
    low, high = along.min(axis=0), along.max(axis=0)
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputSpacing(tuple(spacing))
    resampler.SetSize([int(n) for n in np.maximum(1, np.round((high - low) / spacing))])
    resampler.SetOutputDirection(tuple(direction.ravel()))
    resampler.SetOutputOrigin(tuple(direction @ (low + np.asarray(spacing) / 2)))
    resampler.SetInterpolator(sitk.sitkBSpline)
    return resampler.Execute(reference)


def _card(canonical: bool) -> dict:
    card = tiny_card(3)
    card["spatial_size"] = [48, 48, 48]
    if canonical:
        card.update(target_spacing=[2.0, 2.0, 2.0], orientation="RAS", crop_foreground=True)
    return card


def _on_reference(seg_path, reference: sitk.Image) -> np.ndarray:
    """A written label map resampled onto the reference grid (linear on the mask, then 0.5): ``(X, Y, Z)`` bool."""
    seg = sitk.Cast(sitk.ReadImage(str(seg_path)), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(sitk.Resample(seg, reference, sitk.Transform(), sitk.sitkLinear, 0.0)).T > 0.5


@pytest.fixture(scope="module")
def predictions(tmp_path_factory):
    """name -> (Prediction, stored image, label map on the reference grid), canonical 3D model."""
    root = tmp_path_factory.mktemp("storage")
    reference = _reference()
    predictor = Predictor(PhysicalProbe(), _card(canonical=True), device="cpu")
    out = {}
    for name, (direction, spacing) in STORAGE.items():
        stored = reference if name == "ras" else _stored(reference, direction, spacing)
        sitk.WriteImage(stored, str(root / f"{name}.nii.gz"))
        pred = predictor.predict(root / f"{name}.nii.gz", output_dir=root / "out", overlay=False)
        out[name] = (pred, stored, _on_reference(pred.paths["segmentation"], reference))
    return reference, out


@pytest.mark.parametrize("name", list(STORAGE))
def test_same_study_in_any_storage_gives_one_segmentation_and_diagnosis(predictions, name):
    reference, preds = predictions
    pred, stored, on_reference = preds[name]
    ref_pred, _, ref_label = preds["ras"]
    # the label map lies on the stored grid, exactly
    seg = sitk.ReadImage(str(pred.paths["segmentation"]))
    assert seg.GetSize() == stored.GetSize() and pred.label.shape == stored.GetSize()
    np.testing.assert_allclose(seg.GetSpacing(), stored.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(seg.GetOrigin(), stored.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(seg.GetDirection(), stored.GetDirection(), atol=1e-5)
    # the same tumor in physical space
    assert ref_label.sum() > 3000
    agreement = dice(on_reference, ref_label)
    if name in EXACT:
        assert agreement == 1.0
    else:
        assert agreement >= 0.95, f"{name}: Dice {agreement:.4f} with the RAS-stored study"
    # the same diagnosis
    diag, ref_diag = pred.result["diagnosis"], ref_pred.result["diagnosis"]
    assert diag["label"] == ref_diag["label"] == "glioma"
    for cls, p in ref_diag["probabilities"].items():
        assert diag["probabilities"][cls] == pytest.approx(p, abs=0.05)


def test_the_probe_tells_storage_apart(predictions, tmp_path):
    """Without the canonical grid (a card without target_spacing) the LPS-stored study's tumor lands elsewhere."""
    reference, preds = predictions
    _, stored, _ = preds["lps"]
    sitk.WriteImage(stored, str(tmp_path / "lps.nii.gz"))
    pred = Predictor(PhysicalProbe(), _card(canonical=False), device="cpu").predict(tmp_path / "lps.nii.gz",
                                                                                     output_dir=tmp_path / "out")
    assert dice(_on_reference(pred.paths["segmentation"], reference), preds["ras"][2]) < 0.7


@pytest.mark.parametrize("direction", [RAS_DIRECTION, np.eye(3), np.diag([1.0, -1.0, 1.0])], ids=["ras", "lps", "las"])
def test_threshold_model_at_the_stored_spacing_is_exact(direction, tmp_path):
    """Axis-aligned storage at the target spacing: the canonical path re-indexes, so a threshold stays a threshold."""
    from infer_helpers import mni_volume

    vol = np.ascontiguousarray(mni_volume(20)[20:70, 25:80])  # 50 x 55 x 20 of real brain at 2 mm
    image = sitk.GetImageFromArray(np.ascontiguousarray(vol.T))
    image.SetSpacing((2.0, 2.0, 2.0))
    image.SetOrigin((10.0, -20.0, 5.0))
    image.SetDirection(tuple(direction.ravel()))
    sitk.WriteImage(image, str(tmp_path / "brain.nii.gz"))
    card = tiny_card(3)
    card.update(target_spacing=[2.0, 2.0, 2.0], orientation="RAS", crop_foreground=True)
    network = wire_threshold(build_network(card))
    pred = Predictor(network, card, device="cpu").predict(tmp_path / "brain.nii.gz")
    np.testing.assert_array_equal(pred.label, (normalize_intensity(vol[None])[0] > 0.5).astype(np.uint8))


@pytest.mark.parametrize("update, match", [
    ({"target_spacing": [1.0, 0.0, 1.0]}, r"model card: target_spacing must be 3 positive sizes in mm"),
    ({"target_spacing": [1.0, 1.0, 1.0], "orientation": "RAR"}, r"model card: orientation must be 3 axis codes"),
])
def test_bad_canonical_settings_in_the_card(update, match):
    card = tiny_card(3)
    card.update(update)
    with pytest.raises(InputError, match=match):
        Predictor(build_network(card), card, device="cpu")
