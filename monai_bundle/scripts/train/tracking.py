"""Experiment tracking with MLflow: MONAI's ``MLFlowHandler``, made safe for the bundle.

Off by default. Turned on by MONAI's own switch or by naming a tracking store::

    python -m monai.bundle run training --config_file configs/train.json --tracking mlflow
    python -m monai.bundle run training --config_file configs/train.json --tracking_uri http://mlflow:5000

``--tracking_uri`` takes an ``http(s)://`` server, any other MLflow store URI (``sqlite:///x.db``) or a
folder (-> ``sqlite:///<folder>/mlruns.db``, artifacts in ``<folder>/mlruns/``). Without it the run
goes to ``sqlite:///<ckpt_dir>/mlruns.db`` with artifacts in ``<ckpt_dir>/mlruns/`` (MLflow 3.13+
has no plain ``mlruns/`` file store any more, and MONAI refuses ``file:`` URIs);
``MLFLOW_TRACKING_URI``, when set, takes precedence (MONAI's rule).

How ``--tracking mlflow`` reaches this module: MONAI appends its default ``MLFlowHandler`` entries to
``train#handlers`` and ``validate#handlers`` and replaces the config's ``save_execute_config``
(``true`` in ``train.json``) with the path of the executed config it writes into ``output_dir``
(``ckpt_dir`` for training). ``train.json`` reads that replacement as the switch
(``tracking_enabled``) and sets ``is_not_rank0`` -- the switch of MONAI's default entries -- to
``true``, so that those stand down for :class:`MLflowTracking`, which sits before the last three
trainer handlers (ProgressBar, StatsHandler, TensorBoard: ``multi_gpu_train.json`` keeps those on
rank 0 only).

What a training run records (one MLflow run, rank 0 only): parameters = the config knobs given in
``train.json`` (``params``), the model card's network arguments and classes, and the resolved plan
(``plan.*``, without its fingerprint); per-epoch metrics = the epoch's ``history.json`` record (loss
and its task terms, learning rate, ``val_score``, ``val/...`` validation details); artifacts at the
end = ``model_card.json``, ``history.json`` and MONAI's executed config. The run id is kept in
``<ckpt_dir>/mlflow_run.json``: a resumed training continues that run, and evaluation
(``evaluate.json``) adds ``test/...`` metrics and the report (``metrics.json``, ``report.md``, the
PNG plots, ``per_image.csv``) to it, or opens a run of its own when there is none. A run whose
training crashed stays ``RUNNING``; resuming the training continues it.

Tracking never stops a run: a server that cannot be reached (checked with a TCP connection before
MLflow's retrying client is used), a store that cannot be opened or any later MLflow error gives one
:class:`TrackingWarning` and the run goes on untracked. MLflow's HTTP retries are lowered
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` 2, ``MLFLOW_HTTP_REQUEST_TIMEOUT`` 30 s, unless set) and its
telemetry is turned off (``MLFLOW_DISABLE_TELEMETRY``, unless set) when tracking is on.

This module never imports ``mlflow`` itself at import time. Note that MONAI's ``import monai``
imports ``mlflow`` whenever it is installed (``monai.handlers.mlflow_handler``); with tracking off
the bundle creates no MLflow client, store, run or file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ignite.engine import Engine, Events
from monai.handlers import MLFlowHandler
from monai.utils import path_to_sqlite_uri, path_to_uri

from scripts.core.atomic import write_json_atomic
from scripts.train.training import is_main_process

logger = logging.getLogger(__name__)

RUN_RECORD = "mlflow_run.json"
DB_NAME = "mlruns.db"
ARTIFACT_DIR = "mlruns"
#: evaluation report files logged as artifacts (names of scripts.train.report.FILES)
REPORT_FILES = ("metrics.json", "report.md", "per_image.csv", "confusion_matrix.png", "roc.png",
                "reliability.png", "training_curves.png", "dice_histogram.png")
#: the plan's keys that are measurements or explanations, not settings (kept in the model card artifact)
PLAN_SKIP = ("fingerprint", "why", "monai")
MAX_PARAM_CHARS = 6000  # MLflow's limit on a parameter value
ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
                "MLFLOW_DISABLE_TELEMETRY": "true"}


class TrackingWarning(RuntimeWarning):
    """Experiment tracking failed; the run goes on without it."""


def resolve_tracking_uri(tracking_uri: str | os.PathLike | None, default_dir: str | os.PathLike) -> tuple[str, str | None]:
    """The MLflow store URI and, for a local SQLite store, its artifact location (a ``file:`` URI).

    ``None`` -> ``sqlite:///<default_dir>/mlruns.db``; a folder or ``file:`` URI -> a SQLite store in
    that folder; anything else (``http(s)://``, ``sqlite:///``, ``postgresql://``, ...) is kept.
    Artifacts of a SQLite store go to ``mlruns/`` beside the database.
    """
    text = "" if tracking_uri is None else str(tracking_uri).strip()
    if not text:
        folder: Path | None = Path(default_dir)
    elif text.startswith("file:"):
        folder = Path(urlparse(text).path)
    elif "://" not in text:
        folder = Path(text).expanduser()
    else:
        folder = None
    if folder is not None:
        text = path_to_sqlite_uri(folder / DB_NAME)
    if text.startswith("sqlite:///"):
        db = Path(text[len("sqlite:///"):])
        return text, path_to_uri(db.parent / ARTIFACT_DIR)
    return text, None


def server_unreachable(uri: str, timeout: float = 5.0) -> str | None:
    """Why an ``http(s)://`` tracking server cannot be reached (a TCP connection), else ``None``."""
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return None
    except OSError as e:
        return f"cannot connect to {parsed.hostname}:{port} ({e})"


def flatten_numbers(data: Any, prefix: str = "") -> dict[str, float]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1.0}``: numeric leaves only (lists, strings, None and booleans left out)."""
    out: dict[str, float] = {}
    if isinstance(data, Mapping):
        for key, value in data.items():
            out.update(flatten_numbers(value, f"{prefix}{key}/"))
    elif isinstance(data, (int, float)) and not isinstance(data, bool) and math.isfinite(data):
        out[prefix.rstrip("/")] = float(data)
    return out


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


def run_params(params: Mapping[str, Any] | None, model_card: Mapping[str, Any] | None) -> dict[str, str]:
    """MLflow parameters: the config knobs, the card's network arguments / names and the plan's settings."""
    out = {str(k): _param_value(v) for k, v in (params or {}).items()}
    card = dict(model_card or {})
    for key, value in (card.get("network") or {}).items():
        out[f"network.{key}"] = _param_value(value)
    for key in ("name", "version", "channels", "segments", "classes", "spatial_size", "normalization"):
        if key in card:
            out.setdefault(key, _param_value(card[key]))
    for key, value in (card.get("plan") or {}).items():
        if key not in PLAN_SKIP:
            out[f"plan.{key}"] = _param_value(value)
    return out


def epoch_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of one ``history.json`` record; ``val_details/<metric>/...`` become ``val/...``."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key == "epoch":
            continue
        if key == "val_details" and isinstance(value, Mapping):
            for details in value.values():
                out.update(flatten_numbers(details, "val/"))
        else:
            out.update(flatten_numbers(value, f"{key}/"))
    return out


class MLflowTracking(MLFlowHandler):
    """MONAI's ``MLFlowHandler`` for the bundle's trainer (``role="train"``) or evaluator (``"evaluate"``).

    Args:
        tracking_uri: store URI or folder; None -> ``sqlite:///<default_dir>/mlruns.db`` (see
            :func:`resolve_tracking_uri`).
        default_dir: the checkpoint folder: default store, ``mlflow_run.json`` and the training files.
        experiment_name, run_name: MLflow experiment and run names (run name None: ``train_<time>``
            / ``evaluate_<time>``).
        role: ``"train"`` (attach to the trainer) or ``"evaluate"`` (attach to the evaluator).
        params: config knobs logged as parameters (training).
        model_card: the model card (training: network arguments, names and the plan become parameters).
        files: files logged as artifacts when the engine completes (missing ones and non-paths are skipped).
        report_dir: evaluation: the report folder whose ``metrics.json`` gives the metrics and whose
            files (:data:`REPORT_FILES`) become artifacts.
        metric_prefix: evaluation: prefix of the report's metrics (``"test/"``).
        connect_timeout: seconds the reachability check of an http(s) server may take.
    """

    def __init__(self, tracking_uri: str | None = None, default_dir: str | os.PathLike = ".",
                 experiment_name: str = "MultiTaskUNet", run_name: str | None = None, role: str = "train",
                 params: Mapping[str, Any] | None = None, model_card: Mapping[str, Any] | None = None,
                 files: Sequence[Any] | None = None, report_dir: str | os.PathLike | None = None,
                 metric_prefix: str = "test/", connect_timeout: float = 5.0) -> None:
        if role not in ("train", "evaluate"):
            raise ValueError(f"MLflowTracking: role must be 'train' or 'evaluate', got {role!r}")
        self.role, self.default_dir = role, Path(default_dir)
        self.params, self.model_card = dict(params or {}), model_card
        self.files = [Path(f) for f in (files or []) if isinstance(f, (str, os.PathLike))]
        self.report_dir = None if report_dir is None else Path(report_dir)
        self.metric_prefix = metric_prefix
        self.off = not is_main_process()  # other DDP ranks never track
        self._warned = False
        uri, artifact_location = resolve_tracking_uri(tracking_uri, self.default_dir)
        if os.environ.get("MLFLOW_TRACKING_URI"):  # MONAI's rule: the variable wins, and MONAI places its artifacts
            self.uri, artifact_location = os.environ["MLFLOW_TRACKING_URI"], None
        else:
            self.uri = uri
        self.cur_run = None
        if self.off:
            return
        for key, value in ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
        problem = server_unreachable(self.uri, connect_timeout)
        if problem is not None:
            self._fail(problem)
            return
        if self.uri.startswith("sqlite:///"):
            Path(self.uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        try:
            import mlflow.telemetry

            mlflow.telemetry.set_telemetry_client()  # MLflow was imported (by MONAI) before the variable was set
            super().__init__(tracking_uri=uri, iteration_log=False, epoch_log=role == "train",
                             experiment_name=experiment_name, run_name=run_name,
                             artifact_location=artifact_location, close_on_complete=False)
        except Exception as e:  # noqa: BLE001 -- tracking must never stop training
            self._fail(f"cannot open the tracking store: {e}")

    # ------------------------------------------------------------------ failure handling

    def _fail(self, reason: str) -> None:
        """Turn tracking off for the rest of the run, saying so once."""
        self.off = True
        if not self._warned:
            self._warned = True
            warnings.warn(f"MLflow tracking ({self.uri}) is off for this run: {reason}; the run goes on without it",
                          TrackingWarning, stacklevel=3)

    def _guard(self, what: str, fn: Any, *args: Any) -> None:
        if self.off:
            return
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 -- tracking must never stop training
            self._fail(f"{what} failed: {type(e).__name__}: {e}")

    # ------------------------------------------------------------------ ignite events

    def attach(self, engine: Engine) -> None:
        if self.off:
            return
        engine.add_event_handler(Events.STARTED, self.start)
        if self.role == "train":
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def start(self, engine: Engine) -> None:
        self._guard("starting the MLflow run", self._start, engine)

    def epoch_completed(self, engine: Engine) -> None:
        self._guard("logging the epoch's metrics", self._log_epoch, engine)

    def completed(self, engine: Engine) -> None:
        self._guard("logging the artifacts", self._complete, engine)
        self._guard("closing the MLflow run", self.close)

    # ------------------------------------------------------------------ the work

    @property
    def record_path(self) -> Path:
        return self.default_dir / RUN_RECORD

    def _recorded_run_id(self) -> str | None:
        try:
            record = json.loads(self.record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record.get("run_id") if record.get("tracking_uri") == self.uri else None

    def _start(self, engine: Engine) -> None:
        self._set_experiment()
        run_id = None
        # a resumed training (the checkpoint handler set the epoch) and an evaluation continue the recorded run
        if self.role == "evaluate" or engine.state.epoch > 0:
            run_id = self._recorded_run_id()
        if run_id is not None:
            run = self.client.get_run(run_id)
            if run.info.lifecycle_stage != "active":
                run_id = None
            else:
                self.cur_run = run
                if self.role == "train":
                    self.client.update_run(run_id, status="RUNNING")
        if run_id is None:
            name = self.run_name or f"{self.role}_{time.strftime('%Y%m%d_%H%M%S')}"
            self.cur_run = self.client.create_run(experiment_id=self.experiment.experiment_id, run_name=name)
        if self.role == "train":
            self.default_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.record_path, {"tracking_uri": self.uri, "experiment_id": self.experiment.experiment_id,
                                                 "run_id": self.cur_run.info.run_id, "run_name": self.cur_run.info.run_name})
        if self.role == "train":
            params = run_params(self.params, self.model_card)
        elif run_id is None:  # a model trained untracked: the evaluation's own run names the model
            params = run_params({}, self.model_card)
        else:
            params = {}
        self._delete_exist_param_in_dict(params)  # parameters cannot change in MLflow: a resumed run keeps its own
        if params:
            self._log_params(params)
        logger.info("MLflow run %s (%s) in %s", self.cur_run.info.run_id, self.cur_run.info.run_name, self.uri)

    def _log_epoch(self, engine: Engine) -> None:
        records = getattr(engine.state, "history", None) or []
        record = next((r for r in reversed(records) if r.get("epoch") == engine.state.epoch), None)
        if record is None:  # no HistoryHandler before this one: the engine's own metrics
            record = dict(engine.state.metrics)
        metrics = epoch_metrics(record)
        if metrics:
            self._log_metrics(metrics, step=engine.state.epoch)

    def _artifacts(self, paths: Sequence[Path], folder: str) -> None:
        for path in paths:
            if path.is_file():
                self.client.log_artifact(self.cur_run.info.run_id, str(path), artifact_path=folder)

    def _complete(self, engine: Engine) -> None:
        if self.cur_run is None:
            return
        if self.role == "train":
            self._artifacts(self.files, "training")
            return
        if self.report_dir is not None:
            metrics_file = self.report_dir / "metrics.json"
            if metrics_file.is_file():
                metrics = flatten_numbers(json.loads(metrics_file.read_text(encoding="utf-8")), self.metric_prefix)
                if metrics:
                    self._log_metrics(metrics, step=0)
            self._artifacts([self.report_dir / name for name in REPORT_FILES], "evaluation")
        self._artifacts(self.files, "evaluation")
