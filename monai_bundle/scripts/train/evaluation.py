"""Evaluation glue for MONAI/ignite engines: the validation metric and the report handler.

* :class:`MultiTaskValidationMetric` -- an ``ignite.metrics.Metric`` for a ``SupervisedEvaluator``'s
  ``key_val_metric``. ``compute()`` returns the combined score (mean of lesion Dice and balanced
  accuracy, see :mod:`scripts.train.metrics`); the full metrics dict goes to
  ``engine.state.metric_details[<metric name>]``.
* :class:`MetricsReportHandler` -- attach to the evaluator of ``configs/evaluate.json``; collects
  every iteration and, when the run completes, writes ``metrics.json``, ``report.md`` and the plots
  (:func:`scripts.train.report.write_report`).
* :func:`multitask_output_transform` -- reads the engine output of our ``prepare_batch``:
  ``output["pred"]`` = the network dict ``{"seg": (B, S, *sp) logits, "cls": (B, K) logits}`` and
  ``output["label"]`` = ``{"seg": (B, 1, *sp), "cls": (B,), "has_seg": (B,), "has_cls": (B,)}``,
  batched (``decollate=False``) or decollated into a list of per-sample dicts (MONAI's default).

Under DDP every process evaluates its shard; statistics are gathered (``all_gather_object``) before
computing, and only rank 0 writes files. Shard with ``DistributedSampler(even_divisible=False)``
(``configs/multi_gpu_train.json`` does): the default pads the last shard with repeated samples,
which would then be counted twice.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from ignite.metrics.metric import reinit__is_reduced
from monai.utils.enums import CommonKeys

from scripts.train.calibration import ece_floor, expected_calibration_error, reliability_bins, temper
from scripts.core.sliding_window import label_map
from scripts.train.metrics import MetricsAccumulator, as_numpy
from scripts.train.report import write_report
from scripts.core.tasks import Keys, Task

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalBatch:
    """One batch as the metrics need it (numpy arrays, batch first).

    ``seg_pred`` ``(B, *sp)`` argmax labels, ``seg_true`` ``(B, *sp)``, ``has_seg`` ``(B,)``,
    ``cls_prob`` ``(B, K)`` softmax, ``cls_true`` ``(B,)`` (-1 missing), ``has_cls`` ``(B,)``.
    """

    seg_pred: np.ndarray
    seg_true: np.ndarray
    has_seg: np.ndarray
    cls_prob: np.ndarray
    cls_true: np.ndarray
    has_cls: np.ndarray


def _get(mapping: Any, key: str, where: str) -> Any:
    if not isinstance(mapping, Mapping) or key not in mapping:
        found = list(mapping.keys()) if isinstance(mapping, Mapping) else type(mapping).__name__
        raise ValueError(f"engine output: {where} has no '{getattr(key, 'value', key)}' (found {found})")
    return mapping[key]


def _stack(items: Sequence[Any]) -> torch.Tensor:
    return torch.stack([torch.as_tensor(i) for i in items])


def multitask_output_transform(output: Mapping | Sequence[Mapping]) -> EvalBatch:
    """Turn ``engine.state.output`` into an :class:`EvalBatch` (argmax of seg, softmax of cls).

    Raises:
        ValueError: the output is neither a dict nor a non-empty list of dicts, or lacks a key
            (the message names the missing key and the keys found).
    """
    pred_key, label_key = CommonKeys.PRED, CommonKeys.LABEL
    if isinstance(output, Mapping):
        pred, label = _get(output, pred_key, "output"), _get(output, label_key, "output")
        seg_logits, cls_logits = _get(pred, Task.SEG.value, "pred"), _get(pred, Task.CLS.value, "pred")
        targets = [_get(label, k, "label") for k in (Task.SEG.value, Task.CLS.value, Keys.HAS_SEG.value, Keys.HAS_CLS.value)]
    elif isinstance(output, Sequence) and len(output) > 0 and all(isinstance(o, Mapping) for o in output):
        # MONAI decollates to one dict per sample: stack them back to a batch
        preds = [_get(o, pred_key, "output item") for o in output]
        labels = [_get(o, label_key, "output item") for o in output]
        seg_logits = _stack([_get(p, Task.SEG.value, "pred") for p in preds])
        cls_logits = _stack([_get(p, Task.CLS.value, "pred") for p in preds])
        keys = (Task.SEG.value, Task.CLS.value, Keys.HAS_SEG.value, Keys.HAS_CLS.value)
        targets = [_stack([_get(lb, k, "label") for lb in labels]) for k in keys]
    else:
        raise ValueError(f"engine output: expected a dict or a non-empty list of dicts, got {type(output).__name__}")
    seg_true = torch.as_tensor(targets[0])
    with torch.no_grad():
        seg_pred = label_map(torch.as_tensor(seg_logits))  # (B, S, *sp) -> (B, *sp)
        cls_prob = torch.softmax(torch.as_tensor(cls_logits).float(), dim=1)  # bf16 under AMP: softmax in fp32
    return EvalBatch(
        seg_pred=as_numpy(seg_pred), seg_true=as_numpy(seg_true[:, 0] if seg_true.ndim == seg_pred.ndim + 1 else seg_true),
        has_seg=as_numpy(targets[2]).reshape(-1), cls_prob=as_numpy(cls_prob),
        cls_true=as_numpy(targets[1]).reshape(-1).astype(np.int64), has_cls=as_numpy(targets[3]).reshape(-1),
    )


def _is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def store_details(engine: Engine, name: str, details: dict[str, Any]) -> None:
    """Put ``details`` at ``engine.state.metric_details[name]`` (MONAI's place for non-scalar results)."""
    if not isinstance(getattr(engine.state, "metric_details", None), dict):
        engine.state.metric_details = {}  # a plain ignite Engine has no such field
    engine.state.metric_details[name] = details


class MultiTaskValidationMetric(Metric):
    """Combined validation score for ``SupervisedEvaluator(key_val_metric=...)``.

    ``compute()`` -> ``mean(lesion Dice, balanced accuracy)`` (a float, higher is better); the full
    dict of :meth:`scripts.train.metrics.MetricsAccumulator.compute` is stored in
    ``engine.state.metric_details[name]`` and in :attr:`details`.

    Args:
        classes: K class names. segments: S segment names, background first.
        output_transform: engine output -> :class:`EvalBatch`; default reads our ``prepare_batch``.

    Raises:
        ValueError: (at compute) the data had neither a lesion mask nor a class label, so no score exists.
    """

    def __init__(self, classes: Sequence[str], segments: Sequence[str],
                 output_transform: Callable[[Any], EvalBatch] = multitask_output_transform, device: str | torch.device = "cpu") -> None:
        self.accumulator = MetricsAccumulator(classes, segments)  # before super(): its __init__ calls reset()
        self.details: dict[str, Any] | None = None
        super().__init__(output_transform=output_transform, device=device)

    @reinit__is_reduced
    def reset(self) -> None:
        self.accumulator.reset()

    @reinit__is_reduced
    def update(self, output: EvalBatch) -> None:
        self.accumulator.update(**asdict(output))

    def compute(self) -> float:
        self.details = self.accumulator.gathered().compute()
        score = self.details["combined_score"]
        if score is None:
            raise ValueError("MultiTaskValidationMetric: no validation sample has a lesion mask or a class label; "
                             "no combined score can be computed")
        return score

    def completed(self, engine: Engine, name: str) -> None:
        super().completed(engine, name)
        store_details(engine, name, self.details)


def load_history(history_file: str | os.PathLike | None) -> list[dict[str, Any]] | None:
    """Per-epoch training history (a JSON list of dicts); ``None`` when no file is given or found.

    Raises:
        ValueError: the file exists but is not JSON or not a list of objects (names the file).
    """
    if history_file is None or not Path(history_file).is_file():
        return None
    try:
        history = json.loads(Path(history_file).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{history_file}: training history is not valid JSON ({e})") from e
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise ValueError(f"{history_file}: training history must be a JSON list of per-epoch objects")
    return history


class MetricsReportHandler:
    """Collects an evaluator's outputs and writes the evaluation report when the run completes.

    Files in ``out_dir``: ``metrics.json``, ``report.md``, ``per_image.csv`` and PNG plots
    (see :func:`scripts.train.report.write_report`). The metrics also go to
    ``engine.state.metric_details[name]`` and :attr:`metrics`; :attr:`paths` lists the files.

    Args:
        classes, segments: names as in the datalist / model card.
        out_dir: report folder (created). history_file: the trainer's ``history.json`` for the
            training curves; missing file -> report without curves.
        output_transform: engine output -> :class:`EvalBatch`. name: key in ``metric_details``.
        temperature: the model card's temperature; the diagnosis metrics are computed on the
            temperature-scaled probabilities (as the Predictor reports them), and the report shows
            the ECE before and after with a reliability diagram. None: as the network gives them.
    """

    def __init__(self, classes: Sequence[str], segments: Sequence[str], out_dir: str | os.PathLike,
                 history_file: str | os.PathLike | None = None,
                 output_transform: Callable[[Any], EvalBatch] = multitask_output_transform, name: str = "evaluation",
                 temperature: float | None = None) -> None:
        self.accumulator = MetricsAccumulator(classes, segments)
        self.temperature = temperature
        self.out_dir, self.history_file = Path(out_dir), history_file
        self.output_transform, self.name = output_transform, name
        self.metrics: dict[str, Any] | None = None
        self.paths: dict[str, Path] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.accumulator.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._update)
        engine.add_event_handler(Events.COMPLETED, self._complete)

    def _update(self, engine: Engine) -> None:
        self.accumulator.update(**asdict(self.output_transform(engine.state.output)))

    def _complete(self, engine: Engine) -> None:
        acc = self.accumulator.gathered()
        raw = acc.state()["cls_prob"]
        if self.temperature:
            acc = acc.with_probabilities(temper(raw, self.temperature))
        self.metrics = acc.compute()
        state = acc.state()
        scored = state["scored"].astype(bool)
        reliability = None
        if scored.any():
            truth = state["cls_true"][scored]
            cal = {"temperature": self.temperature, "ece_uncalibrated": expected_calibration_error(raw[scored], truth),
                   "ece": expected_calibration_error(state["cls_prob"][scored], truth),
                   "ece_floor": ece_floor(state["cls_prob"][scored]), "n_samples": int(scored.sum())}
            self.metrics[Task.CLS.value]["calibration"] = cal
            reliability = {"network": reliability_bins(raw[scored], truth)}
            if self.temperature:
                reliability[f"temperature-scaled (T={self.temperature:.2f})"] = reliability_bins(state["cls_prob"][scored], truth)
        store_details(engine, self.name, self.metrics)
        if not _is_main_process():
            return
        self.paths = write_report(self.metrics, self.out_dir, history=load_history(self.history_file),
                                  cls_prob=state["cls_prob"][scored], cls_true=state["cls_true"][scored],
                                  per_image=acc.per_image(), reliability=reliability)
        seg, cls = self.metrics[Task.SEG.value], self.metrics[Task.CLS.value]
        logger.info("evaluation: %d samples; lesion Dice %s; balanced accuracy %s; combined score %s; report %s",
                    len(acc), seg["lesion"]["dice"], cls["balanced_accuracy"], self.metrics["combined_score"],
                    self.paths.get("report"))
