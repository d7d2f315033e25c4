"""Evaluation numbers (scripts/train/metrics.py) pinned on tiny examples computed by hand."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from scripts.train.metrics import (
    MetricsAccumulator,
    classification_metrics,
    combined_score,
    confusion_matrix,
    matthews_corrcoef,
    roc_auc,
    roc_curve,
    segmentation_confusion,
    segmentation_metrics,
)
from scripts.core.tasks import Task

SEG, CLS = Task.SEG.value, Task.CLS.value
CLASSES3 = ["a", "b", "c"]


def binary_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Five 4x4 images: hand-computed lesion metrics in test_segmentation_binary_by_hand."""
    true, pred = np.zeros((5, 4, 4), np.int64), np.zeros((5, 4, 4), np.int64)
    true[0, :2, :2] = 1
    pred[0, :2, :3] = 1  # tp 4, fp 2, fn 0
    true[1, 2:, 2:] = 1  # missed entirely: tp 0, fn 4
    pred[2, 0, :3] = 1  # empty truth, 3 false-positive voxels
    # image 3: empty truth, empty prediction
    pred[4] = 1  # no mask: must not count anywhere
    has_seg = np.array([1, 1, 1, 1, 0])
    return pred, true, has_seg


def test_segmentation_binary_by_hand():
    pred, true, has_seg = binary_case()
    m = segmentation_metrics(pred, true, has_seg, ["background", "tumor"])
    assert (m["n_images"], m["n_without_mask"]) == (5, 1)
    les = m["lesion"]
    assert les["n_images"] == 2
    # image 0: Dice 2*4/(8+2) = 0.8, IoU 4/6, precision 4/6, recall 1; image 1: all 0
    assert les["dice"] == pytest.approx(0.4)
    assert les["dice_std"] == pytest.approx(0.4)
    assert les["dice_median"] == pytest.approx(0.4)
    assert les["iou"] == pytest.approx(1 / 3)
    assert les["precision"] == pytest.approx(1 / 3)
    assert les["recall"] == pytest.approx(0.5)
    assert m["per_segment"]["tumor"] == {"n_images": 2, "dice": pytest.approx(0.4), "iou": pytest.approx(1 / 3)}
    emp = m["empty_masks"]
    assert (emp["n_images"], emp["n_predicted_empty"]) == (2, 1)
    assert emp["specificity"] == pytest.approx(0.5)
    assert emp["mean_false_positive_voxels"] == pytest.approx(1.5)
    assert emp["mean_false_positive_fraction"] == pytest.approx(3 / 32)


def test_empty_truth_with_empty_prediction_is_not_scored_as_dice_one():
    true = np.zeros((2, 4, 4), np.int64)
    true[0, 0, 0] = 1
    pred = np.zeros_like(true)  # image 0 missed, image 1 empty vs empty
    m = segmentation_metrics(pred, true, np.ones(2), ["background", "tumor"])
    assert m["lesion"]["dice"] == 0.0
    assert m["empty_masks"]["specificity"] == 1.0


def test_segmentation_multiclass_per_segment_by_hand():
    true = np.array([[[1, 1, 2, 2], [0, 0, 0, 0]], [[1, 0, 0, 0], [0, 0, 0, 0]]])
    pred = np.array([[[1, 2, 2, 2], [0, 0, 0, 1]], [[1, 0, 0, 0], [0, 0, 0, 0]]])
    m = segmentation_metrics(pred, true[:, None], np.ones(2), ["background", "edema", "core"])
    # image 0, lesion: tp 4, fp 1, fn 0 -> 8/9; image 1: 1
    assert m["lesion"]["dice"] == pytest.approx((8 / 9 + 1) / 2)
    # edema: image 0 tp 1 fp 1 fn 1 -> 0.5, image 1 -> 1; core only in image 0: tp 2 fp 1 -> 0.8
    assert m["per_segment"]["edema"] == {"n_images": 2, "dice": pytest.approx(0.75), "iou": pytest.approx((1 / 3 + 1) / 2)}
    assert m["per_segment"]["core"] == {"n_images": 1, "dice": pytest.approx(0.8), "iou": pytest.approx(2 / 3)}


@pytest.mark.parametrize("spatial", [(4, 4), (3, 4, 5)])
def test_segmentation_confusion_counts_2d_and_3d(spatial):
    rng = np.random.default_rng(0)
    true, pred = rng.integers(0, 3, (2, *spatial)), rng.integers(0, 3, (2, *spatial))
    cm = segmentation_confusion(torch.as_tensor(pred), torch.as_tensor(true)[:, None], 3)
    assert cm.shape == (2, 3, 3)
    for b in range(2):
        for t in range(3):
            for p in range(3):
                assert cm[b, t, p] == np.sum((true[b] == t) & (pred[b] == p))


def test_segmentation_confusion_rejects_bad_input():
    with pytest.raises(ValueError, match="prediction shape .* differs from ground truth shape"):
        segmentation_confusion(np.zeros((1, 4, 4), int), np.zeros((1, 4, 5), int), 2)
    with pytest.raises(ValueError, match=r"segmentation prediction: values must be in 0..1, got 0..2"):
        segmentation_confusion(np.array([[[0, 2]]]), np.zeros((1, 1, 2), int), 2)
    with pytest.raises(ValueError, match=r"segmentation ground truth: values must be in 0..1"):
        segmentation_confusion(np.zeros((1, 1, 2), int), np.array([[[-1, 0]]]), 2)


def test_segmentation_metrics_rejects_no_samples():
    with pytest.raises(ValueError, match="no samples"):
        segmentation_metrics(np.zeros((0, 4, 4), int), np.zeros((0, 4, 4), int), np.zeros(0), ["bg", "t"])


# ----------------------------------------------------------------------------- classification

# true [0,0,1,1,2,2]; argmax -> [0,1,1,1,2,0]
PROB = np.array([[0.6, 0.3, 0.1], [0.3, 0.5, 0.2], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.1, 0.4]])
TRUE = np.array([0, 0, 1, 1, 2, 2])


def test_classification_by_hand():
    m = classification_metrics(PROB, TRUE, CLASSES3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    pc = m["per_class"]
    assert [pc[c]["precision"] for c in CLASSES3] == pytest.approx([0.5, 2 / 3, 1.0])
    assert [pc[c]["recall"] for c in CLASSES3] == pytest.approx([0.5, 1.0, 0.5])
    assert [pc[c]["f1"] for c in CLASSES3] == pytest.approx([0.5, 0.8, 2 / 3])
    assert [pc[c]["support"] for c in CLASSES3] == [2, 2, 2]
    assert m["macro"]["precision"] == pytest.approx(13 / 18)
    assert m["macro"]["f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["weighted"]["f1"] == pytest.approx(m["macro"]["f1"])  # equal supports
    # Gorodkin: c=4, s=6, t=[2,2,2], p=[2,3,1] -> (24 - 12) / sqrt((36 - 14)(36 - 12))
    assert m["mcc"] == pytest.approx(12 / math.sqrt(22 * 24))
    # class a: positives 0.6, 0.3 vs negatives 0.2, 0.1, 0.2, 0.5 -> 7 of 8 pairs; b and c separate perfectly
    assert [pc[c]["auc"] for c in CLASSES3] == pytest.approx([7 / 8, 1.0, 1.0])
    assert m["auc_macro"] == pytest.approx((7 / 8 + 2) / 3)


def test_weighted_average_uses_support():
    true = np.array([0, 0, 0, 1])
    prob = np.array([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8], [0.2, 0.8]])  # preds 0, 0, 1, 1
    m = classification_metrics(prob, true, ["x", "y"])
    # x: P 1, R 2/3, F1 0.8; y: P 0.5, R 1, F1 2/3; weights 3/4, 1/4
    assert m["weighted"]["recall"] == pytest.approx(0.75 * 2 / 3 + 0.25)
    assert m["weighted"]["f1"] == pytest.approx(0.75 * 0.8 + 0.25 * 2 / 3)
    assert m["weighted"]["precision"] == pytest.approx(0.75 + 0.125)


def test_class_absent_from_truth_gives_null_not_crash():
    true = np.array([0, 0, 1, 1])
    prob = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1], [0.1, 0.8, 0.1]])  # one wrong "c"
    m = classification_metrics(prob, true, CLASSES3)
    c = m["per_class"]["c"]
    assert c == {"precision": 0.0, "recall": None, "f1": None, "support": 0, "auc": None}
    assert m["balanced_accuracy"] == pytest.approx(0.75)  # mean recall of a (0.5) and b (1)
    assert m["macro"]["recall"] == pytest.approx(0.75)
    assert m["auc_macro"] == pytest.approx(np.mean([m["per_class"]["a"]["auc"], m["per_class"]["b"]["auc"]]))
    json.dumps(m, allow_nan=False)


def test_class_absent_and_never_predicted_has_null_precision():
    m = classification_metrics(np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1]]), np.array([0, 1]), CLASSES3)
    assert m["per_class"]["c"]["precision"] is None


def test_all_predictions_one_class():
    true = np.array([0, 1, 2, 0])
    prob = np.tile([0.5, 0.25, 0.25], (4, 1))
    m = classification_metrics(prob, true, CLASSES3)
    assert m["accuracy"] == 0.5
    assert m["balanced_accuracy"] == pytest.approx(1 / 3)
    assert m["mcc"] == 0.0  # undefined (one predicted class) -> 0, not NaN
    assert m["per_class"]["b"]["precision"] == 0.0  # present but never predicted
    assert m["macro"]["precision"] == pytest.approx(0.5 / 3)
    assert [m["per_class"][c]["auc"] for c in CLASSES3] == [0.5, 0.5, 0.5]  # all scores tied


def test_matthews_perfect_and_inverse():
    assert matthews_corrcoef(np.diag([3, 2])) == pytest.approx(1.0)
    assert matthews_corrcoef(np.array([[0, 2], [2, 0]])) == pytest.approx(-1.0)


def test_roc_auc_and_curve_by_hand():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # ties count 1/2: positives 0.5, 0.9 vs negatives 0.5, 0.2 -> (0.5 + 1 + 2) / 4
    assert roc_auc([0.5, 0.5, 0.2, 0.9], [1, 0, 0, 1]) == pytest.approx(0.875)
    assert roc_auc([0.1, 0.2], [1, 1]) is None
    fpr, tpr = roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    assert roc_curve([0.3, 0.4], [0, 0]) is None


def test_confusion_matrix_rows_are_truth():
    np.testing.assert_array_equal(confusion_matrix([0, 1, 1], [1, 1, 0], 2), [[0, 1], [1, 1]])


@pytest.mark.parametrize(
    "prob, true, match",
    [
        (np.zeros((0, 3)), np.zeros(0), "no samples with a class"),
        (np.full((2, 2), 0.5), np.array([0, 1]), r"must be \(N, 3\) and targets \(N,\)"),
        (np.array([[np.nan, 0.5, 0.5]]), np.array([0]), "NaN or infinity"),
        (np.array([[2.0, -1.0, 0.5]]), np.array([0]), "logits given"),
        (np.array([[0.2, 0.3, 0.5]]), np.array([3]), r"class indices must be in 0..2"),
    ],
)
def test_classification_rejects_bad_input(prob, true, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(prob, true, CLASSES3)


# ----------------------------------------------------------------------------- accumulator


def fill(acc: MetricsAccumulator, batch_size: int = 3, only: int | None = None) -> None:
    """The binary segmentation case and the classification case, in batches, with missing labels.

    ``only``: feed only that batch number (a DDP rank's shard).
    """
    pred, true, has_seg = binary_case()
    seg_pred = np.concatenate([pred, np.zeros((1, 4, 4), np.int64)])  # 6 samples
    seg_true = np.concatenate([true, np.zeros((1, 4, 4), np.int64)])[:, None]
    has_seg = np.r_[has_seg, 0]
    prob = PROB
    cls_true = np.r_[TRUE[:4], -1, TRUE[5]]  # sample 4 has no class
    has_cls = np.array([1, 1, 1, 1, 0, 1])
    for i, s in enumerate(range(0, 6, batch_size)):
        if only is not None and i != only:
            continue
        sl = slice(s, s + batch_size)
        acc.update(torch.as_tensor(seg_pred[sl]), torch.as_tensor(seg_true[sl]), has_seg[sl], torch.as_tensor(prob[sl]),
                   torch.as_tensor(cls_true[sl]), has_cls[sl])


def test_accumulator_matches_pure_functions_and_counts_exclusions():
    acc = MetricsAccumulator(CLASSES3, ["background", "tumor"])
    fill(acc)
    m = acc.compute()
    json.dumps(m, allow_nan=False)
    pred, true, has_seg = binary_case()
    assert m[SEG]["lesion"] == segmentation_metrics(pred, true, has_seg, ["background", "tumor"])["lesion"]
    assert (m[SEG]["n_images"], m[SEG]["n_without_mask"]) == (6, 2)
    expected = classification_metrics(np.delete(PROB, 4, axis=0), np.delete(TRUE, 4), CLASSES3)
    assert (m[CLS]["n_samples"], m[CLS]["n_without_class"], m[CLS]["n_scored"]) == (6, 1, 5)
    assert m[CLS]["confusion_matrix"] == expected["confusion_matrix"]
    assert m[CLS]["balanced_accuracy"] == pytest.approx(expected["balanced_accuracy"])
    assert m["combined_score"] == pytest.approx((0.4 + expected["balanced_accuracy"]) / 2)


def test_accumulator_state_merge_equals_one_pass():
    one, a, b = (MetricsAccumulator(CLASSES3, ["bg", "t"]) for _ in range(3))
    fill(one, batch_size=6)
    fill(a)
    merged = MetricsAccumulator(CLASSES3, ["bg", "t"])
    merged.merge(a.state())
    merged.merge(b.state())  # an empty rank adds nothing
    assert merged.compute() == one.compute()
    a.reset()
    assert len(a) == 0


def test_accumulator_per_image_rows():
    acc = MetricsAccumulator(CLASSES3, ["bg", "t"])
    fill(acc)
    rows = acc.per_image()
    assert [r["id"] for r in rows] == [str(i) for i in range(6)]
    assert rows[0]["dice"] == pytest.approx(0.8) and rows[0]["iou"] == pytest.approx(2 / 3)
    assert rows[1]["dice"] == 0.0
    assert rows[2]["dice"] is None and rows[2]["predicted_voxels"] == 3  # empty truth
    assert rows[4]["dice"] is None and rows[4]["class_true"] is None  # no mask, no class
    assert (rows[5]["class_true"], rows[5]["class_pred"]) == ("c", "a")
    assert rows[5]["p_pred"] == pytest.approx(0.5)


def test_accumulator_halves_missing():
    acc = MetricsAccumulator(["x", "y"], ["bg", "t"])
    acc.update(np.zeros((2, 4, 4), int), np.zeros((2, 4, 4), int), np.ones(2), np.full((2, 2), 0.5), np.full(2, -1), np.zeros(2))
    m = acc.compute()
    assert m[CLS]["n_scored"] == 0 and m[CLS]["accuracy"] is None and m[CLS]["n_without_class"] == 2
    assert m[SEG]["lesion"]["dice"] is None
    assert m["combined_score"] is None
    assert combined_score({SEG: {"lesion": {"dice": 0.6}}, CLS: {"balanced_accuracy": None}}) == 0.6


def test_accumulator_ids_are_kept():
    acc = MetricsAccumulator(["x", "y"], ["bg", "t"])
    acc.update(np.zeros((2, 2, 2), int), np.zeros((2, 2, 2), int), np.ones(2), np.full((2, 2), 0.5), np.zeros(2), np.ones(2),
               ids=["case-a", "case-b"])
    assert [r["id"] for r in acc.per_image()] == ["case-a", "case-b"]


def test_accumulator_errors():
    with pytest.raises(ValueError, match="needs >= 2 classes and >= 2 segments"):
        MetricsAccumulator(["only"], ["bg", "t"])
    acc = MetricsAccumulator(["x", "y"], ["bg", "t"])
    with pytest.raises(ValueError, match="no samples were evaluated"):
        acc.compute()
    with pytest.raises(ValueError, match="batch sizes differ"):
        acc.update(np.zeros((2, 2, 2), int), np.zeros((2, 2, 2), int), np.ones(2), np.full((3, 2), 0.5), np.zeros(2), np.ones(2))
    with pytest.raises(ValueError, match="logits given"):
        acc.update(np.zeros((1, 2, 2), int), np.zeros((1, 2, 2), int), np.ones(1), np.array([[3.0, -1.0]]), np.zeros(1), np.ones(1))


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        acc = MetricsAccumulator(CLASSES3, ["bg", "t"])
        fill(acc, batch_size=3, only=rank)  # each rank sees half of the samples
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(acc.gathered().compute()))
    finally:
        dist.destroy_process_group()


def test_gathered_across_two_gloo_processes(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # spawn, not fork: a fork after torch has started its thread pool can hang the children
    mp.start_processes(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    single = MetricsAccumulator(CLASSES3, ["bg", "t"])
    fill(single)
    expected = json.loads(json.dumps(single.compute()))
    assert expected[SEG]["n_images"] == 6
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == expected
