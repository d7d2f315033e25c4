"""The learning-rate schedule and the time budget of a training run, as one ignite handler.

Training ends at ``max_epochs`` or, when ``time_budget_min`` is set, when the budget is spent,
whichever comes first. The schedule is fitted to that end: a short linear warm-up, then cosine
annealing from ``learning_rate`` down to ``min_lr_ratio * learning_rate``, driven by the *progress*
of the run,

    progress = max(iterations done / iterations of max_epochs, seconds trained / budget seconds)

so the learning rate reaches its floor just when the run ends, whichever limit ends it. After each
epoch (its validation and checkpoint included: attach this handler after them) the run stops
cleanly when the next epoch would overrun the budget by more than half an epoch, and an epoch
that alone outlasts the budget is cut short (its validation and checkpoint still run); the best
checkpoint is whatever the checkpoint handler kept. The elapsed training time is part of the
handler's state (``state_dict``), so a resumed run continues the same schedule; extending
``max_epochs`` or the budget on resume stretches the rest of the schedule instead of restarting it.

The budget counts the time of the training loop (epochs and their validation), not the one-off
data caching before it.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from ignite.engine import Engine, Events


class BudgetSchedule:
    """Warm-up + cosine learning rate over the run's progress, and the time-budget stop.

    Args:
        optimizer: every parameter group gets the same schedule (scaled by its own initial ``lr``).
        max_epochs: epoch cap of the run (the config's ``max_epochs``).
        time_budget_min: wall-clock minutes of training; ``None`` or ``0``: no time limit.
        min_lr_ratio: the floor of the cosine as a fraction of each group's initial lr.
        warmup_fraction: share of the run spent ramping the lr up linearly from 1% of its value.

    Raises:
        ValueError: a negative budget, ``max_epochs < 1``, a ratio or fraction outside [0, 1).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_epochs: int, time_budget_min: float | None = None,
                 min_lr_ratio: float = 0.01, warmup_fraction: float = 0.03) -> None:
        if time_budget_min is not None and time_budget_min < 0:
            raise ValueError(f"time_budget_min must be >= 0 (0 or null: no budget), got {time_budget_min}")
        if max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
        if not 0.0 <= min_lr_ratio < 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1), got {min_lr_ratio}")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        self.optimizer = optimizer
        self.max_epochs = int(max_epochs)
        self.budget_s = float(time_budget_min) * 60.0 if time_budget_min else None
        self.min_lr_ratio, self.warmup_fraction = float(min_lr_ratio), float(warmup_fraction)
        self.base_lrs = [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
        self.elapsed_s = 0.0  # training seconds before this process (resume) plus this one's
        self._since = 0.0
        self._epoch_start = 0.0
        self.last_epoch_s = 0.0
        self.stopped_by_budget = False
        self._estimated = False  # the run's length was logged (after this process's first epoch)

    # ----- state (a resumed run continues the schedule) -----
    def state_dict(self) -> dict[str, Any]:
        return {"elapsed_s": self.elapsed_s + self._running(), "last_epoch_s": self.last_epoch_s}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.elapsed_s = float(state.get("elapsed_s", 0.0))
        self.last_epoch_s = float(state.get("last_epoch_s", 0.0))
        self._since = time.perf_counter()

    def _running(self) -> float:
        return time.perf_counter() - self._since if self._since else 0.0

    def seconds(self) -> float:
        """Training seconds so far, across resumes."""
        return self.elapsed_s + self._running()

    # ----- the schedule -----
    def progress(self, iteration: int, iterations_per_epoch: int) -> float:
        """Fraction of the run done, 0..1 (the larger of the epoch and the time fraction)."""
        by_steps = iteration / max(self.max_epochs * max(iterations_per_epoch, 1), 1)
        by_time = self.seconds() / self.budget_s if self.budget_s else 0.0
        return min(max(by_steps, by_time), 1.0)

    def factor(self, progress: float) -> float:
        """Multiplier of the initial lr at ``progress``: linear warm-up, then cosine to the floor."""
        if self.warmup_fraction > 0 and progress < self.warmup_fraction:
            return 0.01 + 0.99 * progress / self.warmup_fraction
        rest = (progress - self.warmup_fraction) / max(1.0 - self.warmup_fraction, 1e-8)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(max(rest, 0.0), 1.0)))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine

    # ----- ignite -----
    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_STARTED, self.iteration_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine: Engine) -> None:
        self._since = time.perf_counter()
        self.max_epochs = max(self.max_epochs, int(engine.state.max_epochs or self.max_epochs))
        if self.budget_s and self.seconds() >= self.budget_s:
            engine.logger.info(f"time budget of {self.budget_s / 60:g} min already spent: nothing more to train")
            self.stopped_by_budget = True
            engine.terminate()

    def epoch_started(self, engine: Engine) -> None:
        self._epoch_start = time.perf_counter()

    def iteration_started(self, engine: Engine) -> None:
        f = self.factor(self.progress(engine.state.iteration - 1, engine.state.epoch_length or 1))
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * f

    def iteration_completed(self, engine: Engine) -> None:
        # an epoch longer than the whole budget (a slow machine, a huge dataset) is cut short: its
        # validation and checkpoint still run (EPOCH_COMPLETED), then epoch_completed stops the run
        if self.budget_s and self.seconds() >= self.budget_s:
            engine.terminate_epoch()

    def budget_ends_run(self, epoch_s: float | None = None) -> bool:
        """Whether the budget stops the run after the current epoch: the next epoch (taken to last as
        long as this one, ``epoch_s``, by default so far) would overrun it by more than half of itself."""
        if not self.budget_s:
            return False
        epoch_s = time.perf_counter() - self._epoch_start if epoch_s is None else epoch_s
        return self.budget_s - self.seconds() < 0.5 * epoch_s

    def estimate(self, epoch: int, epoch_s: float) -> str:
        """What the run will take, from the epoch just done (``epoch``, ``epoch_s`` seconds): the line
        logged after a process's first epoch, so a user sees at once whether the budget or ``max_epochs``
        ends the run (and what ``--time_budget_min`` would change on this machine)."""
        left = max(self.max_epochs - epoch, 0)
        total_min = (self.seconds() + left * epoch_s) / 60.0
        head = f"epoch {epoch} took {epoch_s:.1f} s: "
        if self.budget_s and total_min * 60.0 > self.budget_s:
            fit = epoch + int(max(self.budget_s - self.seconds(), 0.0) / max(epoch_s, 1e-9) + 0.5)  # budget_ends_run's rule
            return (head + f"the time budget of {self.budget_s / 60:g} min will end the run after about {min(fit, self.max_epochs)} "
                    f"of its {self.max_epochs} epochs (all of them: about {total_min:.0f} min on this machine; "
                    f"--time_budget_min sets the budget, the learning-rate schedule follows it)")
        budget = f", within the time budget of {self.budget_s / 60:g} min" if self.budget_s else ""
        return head + f"the {self.max_epochs} epochs will take about {total_min:.0f} min{budget}"

    def epoch_completed(self, engine: Engine) -> None:
        self.last_epoch_s = time.perf_counter() - self._epoch_start
        if not self._estimated:
            self._estimated = True
            engine.logger.info(self.estimate(engine.state.epoch, self.last_epoch_s))
        if not self.budget_s:
            return
        if self.budget_ends_run(self.last_epoch_s):
            self.stopped_by_budget = True
            engine.logger.info(f"time budget of {self.budget_s / 60:g} min spent after epoch {engine.state.epoch} "
                               f"({self.seconds() / 60:.1f} min trained): stopping")
            engine.terminate()

    def completed(self, engine: Engine) -> None:
        self.elapsed_s, self._since = self.seconds(), 0.0


def initial_lr(learning_rate: float, init_from: Any = None, finetune_lr_factor: float = 0.1) -> float:
    """The peak learning rate of a run: ``learning_rate``, times ``finetune_lr_factor`` when fine-tuning.

    A fine-tuning run (``init_from`` set) starts from a model whose own schedule ended at 1 % of
    ``learning_rate``, with a fresh optimizer: restarting it at the full rate throws the model out of
    the minimum it found (a small model's segmentation collapsed to empty masks, and its diagnosis to
    one class, within a few epochs: ``Testing/benchmarks/README.md``, learning from review). A tenth of
    training's rate, the usual fine-tuning step, adjusts the model instead of starting over. Factor 1
    keeps ``learning_rate`` as given.

    Raises:
        ValueError: ``learning_rate`` not positive, or ``finetune_lr_factor`` not in (0, 1].
    """
    if not (isinstance(learning_rate, (int, float)) and math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning_rate must be a positive number, got {learning_rate!r}")
    if not (isinstance(finetune_lr_factor, (int, float)) and 0 < finetune_lr_factor <= 1):
        raise ValueError(f"finetune_lr_factor must be in (0, 1], got {finetune_lr_factor!r}")
    return float(learning_rate) * (float(finetune_lr_factor) if init_from is not None else 1.0)
