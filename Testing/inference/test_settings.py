"""One Predictor configuration: the knobs of configs/inference.json reach every Predictor, overrides win."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from infer_helpers import tiny_card, wire_threshold
from scripts.inference import InputError, Predictor
from scripts.inference.settings import CONFIG_FILE, InferenceSettings, config_file, load_settings
from scripts.core.sliding_window import FlipTTA
from scripts.core.model_card import build_network

KEYS = ["device", "slice_batch_size", "sw_batch_size", "overlap", "window_mode", "amp", "tta"]


class BatchSpy(torch.nn.Module):
    """The network, counting the batch size of every forward pass."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network, self.batches = network, []

    def forward(self, x: torch.Tensor):
        self.batches.append(x.shape[0])
        return self.network(x)


def _bundle_with(tmp_path, source, **changes):
    """A copy of bundle ``source`` (models/) with the repository's inference.json, ``changes`` written into it."""
    root = tmp_path / "bundle"
    shutil.copytree(source / "models", root / "models")
    config = json.loads(config_file().read_text(encoding="utf-8"))
    config.update(changes)
    (root / "configs").mkdir()
    (root / CONFIG_FILE).write_text(json.dumps(config, indent=4), encoding="utf-8")
    return root


def test_the_bundle_json_holds_every_setting_and_nothing_else_decides_them(bundle_root):
    raw = json.loads((bundle_root / CONFIG_FILE).read_text(encoding="utf-8"))
    settings = load_settings()
    assert [f for f in InferenceSettings.__dataclass_fields__] == KEYS
    assert {k: getattr(settings, k) for k in KEYS} == {k: raw[k] for k in KEYS}
    card = tiny_card(3)
    predictor = Predictor(build_network(card), card, device="cpu")  # no settings given: the bundle's JSON
    assert predictor.settings == settings.with_overrides(device="cpu")
    inferer = predictor.inferer
    assert (inferer.sw_batch_size, inferer.overlap, inferer.mode) == (raw["sw_batch_size"], raw["overlap"], raw["window_mode"])


def test_from_bundle_runs_with_the_values_of_its_own_inference_json(bundle2d, tmp_path):
    root = _bundle_with(tmp_path, bundle2d, slice_batch_size=3, sw_batch_size=2, overlap=0.5, window_mode="constant",
                        amp=False, tta=True, device="cpu")
    predictor = Predictor.from_bundle(root)
    assert predictor.settings == InferenceSettings("cpu", 3, 2, 0.5, "constant", False, True)
    assert isinstance(predictor.network, FlipTTA) and predictor.device == torch.device("cpu")
    assert (predictor.inferer.sw_batch_size, predictor.inferer.overlap, predictor.inferer.mode) == (2, 0.5, "constant")

    plain = Predictor.from_bundle(_bundle_with(tmp_path / "b", bundle2d, slice_batch_size=3), device="cpu")
    plain.network = spy = BatchSpy(plain.network)
    volume = np.random.default_rng(0).random((32, 32, 7)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(volume.T)), str(tmp_path / "vol.nii.gz"))
    pred = plain.predict(tmp_path / "vol.nii.gz")
    assert spy.batches == [3, 3, 1] and pred.result["tta"] is False


def test_keyword_overrides_win_and_none_keeps_the_file(bundle2d, tmp_path):
    root = _bundle_with(tmp_path, bundle2d, overlap=0.5, tta=True)
    predictor = Predictor.from_bundle(root, device="cpu", overlap=0.1, tta=False, slice_batch_size=None)
    file_settings = load_settings(root / CONFIG_FILE)
    assert predictor.settings == file_settings.with_overrides(device="cpu", overlap=0.1, tta=False)
    assert predictor.settings.slice_batch_size == file_settings.slice_batch_size
    assert not isinstance(predictor.network, FlipTTA) and predictor.inferer.overlap == 0.1


def test_a_folder_without_configs_uses_the_codes_inference_json(bundle2d):
    assert config_file(bundle2d) == config_file()  # make_bundle writes models/ only
    assert Predictor.from_bundle(bundle2d, device="cpu").settings == load_settings(device="cpu")


def test_unknown_setting_is_refused():
    with pytest.raises(ValueError, match=r"unknown inference setting\(s\) \['batch_size'\]; the settings are"):
        load_settings(batch_size=8)
    card = tiny_card(2)
    with pytest.raises(ValueError, match=r"unknown inference setting\(s\) \['inferer'\]"):
        Predictor(build_network(card), card, inferer=None)


@pytest.mark.parametrize("key, value, message", [
    ("slice_batch_size", 0, r"'slice_batch_size' must be a positive integer, got 0"),
    ("sw_batch_size", 2.5, r"'sw_batch_size' must be a positive integer, got 2.5"),
    ("overlap", 1.0, r"'overlap' must be a number in \[0, 1\), got 1.0"),
    ("window_mode", "mean", r"'window_mode' must be one of \['gaussian', 'constant'\], got 'mean'"),
    ("amp", "yes", r"'amp' must be true or false, got 'yes'"),
    ("device", 0, r"'device' must be a string such as 'auto' or 'cpu', got 0"),
])
def test_bad_value_in_the_json_names_the_file_and_the_key(bundle2d, tmp_path, key, value, message):
    root = _bundle_with(tmp_path, bundle2d, **{key: value})
    with pytest.raises(ValueError, match=f"inference.json: inference setting {message}"):
        load_settings(root / CONFIG_FILE)
    with pytest.raises(InputError, match=message):
        Predictor.from_bundle(root)


def test_missing_or_broken_configuration_names_the_file(bundle2d, tmp_path):
    root = _bundle_with(tmp_path, bundle2d)
    config = json.loads((root / CONFIG_FILE).read_text(encoding="utf-8"))
    del config["overlap"]
    (root / CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(InputError, match=r"inference.json: lacks the inference setting\(s\) \['overlap'\]"):
        Predictor.from_bundle(root)
    (root / CONFIG_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match=r"inference.json: not a readable inference configuration"):
        Predictor.from_bundle(root)
    with pytest.raises(ValueError, match=r"nowhere.json: inference configuration not found"):
        load_settings(tmp_path / "nowhere.json")
