"""configs/inference.json: the network comes from the model card and ``run`` predicts a datalist's test split."""

from __future__ import annotations

import json

import numpy as np
import pytest
from monai.bundle import ConfigParser
from PIL import Image

from scripts.inference import BatchRunner, Predictor, load_settings


def _parser(bundle_root, config_root, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(config_root / "configs" / "inference.json"))
    parser.read_meta(str(config_root / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle_root)
    for key, value in overrides.items():
        parser[key] = value
    return parser


def test_network_and_inferer_follow_the_model_card(bundle3d, bundle_root):
    parser = _parser(bundle3d, bundle_root)
    network = parser.get_parsed_content("network_def")
    assert network.segmentation_head.weight.ndim == 5  # the card's 3D network, not a hard-coded one
    predictor = parser.get_parsed_content("predictor")
    assert predictor.inferer.roi_size == (16, 16, 16)
    assert str(predictor.device) in ("cpu", "cuda:0")  # "device": "auto"


def test_the_config_has_monais_inference_properties(bundle3d, bundle_root):
    """Every ID MONAI's ``InferProperties`` requires (``inferer`` among them, which the model-zoo checks ask
    for) is in the file, and ``inferer`` is the Predictor's own sliding-window inferer with the file's settings,
    not a second one."""
    from monai.bundle.properties import InferProperties

    parser = _parser(bundle3d, bundle_root, overlap=0.5, sw_batch_size=3)
    required = [name for name, prop in InferProperties.items() if prop.get("required")]
    assert "inferer" in required
    assert [name for name in required if name not in parser] == []
    inferer, predictor = parser.get_parsed_content("inferer"), parser.get_parsed_content("predictor")
    assert inferer is predictor.inferer
    assert (inferer.roi_size, inferer.overlap, inferer.sw_batch_size) == ((16, 16, 16), 0.5, 3)


def test_the_configs_predictor_is_the_one_from_bundle_builds(bundle2d, bundle_root):
    """``monai.bundle run`` and ``Predictor.from_bundle`` read the same keys; an override reaches both."""
    parsed = _parser(bundle2d, bundle_root).get_parsed_content("predictor")
    assert parsed.settings == Predictor.from_bundle(bundle2d).settings == load_settings()
    assert parsed.sha256 == Predictor.from_bundle(bundle2d).sha256
    changed = _parser(bundle2d, bundle_root, slice_batch_size=5, overlap=0.5, tta=True, device="cpu")
    expected = load_settings(slice_batch_size=5, overlap=0.5, tta=True, device="cpu")
    assert changed.get_parsed_content("predictor").settings == expected


@pytest.mark.parametrize("text, expected", [("false", False), ("no", False), ("true", True), ("ON", True)])
def test_on_off_settings_given_as_text_on_the_command_line(bundle2d, bundle_root, text, expected):
    """``monai.bundle run ... --amp false`` hands the file the text ``'false'``: it means off (not a
    truthy string, not an error), for ``amp``, ``tta`` and ``overlay`` alike."""
    parser = _parser(bundle2d, bundle_root, amp=text, tta=text, overlay=text, device="cpu")
    settings = parser.get_parsed_content("predictor").settings
    assert settings.amp is expected and settings.tta is expected
    assert parser.get_parsed_content("evaluator").options["overlay"] is expected


def test_a_bad_on_off_setting_names_itself(bundle2d, bundle_root):
    with pytest.raises(RuntimeError) as err:  # MONAI's expression error, the knob's own as its cause
        _parser(bundle2d, bundle_root, overlay="maybe").get_parsed_content("evaluator")
    assert "overlay must be true or false, got 'maybe'" in str(err.value.__cause__)


def test_run_predicts_the_test_split(bundle2d, bundle_root, tmp_path):
    (tmp_path / "data").mkdir()
    for name, value in (("a", 40), ("b", 90)):
        Image.fromarray(np.tile(np.arange(0, 256, 16, dtype=np.uint8), (16, 1)) // 2 + value).save(tmp_path / "data" / f"{name}.png")
    datalist = {"name": "tiny", "spatial_dims": 2, "channels": ["T1c"], "segments": ["background", "tumor"],
                "classes": ["glioma", "meningioma", "no_tumor", "pituitary"],
                "test": [{"image": "data/a.png", "class": 0}, {"image": "data/b.png", "class": 2}]}
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    parser = _parser(bundle2d, bundle_root, datalist_file=str(tmp_path / "datalist.json"),
                     output_dir=str(tmp_path / "out"), device="$torch.device('cpu')")
    assert isinstance(parser.get_parsed_content("predictor"), Predictor)
    assert isinstance(parser.get_parsed_content("evaluator"), BatchRunner)
    outcomes = parser.get_parsed_content("run")[0]
    assert [o.ok for o in outcomes] == [True, True]
    results = sorted(p.name for p in (tmp_path / "out").iterdir() if p.name.endswith("_result.json"))
    assert results == ["a_result.json", "b_result.json"]
    probabilities = json.loads((tmp_path / "out" / "a_result.json").read_text())["diagnosis"]["probabilities"]
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-3)
