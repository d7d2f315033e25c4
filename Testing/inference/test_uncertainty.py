"""Segmentation uncertainty from flip-TTA disagreement (scripts/inference/uncertainty.py) through the Predictor and CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from infer_helpers import make_bundle, tiny_card
from scripts.inference import Predictor
from scripts.inference.uncertainty import FlipUncertainty
from scripts.core.sliding_window import FLIP_DISAGREEMENT, FlipTTA, MultiTaskSlidingWindowInferer
from scripts.core.tasks import Task

SIZE = 32


class Ramp(torch.nn.Module):
    """Tumour logit rising left to right whatever the image: its mirror pass sees the ramp reversed."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.classes = classes

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ramp = torch.linspace(-4.0, 4.0, x.shape[-1]).expand(x.shape[0], 1, *x.shape[2:])  # (B, 1, H, W)
        return {Task.SEG: torch.cat([torch.zeros_like(ramp), ramp], 1), Task.CLS: torch.zeros(x.shape[0], self.classes)}


def _ramp_expected() -> tuple[np.ndarray, float]:
    """Disagreement per column and the study score, by hand: p = sigmoid(r), mirror p' = sigmoid(-r)."""
    r = np.linspace(-4.0, 4.0, SIZE)
    p, q = 1 / (1 + np.exp(-r)), 1 / (1 + np.exp(r))
    d = np.abs(p - q)  # every column is lesion for one pass: max(p, q) >= 0.5
    return d, float(d.mean())


def test_flip_uncertainty_by_hand() -> None:
    acc = FlipUncertainty((2, 2), keep_map=True)
    flip = torch.tensor([[[[0.2, 0.9], [0.0, 0.4]], [[0.7, 0.95], [0.1, 0.3]]]])  # (1, 2, 2, 2)
    np.testing.assert_allclose(acc.add(flip).numpy(), [[[0.2, 0.9], [0.0, 0.4]]])
    assert acc.voxels == 2 and acc.score == pytest.approx((0.2 + 0.9) / 2)  # only max >= 0.5 counts
    assert FlipUncertainty().score == 0.0 and FlipUncertainty().map is None  # no lesion anywhere: the passes agree


def test_flip_uncertainty_needs_two_channels() -> None:
    with pytest.raises(ValueError, match="must be"):
        FlipUncertainty().add(torch.zeros(1, 3, 4, 4))


def test_sliding_window_stitches_the_disagreement() -> None:
    net = FlipTTA(Ramp(3), 2)
    x = torch.zeros(1, 1, 40, SIZE)
    out = MultiTaskSlidingWindowInferer((16, SIZE), overlap=0.5)(x, net)
    d, _ = _ramp_expected()
    torch.testing.assert_close(out[FLIP_DISAGREEMENT][0, 0], torch.tensor(d, dtype=torch.float32).expand(40, SIZE),
                               atol=1e-5, rtol=1e-5)


def _ramp_predictor(tta: bool) -> Predictor:
    return Predictor(Ramp(), tiny_card(size=SIZE), device="cpu", tta=tta)


def test_predictor_score_and_png_map_by_hand(tmp_path) -> None:
    Image.fromarray((np.arange(SIZE * SIZE) % 251).reshape(SIZE, SIZE).astype(np.uint8)).save(tmp_path / "x.png")
    pred = _ramp_predictor(True).predict(tmp_path / "x.png", output_dir=tmp_path / "out", uncertainty_map=True)
    d, score = _ramp_expected()
    assert pred.result["segmentation"]["uncertainty"] == pytest.approx(score, abs=1e-4)
    np.testing.assert_allclose(pred.uncertainty, np.broadcast_to(d, (SIZE, SIZE)), atol=1e-5)
    path = tmp_path / "out" / "x_uncertainty.png"
    assert pred.result["outputs"]["uncertainty_map"] == str(path) and pred.paths["uncertainty_map"] == path
    np.testing.assert_array_equal(np.asarray(Image.open(path)), np.round(np.broadcast_to(d, (SIZE, SIZE)) * 255))
    u_dx = pred.result["diagnosis"]["uncertainty"]  # uniform class logits: 1
    assert pred.result["review_priority"] == pytest.approx(1 - (1 - u_dx) * (1 - pred.result["segmentation"]["uncertainty"]), abs=1e-4)


def test_without_tta_the_uncertainty_is_null_and_no_map_can_be_asked(tmp_path) -> None:
    Image.fromarray(np.eye(SIZE, dtype=np.uint8) * 200).save(tmp_path / "x.png")
    pred = _ramp_predictor(False).predict(tmp_path / "x.png")
    assert pred.result["segmentation"]["uncertainty"] is None and pred.uncertainty is None
    with pytest.raises(ValueError, match="needs flip TTA"):
        _ramp_predictor(False).predict(tmp_path / "x.png", output_dir=tmp_path / "out", uncertainty_map=True)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_map_option_leaves_the_results_bit_identical(tmp_path) -> None:
    bundle = make_bundle(tmp_path / "bundle", wired=False)  # random weights: the passes disagree
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((40, 36)) * 255).astype(np.uint8)).save(tmp_path / "x.png")
    predictor = Predictor.from_bundle(bundle, device="cpu", tta=True)
    plain = predictor.predict(tmp_path / "x.png", output_dir=tmp_path / "a")
    mapped = predictor.predict(tmp_path / "x.png", output_dir=tmp_path / "b", uncertainty_map=True)
    np.testing.assert_array_equal(plain.label, mapped.label)
    for key in ("diagnosis", "review_priority"):
        assert plain.result[key] == mapped.result[key]
    assert plain.result["segmentation"]["uncertainty"] == mapped.result["segmentation"]["uncertainty"]
    assert mapped.uncertainty.max() > 0  # the map is not blank
    assert (tmp_path / "a" / "x_seg.png").read_bytes() == (tmp_path / "b" / "x_seg.png").read_bytes()
    assert "uncertainty_map" not in plain.result["outputs"] and mapped.uncertainty.shape == (40, 36)


def test_nifti_map_on_the_input_grid_3d(tmp_path, bundle3d) -> None:
    vol = np.zeros((20, 18, 16), np.float32)
    vol[4:12, 5:11, 3:9] = 1.0
    vol += np.random.default_rng(0).random(vol.shape).astype(np.float32) * 0.1
    image = sitk.GetImageFromArray(np.ascontiguousarray(vol.T))
    image.SetSpacing((1.5, 1.0, 2.0))
    image.SetOrigin((-10.0, 5.0, 3.0))
    sitk.WriteImage(image, str(tmp_path / "v.nii.gz"))
    pred = Predictor.from_bundle(bundle3d, device="cpu", tta=True).predict(tmp_path / "v.nii.gz", output_dir=tmp_path / "out",
                                                                          uncertainty_map=True)
    written = sitk.ReadImage(str(tmp_path / "out" / "v_uncertainty.nii.gz"))
    assert written.GetSize() == image.GetSize() and written.GetSpacing() == image.GetSpacing()
    assert written.GetOrigin() == image.GetOrigin() and written.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_allclose(sitk.GetArrayFromImage(written).T, np.round(pred.uncertainty * 255) / 255, atol=1e-7)
    assert 0.0 <= pred.result["segmentation"]["uncertainty"] <= 1.0
    assert json.loads((tmp_path / "out" / "v_result.json").read_text())["outputs"]["uncertainty_map"].endswith(
        "v_uncertainty.nii.gz")


def test_cli_map_needs_tta_and_the_worklist_gets_the_score(tmp_path, bundle2d, capsys) -> None:
    from scripts.infer import main

    rng = np.random.default_rng(2)
    for name in ("a", "b"):
        Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(tmp_path / f"{name}.png")
    inputs = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    assert main([*inputs, "--out", str(tmp_path / "no"), "--bundle", str(bundle2d), "--device", "cpu", "--no-tta",
                 "--uncertainty-map"]) == 1
    assert "--uncertainty-map needs flip TTA" in capsys.readouterr().err.splitlines()[-1]
    out = tmp_path / "out"
    assert main([*inputs, "--out", str(out), "--bundle", str(bundle2d), "--device", "cpu", "--tta", "--uncertainty-map"]) == 0
    assert (out / "a_uncertainty.png").is_file() and (out / "b_uncertainty.png").is_file()
    rows = (out / "worklist.csv").read_text(encoding="utf-8").splitlines()
    column = rows[0].split(",").index("segmentation_uncertainty")
    results = {r: json.loads((out / f"{r}_result.json").read_text()) for r in ("a", "b")}
    assert sorted(float(row.split(",")[column]) for row in rows[1:]) == sorted(
        r["segmentation"]["uncertainty"] for r in results.values())


def test_map_writer_refuses_a_3d_png(tmp_path) -> None:
    from scripts.inference.writers import write_uncertainty_map

    with pytest.raises(ValueError, match="PNG uncertainty map needs a 2D map"):
        write_uncertainty_map(np.zeros((4, 4, 2), np.float32), None, True, tmp_path / "u.png")


class Ramp3D(torch.nn.Module):
    """Tumour logit rising along the first spatial axis (the axis FlipTTA mirrors in 3D), whatever the image."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ramp = torch.linspace(-4.0, 4.0, x.shape[2]).view(1, 1, -1, 1, 1).expand(x.shape[0], 1, *x.shape[2:])
        return {Task.SEG: torch.cat([torch.zeros_like(ramp), ramp], 1), Task.CLS: torch.zeros(x.shape[0], 4)}


@pytest.mark.parametrize("canonical", [False, True], ids=["file-order", "canonical-grid"])
def test_3d_paths_score_and_map_by_hand(tmp_path, canonical: bool) -> None:
    """One window covering the volume: the map is the hand formula along X on both 3D paths (the canonical
    grid of an LPS study at its own spacing is the study's grid, voxel for voxel)."""
    shape = (SIZE, 12, 8)
    vol = np.random.default_rng(3).random(shape).astype(np.float32)
    image = sitk.GetImageFromArray(np.ascontiguousarray(vol.T))
    image.SetSpacing((1.0, 1.5, 2.0))
    sitk.WriteImage(image, str(tmp_path / "v.nii.gz"))
    card = tiny_card(spatial_dims=3)
    card["spatial_size"] = list(shape)
    if canonical:
        card.update(target_spacing=[1.0, 1.5, 2.0], orientation="LPS", crop_foreground=False)
    pred = Predictor(Ramp3D(), card, device="cpu", tta=True).predict(tmp_path / "v.nii.gz", uncertainty_map=True)
    d, score = _ramp_expected()
    np.testing.assert_allclose(pred.uncertainty, np.broadcast_to(d[:, None, None], shape), atol=1e-5)
    assert pred.result["segmentation"]["uncertainty"] == pytest.approx(score, abs=1e-4)


@pytest.mark.parametrize("shape", [(SIZE, SIZE, 3), (SIZE, SIZE)], ids=["volume", "2d-grid"])
def test_2d_model_on_a_volume_map_by_hand(tmp_path, shape: tuple) -> None:
    """A 2D model sees axial slices with columns R->L: in an LPS-stored study that is +X, so the ramp's
    disagreement runs along X on the volume's own voxels (a 2D NIfTI is one such slice)."""
    vol = np.random.default_rng(4).random(shape).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(vol.T)), str(tmp_path / "v.nii.gz"))
    pred = _ramp_predictor(True).predict(tmp_path / "v.nii.gz", output_dir=tmp_path / "out", uncertainty_map=True)
    d, score = _ramp_expected()
    expected = np.broadcast_to(d.reshape(-1, *[1] * (len(shape) - 1)), shape)
    np.testing.assert_allclose(pred.uncertainty, expected, atol=1e-5)
    assert pred.result["segmentation"]["uncertainty"] == pytest.approx(score, abs=1e-4)
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "v_uncertainty.nii.gz"))).T
    np.testing.assert_allclose(written, np.round(expected * 255) / 255, atol=1e-7)
