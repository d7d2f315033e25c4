"""Where the plan is used: the configs default to it (overrides win), the model card keeps it, and
training and the Predictor normalise with one definition (``scripts.core.transforms.normalize``).

Configs are parsed in-process with MONAI's ``ConfigParser`` exactly as ``monai.bundle run`` parses
them (the full training runs of ``test_bundle_workflow`` / ``test_train_prepared`` go through the
same keys); the datasets are tiny and generated in ``tmp_path``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.transforms import RandAffined
from PIL import Image

from bundle_config_helpers import noisy_png, tiny_datalist, train_parser
from scripts.inference import Predictor
from scripts.inference.errors import InputError
from scripts.core.model_card import DEFAULT_CARD, make_card
from scripts.core.plan import MAX_EPOCHS_CAP, MIN_BATCH, load_or_create_plan
from scripts.core.tasks import Task
from scripts.core.transforms import (
    AUGMENT_STRENGTHS,
    IMAGE,
    check_normalization,
    normalize,
    normalize_ct,
    normalize_intensity,
    normalize_zscore,
    train_transforms,
    val_transforms,
)

CT_SPEC = {"mode": "ct", "lower": [40.0], "upper": [200.0], "mean": [120.0], "std": [30.0]}

# --- the normalisations --------------------------------------------------------------------------


def test_zscore_uses_the_nonzero_voxels_and_keeps_zeros():
    image = np.zeros((2, 6, 6), np.float32)
    image[0, 1:5, 1:5] = np.arange(16).reshape(4, 4) + 10.0
    out = normalize_zscore(image)
    inside = out[0, 1:5, 1:5]
    assert abs(float(inside.mean())) < 1e-5 and float(inside.std()) == pytest.approx(1.0, abs=1e-5)
    assert not out[0, 0].any() and not out[1].any()  # background and an empty channel stay 0
    tensor = normalize_zscore(torch.from_numpy(image))
    assert isinstance(tensor, torch.Tensor) and torch.allclose(tensor, torch.from_numpy(out))


def test_ct_clips_to_the_dataset_window_then_standardises():
    image = np.array([[[-1000.0, 40.0, 120.0, 200.0, 3000.0]]], np.float32)
    out = normalize_ct(image, [40.0], [200.0], [120.0], [40.0])
    np.testing.assert_allclose(out[0, 0], [-2.0, -2.0, 0.0, 2.0, 2.0])
    two = normalize_ct(np.stack([image[0], image[0] * 2]), 0.0, 100.0, [50.0, 50.0], [50.0, 25.0])
    np.testing.assert_allclose(two[1, 0], [-2.0, 1.2, 2.0, 2.0, 2.0])  # [-2000, 80, 240, ...] clipped to 0..100, (x-50)/25
    with pytest.raises(ValueError, match="'mean' has 2 values for 1 channel"):
        normalize_ct(image, [0.0], [1.0], [0.0, 1.0], [1.0])
    with pytest.raises(ValueError, match="std must be positive"):
        normalize_ct(image, [0.0], [1.0], [0.0], [0.0])


def test_normalize_dispatches_on_the_spec():
    image = np.random.default_rng(0).uniform(0, 255, (1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(normalize(image), normalize_intensity(image))  # no spec: percentiles, as before
    np.testing.assert_array_equal(normalize(image, {"mode": "percentile"}), normalize_intensity(image))
    np.testing.assert_array_equal(normalize(image, "zscore"), normalize_zscore(image))
    np.testing.assert_array_equal(normalize(image, CT_SPEC), normalize_ct(image, [40.0], [200.0], [120.0], [30.0]))
    with pytest.raises(ValueError, match="mode must be one of"):
        check_normalization("minmax")
    with pytest.raises(ValueError, match="'ct' needs the dataset statistics"):
        check_normalization("ct")


def test_training_chain_applies_the_chosen_normalization(tmp_path):
    sample = {IMAGE: str(noisy_png(tmp_path / "a.png")), "class": 1}
    raw = np.asarray(Image.open(tmp_path / "a.png"), np.float32)[None]
    for spec in (None, "zscore", CT_SPEC):
        out = val_transforms(2, (40, 40), 1, 2, normalization=spec)(dict(sample))[IMAGE]
        np.testing.assert_allclose(out.numpy(), normalize(raw, spec), atol=1e-5)
    with pytest.raises(ValueError, match="'ct' needs"):
        val_transforms(2, (40, 40), 1, 2, normalization="ct")


def test_augmentation_strength_sets_the_knobs():
    def affine_prob(chain) -> float:
        return next(t.prob for t in chain.transforms if isinstance(t, RandAffined))

    assert AUGMENT_STRENGTHS["medium"] == {}  # medium is today's defaults: the demo's chain is unchanged
    assert affine_prob(train_transforms(2, (32, 32), 1, 2)) == 0.5
    assert affine_prob(train_transforms(2, (32, 32), 1, 2, augment_strength="strong")) == 0.7
    assert affine_prob(train_transforms(2, (32, 32), 1, 2, augment_strength="light")) == 0.3
    assert affine_prob(train_transforms(2, (32, 32), 1, 2, augment_strength="strong", p_affine=0.1)) == 0.1
    with pytest.raises(ValueError, match="augment_strength must be one of"):
        train_transforms(2, (32, 32), 1, 2, augment_strength="extreme")


# --- the configs default to the plan --------------------------------------------------------------


def test_train_config_takes_its_settings_from_the_plan(tmp_path):
    datalist = tiny_datalist(tmp_path)
    parser = train_parser({"datalist_file": str(datalist), "ckpt_dir": str(tmp_path / "models")})
    plan = parser.get_parsed_content("plan")
    assert (tmp_path / "plan.json").is_file() and plan == load_or_create_plan(datalist, device="cpu")
    assert parser.get_parsed_content("spatial_size") == plan["spatial_size"] == [96, 96]
    assert parser.get_parsed_content("network_channels") == plan["network_channels"]
    assert parser.get_parsed_content("batch_size") == plan["batch_size"] == MIN_BATCH[2]
    assert parser.get_parsed_content("augment_strength") == plan["augmentation"] == "strong"
    # 12 images in batches of 4: 3 steps an epoch, so the 7200 steps' epochs are capped
    assert parser.get_parsed_content("max_epochs") == plan["max_epochs"] == MAX_EPOCHS_CAP == 1000
    assert parser.get_parsed_content("early_stop_patience") == 333  # a third of the epochs: the cosine's tail runs
    card = parser.get_parsed_content("model_card")
    assert card["plan"]["spatial_size"] == [96, 96] and card["plan"]["datalist_sha256"] == plan["datalist_sha256"]
    assert "monai" not in card["plan"]["fingerprint"] and card["normalization"] == {"mode": "percentile"}
    sample = parser.get_parsed_content("train#dataset")[0]
    assert tuple(sample[IMAGE].shape) == (1, 96, 96)


def test_command_line_overrides_win_over_the_plan(tmp_path, monkeypatch):
    from scripts.core import sliding_window

    monkeypatch.setattr(sliding_window, "cpu_bf16_native", lambda: False)  # the float32 CPU widths, on any CPU
    datalist = tiny_datalist(tmp_path)
    parser = train_parser({"datalist_file": str(datalist), "spatial_size": [64, 64], "batch_size": 3,
                      "normalization": "zscore", "augment_strength": "light", "max_epochs": 7})
    assert parser.get_parsed_content("max_epochs") == 7
    assert parser.get_parsed_content("spatial_size") == [64, 64]
    assert parser.get_parsed_content("network_channels") == [8, 16, 32, 64, 128]  # re-decided for 64: 4 px bottleneck
    assert parser.get_parsed_content("batch_size") == 3
    card = parser.get_parsed_content("model_card")
    assert card["spatial_size"] == [64, 64] and card["normalization"] == {"mode": "zscore"}
    assert card["plan"]["spatial_size"] == [96, 96]  # the card still shows what the plan said
    image = parser.get_parsed_content("validate#dataset")[0][IMAGE]
    assert tuple(image.shape) == (1, 64, 64) and float(image.min()) < 0  # z-scored, not 0..1
    explicit = train_parser({"datalist_file": str(datalist), "network_channels": [4, 8, 16]})
    assert explicit.get_parsed_content("network_channels") == [4, 8, 16]


def test_the_built_in_synthetic_default_keeps_the_demo_settings(tmp_path):
    parser = train_parser({"dataset_dir": str(tmp_path / "synthetic"), "datalist_file#n_train": 16,
                      "datalist_file#n_val": 4, "datalist_file#n_test": 4})
    plan = parser.get_parsed_content("plan")
    assert plan["pinned"] and plan["fingerprint"]["n_training"] == 16
    assert parser.get_parsed_content("spatial_size") == [96, 96]
    assert parser.get_parsed_content("network_channels") == [8, 16, 32, 64, 128]
    assert parser.get_parsed_content("batch_size") == parser.get_parsed_content("val_batch_size") == 16
    assert parser.get_parsed_content("normalization") == {"mode": "percentile"}
    assert parser.get_parsed_content("augment_strength") == "medium"
    assert parser.get_parsed_content("max_epochs") == 30  # the demo's published figures are from 30 epochs
    assert parser.get_parsed_content("early_stop_patience") == 10


def test_the_3d_config_takes_spacing_orientation_and_patch_from_the_plan(tmp_path):
    parser = train_parser({"dataset_dir": str(tmp_path / "synthetic3d"), "datalist_file#n_train": 4,
                      "datalist_file#n_val": 1, "datalist_file#n_test": 1, "datalist_file#size": 32},
                     ("train.json", "train_3d.json"))
    plan = parser.get_parsed_content("plan")
    assert parser.get_parsed_content("orientation") == plan["orientation"] == "RAS"
    assert parser.get_parsed_content("target_spacing") == plan["target_spacing"] == [3.0, 3.0, 6.0]
    assert parser.get_parsed_content("spatial_size") == [64, 64, 32]  # the 3D demo's patch (pinned)
    assert parser.get_parsed_content("network_channels") == [16, 32, 64, 128]
    assert parser.get_parsed_content("batch_size") == 2 and parser.get_parsed_content("val_batch_size") == 1
    assert parser.get_parsed_content("max_epochs") == 30
    # lesion-free patches keep their study's class; the tumour-free class (by name) is handed on for the option
    rule = parser.get_parsed_content("train#preprocessing").transforms[-1]
    classes = parser.get_parsed_content("classes")
    assert type(rule).__name__ == "LesionFreePatchClassd" and rule.rule == "keep"
    assert rule.tumor_free == classes.index("no_tumor")
    parser["lesion_free_patch_class"] = "tumor_free"  # as --lesion_free_patch_class tumor_free sets it
    assert parser.get_parsed_content("train#preprocessing", lazy=False).transforms[-1].rule == "tumor_free"
    crops = lambda: [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing", lazy=False).transforms
                     if type(t).__name__ == "ForegroundBoxd"]  # noqa: E731
    assert crops() == ["ForegroundBoxd"]
    parser["crop_foreground"] = "false"  # the text --crop_foreground false hands the config
    assert crops() == [] and parser.get_parsed_content("model_card#crop_foreground", lazy=False) is False


# --- the model card and the Predictor ---------------------------------------------------------------


def test_cards_with_and_without_a_plan():
    kwargs = dict(network_kwargs=dict(DEFAULT_CARD["network"]), channels=["T1"], segments=["bg", "t"],
                  classes=["controls", "cases"], spatial_size=[96, 96])
    old_style = make_card(**kwargs)
    assert "plan" not in old_style and old_style["normalization"] == {"mode": "percentile"}
    assert old_style["no_tumor_class"] is None  # no class name says it
    plan = {"spatial_size": [96, 96], "normalization": CT_SPEC, "no_tumor_class": "controls",
            "fingerprint": {"monai": {"big": 1}, "modality": "CT"}}
    card = make_card(**kwargs, plan=plan)
    assert card["normalization"] == CT_SPEC and card["plan"]["fingerprint"] == {"modality": "CT"}
    assert card["no_tumor_class"] == "controls"  # from the plan: the class whose masks are empty
    assert make_card(**kwargs, plan=plan, normalization="zscore")["normalization"] == {"mode": "zscore"}


class _Spy(torch.nn.Module):
    """Records its inputs; segments nothing, no diagnosis preference."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> dict:
        self.seen.append(x.detach().cpu().clone())
        seg = torch.zeros(x.shape[0], 2, *x.shape[2:])
        seg[:, 1] = -1.0
        return {Task.SEG: seg, Task.CLS: torch.zeros(x.shape[0], 4)}


@pytest.mark.parametrize("spec", [None, {"mode": "zscore"}, CT_SPEC])
def test_predictor_normalises_like_training(tmp_path, spec):
    """The network sees in inference exactly what the validation chain gives for the same file."""
    png = noisy_png(tmp_path / "study.png", size=40)
    card = json.loads(json.dumps(DEFAULT_CARD))
    card["spatial_size"] = [40, 40]  # no resize: exact values
    if spec is not None:
        card["normalization"] = spec
    spy = _Spy()
    Predictor(spy, card, device="cpu").predict(png)
    seen = spy.seen[0][0].numpy()
    trained = val_transforms(2, (40, 40), 1, 2, normalization=spec)({IMAGE: str(png)})[IMAGE].numpy()
    np.testing.assert_allclose(seen, trained, atol=1e-5)
    if spec == CT_SPEC:
        assert float(seen.max()) == pytest.approx((200 - 120) / 30, abs=1e-5)  # clipped at the dataset's upper bound


def test_predictor_refuses_a_card_with_an_unusable_normalization():
    card = json.loads(json.dumps(DEFAULT_CARD))
    card["normalization"] = {"mode": "ct"}
    with pytest.raises(InputError, match="'ct' needs"):
        Predictor(_Spy(), card, device="cpu")
