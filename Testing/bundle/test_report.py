"""The evaluation report (scripts/train/report.py): files, their content, plots, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from scripts.train import report as report_module
from scripts.train.calibration import reliability_bins
from scripts.train.metrics import MetricsAccumulator
from scripts.train.report import FILES, history_series, plot_history, plot_roc, write_report
from scripts.core.tasks import Task

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]


def history(n: int = 6) -> list[dict]:
    """Records shaped like the trainer's HistoryHandler writes them (nested val_details)."""
    return [{"epoch": e, "seconds": 2.0, "lr": 1e-3 if e < 4 else 1e-4, "seg_only": e <= 1, "loss": 1.0 / e,
             "loss_seg": 0.6 / e, "loss_cls": 0.4 / e, "val_score": 0.5 + 0.05 * e,
             "val_details": {"val_score": {"seg": {"lesion": {"dice": 0.4 + 0.06 * e}},
                                           "cls": {"accuracy": 0.3 + 0.1 * e, "balanced_accuracy": 0.25 + 0.1 * e},
                                           "combined_score": 0.5 + 0.05 * e}},
             "log_vars": {"seg": -0.1 * e, "cls": 0.05 * e}} for e in range(1, n + 1)]


def evaluated(segments=("background", "tumor"), seed: int = 0, n: int = 24) -> MetricsAccumulator:
    rng = np.random.default_rng(seed)
    true = np.zeros((n, 16, 16), np.int64)
    for i in range(n):
        if i % 4:  # every fourth image has an empty mask
            true[i, 4:10, 3 + i % 5: 9 + i % 5] = 1 + i % (len(segments) - 1)
    pred = np.roll(true, 1, axis=1)
    cls_true = np.arange(n) % len(CLASSES)
    logits = rng.normal(size=(n, len(CLASSES)))
    logits[np.arange(n), cls_true] += 1.5
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    acc = MetricsAccumulator(CLASSES, list(segments))
    acc.update(pred, true, np.r_[np.ones(n - 2), 0, 0], prob, np.r_[cls_true[:-1], -1], np.ones(n))
    return acc


def report_of(acc: MetricsAccumulator, out: Path, **kwargs) -> dict[str, Path]:
    st = acc.state()
    scored = st["scored"].astype(bool)
    return write_report(acc.compute(), out, cls_prob=st["cls_prob"][scored], cls_true=st["cls_true"][scored],
                        per_image=acc.per_image(), **kwargs)


def test_full_report_files_and_content(tmp_path, artifacts_dir):
    acc = evaluated()
    metrics = acc.compute()
    st = acc.state()
    scored = st["scored"].astype(bool)
    bins = {"network": reliability_bins(st["cls_prob"][scored], st["cls_true"][scored])}
    paths = report_of(acc, tmp_path / "eval", history=history(), reliability=bins)
    assert set(paths) == set(FILES)
    assert json.loads(paths["metrics"].read_text(encoding="utf-8")) == json.loads(json.dumps(metrics))
    for key in ("confusion_matrix", "roc", "training_curves", "dice_histogram", "reliability"):
        image = matplotlib.image.imread(paths[key])
        assert image.ndim == 3 and min(image.shape[:2]) > 200, key
        (artifacts_dir / f"report_{paths[key].name}").write_bytes(paths[key].read_bytes())  # for a human look
    text = paths["report"].read_text(encoding="utf-8")
    seg, cls = metrics[Task.SEG.value], metrics[Task.CLS.value]
    assert f"**Combined score: {metrics['combined_score']:.3f}**" in text
    assert f"| Dice | {seg['lesion']['dice']:.3f} ± {seg['lesion']['dice_std']:.3f}" in text
    assert f"| Balanced accuracy | {cls['balanced_accuracy']:.3f} |" in text
    assert f"| without a mask (excluded) | {seg['n_without_mask']} |" in text
    assert f"| glioma | {cls['per_class']['glioma']['support']} |" in text
    assert "| glioma | " + " | ".join(map(str, cls["confusion_matrix"][0])) + " |" in text
    for key in ("confusion_matrix", "roc", "training_curves", "dice_histogram", "per_image", "metrics"):
        assert f"({FILES[key]})" in text, key
    rows = paths["per_image"].read_text(encoding="utf-8").splitlines()
    assert rows[0].startswith("id,has_seg,lesion_voxels") and len(rows) == 1 + len(acc)
    assert not [p for p in (tmp_path / "eval").iterdir() if p.name.startswith(".")]  # no temp files left


def test_calibration_section_gives_the_ece_floor_when_known(tmp_path):
    acc = evaluated()
    metrics = acc.compute()
    cal = {"temperature": 1.7, "ece_uncalibrated": 0.21, "ece": 0.09, "ece_floor": 0.071, "n_samples": 23}
    metrics[Task.CLS.value]["calibration"] = cal
    text = write_report(metrics, tmp_path / "a")["report"].read_text(encoding="utf-8")
    assert "| temperature-scaled (what the Predictor reports) | 0.090 |" in text
    assert "ECE of about 0.071 on these 23 samples" in text
    metrics[Task.CLS.value]["calibration"] = {k: v for k, v in cal.items() if k not in ("ece_floor", "n_samples")}
    text = write_report(metrics, tmp_path / "b")["report"].read_text(encoding="utf-8")  # metrics of older runs
    assert "| temperature-scaled (what the Predictor reports) | 0.090 |" in text and "ECE of about" not in text


def test_report_without_history_or_classes(tmp_path):
    acc = MetricsAccumulator(CLASSES, ["background", "tumor"])
    true = np.zeros((2, 8, 8), np.int64)
    true[0, 2:5, 2:5] = 1
    acc.update(true, true, np.ones(2), np.full((2, 4), 0.25), np.full(2, -1), np.zeros(2))
    paths = write_report(acc.compute(), tmp_path, history=None, per_image=acc.per_image())
    assert set(paths) == {"metrics", "report", "per_image", "dice_histogram"}
    text = paths["report"].read_text(encoding="utf-8")
    assert "No training history was given." in text
    assert "0 scored" in text and "Confusion matrix" not in text


def test_multi_segment_report_has_per_segment_table(tmp_path):
    paths = report_of(evaluated(segments=("background", "edema", "core")), tmp_path)
    text = paths["report"].read_text(encoding="utf-8")
    assert "## Segmentation (edema, core)" in text
    assert "| edema |" in text and "| core |" in text


def test_roc_not_drawn_when_truth_has_one_class(tmp_path):
    assert plot_roc(np.full((3, 2), 0.5), np.zeros(3, np.int64), ["x", "y"], tmp_path / "roc.png") is False
    assert not (tmp_path / "roc.png").exists()


def test_confusion_matrix_with_an_absent_class_row(tmp_path):
    acc = MetricsAccumulator(["x", "y", "z"], ["bg", "t"])
    acc.update(np.zeros((2, 4, 4), int), np.zeros((2, 4, 4), int), np.ones(2),
               np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8]]), np.array([0, 0]), np.ones(2))
    paths = write_report(acc.compute(), tmp_path)
    assert matplotlib.image.imread(paths["confusion_matrix"]).ndim == 3
    text = paths["report"].read_text(encoding="utf-8")
    assert "| y | 0 | n/a | n/a | n/a | n/a |" in text  # absent, never predicted
    assert "| z | 0 | 0.000 | n/a | n/a | n/a |" in text  # absent, predicted once (wrongly)


def test_history_series_finds_trainer_keys():
    epochs, panels = history_series(history(4))
    np.testing.assert_array_equal(epochs, [1, 2, 3, 4])
    by_title = {title: series for title, _, series in panels}
    assert list(by_title) == ["Training loss", "Validation lesion Dice", "Validation diagnosis accuracy",
                              "Validation combined score", "Learning rate", "Uncertainty weights"]
    assert set(by_title["Training loss"]) == {"total", "segmentation", "diagnosis"}
    np.testing.assert_allclose(by_title["Validation lesion Dice"]["lesion Dice"], [0.46, 0.52, 0.58, 0.64])
    np.testing.assert_allclose(by_title["Uncertainty weights"]["seg"], [-0.1, -0.2, -0.3, -0.4])


def test_history_gaps_and_flat_keys():
    records = [{"train_loss": 1.0, "val_dice": None}, {"train_loss": 0.5, "val_dice": 0.7, "note": "text"}]
    epochs, panels = history_series(records)
    np.testing.assert_array_equal(epochs, [1, 2])  # no "epoch" key: counted from 1
    dice = dict((t, s) for t, _, s in panels)["Validation lesion Dice"]["lesion Dice"]
    assert np.isnan(dice[0]) and dice[1] == 0.7


def test_history_without_known_series_draws_nothing(tmp_path):
    assert plot_history([{"epoch": 1, "note": "x"}], tmp_path / "h.png") is False
    paths = write_report(evaluated().compute(), tmp_path, history=[{"epoch": 1}])
    assert "training_curves" not in paths
    assert "The history holds none of the series plotted here." in paths["report"].read_text(encoding="utf-8")


def test_write_report_rejects_other_dicts(tmp_path):
    with pytest.raises(ValueError, match="metrics must be the dict of MetricsAccumulator.compute"):
        write_report({"dice": 0.9}, tmp_path)


