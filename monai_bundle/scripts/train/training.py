"""Glue between the bundle configs and MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator``.

The engines are MONAI's own; what a multi-task bundle needs on top of them is here:
``prepare_batch`` (keeps the target dictionary MONAI's default would drop), and handlers for the
task-weight schedule (the segmentation-only warm-up), the per-epoch history, best/last checkpoints
with resume, and the model card written next to the weights.

Each handler stands alone: none relies on another having run or having stamped a state. Whether
the validation evaluator ran for the trainer's current epoch is read from the evaluator itself
(:func:`validated_this_epoch`); the loss is a pure function whose task factors a schedule sets.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import monai.handlers
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR

from scripts.train.losses import MultiTaskLoss
from scripts.core.atomic import atomic_path, write_json_atomic
from scripts.core.model_card import setup_differences
from scripts.core.plan import file_sha256
from scripts.core.tasks import Keys, Task


def prepare_batch(batchdata: dict[str, Any], device: str | torch.device | None = None, non_blocking: bool = False,
                  augment: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
                  **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Split a collated batch into the network input and the multi-task target dict.

    ``augment`` (training only, ``configs/train.json``'s ``batch_augment``): called as
    ``augment(image, seg)`` on the device, it moves image and mask together
    (:class:`scripts.train.batch_augment.BatchAugment`).

    Returns:
        ``image (B, C, *spatial)`` and ``{"seg": (B, 1, *spatial) long, "cls": (B,) long,
        "has_seg": (B,), "has_cls": (B,)}`` on ``device``.
    """

    def to(x: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
        t = torch.as_tensor(x)
        t = t.as_tensor() if hasattr(t, "as_tensor") else t  # MetaTensor -> plain tensor for the loss
        return t.to(device=device, dtype=dtype, non_blocking=non_blocking)

    image = to(batchdata[Keys.IMAGE.value], torch.float32)
    targets = {
        Task.SEG.value: to(batchdata[Keys.LABEL.value], torch.long),
        Task.CLS.value: to(batchdata[Keys.CLASS.value], torch.long).reshape(-1),
        Keys.HAS_SEG.value: to(batchdata[Keys.HAS_SEG.value], torch.float32).reshape(-1),
        Keys.HAS_CLS.value: to(batchdata[Keys.HAS_CLS.value], torch.float32).reshape(-1),
    }
    if augment is not None:
        image, targets[Task.SEG.value] = augment(image, targets[Task.SEG.value])
    return image, targets


def prepare_guided_batch(batchdata: dict[str, Any], device: str | torch.device | None = None, non_blocking: bool = False,
                         rate: float = 0.5, augment: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
                         **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple, dict[str, torch.Tensor]]:
    """:func:`prepare_batch` for training with lesion guidance: also hands the network the ground-truth
    lesion mask ``(B, 1, *spatial)`` float (any non-background segment) as ``network(image, lesion=mask)``
    -- MONAI's ``SupervisedTrainer`` passes a 4-tuple's ``kwargs`` through its inferer to the network.
    The lesion-aware head pools with it (:class:`scripts.core.networks.LesionAwareHead`); validation and
    inference use :func:`prepare_batch`.

    Only a random share ``rate`` of the samples is guided (scheduled sampling); the others -- and every
    sample without a mask -- get an all-zero mask, so the head also learns to diagnose from the
    segmentation's own lesion, as at inference. (Guiding every sample made the head rely on the true
    mask: while the segmentation still found nothing, validation got one class for every image.)
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"the lesion guidance rate must be in [0, 1], got {rate}")
    image, targets = prepare_batch(batchdata, device, non_blocking, augment=augment, **kwargs)
    seg, has_seg = targets[Task.SEG.value], targets[Keys.HAS_SEG.value]
    guided = has_seg * (torch.rand(has_seg.shape, device=has_seg.device) < rate).to(has_seg.dtype)
    lesion = (seg > 0).to(image.dtype) * guided.reshape(-1, *([1] * (seg.dim() - 1))).to(image.dtype)
    return image, targets, (), {"lesion": lesion}


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`scripts.core.atomic.atomic_path` (no half-written checkpoint)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def unwrap(network: nn.Module) -> nn.Module:
    """The plain network inside a DistributedDataParallel wrapper (state dict keys without 'module.')."""
    return network.module if hasattr(network, "module") else network


def validated_this_epoch(evaluator: Engine | None, trainer: Engine) -> bool:
    """Whether ``evaluator`` ran for the trainer's current epoch (its metrics are this epoch's).

    MONAI's ``Evaluator.run(global_epoch)`` -- ``ValidationHandler`` passes the trainer's epoch --
    leaves the evaluator's ``state.epoch`` at that epoch; an evaluator that skipped this epoch
    (``val_interval > 1``) or never ran holds an earlier epoch (0 before its first run).
    """
    state = getattr(evaluator, "state", None)
    epoch = trainer.state.epoch
    return state is not None and epoch > 0 and getattr(state, "epoch", None) == epoch


class ValidationHandler(monai.handlers.ValidationHandler):
    """MONAI's epoch-level ``ValidationHandler`` that also validates the epoch a run ends on.

    Every ``interval``-th epoch is validated, as MONAI's does, and so is the last one: the
    ``max_epochs``-th, or the epoch after which ``schedule``'s time budget stops the run
    (:meth:`scripts.train.schedule.BudgetSchedule.budget_ends_run`, asked before it decides). With
    ``val_interval`` 2 (the 3D CPU default) a run would otherwise end on an unvalidated epoch -- the
    one trained at the lowest learning rate -- and a 1-epoch run would keep no model at all.
    Attach it before the handlers that read the evaluator (history, checkpoint) and before the
    schedule.
    """

    def __init__(self, interval: int, validator: Engine | None = None, schedule: Any | None = None) -> None:
        super().__init__(interval=interval, validator=validator, epoch_level=True)
        self.schedule = schedule

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def ends_run(self, engine: Engine) -> bool:
        """Whether training stops after ``engine``'s current epoch (epoch cap or time budget)."""
        if engine.state.epoch >= (engine.state.max_epochs or 0):
            return True
        return bool(self.schedule is not None and self.schedule.budget_ends_run())

    def epoch_completed(self, engine: Engine) -> None:
        if engine.state.epoch % self.interval == 0 or self.ends_run(engine):
            self(engine)


#: ``warmup_epochs="auto"``: the segmentation trains alone until an epoch's own training predictions find
#: the lesions (the share of the true lesion pixels predicted lesion, over the training images with a
#: lesion, at least :data:`AUTO_FOUND_RECALL`), for at most :data:`AUTO_MAX_WARMUP_EPOCHS` epochs. Recall,
#: not Dice: a segmentation that marks too much has found the lesions (a run that starts so learns both
#: tasks well); the one to wait for marks none
AUTO_FOUND_RECALL, AUTO_MAX_WARMUP_EPOCHS = 0.1, 5


class TaskWeightSchedule:
    """Per-epoch task factors of the loss (``MultiTaskLoss.task_factors``), set as an LR schedule sets the lr.

    Warm-up epochs train the segmentation alone (diagnosis factor 0: the BUSI project's recipe), later
    epochs both tasks (factor 1). ``warmup_epochs``:

    * a number ``n``: epochs ``1 .. n`` are the warm-up, from the epoch number alone (a resumed run gets
      the factors of the epoch it resumes at);
    * ``"auto"`` (the default): the warm-up lasts until the segmentation finds lesions -- the first epoch
      whose training predictions (argmax) mark at least :data:`AUTO_FOUND_RECALL` of the true lesion
      pixels ends it -- and at most :data:`AUTO_MAX_WARMUP_EPOCHS` epochs. Why: the
      diagnosis shares the encoder, and until the segmentation has found any lesion its loss pulls the
      encoder towards whole-image features; on the generated brain set two of three seeds then
      predicted no lesion at all for 6 and more than 11 epochs (validation Dice 0), while the same seeds
      trained on the segmentation alone found the lesions in their third epoch and, joined by the
      diagnosis from the fourth, reached validation Dice 0.34-0.38 and balanced accuracy 0.42-0.46 by
      the fifth (``Testing/benchmarks/README.md``). A run whose segmentation finds lesions in its first
      epoch loses one epoch of diagnosis. A resumed run reads ``history`` (``history.json``): once an
      epoch there trained both tasks, the warm-up is over; otherwise its seg-only epochs count. A
      fine-tuning run (``init_from`` set) starts from a model that has found its lesions: no warm-up.
      Under DDP the ranks add up their counts, so all decide alike.
    """

    def __init__(self, loss: MultiTaskLoss, warmup_epochs: int | str = 0, history: str | os.PathLike | None = None,
                 found_recall: float = AUTO_FOUND_RECALL, max_warmup_epochs: int = AUTO_MAX_WARMUP_EPOCHS,
                 init_from: Any = None) -> None:
        self.auto = warmup_epochs == "auto"
        if not self.auto and (isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0):
            raise ValueError(f"warmup_epochs must be a whole number >= 0 or 'auto', got {warmup_epochs!r}")
        if not 0.0 < found_recall <= 1.0 or max_warmup_epochs < 0:
            raise ValueError(f"found_recall must be in (0, 1] and max_warmup_epochs >= 0, got {found_recall}, {max_warmup_epochs}")
        self.loss = loss
        self.warmup_epochs = max_warmup_epochs if self.auto else warmup_epochs
        self.history = Path(history) if history is not None else None
        self.found_recall = float(found_recall)
        self.warming = self.auto and init_from is None  # auto: still in the warm-up
        self._sums = torch.zeros(2, dtype=torch.float64)  # true lesion pixels predicted lesion, true lesion pixels

    def factors(self, epoch: int) -> dict[str, float]:
        """The task factors of (1-based) ``epoch``."""
        seg_only = epoch <= self.warmup_epochs and (self.warming or not self.auto)
        return {Task.SEG.value: 1.0, Task.CLS.value: 0.0 if seg_only else 1.0}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)
        if self.auto:
            engine.add_event_handler(Events.STARTED, self.resume)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def __call__(self, engine: Engine) -> None:
        self.loss.task_factors = self.factors(engine.state.epoch)
        self._sums = torch.zeros(2, dtype=torch.float64)

    def resume(self, engine: Engine) -> None:
        """Auto: a run resumed after an epoch that trained both tasks does not warm up again."""
        done = engine.state.epoch
        if done <= 0 or self.history is None or not self.history.is_file():
            return
        try:
            records = json.loads(self.history.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if any(not r.get("seg_only", False) for r in records if isinstance(r, dict) and r.get("epoch", 0) <= done):
            self.warming = False

    def iteration_completed(self, engine: Engine) -> None:
        if not self.warming:
            return
        out = engine.state.output
        batch = out if isinstance(out, dict) else _collate_output(out)
        with torch.no_grad():  # a sample without a mask has an all-zero label (Keys): it counts nothing
            pred = batch["pred"][Task.SEG].argmax(dim=1) > 0
            true = batch["label"][Task.SEG].reshape(pred.shape) > 0
            counts = torch.stack([(pred & true).sum(), true.sum()])  # on the device: no host sync per step
            counts = counts.double() if counts.device.type != "mps" else counts.float()  # MPS has no float64
            self._sums = counts + self._sums.to(counts.device, counts.dtype)

    def epoch_completed(self, engine: Engine) -> None:
        if not self.warming:
            return
        sums = self._sums.clone()  # on the training device, as LossGradientSync's all-reduce
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
        hit, true = sums.cpu().tolist()
        if true > 0 and hit / true >= self.found_recall:
            self.warming = False


#: the former name of :class:`TaskWeightSchedule` (configs written for earlier versions)
WarmupHandler = TaskWeightSchedule


def schedule_to_horizon(scheduler: Any, max_epochs: int) -> None:
    """Fit a resumed learning-rate schedule to this run's ``max_epochs`` (the config's, not the checkpoint's).

    A checkpoint brings back the horizon of the run that wrote it (``CosineAnnealingLR.T_max``), and
    past its end the cosine climbs back up: a finished run extended with a larger ``--max_epochs``
    would restart its learning rate. Here the cosine ends at ``max_epochs`` and the learning rate is
    that cosine's value at the epoch reached, so the run goes on as if it had been started with this
    ``max_epochs`` (unchanged when it is the checkpoint's). Schedules of other types are left as
    they are: they must take their horizon from the config, not from their state.
    """
    if not isinstance(scheduler, CosineAnnealingLR):
        return
    scheduler.T_max = max_epochs
    done = min(scheduler.last_epoch, max_epochs) / max_epochs
    for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(math.pi * done)) / 2


#: the model card entries a checkpoint must share with the run that resumes it
RESUME_CARD_KEYS = ("network", "spatial_size", "channels", "segments", "classes")


class ResumeError(RuntimeError):
    """``checkpoint_last.pt`` was trained for another setup than the run asked to resume it."""


class CheckpointHandler:
    """Best model by validation score, a resumable last checkpoint each epoch, and the model card.

    Attached to the trainer. At start, when ``resume`` and ``checkpoint_last.pt`` exist, it checks
    that the checkpoint was trained for this run's setup (the model card's ``RESUME_CARD_KEYS`` and
    the contents of ``datalist_file``) and raises :class:`ResumeError` naming what differs, before
    anything is written; then it restores the objects of ``to_save`` (network, optimizer, scheduler,
    loss, trainer epoch and history) and the best score, fits the schedule to the config's
    ``max_epochs`` (:func:`schedule_to_horizon`), and writes ``model_card.json``. After each epoch's
    validation it saves ``model.pt`` (plain network state dict) when ``score_name`` of the evaluator
    improved, then ``checkpoint_last.pt``. Only rank 0 writes. Whether the evaluator validated this
    epoch it reads from the evaluator (:func:`validated_this_epoch`), so it needs no other handler.
    """

    def __init__(self, ckpt_dir: str, network: nn.Module, evaluator: Engine, to_save: dict[str, Any],
                 model_card: dict[str, Any], score_name: str = "val_score", resume: bool = True,
                 datalist_file: str | os.PathLike | None = None) -> None:
        self.dir = Path(ckpt_dir)
        self.network, self.evaluator, self.to_save = network, evaluator, to_save
        self.card, self.score_name, self.resume = model_card, score_name, resume
        self.best_score, self.best_epoch = -float("inf"), 0
        # what this run trains for, kept in every checkpoint (a copy: later handlers may extend the card)
        self.setup: dict[str, Any] = json.loads(json.dumps({k: model_card.get(k) for k in RESUME_CARD_KEYS}))
        if datalist_file is not None:
            self.setup["datalist_file"] = str(Path(datalist_file).resolve())
            self.setup["datalist_sha256"] = file_sha256(datalist_file)

    @property
    def last_path(self) -> Path:
        return self.dir / "checkpoint_last.pt"

    def attach(self, engine: Engine) -> None:
        # the trainer joins the saved objects here: passing it in the config would be a circular reference
        self.to_save = {**self.to_save, "trainer": engine}
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def started(self, engine: Engine) -> None:
        if self.resume and self.last_path.is_file():
            self._resume(engine)
        if is_main_process():
            write_json_atomic(self.dir / "model_card.json", self.card)

    def _resume(self, engine: Engine) -> None:
        state = torch.load(self.last_path, map_location="cpu", weights_only=True)
        self.check_setup(state.get("setup"))
        max_epochs = engine.state.max_epochs  # the config's, so a resumed run may also be extended
        for name, obj in self.to_save.items():
            if name in state:
                unwrap(obj).load_state_dict(state[name]) if name == "network" else obj.load_state_dict(state[name])
        engine.state.max_epochs = max(max_epochs, engine.state.epoch)
        schedule_to_horizon(self.to_save.get("lr_scheduler"), engine.state.max_epochs)
        self.best_score, self.best_epoch = state["best"]["score"], state["best"]["epoch"]
        engine.logger.info(f"resumed from {self.last_path} at epoch {engine.state.epoch}")

    def check_setup(self, saved: dict[str, Any] | None) -> None:
        """Raise :class:`ResumeError` when the checkpoint's setup differs from this run's (names each difference)."""
        if saved is None:
            differences = ["the checkpoint does not record what it was trained for (written by an earlier version)"]
        else:
            differences = setup_differences(saved, self.setup, RESUME_CARD_KEYS, "the checkpoint")
            if "datalist_sha256" in self.setup and saved.get("datalist_sha256") != self.setup["datalist_sha256"]:
                differences.append(f"datalist_file: {saved.get('datalist_file')} (sha256 {str(saved.get('datalist_sha256'))[:12]}) "
                                   f"in the checkpoint, {self.setup['datalist_file']} (sha256 {self.setup['datalist_sha256'][:12]}) now")
        if differences:
            raise ResumeError(
                f"{self.last_path} was trained for another setup than this run, so it cannot be resumed:\n  "
                + "\n  ".join(differences)
                + f"\nTo start fresh, run with --resume false (this run's files then replace those in {self.dir}), "
                f"delete {self.last_path}, or give another --ckpt_dir.")

    def epoch_completed(self, engine: Engine) -> None:
        if not is_main_process():
            return
        fresh = validated_this_epoch(self.evaluator, engine)
        score = self.evaluator.state.metrics.get(self.score_name) if fresh else None
        if score is not None and score > self.best_score:
            self.best_score, self.best_epoch = float(score), engine.state.epoch
            save_atomic(unwrap(self.network).state_dict(), self.dir / "model.pt")
            engine.logger.info(f"epoch {engine.state.epoch}: new best {self.score_name} {score:.4f} -> {self.dir / 'model.pt'}")
        state = {name: (unwrap(obj) if name == "network" else obj).state_dict() for name, obj in self.to_save.items()}
        state["best"] = {"score": self.best_score, "epoch": self.best_epoch}
        state["setup"] = self.setup
        save_atomic(state, self.last_path)


class HistoryHandler:
    """Per-epoch record (train loss and its task terms, learning rate, validation metrics) -> JSON.

    Attach to the trainer after the ``ValidationHandler`` so each epoch's record holds its
    validation (it checks with :func:`validated_this_epoch` that the evaluator ran for the epoch).

    The task terms (``loss_seg``, ``loss_cls``: unweighted, as ``MultiTaskLoss.task_terms``) are
    computed from the trainer's output (``pred`` and ``label``) without gradients, so the loss keeps
    no state. The loss and its terms are summed on the device and read once per epoch (no host
    sync per step); each is the mean over the epoch's iterations (an iteration without a task's
    target adds 0). ``seg_only`` is true when every task factor but the segmentation's is 0 (the
    warm-up of :class:`TaskWeightSchedule`).

    The records are part of the trainer's state (ignite ``state_dict_user_keys``), so the trainer
    checkpoint carries them and a resumed run continues them. The file is written after every
    other end-of-epoch handler, the checkpoint's included: ``history.json`` never lists an epoch
    that ``checkpoint_last.pt`` lacks, so a run killed at any moment loses no completed epoch.
    """

    STATE_KEY = "history"

    def __init__(self, path: str, loss: MultiTaskLoss, optimizer: torch.optim.Optimizer, evaluator: Engine) -> None:
        self.path, self.loss, self.optimizer, self.evaluator = Path(path), loss, optimizer, evaluator
        self.records: list[dict[str, Any]] = []
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0
        self._t0 = 0.0
        self._continued = False

    def attach(self, engine: Engine) -> None:
        if self.STATE_KEY not in engine.state_dict_user_keys:
            engine.state_dict_user_keys.append(self.STATE_KEY)
        setattr(engine.state, self.STATE_KEY, self.records)
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_STARTED, self.epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def started(self, engine: Engine) -> None:
        self._continued = False
        self.records = []
        setattr(engine.state, self.STATE_KEY, self.records)  # a resumed checkpoint replaces it (STARTED, after this)
        # registered now, after every handler attached with the trainer: runs last at each epoch's end
        if not engine.has_event_handler(self.write, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def _continue_history(self, engine: Engine) -> None:
        """On a resumed run keep the records of the epochs before it (the checkpoint restores them at STARTED)."""
        self._continued = True
        self.records = [r for r in getattr(engine.state, self.STATE_KEY) if r["epoch"] < engine.state.epoch]
        setattr(engine.state, self.STATE_KEY, self.records)

    def epoch_started(self, engine: Engine) -> None:
        if not self._continued:
            self._continue_history(engine)
        self._sums, self._count, self._t0 = {}, 0, time.perf_counter()

    def _add(self, key: str, value: Any) -> None:
        value = torch.as_tensor(value).detach().reshape(())
        value = value.double() if value.device.type != "mps" else value.float()  # MPS has no float64
        self._sums[key] = self._sums[key] + value if key in self._sums else value

    def iteration_completed(self, engine: Engine) -> None:
        out = engine.state.output
        batch = out if isinstance(out, dict) else _collate_output(out)
        self._add("loss", batch["loss"])
        with torch.no_grad():
            preds = {k: v.float() for k, v in batch["pred"].items()}  # as the loss sees them under autocast
            for task, value in self.loss.task_terms(preds, batch["label"]).items():
                self._add(f"loss_{task.value}", value)
        self._count += 1

    def epoch_completed(self, engine: Engine) -> None:
        factors = self.loss.task_factors
        seg_only = all(f == 0.0 for task, f in factors.items() if task != Task.SEG.value)
        record: dict[str, Any] = {"epoch": engine.state.epoch, "seconds": round(time.perf_counter() - self._t0, 2),
                                  "iterations": self._count,
                                  "lr": self.optimizer.param_groups[0]["lr"], "seg_only": seg_only}
        if self._sums:  # one host read per epoch
            keys = list(self._sums)
            sums = torch.stack([self._sums[k] for k in keys]).tolist()
            record.update({k: v / max(self._count, 1) for k, v in zip(keys, sums)})
        if validated_this_epoch(self.evaluator, engine):
            ev = self.evaluator.state
            record.update({f"val_{k}" if not k.startswith("val") else k: v for k, v in ev.metrics.items() if isinstance(v, (int, float))})
            details = getattr(ev, "metric_details", None)
            if details:  # a copy: the metric updates its details dict in place every validation
                record["val_details"] = copy.deepcopy(details)
        if self.loss.weighting == "uncertainty":
            record["log_vars"] = {k: float(v.detach()) for k, v in self.loss.log_vars.items()}
        self.records.append(json.loads(json.dumps(record)))  # plain JSON types: checkpoints load with weights_only

    def write(self, engine: Engine) -> None:
        if is_main_process():
            write_json_atomic(self.path, self.records)


def _collate_output(outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """A decollated trainer output (one dict per sample) as the batch dict of ``decollate=False``."""
    from torch.utils.data import default_collate

    first = outputs[0]
    return {"loss": first["loss"], "pred": default_collate([o["pred"] for o in outputs]),
            "label": default_collate([o["label"] for o in outputs])}


class LossGradientSync:
    """Average the gradients of the loss's own parameters (uncertainty task weights) across DDP ranks.

    DDP only synchronises the wrapped network; the learnable task weights live in the loss. With
    partial labels a rank whose batch carries no mask (or no class) has no gradient for that task's
    weight, so per-parameter gradient hooks would fire on some ranks and not on others: a collective
    mismatch that hangs or mixes up the reductions. Instead, after every backward
    (``IterationEvents.BACKWARD_COMPLETED``, before the optimizer step) every rank all-reduces one
    tensor holding every trainable loss parameter's gradient (zero where it has none) and a flag per
    parameter; the mean over all ranks is written back, as DDP averages the network's gradients. A
    parameter no rank has a gradient for keeps ``None`` (the optimizer then skips it, as in one process).
    Attach it to the trainer on every rank; in one process it does nothing.
    """

    def __init__(self, loss: nn.Module) -> None:
        self.params = [p for p in loss.parameters() if p.requires_grad]

    def attach(self, engine: Engine) -> None:
        from monai.engines.utils import IterationEvents

        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        if not self.params or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        grads = [p.grad.detach().reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1) for p in self.params]
        flags = torch.tensor([p.grad is not None for p in self.params], dtype=grads[0].dtype, device=grads[0].device)
        packed = torch.cat(grads + [flags])
        dist.all_reduce(packed)
        packed /= dist.get_world_size()
        offset = 0
        for i, p in enumerate(self.params):
            n = p.numel()
            if packed[-len(self.params) + i] > 0:
                p.grad = packed[offset: offset + n].reshape(p.shape).to(p.dtype).clone()
            offset += n
