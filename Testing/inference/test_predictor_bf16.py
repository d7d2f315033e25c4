"""A model trained under CPU bf16 autocast (card ``cpu_bf16``) runs so in the Predictor, on a CPU
that computes bf16 in hardware; everything else keeps float32."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from infer_helpers import tiny_card
from scripts.core.model_card import build_network
from scripts.inference import Predictor
from scripts.inference import predictor as P


def _bundle(root: Path, cpu_bf16: bool | None, spatial_dims: int = 2) -> Path:
    """A random (not wired) tiny network: its outputs depend on every weight, as a trained one's do."""
    card = tiny_card(spatial_dims)
    if cpu_bf16 is not None:
        card["cpu_bf16"] = cpu_bf16
    torch.manual_seed(0)
    network = build_network(card)
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "models" / "model_card.json").write_text(json.dumps(card))
    torch.save(network.state_dict(), root / "models" / "model.pt")
    return root


def _conv_dtypes(predictor: Predictor) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    for m in predictor.network.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)):
            m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


@pytest.fixture
def scan(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    img = (rng.random((48, 40)) * 120).astype(np.uint8)
    img[10:26, 8:22] += 120  # a bright blob for the network to look at
    Image.fromarray(img).save(tmp_path / "scan.png")
    return tmp_path / "scan.png"


def _predict(bundle: Path, scan: Path, **overrides):
    predictor = Predictor.from_bundle(bundle, device="cpu", **overrides)
    seen = _conv_dtypes(predictor)
    return predictor, predictor.predict(scan, output_dir=None), seen


def test_a_bf16_trained_model_runs_in_bf16_on_a_bf16_cpu(tmp_path, monkeypatch, scan):
    monkeypatch.setattr(P, "cpu_bf16_native", lambda: True)
    float_pred, ref, seen32 = _predict(_bundle(tmp_path / "f32", False), scan)
    bf16_pred, out, seen16 = _predict(_bundle(tmp_path / "bf16", True), scan)
    assert float_pred.cpu_bf16 is False and bf16_pred.cpu_bf16 is True
    convs = [m.weight for m in bf16_pred.network.modules()  # the weights whose layout tells NCHW from NHWC
             if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1 and m.weight.shape[-1] > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)  # NHWC, oneDNN's bf16 layout
    assert all(m.weight.is_contiguous() for m in float_pred.network.modules() if isinstance(m, torch.nn.Conv2d))
    assert seen32 and set(seen32) == {torch.float32}
    assert seen16 and set(seen16) == {torch.bfloat16}  # the network really ran in bf16
    assert out.result["model"]["sha256"] == ref.result["model"]["sha256"]  # the same weights
    p16, p32 = out.result["diagnosis"]["probabilities"], ref.result["diagnosis"]["probabilities"]
    assert p16 != p32  # computed otherwise ...
    assert max(abs(p16[c] - p32[c]) for c in p32) < 0.02  # ... to the same answer within bf16's precision
    assert out.label.dtype == np.uint8 and out.label.shape == ref.label.shape == (48, 40)
    assert np.mean(out.label == ref.label) > 0.98


@pytest.mark.parametrize("card_says, native, amp", [(False, True, True), (None, True, True), (True, False, True),
                                                    (True, True, False)])
def test_float32_everywhere_else(tmp_path, monkeypatch, scan, card_says, native, amp):
    """A float32 model, an older card without the key, a CPU without hardware bf16, or ``amp: false``:
    the network runs float32, bit for bit what a float32 card gives."""
    monkeypatch.setattr(P, "cpu_bf16_native", lambda: native)
    _, ref, _ = _predict(_bundle(tmp_path / "ref", False), scan)
    predictor, out, seen = _predict(_bundle(tmp_path / "x", card_says), scan, amp=amp)
    assert predictor.cpu_bf16 is False
    assert seen and set(seen) == {torch.float32}
    assert out.result["diagnosis"]["probabilities"] == ref.result["diagnosis"]["probabilities"]
    np.testing.assert_array_equal(out.label, ref.label)


def test_a_3d_model_runs_its_windows_in_bf16(tmp_path, monkeypatch):
    import SimpleITK as sitk

    monkeypatch.setattr(P, "cpu_bf16_native", lambda: True)
    rng = np.random.default_rng(1)
    volume = (rng.random((24, 20, 18)) * 100).astype(np.float32)
    volume[6:14, 5:12, 4:10] += 150
    image = sitk.GetImageFromArray(volume.T.copy())
    image.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(image, str(tmp_path / "vol.nii.gz"))
    outs = {}
    for flag in (False, True):
        predictor, out, seen = _predict(_bundle(tmp_path / str(flag), flag, spatial_dims=3), tmp_path / "vol.nii.gz")
        assert seen and set(seen) == {torch.bfloat16 if flag else torch.float32}
        outs[flag] = out
    assert outs[True].label.shape == outs[False].label.shape == (24, 20, 18)
    assert np.mean(outs[True].label == outs[False].label) > 0.98
    p16, p32 = (outs[f].result["diagnosis"]["probabilities"] for f in (True, False))
    assert max(abs(p16[c] - p32[c]) for c in p32) < 0.02
