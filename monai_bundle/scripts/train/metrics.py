"""Evaluation numbers for both heads, as pure numpy functions plus one accumulator.

Segmentation is scored the way the earlier projects should have scored it (they scored an empty
prediction of an empty mask as Dice 1.0 and counted the background in the mean IoU):

* Dice, IoU, precision and recall of the **lesion** (every foreground segment together, never the
  background) are computed **per image** and averaged over the images whose ground truth has a
  lesion. On such an image an empty prediction scores precision 0 (a missed lesion is not rewarded).
* Images whose ground truth is empty are reported apart (``empty_masks``): how many there are, how
  many predictions are empty too (image-level specificity) and the mean false-positive area. They
  are never scored as Dice 1.0.
* Images without a mask (``has_seg == 0``) are excluded and counted.
* With more than one foreground segment, per-segment Dice/IoU are averaged over the images whose
  ground truth contains that segment.

Classification: accuracy, balanced accuracy, per-class / macro / weighted precision, recall and F1,
multi-class MCC, one-vs-rest ROC AUC per class and their macro mean, confusion matrix (rows = truth,
columns = prediction). Samples with ``class == -1`` (or ``has_cls == 0``) are excluded and counted.
Undefined values are ``None`` (JSON ``null``), never NaN; see :func:`classification_metrics`.

``combined_score = mean(lesion Dice, balanced accuracy)`` over the halves that can be computed; the
trainer keeps the checkpoint with the highest one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from scripts.core.tasks import MISSING_CLASS, tumor_free_class, Task

ArrayLike = np.ndarray | torch.Tensor | Sequence


def as_numpy(x: ArrayLike) -> np.ndarray:
    """A tensor (any device, with or without grad) or array-like as a numpy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if values.size else None


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


# ----------------------------------------------------------------------------- segmentation


def segmentation_confusion(seg_pred: ArrayLike, seg_true: ArrayLike, n_segments: int) -> np.ndarray:
    """Per-image voxel confusion matrices of label maps.

    Args:
        seg_pred: ``(B, *spatial)`` integer label map predicted (values ``0..S-1``).
        seg_true: ``(B, *spatial)`` or ``(B, 1, *spatial)`` integer ground truth.
        n_segments: S, segment values including background 0.

    Returns:
        int64 ``(B, S, S)``: ``[b, t, p]`` counts voxels of true value t predicted as p.

    Raises:
        ValueError: shapes differ, or a value lies outside ``0..S-1`` (names which input).
    """
    pred, true = as_numpy(seg_pred), as_numpy(seg_true)
    if true.ndim == pred.ndim + 1 and true.shape[1] == 1:
        true = true[:, 0]  # (B, 1, *spatial) -> (B, *spatial)
    if pred.shape != true.shape or pred.ndim < 2:
        raise ValueError(f"segmentation: prediction shape {pred.shape} differs from ground truth shape {true.shape}")
    for name, arr in (("prediction", pred), ("ground truth", true)):
        if arr.size and (arr.min() < 0 or arr.max() >= n_segments):
            raise ValueError(
                f"segmentation {name}: values must be in 0..{n_segments - 1}, got {arr.min()}..{arr.max()}"
            )
    b, s = pred.shape[0], n_segments
    # one bincount for the whole batch: index = image * S*S + true * S + pred
    index = np.arange(b).reshape((b,) + (1,) * (pred.ndim - 1)) * s * s + true.astype(np.int64) * s + pred
    return np.bincount(index.ravel(), minlength=b * s * s).reshape(b, s, s).astype(np.int64)


def _lesion_counts(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tp, fp, fn) of the lesion (all foreground together) from ``(N, S, S)`` confusions."""
    tp = cm[:, 1:, 1:].sum(axis=(1, 2))
    fp = cm[:, 0, 1:].sum(axis=1)
    fn = cm[:, 1:, 0].sum(axis=1)
    return tp, fp, fn


def overlap_scores(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image Dice, IoU, precision, recall from voxel counts (1-D arrays of equal length).

    Call only on images whose ground truth is non-empty (``tp + fn > 0``). Precision of an empty
    prediction is 0: the lesion was missed.
    """
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    pred = np.maximum(tp + fp, 1.0)  # tp + fp == 0 only when tp == 0, so the ratio is 0 there
    return {
        "dice": 2 * tp / (2 * tp + fp + fn),
        "iou": tp / (tp + fp + fn),
        "precision": tp / pred,
        "recall": tp / (tp + fn),
    }


def _summary(values: np.ndarray) -> dict[str, float | None]:
    if not values.size:
        return {"mean": None, "std": None, "median": None}
    return {"mean": float(values.mean()), "std": float(values.std()), "median": float(np.median(values))}


def segmentation_metrics_from_confusion(cm: np.ndarray, segments: Sequence[str], n_without_mask: int = 0) -> dict[str, Any]:
    """Segmentation metrics from per-image confusion matrices of the images that have a mask.

    Args:
        cm: int ``(N, S, S)`` from :func:`segmentation_confusion`, only images with ``has_seg``.
        segments: S names, background first.
        n_without_mask: images excluded because they had no mask (reported, not scored).

    Returns:
        JSON-ready dict: ``lesion`` (Dice/IoU/precision/recall means over lesion images, Dice
        std/median), ``per_segment`` (Dice/IoU per foreground segment), ``empty_masks``.
    """
    cm = np.asarray(cm, dtype=np.int64).reshape(-1, len(segments), len(segments))
    tp, fp, fn = _lesion_counts(cm)
    lesion = (tp + fn) > 0
    scores = overlap_scores(tp[lesion], fp[lesion], fn[lesion])
    dice = _summary(scores["dice"])
    lesion_out = {"n_images": int(lesion.sum()), "dice": dice["mean"], "dice_std": dice["std"],
                  "dice_median": dice["median"], "iou": _mean(scores["iou"]),
                  "precision": _mean(scores["precision"]), "recall": _mean(scores["recall"])}
    per_segment = {}
    for c, name in enumerate(segments[1:], start=1):
        s_tp = cm[:, c, c]
        s_fp, s_fn = cm[:, :, c].sum(axis=1) - s_tp, cm[:, c, :].sum(axis=1) - s_tp
        present = (s_tp + s_fn) > 0
        s = overlap_scores(s_tp[present], s_fp[present], s_fn[present])
        per_segment[name] = {"n_images": int(present.sum()), "dice": _mean(s["dice"]), "iou": _mean(s["iou"])}
    empty = ~lesion
    fp_empty = fp[empty].astype(np.float64)
    voxels = np.maximum(cm[empty].sum(axis=(1, 2)), 1)
    n_pred_empty = int((fp_empty == 0).sum())
    return {
        "segments": list(segments),
        "n_images": int(cm.shape[0]) + int(n_without_mask),
        "n_without_mask": int(n_without_mask),
        "lesion": lesion_out,
        "per_segment": per_segment,
        "empty_masks": {"n_images": int(empty.sum()), "n_predicted_empty": n_pred_empty,
                        "specificity": _ratio(n_pred_empty, int(empty.sum())),
                        "mean_false_positive_voxels": _mean(fp_empty),
                        "mean_false_positive_fraction": _mean(fp_empty / voxels)},
    }


def segmentation_metrics(seg_pred: ArrayLike, seg_true: ArrayLike, has_seg: ArrayLike, segments: Sequence[str]) -> dict[str, Any]:
    """Segmentation metrics of a batch of label maps (see the module docstring for the rules).

    Args:
        seg_pred: ``(N, *spatial)`` predicted label map; seg_true: ``(N[, 1], *spatial)``;
        has_seg: ``(N,)`` 0/1, whether the sample has a mask; segments: S names, background first.

    Raises:
        ValueError: no samples, shape mismatch, or values outside ``0..S-1``.
    """
    has = as_numpy(has_seg).reshape(-1) > 0
    if has.size == 0:
        raise ValueError("segmentation metrics: no samples were given")
    pred, true = as_numpy(seg_pred), as_numpy(seg_true)
    cm = segmentation_confusion(pred[has], true[has], len(segments))
    return segmentation_metrics_from_confusion(cm, segments, n_without_mask=int((~has).sum()))


# ----------------------------------------------------------------------------- classification


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> np.ndarray:
    """int64 ``(K, K)`` counts, rows = true class, columns = predicted class."""
    t, p = as_numpy(y_true).astype(np.int64), as_numpy(y_pred).astype(np.int64)
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def matthews_corrcoef(cm: np.ndarray) -> float:
    """Multi-class MCC (Gorodkin's R_K) of a ``(K, K)`` confusion matrix; 0.0 when undefined.

    ``(c*s - sum_k p_k t_k) / sqrt((s^2 - sum p_k^2)(s^2 - sum t_k^2))`` with c correct, s total,
    t_k true and p_k predicted counts of class k. Undefined (one class in truth or prediction) -> 0,
    as scikit-learn does: such a classifier is no better than chance.
    """
    cm = np.asarray(cm, dtype=np.float64)
    t, p, c, s = cm.sum(axis=1), cm.sum(axis=0), np.trace(cm), cm.sum()
    den = np.sqrt((s * s - (p * p).sum()) * (s * s - (t * t).sum()))
    return float((c * s - (p * t).sum()) / den) if den > 0 else 0.0


def roc_auc(scores: ArrayLike, positive: ArrayLike) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties count 1/2); ``None`` without both classes."""
    s, pos = as_numpy(scores).astype(np.float64).ravel(), as_numpy(positive).astype(bool).ravel()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    _, inverse, counts = np.unique(s[order], return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = np.empty_like(s)
    ranks[order] = ((ends - counts + 1 + ends) / 2.0)[inverse]  # average 1-based rank of each tie group
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(scores: ArrayLike, positive: ArrayLike) -> tuple[np.ndarray, np.ndarray] | None:
    """ROC points ``(fpr, tpr)``, from (0, 0) to (1, 1), one per distinct score; ``None`` if undefined."""
    s, pos = as_numpy(scores).astype(np.float64).ravel(), as_numpy(positive).astype(bool).ravel()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(-s, kind="mergesort")
    s, pos = s[order], pos[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # thresholds between distinct scores
    tps, fps = np.cumsum(pos)[last_of_tie], np.cumsum(~pos)[last_of_tie]
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos]


def _check_classification(prob: np.ndarray, true: np.ndarray, n_classes: int) -> None:
    if prob.ndim != 2 or prob.shape[1] != n_classes or true.size != prob.shape[0]:
        raise ValueError(f"classification: probabilities must be (N, {n_classes}) and targets (N,), "
                         f"got {prob.shape} and {true.shape}")
    if not np.isfinite(prob).all():
        raise ValueError("classification: probabilities contain NaN or infinity")
    if prob.size and (prob.min() < 0 or prob.max() > 1 or not np.allclose(prob.sum(axis=1), 1.0, atol=1e-3)):
        raise ValueError("classification: rows of probabilities must lie in 0..1 and sum to 1 "
                         "(logits given? apply softmax first)")
    if true.size and (true.min() < 0 or true.max() >= n_classes):
        raise ValueError(f"classification: class indices must be in 0..{n_classes - 1} "
                         f"(or {MISSING_CLASS} for missing), got {true.min()}..{true.max()}")


def _per_class(cm: np.ndarray, prob: np.ndarray, true: np.ndarray, classes: Sequence[str]) -> dict[str, dict]:
    """Per-class P/R/F1/support/AUC; ``None`` where undefined (see classification_metrics)."""
    out = {}
    for k, name in enumerate(classes):
        tp, support, predicted = cm[k, k], cm[k].sum(), cm[:, k].sum()
        recall = _ratio(tp, support)
        precision = _ratio(tp, predicted) if predicted else (0.0 if support else None)
        f1 = None
        if recall is not None:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        out[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(support),
                     "auc": roc_auc(prob[:, k], true == k)}
    return out


def classification_metrics(cls_prob: ArrayLike, cls_true: ArrayLike, classes: Sequence[str]) -> dict[str, Any]:
    """Classification metrics of scored samples (no ``-1`` targets here: filter them first).

    Args:
        cls_prob: ``(N, K)`` probabilities (rows sum to 1); the prediction is their argmax.
        cls_true: ``(N,)`` class indices ``0..K-1``. classes: K names.

    Conventions for undefined values: a class absent from the truth has recall, F1 and AUC ``None``
    and precision 0 if it was predicted (every such prediction is wrong) else ``None``; it is left
    out of the macro means (so macro recall == balanced accuracy). A present class never predicted
    has precision 0. ``auc_macro`` averages the defined AUCs (``None`` if none is).

    Raises:
        ValueError: no samples, wrong shapes, values that are not probabilities, indices out of range.
    """
    prob, true = as_numpy(cls_prob).astype(np.float64), as_numpy(cls_true).astype(np.int64).reshape(-1)
    if true.size == 0:
        raise ValueError("classification metrics: no samples with a class were given")
    _check_classification(prob, true, len(classes))
    cm = confusion_matrix(true, prob.argmax(axis=1), len(classes))
    per_class = _per_class(cm, prob, true, classes)
    present = [v for v in per_class.values() if v["support"] > 0]
    weights = np.array([v["support"] for v in present], dtype=np.float64) / true.size
    macro = {m: float(np.mean([v[m] for v in present])) for m in ("precision", "recall", "f1")}
    weighted = {m: float(np.dot(weights, [v[m] for v in present])) for m in ("precision", "recall", "f1")}
    aucs = [v["auc"] for v in per_class.values() if v["auc"] is not None]
    return {
        "classes": list(classes), "n_samples": int(true.size), "n_without_class": 0, "n_scored": int(true.size),
        "accuracy": float(np.trace(cm) / true.size), "balanced_accuracy": macro["recall"],
        "mcc": matthews_corrcoef(cm), "auc_macro": float(np.mean(aucs)) if aucs else None,
        "macro": macro, "weighted": weighted, "per_class": per_class, "confusion_matrix": cm.tolist(),
    }


def empty_classification_metrics(classes: Sequence[str], n_without_class: int) -> dict[str, Any]:
    """The classification dict when no sample had a class: same keys, values ``None``."""
    none3 = {"precision": None, "recall": None, "f1": None}
    return {
        "classes": list(classes), "n_samples": int(n_without_class), "n_without_class": int(n_without_class),
        "n_scored": 0, "accuracy": None, "balanced_accuracy": None, "mcc": None, "auc_macro": None,
        "macro": dict(none3), "weighted": dict(none3),
        "per_class": {c: {**none3, "support": 0, "auc": None} for c in classes},
        "confusion_matrix": [[0] * len(classes) for _ in classes],
    }


def combined_score(metrics: dict[str, Any]) -> float | None:
    """``mean(seg lesion Dice, cls balanced accuracy)`` over the halves that are defined, else ``None``."""
    parts = [metrics[Task.SEG.value]["lesion"]["dice"], metrics[Task.CLS.value]["balanced_accuracy"]]
    parts = [p for p in parts if p is not None]
    return float(np.mean(parts)) if parts else None


# ----------------------------------------------------------------------------- accumulator


class MetricsAccumulator:
    """Collects per-sample evaluation statistics batch by batch; :meth:`compute` gives the metrics.

    Only compact statistics are kept: a ``(S, S)`` voxel confusion matrix per image and the class
    probabilities, so a whole validation set fits in memory whatever the image size.

    Args:
        classes: K diagnosis class names. segments: S segment names, background first.

    Raises:
        ValueError: fewer than 2 classes or segments.
    """

    def __init__(self, classes: Sequence[str], segments: Sequence[str]) -> None:
        if len(classes) < 2 or len(segments) < 2:
            raise ValueError(f"MetricsAccumulator needs >= 2 classes and >= 2 segments (background first), "
                             f"got classes={list(classes)} segments={list(segments)}")
        self.classes, self.segments = list(classes), list(segments)
        self.reset()

    def reset(self) -> None:
        """Forget every sample (call at the start of each evaluation run)."""
        self._parts: dict[str, list[np.ndarray]] = {k: [] for k in _STATE_KEYS}

    def __len__(self) -> int:
        return int(sum(len(a) for a in self._parts["has_seg"]))

    def update(self, seg_pred: ArrayLike, seg_true: ArrayLike, has_seg: ArrayLike, cls_prob: ArrayLike,
               cls_true: ArrayLike, has_cls: ArrayLike, ids: Sequence[str] | None = None) -> None:
        """Add one batch.

        Args:
            seg_pred: ``(B, *spatial)`` integer label map (argmax of the seg logits).
            seg_true: ``(B, *spatial)`` or ``(B, 1, *spatial)`` integer ground truth.
            has_seg: ``(B,)`` 0/1. cls_prob: ``(B, K)`` probabilities. cls_true: ``(B,)``, -1 if missing.
            has_cls: ``(B,)`` 0/1. ids: B names for the per-image table; default: running index.

        Raises:
            ValueError: batch sizes differ, or :func:`segmentation_confusion` /
                :func:`classification_metrics` reject the values.
        """
        has = as_numpy(has_seg).reshape(-1) > 0
        prob = as_numpy(cls_prob).astype(np.float64)
        true = as_numpy(cls_true).astype(np.int64).reshape(-1)
        scored = (as_numpy(has_cls).reshape(-1) > 0) & (true != MISSING_CLASS)
        b = has.size
        sizes = {"seg_pred": len(as_numpy(seg_pred)), "seg_true": len(as_numpy(seg_true)), "cls_prob": len(prob),
                 "cls_true": true.size, "has_cls": scored.size, "ids": b if ids is None else len(ids)}
        if any(n != b for n in sizes.values()):
            raise ValueError(f"MetricsAccumulator.update: batch sizes differ: has_seg={b}, {sizes}")
        _check_classification(prob, np.where(scored, true, 0), len(self.classes))
        cm = np.zeros((b, len(self.segments), len(self.segments)), dtype=np.int64)
        pred_map = as_numpy(seg_pred)
        cm[has] = segmentation_confusion(pred_map[has], as_numpy(seg_true)[has], len(self.segments))
        flat = pred_map.reshape(b, -1)
        pred_voxels, n_voxels = (flat > 0).sum(1).astype(np.int64), np.full(b, flat.shape[1], np.int64)
        start = len(self)
        names = [str(i) for i in range(start, start + b)] if ids is None else [str(i) for i in ids]
        for key, value in zip(_STATE_KEYS, (cm, has, prob, true, scored, np.array(names, dtype=object),
                                            pred_voxels, n_voxels)):
            self._parts[key].append(value)

    def state(self) -> dict[str, np.ndarray]:
        """All collected statistics as arrays (to gather them from other processes and :meth:`merge`)."""
        empty = {"seg_cm": np.zeros((0, len(self.segments), len(self.segments)), np.int64),
                 "cls_prob": np.zeros((0, len(self.classes)))}
        return {k: np.concatenate(v) if v else empty.get(k, np.zeros(0)) for k, v in self._parts.items()}

    def merge(self, state: dict[str, np.ndarray]) -> None:
        """Append the statistics another accumulator returned from :meth:`state`."""
        if len(state["has_seg"]):
            for k in _STATE_KEYS:
                self._parts[k].append(np.asarray(state[k]))

    def gathered(self) -> MetricsAccumulator:
        """Itself in one process; under ``torch.distributed``, a new accumulator with every rank's samples."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self
        states: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(states, self.state())
        merged = MetricsAccumulator(self.classes, self.segments)
        for state in states:
            merged.merge(state)
        return merged

    def with_probabilities(self, cls_prob: np.ndarray) -> MetricsAccumulator:
        """A copy whose class probabilities are replaced (``(N, K)`` in update order), e.g. calibrated ones."""
        state = self.state()
        if cls_prob.shape != state["cls_prob"].shape:
            raise ValueError(f"with_probabilities: expected {state['cls_prob'].shape}, got {cls_prob.shape}")
        out = MetricsAccumulator(self.classes, self.segments)
        out.merge({**state, "cls_prob": np.asarray(cls_prob, dtype=np.float64)})
        return out

    def compute(self) -> dict[str, Any]:
        """The metrics dict: ``{"seg": {...}, "cls": {...}, "combined_score": float | None}``.

        Raises:
            ValueError: nothing was collected.
        """
        if len(self) == 0:
            raise ValueError("MetricsAccumulator.compute: no samples were evaluated (empty evaluation set?)")
        st = self.state()
        has, scored = st["has_seg"].astype(bool), st["scored"].astype(bool)
        seg = segmentation_metrics_from_confusion(st["seg_cm"][has], self.segments, int((~has).sum()))
        n_missing = int((~scored).sum())
        if scored.any():
            cls = classification_metrics(st["cls_prob"][scored], st["cls_true"][scored], self.classes)
            cls.update(n_samples=len(self), n_without_class=n_missing)
        else:
            cls = empty_classification_metrics(self.classes, n_missing)
        out = {Task.SEG.value: seg, Task.CLS.value: cls}
        out["combined_score"] = combined_score(out)
        out["consistency"] = contradictions(st["cls_prob"].argmax(1), st["pred_voxels"], st["n_voxels"],
                                            tumor_free_class(self.classes))
        return out

    def per_image(self) -> list[dict[str, Any]]:
        """One row per sample in update order: id, lesion Dice/IoU (None if not scored), classes."""
        st = self.state()
        tp, fp, fn = _lesion_counts(st["seg_cm"])
        scores = overlap_scores(tp, fp, np.where(tp + fn > 0, fn, 1))  # placeholder fn avoids 0/0 on empty truths
        pred = st["cls_prob"].argmax(axis=1)
        rows = []
        for i, name in enumerate(st["ids"]):
            lesion = bool(st["has_seg"][i]) and tp[i] + fn[i] > 0
            rows.append({
                "id": str(name), "has_seg": bool(st["has_seg"][i]), "lesion_voxels": int(tp[i] + fn[i]),
                "predicted_voxels": int(tp[i] + fp[i]),
                "dice": float(scores["dice"][i]) if lesion else None, "iou": float(scores["iou"][i]) if lesion else None,
                "class_true": self.classes[st["cls_true"][i]] if st["scored"][i] else None,
                "class_pred": self.classes[pred[i]], "p_pred": float(st["cls_prob"][i, pred[i]]),
            })
        return rows


#: per-sample arrays kept by MetricsAccumulator: (S,S) confusion, has mask, (K,) probs, class, has class, id,
#: predicted lesion voxels, voxels of the image
_STATE_KEYS = ("seg_cm", "has_seg", "cls_prob", "cls_true", "scored", "ids", "pred_voxels", "n_voxels")
#: a tumor-free diagnosis contradicts a predicted lesion of at least this share of the image (50 px of 512²)
CONTRADICTION_MIN_FRACTION = 2e-4


def contradictions(cls_pred: ArrayLike, pred_voxels: ArrayLike, n_voxels: ArrayLike, tumor_free: int | None,
                   min_fraction: float = CONTRADICTION_MIN_FRACTION) -> dict[str, Any]:
    """How often the two heads contradict each other (ground truth is not needed).

    A contradiction is a tumor-free diagnosis over a predicted lesion of at least ``min_fraction`` of
    the image (at least 1 voxel), or a tumor diagnosis with no lesion voxel at all. Without a
    tumor-free class (``tumor_free`` None) nothing can contradict and the rate is None.

    Returns:
        ``{"rate", "tumor_free_with_lesion", "tumor_without_lesion", "n_images", "min_fraction"}``.
    """
    pred = as_numpy(cls_pred).reshape(-1)
    vox, total = as_numpy(pred_voxels).reshape(-1), as_numpy(n_voxels).reshape(-1)
    out: dict[str, Any] = {"rate": None, "tumor_free_with_lesion": 0, "tumor_without_lesion": 0,
                           "n_images": int(pred.size), "min_fraction": min_fraction}
    if tumor_free is None or pred.size == 0:
        return out
    threshold = np.maximum(np.ceil(min_fraction * total), 1)
    free_with = int(((pred == tumor_free) & (vox >= threshold)).sum())
    tumor_without = int(((pred != tumor_free) & (vox == 0)).sum())
    out.update(rate=(free_with + tumor_without) / pred.size, tumor_free_with_lesion=free_with,
               tumor_without_lesion=tumor_without)
    return out
