"""The learning-rate schedule and time budget (scripts/train/schedule.py), on a real ignite Engine."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine, Events

from scripts.train import schedule
from scripts.train.schedule import BudgetSchedule


def _optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


class FakeClock:
    """Stands in for time.perf_counter: every training iteration costs ``step`` seconds."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        return self.now


def test_factor_warms_up_then_anneals_to_the_floor() -> None:
    s = BudgetSchedule(_optimizer(), max_epochs=10, min_lr_ratio=0.1, warmup_fraction=0.1)
    assert s.factor(0.0) == pytest.approx(0.01)
    assert s.factor(0.05) == pytest.approx(0.01 + 0.99 * 0.5)
    assert s.factor(0.1) == pytest.approx(1.0)
    assert s.factor(0.55) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert s.factor(1.0) == pytest.approx(0.1)


@pytest.mark.parametrize("kwargs, match", [
    ({"time_budget_min": -1}, "time_budget_min"), ({"max_epochs": 0}, "max_epochs"),
    ({"min_lr_ratio": 1.0}, "min_lr_ratio"), ({"warmup_fraction": -0.1}, "warmup_fraction"),
])
def test_bad_arguments_are_refused(kwargs: dict, match: str) -> None:
    args = {"max_epochs": 5, **kwargs}
    with pytest.raises(ValueError, match=match):
        BudgetSchedule(_optimizer(), **args)


def _run(s: BudgetSchedule, clock: FakeClock, epochs: int, epoch_length: int = 10) -> tuple[Engine, list[float]]:
    lrs: list[float] = []

    def step(engine: Engine, batch: int) -> None:
        lrs.append(s.optimizer.param_groups[0]["lr"])
        clock.now += clock.step

    engine = Engine(step)
    s.attach(engine)
    engine.run(range(epoch_length), max_epochs=epochs)
    return engine, lrs


def test_without_budget_the_cosine_spans_max_epochs(monkeypatch) -> None:
    clock = FakeClock(step=1.0)
    monkeypatch.setattr(schedule.time, "perf_counter", clock)
    s = BudgetSchedule(_optimizer(2.0), max_epochs=4, min_lr_ratio=0.0, warmup_fraction=0.0)
    engine, lrs = _run(s, clock, epochs=4)
    assert engine.state.epoch == 4 and not s.stopped_by_budget
    assert lrs[0] == pytest.approx(2.0)
    assert lrs[20] == pytest.approx(1.0)  # progress 0.5
    assert lrs[-1] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 39 / 40)))
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_the_budget_stops_the_run_and_the_schedule_follows_time(monkeypatch) -> None:
    clock = FakeClock(step=1.0)  # 10 s per epoch
    monkeypatch.setattr(schedule.time, "perf_counter", clock)
    s = BudgetSchedule(_optimizer(1.0), max_epochs=100, time_budget_min=0.5, min_lr_ratio=0.0, warmup_fraction=0.0)
    engine, lrs = _run(s, clock, epochs=100)
    assert s.stopped_by_budget
    assert engine.state.epoch == 3  # 30 s of a 30 s budget: a 4th epoch would overrun by a whole epoch
    assert lrs[15] == pytest.approx(0.5, abs=0.02)  # half the budget spent: half-way down the cosine
    assert lrs[-1] < 0.01
    assert s.seconds() == pytest.approx(30.0)


def test_an_epoch_longer_than_the_budget_is_cut_short_after_validation(monkeypatch) -> None:
    clock = FakeClock(step=10.0)  # one epoch of 10 iterations = 100 s, budget 30 s
    monkeypatch.setattr(schedule.time, "perf_counter", clock)
    s = BudgetSchedule(_optimizer(), max_epochs=5, time_budget_min=0.5)
    validated: list[int] = []

    def step(engine: Engine, batch: int) -> None:
        clock.now += clock.step

    engine = Engine(step)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: validated.append(e.state.iteration))  # like ValidationHandler
    s.attach(engine)
    engine.run(range(10), max_epochs=5)
    assert validated == [3] and s.stopped_by_budget  # 3 iterations (30 s), then validation, then stop


def test_state_carries_the_elapsed_time_into_a_resumed_run(monkeypatch) -> None:
    clock = FakeClock(step=1.0)
    monkeypatch.setattr(schedule.time, "perf_counter", clock)
    first = BudgetSchedule(_optimizer(), max_epochs=100, time_budget_min=1.0)
    _run(first, clock, epochs=2)
    state = first.state_dict()
    assert state["elapsed_s"] == pytest.approx(20.0)
    second = BudgetSchedule(_optimizer(), max_epochs=100, time_budget_min=1.0)
    second.load_state_dict(state)
    engine, _ = _run(second, clock, epochs=100)
    assert second.seconds() == pytest.approx(60.0) and second.stopped_by_budget
    spent = BudgetSchedule(_optimizer(), max_epochs=100, time_budget_min=1.0)
    spent.load_state_dict(second.state_dict())
    _, lrs = _run(spent, clock, epochs=100)
    assert lrs == []  # a spent budget trains nothing more


class _Validator(Engine):
    """An evaluator that records the trainer epochs it ran for (as ``Evaluator.run(global_epoch)``)."""

    def __init__(self) -> None:
        super().__init__(lambda e, b: None)
        self.epochs: list[int] = []

    def run(self, global_epoch: int = 1, *args, **kwargs):  # noqa: D102 - MONAI's Evaluator.run signature
        self.epochs.append(global_epoch)


def _validated(interval: int, max_epochs: int, schedule_: BudgetSchedule | None = None, clock=None) -> list[int]:
    from scripts.train.training import ValidationHandler

    def step(engine: Engine, batch: int) -> None:
        if clock is not None:
            clock.now += clock.step

    engine = Engine(step)
    validator = _Validator()
    handler = ValidationHandler(interval, None, schedule_)
    handler.validator = validator  # MONAI's set_validator accepts only its Evaluator class
    handler.attach(engine)
    if schedule_ is not None:
        schedule_.attach(engine)  # after the validation handler, as in train.json
    engine.run(range(10), max_epochs=max_epochs)
    return validator.epochs


def test_validation_every_nth_epoch_and_on_the_last_one() -> None:
    assert _validated(3, 7) == [3, 6, 7]
    assert _validated(2, 1) == [1]  # a one-epoch run still gets a validated (best) model
    assert _validated(1, 3) == [1, 2, 3]


def test_validation_runs_on_the_epoch_the_budget_ends(monkeypatch) -> None:
    clock = FakeClock(step=1.0)  # 10 s per epoch, budget 33 s: after epoch 3 the 4th would overrun
    monkeypatch.setattr(schedule.time, "perf_counter", clock)
    s = BudgetSchedule(_optimizer(), max_epochs=100, time_budget_min=0.55)
    assert _validated(2, 100, s, clock) == [2, 3]
    assert s.stopped_by_budget
    assert not BudgetSchedule(_optimizer(), max_epochs=5).budget_ends_run(10.0)  # no budget: never


def test_initial_lr_is_a_tenth_when_fine_tuning() -> None:
    from scripts.train.schedule import initial_lr

    assert initial_lr(0.002) == 0.002  # training from scratch: as given
    assert initial_lr(0.002, init_from="models/model.pt") == pytest.approx(0.0002)
    assert initial_lr(0.002, init_from="models/model.pt", finetune_lr_factor=1.0) == 0.002
    for bad in (0.0, 1.5, -0.1, "0.1"):
        with pytest.raises(ValueError, match="finetune_lr_factor must be in"):
            initial_lr(0.002, init_from="m.pt", finetune_lr_factor=bad)
    with pytest.raises(ValueError, match="learning_rate must be a positive number"):
        initial_lr(0.0)


def test_train_config_gives_the_optimizer_the_fine_tuning_rate(tmp_path) -> None:
    """train.json wires initial_lr into the optimizer: from a CLI override of init_from to AdamW's lr."""
    from pathlib import Path

    from monai.bundle import ConfigParser

    bundle = Path(__file__).resolve().parents[2] / "monai_bundle"
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    assert parser.get_parsed_content("initial_lr") == parser["learning_rate"]
    parser["init_from"] = str(tmp_path / "model.pt")
    parser.parse()
    assert parser.get_parsed_content("initial_lr") == pytest.approx(parser["learning_rate"] * parser["finetune_lr_factor"])
    assert parser["optimizer"]["lr"] == "@initial_lr"


def test_the_first_epoch_logs_how_long_the_run_takes(monkeypatch, caplog) -> None:
    """After a process's first epoch the log says what ends the run: the budget (after about how many
    epochs, and what all of them would take) or max_epochs (in about how many minutes)."""
    import logging

    clock = FakeClock(step=1.0)  # 10 s per epoch
    monkeypatch.setattr(schedule.time, "perf_counter", clock)
    budgeted = BudgetSchedule(_optimizer(), max_epochs=100, time_budget_min=0.5)
    budgeted.elapsed_s = 10.0  # as after a first epoch of 10 s
    assert budgeted.estimate(1, 10.0) == ("epoch 1 took 10.0 s: the time budget of 0.5 min will end the run after about 3 "
                                          "of its 100 epochs (all of them: about 17 min on this machine; --time_budget_min "
                                          "sets the budget, the learning-rate schedule follows it)")
    roomy = BudgetSchedule(_optimizer(), max_epochs=6, time_budget_min=5.0)
    roomy.elapsed_s = 10.0
    assert roomy.estimate(1, 10.0) == "epoch 1 took 10.0 s: the 6 epochs will take about 1 min, within the time budget of 5 min"
    assert BudgetSchedule(_optimizer(), max_epochs=12).estimate(3, 10.0).endswith("the 12 epochs will take about 2 min")
    with caplog.at_level(logging.INFO):
        engine, _ = _run(BudgetSchedule(_optimizer(), max_epochs=100, time_budget_min=0.5), clock, epochs=100)
    lines = [r.getMessage() for r in caplog.records if "took" in r.getMessage()]
    assert len(lines) == 1 and "after about 3 of its 100 epochs" in lines[0]  # once, and it came true
    assert engine.state.epoch == 3
