"""Temperature scaling, ECE and the reliability bins (scripts/train/calibration.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scripts.train.calibration import (
    card_temperature,
    TemperatureScalingHandler,
    ece_floor,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    temper,
)


def _overconfident(n: int = 4000, k: int = 4, true_t: float = 3.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose labels are drawn from softmax(logits / true_t): T = true_t calibrates them exactly."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g) * 6.0
    labels = torch.multinomial(torch.softmax(logits / true_t, 1), 1, generator=g).reshape(-1)
    return logits, labels


def test_fit_temperature_recovers_the_temperature_that_generated_the_labels() -> None:
    logits, labels = _overconfident(true_t=3.0)
    assert fit_temperature(logits, labels) == pytest.approx(3.0, rel=0.1)
    logits, labels = _overconfident(true_t=0.5, seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(0.5, rel=0.1)


def test_temperature_lowers_the_ece_and_keeps_every_prediction() -> None:
    logits, labels = _overconfident(true_t=3.0)
    t = fit_temperature(logits, labels)
    before = expected_calibration_error(torch.softmax(logits, 1), labels)
    after = expected_calibration_error(torch.softmax(logits / t, 1), labels)
    assert before > 0.05 and after < 0.02 and after < before / 3
    assert torch.equal(torch.softmax(logits / t, 1).argmax(1), logits.argmax(1))


def test_temper_on_probabilities_equals_scaling_the_logits() -> None:
    logits, _ = _overconfident(n=50)
    np.testing.assert_allclose(temper(torch.softmax(logits, 1).numpy(), 2.5), torch.softmax(logits / 2.5, 1).numpy(),
                               atol=1e-6)


def test_ece_of_a_perfectly_calibrated_hand_case() -> None:
    # two samples at confidence 1.0 and correct: every class-wise bin matches its frequency
    prob = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(prob, np.array([0, 1])) == pytest.approx(0.0)
    # always 0.9 on class 0, but class 0 is right only half the time: class-wise error 0.4 for both classes
    prob = np.array([[0.9, 0.1]] * 4)
    assert expected_calibration_error(prob, np.array([0, 0, 1, 1])) == pytest.approx(0.4)
    assert expected_calibration_error(np.zeros((0, 2)), np.zeros(0)) is None


def test_ece_floor_is_what_calibrated_probabilities_score_on_so_many_samples() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(size=(2000, 4)) * 2
    prob = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    floors = {n: ece_floor(prob[:n]) for n in (100, 400, 2000)}
    assert floors[100] > floors[400] > floors[2000] > 0  # fewer samples, a higher floor
    assert ece_floor(prob[:400]) == floors[400]  # deterministic
    # classes drawn from the probabilities themselves: their ECE is at the floor, not near 0
    calibrated = [expected_calibration_error(prob[:400], [rng.choice(4, p=p) for p in prob[:400]]) for _ in range(30)]
    assert abs(np.mean(calibrated) - floors[400]) < 0.25 * floors[400]
    # the overconfident network of the tests above lies far above its floor; scaled, it comes down to it
    logits, labels = _overconfident(true_t=3.0)
    raw = torch.softmax(logits, 1)
    assert expected_calibration_error(raw, labels) > 3 * ece_floor(raw)
    scaled = torch.softmax(logits / fit_temperature(logits, labels), 1)
    assert expected_calibration_error(scaled, labels) < 1.5 * ece_floor(scaled)
    assert ece_floor(np.zeros((0, 3))) is None


def test_reliability_bins_count_every_sample_once() -> None:
    prob = np.array([[0.95, 0.05], [0.55, 0.45], [0.52, 0.48], [0.1, 0.9]])
    bins = reliability_bins(prob, np.array([0, 1, 0, 1]), n_bins=10)
    assert sum(bins["count"]) == 4
    assert bins["count"][5] == 2 and bins["accuracy"][5] == pytest.approx(0.5)
    assert bins["count"][9] == 2 and bins["confidence"][9] == pytest.approx(0.925)  # 0.95 and 0.9


def test_fit_temperature_refuses_bad_shapes_and_labels() -> None:
    with pytest.raises(ValueError, match="logits"):
        fit_temperature(torch.zeros(3, 2), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels must be in"):
        fit_temperature(torch.zeros(2, 2), torch.tensor([0, 2]))
    assert fit_temperature(torch.zeros(1, 2), torch.tensor([0])) == 1.0


def test_card_temperature_reads_the_model_card(tmp_path) -> None:
    assert card_temperature(tmp_path) is None
    (tmp_path / "model_card.json").write_text(json.dumps({"temperature": 1.7}))
    assert card_temperature(tmp_path) == pytest.approx(1.7)


def test_temperature_handler_writes_t_and_the_ece_figures_into_the_model_card(tmp_path) -> None:
    from ignite.engine import Engine

    logits, labels = _overconfident(n=240, true_t=3.0, seed=2)
    outputs = [{"pred": {"cls": logits[i:i + 40]},
                "label": {"cls": labels[i:i + 40], "has_cls": torch.ones(40)}} for i in range(0, 240, 40)]
    class Replay(Engine):  # a validation evaluator whose outputs are given: run() replays them
        def run(self, data=None, **kwargs):
            return super().run(outputs, **kwargs)

    evaluator = Replay(lambda engine, batch: batch)
    net = torch.nn.Linear(2, 2)
    torch.save(net.state_dict(), tmp_path / "model.pt")
    (tmp_path / "model_card.json").write_text(json.dumps({"name": "m"}))
    handler = TemperatureScalingHandler(str(tmp_path), net, evaluator)
    handler(Engine(lambda engine, batch: None))
    card = json.loads((tmp_path / "model_card.json").read_text())
    assert card["temperature"] == pytest.approx(3.0, rel=0.25)
    cal = card["calibration"]
    assert cal["n_samples"] == 240 and cal["split"] == "validation"
    assert cal["ece_before"] > cal["ece_after"] and cal["ece_floor"] == pytest.approx(
        ece_floor(torch.softmax(logits / handler.temperature, 1)))
    assert cal["ece_after"] < 2 * cal["ece_floor"]  # scaled, the validation ECE is down near its sampling floor

