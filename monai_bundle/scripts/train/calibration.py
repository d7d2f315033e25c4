"""Calibrated diagnosis probabilities: temperature scaling fitted on the validation split.

A network trained with cross-entropy is usually over-confident. Temperature scaling (Guo et al.
2017) divides the class logits by one scalar ``T > 0`` fitted to minimise the negative
log-likelihood on held-out data; it changes no prediction, only how sure the probabilities are.

* :func:`fit_temperature` -- ``T`` from ``(N, K)`` logits and their classes (L-BFGS on ``log T``).
* :func:`expected_calibration_error` -- MONAI's ``CalibrationErrorMetric`` on ``(N, K)``
  probabilities, which it takes as ``(1, K, N)`` (one "image" whose pixels are the samples): the
  class-wise expected calibration error, averaged over the classes.
* :func:`ece_floor` -- the ECE perfectly calibrated probabilities show on as many samples: how low
  an ECE can be told apart from noise.
* :func:`reliability_bins` -- the per-bin confidence / accuracy of the top class, for the plot.
* :class:`TemperatureScalingHandler` -- after training, runs the best model over the validation
  split, fits ``T`` and writes it, with ECE before and after, into the model card, which the
  Predictor and evaluation read.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.metrics import CalibrationErrorMetric

from scripts.core.atomic import write_json_atomic
from scripts.core.model_card import CARD_NAME, WEIGHTS_NAME, load_weights

logger = logging.getLogger(__name__)
#: temperatures are kept inside this range (a degenerate validation set cannot produce 0 or infinity)
T_MIN, T_MAX = 0.25, 10.0
#: fewer validation samples with a class than this: no temperature is fitted (too noisy to trust)
MIN_SAMPLES = 20
N_BINS = 15


def fit_temperature(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, max_iter: int = 200) -> float:
    """The temperature minimising the NLL of ``softmax(logits / T)``.

    Args:
        logits: ``(N, K)`` class logits. labels: ``(N,)`` class indices ``0..K-1``.

    Returns:
        ``T`` in ``[T_MIN, T_MAX]`` (1.0 when fewer than 2 samples are given).

    Raises:
        ValueError: the shapes disagree or a label is outside ``0..K-1``.
    """
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    if z.ndim != 2 or z.shape[0] != y.numel():
        raise ValueError(f"fit_temperature needs logits (N, K) and labels (N,), got {tuple(z.shape)} and {tuple(y.shape)}")
    if y.numel() and (y.min() < 0 or y.max() >= z.shape[1]):
        raise ValueError(f"fit_temperature: labels must be in 0..{z.shape[1] - 1}, got {y.min().item()}..{y.max().item()}")
    if y.numel() < 2:
        return 1.0
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return float(min(max(t, T_MIN), T_MAX)) if math.isfinite(t) else 1.0


def temper(prob: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature-scale ``(N, K)`` probabilities: ``softmax(log p / T)`` (= ``softmax(z / T)`` of their logits)."""
    logp = np.log(np.clip(np.asarray(prob, dtype=np.float64), 1e-12, 1.0)) / float(temperature)
    logp -= logp.max(axis=1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=1, keepdims=True)


def expected_calibration_error(prob: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                               n_bins: int = N_BINS) -> float | None:
    """Class-wise ECE of ``(N, K)`` probabilities by MONAI's ``CalibrationErrorMetric``; None for no sample."""
    p = torch.as_tensor(np.asarray(prob), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)
    if p.shape[0] == 0:
        return None
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).float()  # (N, K)
    return _class_wise_ece(p.T[None], onehot.T[None], n_bins)  # (N, K) -> (1, K, N): samples are "pixels"


def _class_wise_ece(y_pred: torch.Tensor, y: torch.Tensor, n_bins: int) -> float | None:
    """MONAI's class-wise expected calibration error of ``(B, K, N)`` probabilities against one-hot
    classes, averaged over the batch and the classes; None when undefined."""
    metric = CalibrationErrorMetric(num_bins=n_bins, include_background=True, calibration_reduction="expected",
                                    metric_reduction="mean")
    metric(y_pred=y_pred.contiguous(), y=y.contiguous())
    value = float(metric.aggregate())
    return None if math.isnan(value) else value


def ece_floor(prob: torch.Tensor | np.ndarray, n_draws: int | None = None, seed: int = 0,
              n_bins: int = N_BINS) -> float | None:
    """The ECE that perfectly calibrated probabilities show on this many samples (the sampling floor).

    ECE is estimated from a finite set in bins, so even probabilities that are exactly right score
    above 0, and more so on few samples. This draws ``n_draws`` sets of classes from ``prob`` itself
    (so ``prob`` is calibrated for them by construction) and returns the mean ECE of ``prob``
    against them, by :func:`expected_calibration_error`'s metric. An ECE near this floor cannot be
    told from perfect calibration on this many samples. ``n_draws`` None: 200 draws, fewer for large
    sets (at least 20; a large set's floor varies little between draws). Deterministic for a given
    ``seed``; None for no sample.
    """
    p = np.asarray(prob, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        return None
    p = np.clip(p, 0.0, None)
    p = p / np.maximum(p.sum(1, keepdims=True), 1e-12)
    n, k = p.shape
    n_draws = n_draws if n_draws is not None else max(20, min(200, 60_000 // n))
    u = np.random.default_rng(seed).random((n_draws, n, 1))
    drawn = np.minimum((u > np.cumsum(p, 1)[None]).sum(-1), k - 1)  # (D, N) classes drawn from each row
    onehot = torch.nn.functional.one_hot(torch.as_tensor(drawn), k).permute(0, 2, 1).float()  # (D, K, N)
    return _class_wise_ece(torch.as_tensor(p.T, dtype=torch.float32)[None].expand(n_draws, k, n), onehot, n_bins)


def reliability_bins(prob: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> dict[str, list]:
    """Top-class confidence vs accuracy per confidence bin: ``{"confidence", "accuracy", "count"}``."""
    prob, labels = np.asarray(prob, dtype=np.float64), np.asarray(labels).reshape(-1)
    conf, correct = prob.max(1), (prob.argmax(1) == labels).astype(float)
    which = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    out: dict[str, list] = {"confidence": [], "accuracy": [], "count": []}
    for b in range(n_bins):
        sel = which == b
        out["count"].append(int(sel.sum()))
        out["confidence"].append(float(conf[sel].mean()) if sel.any() else None)
        out["accuracy"].append(float(correct[sel].mean()) if sel.any() else None)
    return out


def card_temperature(ckpt_dir: str | Path) -> float | None:
    """The temperature of ``ckpt_dir/model_card.json``; None when there is no card or no temperature."""
    path = Path(ckpt_dir) / CARD_NAME
    if not path.is_file():
        return None
    t = json.loads(path.read_text(encoding="utf-8")).get("temperature")
    return float(t) if t else None


def collect_logits(evaluator: Engine) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``evaluator`` once more and return the class logits and labels of samples that carry a class.

    Under DDP each rank validates its shard: the shards are gathered, so every rank fits the
    temperature on the whole validation split (and all of them on the same numbers).
    """
    logits, labels = [], []

    def keep(engine: Engine) -> None:
        out = engine.state.output
        outs = out if isinstance(out, (list, tuple)) else [out]
        for o in outs:
            z = torch.as_tensor(o["pred"]["cls"]).float().reshape(-1, o["pred"]["cls"].shape[-1]).cpu()
            lab = o["label"]
            y = torch.as_tensor(lab["cls"]).reshape(-1).cpu()
            has = torch.as_tensor(lab["has_cls"]).reshape(-1).cpu() > 0
            logits.append(z[has])
            labels.append(y[has])

    handle = evaluator.add_event_handler(Events.ITERATION_COMPLETED, keep)
    try:
        evaluator.run()
    finally:
        handle.remove()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        shards: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(shards, (logits, labels))
        logits = [z for shard_logits, _ in shards for z in shard_logits]
        labels = [y for _, shard_labels in shards for y in shard_labels]
    if not logits:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.int64)
    return torch.cat(logits), torch.cat(labels)


class TemperatureScalingHandler:
    """At the end of training: load the best weights, fit ``T`` on the validation split, record it.

    The model card (``ckpt_dir/model_card.json``) gains ``"temperature": T`` and
    ``"calibration": {"ece_before", "ece_after", "ece_floor", "n_samples", "split": "validation"}``. Only the main
    process writes. With no ``model.pt`` (no validation ever improved) or fewer than
    :data:`MIN_SAMPLES` validation samples with a class nothing is done.

    Args:
        ckpt_dir: where ``model.pt`` and ``model_card.json`` are. network: the trained network.
        evaluator: the validation evaluator (it runs the network as validation does).
        enabled: False skips calibration (``--calibrate false``).
    """

    def __init__(self, ckpt_dir: str, network: torch.nn.Module, evaluator: Engine, enabled: bool = True) -> None:
        self.dir, self.network, self.evaluator, self.enabled = Path(ckpt_dir), network, evaluator, enabled
        self.temperature: float | None = None
        self.summary: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        best, card_path = self.dir / WEIGHTS_NAME, self.dir / CARD_NAME
        if self.enabled and dist.is_available() and dist.is_initialized():
            dist.barrier()  # rank 0 writes model.pt at its last epoch's end: every rank then sees the same files
        if not self.enabled or not best.is_file() or not card_path.is_file():
            return
        net = self.network.module if hasattr(self.network, "module") else self.network
        load_weights(net, best)
        logits, labels = collect_logits(self.evaluator)
        if labels.numel() < MIN_SAMPLES:
            engine.logger.info(f"calibration skipped: {labels.numel()} validation samples with a class, "
                               f"fewer than the {MIN_SAMPLES} a temperature needs")
            return
        t = fit_temperature(logits, labels)
        before = expected_calibration_error(torch.softmax(logits, 1), labels)
        after = expected_calibration_error(torch.softmax(logits / t, 1), labels)
        floor = ece_floor(torch.softmax(logits / t, 1))
        self.temperature = t
        self.summary = {"ece_before": before, "ece_after": after, "ece_floor": floor, "n_samples": int(labels.numel()),
                        "split": "validation"}
        from scripts.train.training import is_main_process  # late: training imports the loss, which is heavier

        if is_main_process():
            card = json.loads(card_path.read_text(encoding="utf-8"))
            card["temperature"] = round(t, 5)
            card["calibration"] = self.summary
            write_json_atomic(card_path, card)
        engine.logger.info(f"temperature scaling on {labels.numel()} validation samples: T = {t:.3f}, "
                           f"ECE {before:.4f} -> {after:.4f} (perfectly calibrated probabilities would show "
                           f"{floor:.4f} on {labels.numel()} samples)")
