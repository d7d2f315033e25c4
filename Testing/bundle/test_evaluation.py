"""Engine glue (scripts/train/evaluation.py): output transform, validation metric, report handler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.engines import SupervisedEvaluator
from monai.transforms import Decollated

from scripts.train.evaluation import (
    MetricsReportHandler,
    MultiTaskValidationMetric,
    load_history,
    multitask_output_transform,
)
from scripts.train.metrics import MetricsAccumulator, classification_metrics, segmentation_metrics
from scripts.core.networks import MultiTaskUNet
from scripts.core.tasks import Keys, Task
from scripts.train.training import prepare_batch

SEG, CLS = Task.SEG.value, Task.CLS.value
CLASSES, SEGMENTS = ["x", "y", "z"], ["background", "tumor"]


def fake_outputs(n_batches: int = 3, b: int = 4, seed: int = 0) -> list[dict]:
    """Engine outputs shaped like SupervisedEvaluator + our prepare_batch (decollate=False)."""
    rng = np.random.default_rng(seed)
    outputs = []
    for _ in range(n_batches):
        true = torch.zeros(b, 1, 8, 8, dtype=torch.long)
        true[: b - 1, 0, 2:6, 2:6] = 1  # the last image of each batch has an empty mask
        seg_logits = torch.as_tensor(rng.normal(size=(b, 2, 8, 8)), dtype=torch.float32)
        seg_logits[:, 1] += 1.5 * (true[:, 0] * 2 - 1)  # mostly right
        cls_true = torch.as_tensor(rng.integers(0, 3, b))
        cls_true[0] = -1
        outputs.append({
            "image": torch.zeros(b, 1, 8, 8),
            "pred": {SEG: seg_logits, CLS: torch.as_tensor(rng.normal(size=(b, 3)), dtype=torch.float32)},
            "label": {SEG: true, CLS: cls_true, Keys.HAS_SEG.value: torch.tensor([1.0] * (b - 1) + [0.0]),
                      Keys.HAS_CLS.value: (cls_true >= 0).float()},
        })
    return outputs


def expected_metrics(outputs: list[dict]) -> dict:
    """The same numbers computed directly with the pure functions."""
    pred = torch.cat([o["pred"][SEG] for o in outputs]).argmax(1)
    lab = {k: torch.cat([o["label"][k] for o in outputs]) for k in outputs[0]["label"]}
    prob = torch.softmax(torch.cat([o["pred"][CLS] for o in outputs]), dim=1)
    keep = lab[CLS] >= 0
    return {SEG: segmentation_metrics(pred, lab[SEG], lab[Keys.HAS_SEG.value], SEGMENTS),
            CLS: classification_metrics(prob[keep], lab[CLS][keep], CLASSES)}


def replay_engine(outputs: list[dict]) -> Engine:
    return Engine(lambda engine, batch: batch)  # the "batch" is already the engine output


def test_output_transform_batched_and_decollated_agree():
    out = fake_outputs(1)[0]
    batched = multitask_output_transform(out)
    decollated = multitask_output_transform(Decollated(keys=None, detach=True)(out))
    for field in ("seg_pred", "seg_true", "has_seg", "cls_prob", "cls_true", "has_cls"):
        np.testing.assert_allclose(getattr(batched, field), getattr(decollated, field), rtol=1e-6, err_msg=field)
    assert batched.seg_pred.shape == batched.seg_true.shape == (4, 8, 8)
    np.testing.assert_array_equal(batched.seg_pred, out["pred"][SEG].argmax(1).numpy())
    np.testing.assert_allclose(batched.cls_prob.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(batched.cls_true, out["label"][CLS].numpy())


def test_output_transform_errors():
    out = fake_outputs(1)[0]
    with pytest.raises(ValueError, match="expected a dict or a non-empty list of dicts, got int"):
        multitask_output_transform(3)
    with pytest.raises(ValueError, match="expected a dict or a non-empty list"):
        multitask_output_transform([])
    with pytest.raises(ValueError, match=r"output has no 'label' \(found \['image', 'pred'\]\)"):
        multitask_output_transform({"image": out["image"], "pred": out["pred"]})
    del out["label"][Keys.HAS_CLS.value]
    with pytest.raises(ValueError, match="label has no 'has_cls'"):
        multitask_output_transform(out)


def test_validation_metric_on_an_ignite_engine():
    outputs = fake_outputs()
    engine = replay_engine(outputs)
    MultiTaskValidationMetric(CLASSES, SEGMENTS).attach(engine, "val_score")
    engine.run(outputs, max_epochs=2)  # the second epoch must not double-count
    exp = expected_metrics(outputs)
    details = engine.state.metric_details["val_score"]
    assert details[CLS]["confusion_matrix"] == exp[CLS]["confusion_matrix"]
    assert details[SEG]["lesion"] == pytest.approx(exp[SEG]["lesion"])
    assert engine.state.metrics["val_score"] == pytest.approx((exp[SEG]["lesion"]["dice"] + exp[CLS]["balanced_accuracy"]) / 2)


def test_validation_metric_without_any_label_raises():
    out = fake_outputs(1)[0]
    out["label"][Keys.HAS_SEG.value][:] = 0
    out["label"][Keys.HAS_CLS.value][:] = 0
    engine = replay_engine([out])
    MultiTaskValidationMetric(CLASSES, SEGMENTS).attach(engine, "val_score")
    with pytest.raises(ValueError, match="no validation sample has a lesion mask or a class label"):
        engine.run([out])


def tiny_dataset(n: int = 6) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{Keys.IMAGE.value: torch.as_tensor(rng.random((1, 32, 32)), dtype=torch.float32),
             Keys.LABEL.value: torch.as_tensor(rng.random((1, 32, 32)) > 0.7, dtype=torch.uint8),
             Keys.CLASS.value: torch.tensor(i % 3 if i else -1), Keys.HAS_SEG.value: torch.tensor(float(i != 1)),
             Keys.HAS_CLS.value: torch.tensor(float(i != 0))} for i in range(n)]


@pytest.mark.parametrize("decollate", [False, True])
def test_supervised_evaluator_key_metric_and_report(tmp_path, decollate):
    """A real MONAI SupervisedEvaluator with our network and prepare_batch, as train/evaluate configs use it."""
    torch.manual_seed(0)
    net = MultiTaskUNet(spatial_dims=2, in_channels=1, seg_classes=2, num_classes=3, channels=(4, 8, 16)).eval()
    loader = torch.utils.data.DataLoader(tiny_dataset(), batch_size=4)
    report = MetricsReportHandler(CLASSES, SEGMENTS, tmp_path / "eval", history_file=tmp_path / "missing.json")
    evaluator = SupervisedEvaluator(device="cpu", val_data_loader=loader, network=net, prepare_batch=prepare_batch,
                                    key_val_metric={"val_score": MultiTaskValidationMetric(CLASSES, SEGMENTS)},
                                    decollate=decollate, val_handlers=[report])
    evaluator.run()
    details = evaluator.state.metric_details["val_score"]
    # the report adds the calibration of the diagnosis (no temperature given: ECE of the network only)
    calibration = report.metrics[CLS].pop("calibration")
    assert calibration["temperature"] is None and calibration["ece"] == calibration["ece_uncalibrated"]
    assert 0.0 <= calibration["ece"] <= 1.0
    assert 0.0 < calibration["ece_floor"] <= 1.0 and calibration["n_samples"] == details[CLS]["n_scored"] == 5
    assert details == report.metrics == evaluator.state.metric_details["evaluation"]
    assert (details[SEG]["n_without_mask"], details[CLS]["n_without_class"], details[CLS]["n_samples"]) == (1, 1, 6)
    assert evaluator.state.metrics["val_score"] == details["combined_score"]
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert written[CLS].pop("calibration") == calibration and written == details
    assert "report" in report.paths and "reliability" in report.paths and "training_curves" not in report.paths


def test_report_handler_reads_history_and_resets_between_runs(tmp_path):
    (tmp_path / "history.json").write_text(json.dumps([{"epoch": 1, "loss": 1.0, "val_score": 0.4},
                                                       {"epoch": 2, "loss": 0.7, "val_score": 0.5}]))
    outputs = fake_outputs()
    engine = replay_engine(outputs)
    handler = MetricsReportHandler(CLASSES, SEGMENTS, tmp_path / "eval", history_file=tmp_path / "history.json")
    handler.attach(engine)
    engine.run(outputs)
    engine.run(outputs)  # a second evaluation starts from zero
    assert handler.metrics[SEG]["n_images"] == 12
    assert handler.paths["training_curves"].is_file()
    assert "![Training curves](training_curves.png)" in handler.paths["report"].read_text(encoding="utf-8")


def test_load_history_errors(tmp_path):
    assert load_history(None) is None and load_history(tmp_path / "absent.json") is None
    bad = tmp_path / "history.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"history.json: training history is not valid JSON"):
        load_history(bad)
    bad.write_text(json.dumps({"epoch": 1}))
    with pytest.raises(ValueError, match=r"history.json: training history must be a JSON list"):
        load_history(bad)
