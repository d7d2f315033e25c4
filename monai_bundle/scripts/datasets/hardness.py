"""How hard is a prepared 2D set? ``python -m scripts.datasets hardness DATALIST``.

Cheap baselines a useful tuning set must defeat, fitted on ``training`` and scored on ``test``:

* the best single global intensity threshold (either polarity; raw 8-bit and per-image z-scored)
  as a tumour segmenter: mean lesion Dice over test images that have a lesion;
* image-blind diagnosis: always the majority training class, and guessing by the training prior
  (accuracy and balanced accuracy);
* a nearest-centroid classifier on global image statistics (size, mean, spread, percentiles,
  foreground share): balanced accuracy; near chance means no trivial shortcut.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

THRESHOLDS = np.arange(0, 256, 4)


def _load(datalist: Path, split: str) -> list[tuple[np.ndarray, np.ndarray | None, int | None]]:
    data = json.loads(Path(datalist).read_text(encoding="utf-8"))
    base = Path(datalist).parent
    out = []
    for s in data.get(split, []):
        image = np.asarray(Image.open(base / s["image"]).convert("L"))
        mask = np.asarray(Image.open(base / s["label"])) > 0 if "label" in s else None
        out.append((image, mask, s.get("class")))
    return out


def _dice(pred: np.ndarray, mask: np.ndarray) -> float:
    return float(2 * (pred & mask).sum() / (pred.sum() + mask.sum() + 1e-9))


def _zscore(image: np.ndarray) -> np.ndarray:
    a = image.astype(np.float32)
    return np.clip((a - a.mean()) / (a.std() + 1e-6) * 40 + 128, 0, 255)


def threshold_dice(train: list, test: list) -> dict[str, float]:
    """Best global threshold (fitted on train lesions) -> mean test lesion Dice, raw and z-scored."""
    scores = {}
    for name, prep in (("raw", lambda a: a.astype(np.float32)), ("zscore", _zscore)):
        tr = [(prep(im)[::2, ::2], m[::2, ::2]) for im, m, _ in train if m is not None and m.any()]
        te = [(prep(im), m) for im, m, _ in test if m is not None and m.any()]
        best, best_score = (0.0, 1), -1.0
        for sign in (1, -1):
            for t in THRESHOLDS:
                score = float(np.mean([_dice(sign * im > sign * t, m) for im, m in tr]))
                if score > best_score:
                    best, best_score = (float(t), sign), score
        t, sign = best
        scores[name] = float(np.mean([_dice(sign * im > sign * t, m) for im, m in te])) if te else float("nan")
    return scores


def _balanced(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([np.mean(pred[truth == c] == c) for c in np.unique(truth)]))


def blind_baselines(train: list, test: list) -> dict[str, float]:
    """Accuracy and balanced accuracy of the majority class and of guessing by the prior."""
    ytr = np.array([c for _, _, c in train if c is not None])
    yte = np.array([c for _, _, c in test if c is not None])
    classes, counts = np.unique(ytr, return_counts=True)
    majority = classes[np.argmax(counts)]
    prior = dict(zip(classes.tolist(), (counts / counts.sum()).tolist()))
    return {"majority_accuracy": float(np.mean(yte == majority)),
            "majority_balanced_accuracy": _balanced(np.full_like(yte, majority), yte),
            "prior_accuracy": float(np.mean([prior.get(int(c), 0.0) for c in yte])),
            "prior_balanced_accuracy": float(np.mean([prior.get(int(c), 0.0) for c in np.unique(yte)]))}


def _features(image: np.ndarray) -> np.ndarray:
    a = image.astype(np.float32)
    fg = a > 20
    return np.array([a.shape[0], a.shape[1], a.mean(), a.std(), *np.percentile(a, [10, 50, 90, 99]), fg.mean(),
                     a[fg].mean() if fg.any() else 0.0])


def global_stats_classifier(train: list, test: list) -> float:
    """Balanced test accuracy of nearest-centroid classification on standardised global image statistics."""
    xtr = np.array([_features(im) for im, _, c in train if c is not None])
    ytr = np.array([c for _, _, c in train if c is not None])
    xte = np.array([_features(im) for im, _, c in test if c is not None])
    yte = np.array([c for _, _, c in test if c is not None])
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    classes = np.unique(ytr)
    centroids = np.array([((xtr[ytr == c] - mu) / sd).mean(0) for c in classes])
    dist = (((xte - mu) / sd)[:, None, :] - centroids[None]) ** 2
    return _balanced(classes[dist.sum(-1).argmin(1)], yte)


def measure(datalist: str | Path) -> dict[str, Any]:
    """All baselines of a prepared datalist (``training`` fits, ``test`` scores)."""
    train, test = _load(Path(datalist), "training"), _load(Path(datalist), "test")
    return {"threshold_dice": threshold_dice(train, test), **blind_baselines(train, test),
            "global_stats_balanced_accuracy": global_stats_classifier(train, test),
            "n_train": len(train), "n_test": len(test)}
