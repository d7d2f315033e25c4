"""MLflow tracking of the bundle (scripts.train.tracking, wired in train.json / evaluate.json).

A tiny training run with MONAI's own ``--tracking mlflow`` and its evaluation with ``--tracking_uri``
are read back through MLflow's client: parameters (knobs, network, plan), per-epoch metrics, test
metrics, the model card and the report's files as artifacts. An unreachable server warns once and
training goes on. With tracking off the bundle trains where mlflow cannot be imported at all.

The bundle runs in-process (``monai.bundle.run``, no logging file) on a tiny synthetic set, except the
import check, which needs a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from ignite.engine import Engine, State

from scripts.datasets.synthetic import ensure_dataset
from scripts.train.tracking import (ENV_DEFAULTS, MLflowTracking, TrackingWarning, epoch_metrics, flatten_numbers,
                              resolve_tracking_uri, run_params, server_unreachable)

BUNDLE = Path(__file__).resolve().parents[2] / "monai_bundle"
CONFIGS = BUNDLE / "configs"
TINY = {"spatial_size": [32, 32], "network_channels": [4, 8, 16], "batch_size": 4, "val_batch_size": 4,
        "augment": False, "max_epochs": 1}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.fixture(autouse=True)
def _mlflow_environment(monkeypatch):
    """The handler sets MLflow's variables it finds unset; monkeypatch restores them after each test."""
    for key, value in ENV_DEFAULTS.items():
        monkeypatch.setenv(key, os.environ.get(key, value))


@pytest.fixture(scope="module")
def datalist(tmp_path_factory) -> Path:
    return ensure_dataset(tmp_path_factory.mktemp("tracking_data"), n_train=8, n_val=4, n_test=8, size=32)


@pytest.fixture
def bundle_run():
    """``monai.bundle.run`` in this process; restores MONAI's global meta tracking the configs turn off."""
    import monai
    from monai.bundle import run

    def go(workflow: str, configs: list[Path], **overrides) -> None:
        run(workflow, config_file=[str(c) for c in configs], logging_file=False, **overrides)

    yield go
    monai.data.set_track_meta(True)


# ---------------------------------------------------------------------------------------------- units


def test_tracking_uri_defaults_to_sqlite_beside_the_checkpoints(tmp_path):
    uri, artifacts = resolve_tracking_uri(None, tmp_path / "models")
    assert uri == f"sqlite:///{(tmp_path / 'models' / 'mlruns.db').as_posix()}"
    assert artifacts == (tmp_path / "models" / "mlruns").as_uri()
    assert resolve_tracking_uri(str(tmp_path / "runs"), tmp_path)[0].endswith("/runs/mlruns.db")
    assert resolve_tracking_uri((tmp_path / "x").as_uri(), tmp_path)[0].endswith("/x/mlruns.db")
    assert resolve_tracking_uri("http://mlflow:5000", tmp_path) == ("http://mlflow:5000", None)


def test_numbers_are_flattened_and_validation_details_become_val(tmp_path):
    assert flatten_numbers({"a": {"b": 1, "c": [1, 2], "d": None, "e": True, "f": float("nan")}, "g": 2.5}) == {
        "a/b": 1.0, "g": 2.5}
    record = {"epoch": 3, "loss": 0.5, "lr": 1e-3, "val_score": 0.7,
              "val_details": {"val_score": {"seg": {"lesion": {"dice": 0.8}}, "cls": {"classes": ["a"], "accuracy": 0.6}}}}
    assert epoch_metrics(record) == {"loss": 0.5, "lr": 1e-3, "val_score": 0.7, "val/seg/lesion/dice": 0.8,
                                     "val/cls/accuracy": 0.6}
    params = run_params({"encoder": "unet", "task_weights": {"seg": 1.0}},
                        {"network": {"channels": [4, 8]}, "classes": ["a", "b"],
                         "plan": {"spatial_size": [32, 32], "fingerprint": {"n": 1}, "why": {}}})
    assert params == {"encoder": "unet", "task_weights": '{"seg": 1.0}', "network.channels": "[4, 8]",
                      "classes": '["a", "b"]', "plan.spatial_size": "[32, 32]"}


def test_a_server_that_is_down_is_found_before_mlflow_retries():
    port = _closed_port()
    assert "cannot connect to 127.0.0.1" in server_unreachable(f"http://127.0.0.1:{port}", timeout=2)
    assert server_unreachable("sqlite:////tmp/x.db") is None


def test_an_mlflow_error_mid_run_warns_once_and_turns_tracking_off(tmp_path):
    handler = MLflowTracking(default_dir=tmp_path, role="train", params={"encoder": "unet"})
    engine = Engine(lambda e, b: None)
    engine.state = State(epoch=1)
    engine.state.history = [{"epoch": 1, "loss": 1.0}]
    handler.start(engine)
    assert handler.cur_run is not None and (tmp_path / "mlflow_run.json").is_file()

    def broken(*args, **kwargs):
        raise ConnectionError("server gone")

    handler.client.log_batch = broken
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        handler.epoch_completed(engine)
        engine.state.epoch, engine.state.history = 2, [{"epoch": 2, "loss": 0.5}]
        handler.epoch_completed(engine)
        handler.completed(engine)
    tracking = [w for w in caught if issubclass(w.category, TrackingWarning)]
    assert len(tracking) == 1 and "server gone" in str(tracking[0].message) and handler.off


# ------------------------------------------------------------------------------------- bundle runs


def test_training_and_evaluation_are_read_back_through_mlflow(tmp_path, datalist, bundle_run):
    import mlflow

    models, report = tmp_path / "models", tmp_path / "eval"
    # MONAI's own switch: `python -m monai.bundle run training ... --tracking mlflow`
    bundle_run("training", [CONFIGS / "train.json"], tracking="mlflow", datalist_file=str(datalist),
               ckpt_dir=str(models), run_name="tiny", **TINY)
    assert (models / "mlruns.db").is_file() and (models / "mlflow_run.json").is_file()
    # evaluation names the store instead, and adds to the training's run
    bundle_run("evaluating", [CONFIGS / "train.json", CONFIGS / "evaluate.json"], tracking_uri=str(models),
               datalist_file=str(datalist), ckpt_dir=str(models), output_dir=str(report), **TINY)

    client = mlflow.MlflowClient(f"sqlite:///{(models / 'mlruns.db').as_posix()}")
    experiment = client.get_experiment_by_name("MultiTaskUNet")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [r.info.run_name for r in runs]
    run = runs[0]
    assert run.info.run_name == "tiny" and run.info.status == "FINISHED"
    assert run.info.run_id == json.loads((models / "mlflow_run.json").read_text())["run_id"]

    params = run.data.params
    # MONAI's default handlers, which --tracking mlflow appends, stood down (they log these two)
    assert "epoch_length" not in params and "train_loss" not in run.data.metrics
    card = json.loads((models / "model_card.json").read_text())
    assert params["max_epochs"] == "1" and params["encoder"] == "unet" and params["augment"] == "false"
    assert params["network.channels"] == "[4, 8, 16]" and params["spatial_size"] == "[32, 32]"
    assert params["classes"] == json.dumps(card["classes"])
    assert params["plan.spatial_size"] == json.dumps(card["plan"]["spatial_size"])
    assert params["plan.normalization"] == json.dumps(card["plan"]["normalization"])

    history = json.loads((models / "history.json").read_text())
    for key in ("loss", "loss_seg", "loss_cls", "lr", "val_score", "val/seg/lesion/dice", "val/cls/balanced_accuracy"):
        logged = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in logged] == [1], key
    assert client.get_metric_history(run.info.run_id, "loss")[0].value == pytest.approx(history[0]["loss"])
    metrics = json.loads((report / "metrics.json").read_text())
    assert run.data.metrics["test/seg/lesion/dice"] == pytest.approx(metrics["seg"]["lesion"]["dice"])
    assert run.data.metrics["test/cls/accuracy"] == pytest.approx(metrics["cls"]["accuracy"])

    training = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "training")}
    assert {"model_card.json", "history.json"} <= training
    assert any(name.startswith("config_") for name in training)  # MONAI's executed config
    evaluation = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"metrics.json", "report.md", "confusion_matrix.png", "roc.png", "reliability.png",
            "training_curves.png"} <= evaluation
    logged_card = Path(client.download_artifacts(run.info.run_id, "training/model_card.json", str(tmp_path)))
    assert json.loads(logged_card.read_text()) == card


def test_an_unreachable_server_warns_once_and_training_goes_on(tmp_path, datalist, bundle_run):
    uri = f"http://127.0.0.1:{_closed_port()}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bundle_run("training", [CONFIGS / "train.json"], tracking_uri=uri, datalist_file=str(datalist),
                   ckpt_dir=str(tmp_path / "models"), **TINY)
    tracking = [str(w.message) for w in caught if issubclass(w.category, TrackingWarning)]
    assert len(tracking) == 1 and uri in tracking[0] and "Connection refused" in tracking[0], tracking
    assert (tmp_path / "models" / "model.pt").is_file()
    assert [r["epoch"] for r in json.loads((tmp_path / "models" / "history.json").read_text())] == [1]
    assert not (tmp_path / "models" / "mlflow_run.json").exists()


def test_with_tracking_off_nothing_of_mlflow_is_imported(tmp_path, datalist):
    """MONAI's ``import monai`` imports mlflow whenever it is installed; this interpreter blocks that
    import (as an environment without mlflow would) and trains with tracking off: nothing tries it."""
    script = textwrap.dedent(f"""
        import sys
        sys.modules["mlflow"] = None  # any `import mlflow` now fails at once
        from monai.bundle import run
        run("training", config_file={str(CONFIGS / 'train.json')!r}, logging_file=False,
            datalist_file={str(datalist)!r}, ckpt_dir={str(tmp_path / 'models')!r}, **{TINY!r})
        loaded = sorted(m for m, v in sys.modules.items() if m.split(".")[0] in ("mlflow", "sqlalchemy") and v is not None)
        print("LOADED", loaded, "scripts.train.tracking" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "LOADED [] False" in done.stdout, done.stdout[-2000:]
    models = tmp_path / "models"
    assert (models / "model.pt").is_file()
    assert not any(p.name.startswith(("mlruns", "mlflow", "config_")) for p in models.iterdir())


def test_the_tracking_handler_sits_before_the_three_log_handlers():
    """multi_gpu_train.json keeps the log handlers (ProgressBar, StatsHandler, TensorBoard) on rank 0 only."""
    handlers = json.loads((CONFIGS / "train.json").read_text())["train"]["handlers"]
    targets = [h.get("_target_") if isinstance(h, dict) else h for h in handlers]
    assert targets[-4:] == ["scripts.train.tracking.MLflowTracking", "ignite.contrib.handlers.ProgressBar", "StatsHandler",
                            "TensorBoardStatsHandler"]
    evaluate = json.loads((CONFIGS / "evaluate.json").read_text())["validate#handlers"]
    assert [h["_target_"] for h in evaluate][-2:] == ["scripts.train.evaluation.MetricsReportHandler",
                                                      "scripts.train.tracking.MLflowTracking"]
