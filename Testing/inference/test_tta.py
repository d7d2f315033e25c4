"""Flip test-time augmentation (scripts.core.sliding_window.FlipTTA) and the Predictor's calibrated diagnosis."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from infer_helpers import make_bundle
from scripts.inference import Predictor
from scripts.inference.engine import diagnosis
from scripts.core.sliding_window import FLIP_DISAGREEMENT, FlipTTA
from scripts.core.networks import MultiTaskUNet


@pytest.mark.parametrize("dims, shape, flip", [(2, (2, 1, 32, 24), 3), (3, (1, 1, 16, 16, 8), 2)])
def test_flip_tta_averages_the_image_and_its_mirror(dims: int, shape: tuple, flip: int) -> None:
    torch.manual_seed(0)
    net = MultiTaskUNet(spatial_dims=dims, channels=(4, 8), num_classes=3, cls_pooling="lesion").eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        out = FlipTTA(net, dims)(x)
        a, b = net(x), net(x.flip(flip))
    torch.testing.assert_close(out["seg"], 0.5 * (a["seg"] + b["seg"].flip(flip)))
    torch.testing.assert_close(out["cls"], 0.5 * (a["cls"] + b["cls"]))
    p_a = 1 - torch.softmax(a["seg"], 1)[:, :1]  # both passes' tumour probability: disagreement and max
    p_b = (1 - torch.softmax(b["seg"], 1)[:, :1]).flip(flip)
    torch.testing.assert_close(out[FLIP_DISAGREEMENT], torch.cat([(p_a - p_b).abs(), torch.maximum(p_a, p_b)], 1))
    assert out[FLIP_DISAGREEMENT][:, 0].max() > 0  # a random network is not mirror-symmetric
    with torch.no_grad():  # a mirror-image input gives the mirror-image segmentation and the same diagnosis
        mirrored = FlipTTA(net, dims)(x.flip(flip))
    torch.testing.assert_close(mirrored["seg"], out["seg"].flip(flip), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mirrored["cls"], out["cls"], atol=1e-5, rtol=1e-4)


def test_predictor_with_tta_and_temperature(tmp_path) -> None:
    bundle = make_bundle(tmp_path / "bundle")
    card_path = bundle / "models" / "model_card.json"
    card = json.loads(card_path.read_text())
    card["temperature"] = 2.0
    card_path.write_text(json.dumps(card))
    image = np.zeros((40, 40), np.uint8)
    image[5:15, 22:34] = 255  # an asymmetric bright "tumor": the threshold model marks it, mirrored or not
    Image.fromarray(image).save(tmp_path / "x.png")
    plain = Predictor.from_bundle(bundle, device="cpu").predict(tmp_path / "x.png")
    tta = Predictor.from_bundle(bundle, device="cpu", tta=True).predict(tmp_path / "x.png")
    assert tta.result["tta"] is True and plain.result["tta"] is False
    np.testing.assert_array_equal(tta.label, plain.label)  # the threshold model is mirror-equivariant
    assert tta.result["diagnosis"]["calibrated"] is True
    assert tta.result["diagnosis"]["label"] == plain.result["diagnosis"]["label"]


def test_temperature_softens_the_probabilities_but_keeps_the_label() -> None:
    logits = torch.tensor([3.0, 1.0, 0.0])
    sharp, soft = diagnosis(logits, ["a", "b", "c"]), diagnosis(logits, ["a", "b", "c"], temperature=3.0)
    assert sharp["label"] == soft["label"] == "a"
    assert soft["probabilities"]["a"] < sharp["probabilities"]["a"]
    assert soft["calibrated"] and not sharp["calibrated"]
    assert soft["probabilities"]["a"] == pytest.approx(float(torch.softmax(logits / 3, 0)[0]), abs=1e-4)
