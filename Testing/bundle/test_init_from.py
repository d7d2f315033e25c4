"""``init_from``: fine-tuning starts from a trained model's weights, only when its card fits this run."""

from __future__ import annotations

import json

import pytest
import torch

from scripts.core.model_card import DEFAULT_CARD, build_network, make_card
from scripts.core.plan import file_sha256


def _card(**changes) -> dict:
    card = json.loads(json.dumps(DEFAULT_CARD))
    card["network"]["channels"] = [4, 8, 16]
    card["normalization"] = {"mode": "percentile"}
    card.update(changes)
    return card


@pytest.fixture
def trained(tmp_path):
    card = _card()
    torch.manual_seed(1)
    net = build_network(card)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    (tmp_path / "model_card.json").write_text(json.dumps(card), encoding="utf-8")
    return tmp_path / "model.pt", net


def test_init_from_loads_the_weights(trained):
    path, net = trained
    torch.manual_seed(2)
    loaded = build_network(_card(), init_from=path)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), loaded.state_dict().values()))
    assert not all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), build_network(_card()).state_dict().values()))


def test_another_setup_is_refused_naming_each_difference(trained):
    path, _ = trained
    other = _card(classes=["a", "b", "c", "d"], spatial_size=[64, 64])
    with pytest.raises(ValueError, match=r"model_card.json: the init_from model was trained for another setup"
                                         r"(.|\n)*classes: \['glioma'(.|\n)*spatial_size: \[96, 96\]"):
        build_network(other, init_from=path)
    wider = _card()
    wider["network"]["channels"] = [8, 16, 32]
    with pytest.raises(ValueError, match=r"network.channels: \[4, 8, 16\] in model_card.json, \[8, 16, 32\] now"):
        build_network(wider, init_from=path)


def test_missing_card_or_bad_weights_name_the_file(trained):
    path, _ = trained
    with pytest.raises(ValueError, match=r"gone.pt: init_from weights not found"):
        build_network(_card(), init_from=path.with_name("gone.pt"))
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"model.pt: not a readable PyTorch checkpoint"):
        build_network(_card(), init_from=path)
    path.with_name("model_card.json").unlink()
    with pytest.raises(ValueError, match=r"model_card.json: no model card beside the init_from weights model.pt"):
        build_network(_card(), init_from=path)


def test_the_card_records_the_data_and_the_starting_model(trained, tmp_path):
    path, _ = trained
    datalist = tmp_path / "merged.json"
    datalist.write_text(json.dumps({"training": [{"image": "a", "label": "a_m", "provenance": "original"},
                                                 {"image": "b", "label": "b_m", "provenance": "edited"},
                                                 {"image": "c", "label": "c_m", "provenance": "edited"},
                                                 {"image": "f", "class": 1, "provenance": "accepted"}],
                                    "validation": [{"image": "d"}], "rejected": [{"image": "e", "provenance": "rejected"}]}))
    card = make_card(_card()["network"], ["T1c"], ["background", "tumor"], DEFAULT_CARD["classes"], [96, 96],
                     datalist_file=datalist, init_from=path)
    assert card["training_data"] == {"datalist": str(datalist.resolve()), "sha256": file_sha256(datalist),
                                     "provenance": {"training": {"original": 1, "edited": 2, "accepted": 1},
                                                    "validation": {"original": 1}, "rejected": {"rejected": 1}},
                                     # the entries that train the segmentation: the accepted study has no mask
                                     "with_mask": {"training": {"original": 1, "edited": 2, "accepted": 0},
                                                   "validation": {"original": 0}, "rejected": {"rejected": 0}}}
    assert card["init_from"] == {"path": str(path.resolve()), "sha256": file_sha256(path),
                                 "name": "MultiTaskUNet", "version": "0.1.0"}
    assert "training_data" not in make_card(_card()["network"], ["T1c"], ["background", "tumor"],
                                            DEFAULT_CARD["classes"], [96, 96])
