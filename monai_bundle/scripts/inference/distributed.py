"""Batch inference across machines on Ray: the CLI's ``--engine ray``.

:class:`RayBatchRunner` is a :class:`~scripts.inference.batch.BatchRunner` whose studies run on Ray
actors instead of in this process. Each actor (:class:`PredictorActor`) loads one
:class:`~scripts.inference.Predictor` when it starts and keeps it; it runs one study at a time with
:func:`~scripts.inference.batch.run_study`, the very function of the single-process runner, so both
engines write the same files (byte for byte, apart from the timings in the result JSON, when both
run the network with the same number of threads). Outcomes come back in input order; progress and
``on_outcome`` are reported as studies finish.

- **Cluster.** Without ``address`` a new local Ray instance is started for the run, even when a cluster
  already runs on this machine (``num_cpus`` =
  workers x threads, no dashboard, a small object store, listening on 127.0.0.1 only: :data:`LOOPBACK_ONLY`)
  and stopped after it. With
  ``address`` (``ray://...`` or ``HOST:PORT`` of a running cluster) the run joins that cluster; its
  nodes must see the bundle code, the model, the inputs and ``--out`` at the same paths (a shared
  filesystem) and have the same Python packages. DICOMweb inputs need only the server. The
  ``MTUNET_DICOMWEB_*`` variables of this process are handed to the actors (Ray's runtime
  environment), as is ``PYTHONPATH`` = the bundle code.
- **Workers.** ``workers`` actors (default: one per GPU when the cluster has GPUs, else one per
  ``threads`` CPUs), each with ``num_cpus=threads`` and ``torch.set_num_threads(threads)``; when the
  cluster has GPUs and the device is not ``cpu``, each actor asks for ``min(1, GPUs / workers)`` of
  a GPU, so several actors may share one.
- **Failures.** A study's own error is its outcome's error, as in one process. A worker process that
  dies (killed, out of memory) is restarted by Ray (up to :data:`MAX_RESTARTS` times, reloading its
  Predictor) and the study it was running is run again there; outputs are written under temporary
  names and renamed at the end (:class:`~scripts.inference.writers.OutputSet`), so a study cut off
  halfway leaves no result, and the temporary files of a killed worker are removed when the batch
  ends. No study is lost or reported twice; a study whose worker died more often than that is failed.
  Workers that die before they run anything (Ray cancelled their start) are started once more.
- **Resume.** Studies kept from an earlier run (``resume``) are not sent to the cluster at all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.inference.batch import BatchRunner, Outcome, run_study
from scripts.inference.dicomweb import ENV_VARS

log = logging.getLogger(__name__)
MAX_RESTARTS = 3  # times Ray restarts a dead worker (and re-runs the study it was on)
OBJECT_STORE_BYTES = 100 * 1024 * 1024  # a local cluster's object store: only small results travel through it
CODE_ROOT = str(Path(__file__).resolve().parents[2])  # the bundle root, parent of the scripts package
#: "0": Ray keeps a one-machine instance on 127.0.0.1 (its switch for Windows/macOS, where clusters are
#: off by default); otherwise it replaces 127.0.0.1 by the machine's network address and listens there
LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@dataclass(frozen=True)
class PredictorSpec:
    """How a worker loads its Predictor: :meth:`Predictor.from_bundle` arguments (paths as strings)."""

    bundle: str
    checkpoint: str | None = None
    card: str | None = None
    config: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def load(self, **more: Any):
        from scripts.inference.predictor import Predictor

        return Predictor.from_bundle(self.bundle, checkpoint=self.checkpoint, card=self.card, config=self.config,
                                     **{**self.overrides, **more})


class PredictorActor:
    """One Ray worker: a Predictor loaded once, then one study per call."""

    def __init__(self, spec: PredictorSpec, threads: int, cwd: str | None = None) -> None:
        import torch

        if cwd and os.path.isdir(cwd):  # relative paths mean what they mean to the driver (the same file, the same text)
            os.chdir(cwd)
        torch.set_num_threads(threads)
        self.predictor = spec.load()

    def run(self, study: Path, name: str, output_dir: Path, options: dict[str, Any], push: str | None) -> Outcome:
        return run_study(self.predictor, study, name, output_dir, options, push)

    def pid(self) -> int:
        return os.getpid()


class RayBatchRunner(BatchRunner):
    """A :class:`BatchRunner` whose studies run on Ray actors (see the module docstring).

    Args:
        spec: how each worker loads its Predictor.
        inputs, output_dir, ...: as :class:`BatchRunner` (``predictor`` is not used: the workers hold theirs).
        workers: number of actors (default: see the module docstring).
        address: a running Ray cluster to join; None starts a local one for the run.
        threads: torch threads (and Ray CPUs) per worker.
    """

    def __init__(self, spec: PredictorSpec, inputs: Iterable[Any], output_dir: str | os.PathLike,
                 workers: int | None = None, address: str | None = None, threads: int = 1, **options: Any) -> None:
        super().__init__(None, inputs, output_dir, **options)
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be 1 or more, got {workers}")
        if threads < 1:
            raise ValueError(f"threads must be 1 or more, got {threads}")
        self.spec, self.workers, self.address, self.threads = spec, workers, address, threads
        self.worker_pids: list[int] = []  # of the live actors, once started (tests kill one)

    def _runtime_env(self) -> dict[str, Any]:
        env = {key: os.environ[key] for key in ENV_VARS if os.environ.get(key)}
        path = os.pathsep.join(p for p in (CODE_ROOT, os.environ.get("PYTHONPATH")) if p)
        env.update(PYTHONPATH=path, OMP_NUM_THREADS=str(self.threads), RAY_USAGE_STATS_ENABLED="0")
        return {"env_vars": env}

    def _start(self, ray) -> bool:
        """Connect to (or start) the cluster; True when this runner started Ray and must stop it."""
        if ray.is_initialized():
            return False
        common = {"runtime_env": self._runtime_env(), "log_to_driver": False, "logging_level": logging.ERROR,
                  "configure_logging": True}
        if self.address:
            ray.init(address=self.address, **common)
        else:
            workers = self.workers or max(1, (os.cpu_count() or 1) // self.threads)
            # "local": a new instance even when a cluster already runs on this machine (ray.init() would join it)
            ray.init(address="local", num_cpus=workers * self.threads, include_dashboard=False,
                     object_store_memory=OBJECT_STORE_BYTES, _node_ip_address="127.0.0.1", **common)
        return True

    def _actors(self, ray, pending: int) -> list:
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0)) if self.spec.overrides.get("device") != "cpu" else 0.0
        workers = self.workers or (int(gpus) if gpus >= 1 else max(1, int(resources.get("CPU", 1)) // self.threads))
        workers = max(1, min(workers, pending))
        actor = ray.remote(PredictorActor).options(
            num_cpus=self.threads, num_gpus=min(1.0, gpus / workers) if gpus else 0,
            max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)
        return [actor.remote(self.spec, self.threads, os.getcwd()) for _ in range(workers)]

    def _started_actors(self, ray, pending: int) -> list:
        """The actors of :meth:`_actors`, each answering once.

        Before any study is sent, a worker can die without having run (Ray cancelled its start on a busy
        or reconnecting cluster: "The actor never ran"); new actors are asked for once, with a warning,
        and a second loss is raised. A worker whose Predictor cannot load (Ray has already restarted it
        :data:`MAX_RESTARTS` times) is raised at once: starting it again would fail again.
        """
        from ray.exceptions import RayActorError

        actors = self._actors(ray, pending)
        try:
            self.worker_pids = ray.get([a.pid.remote() for a in actors])
            return actors
        except RayActorError as e:
            if e.actor_init_failed:
                raise
            log.warning("a Ray worker died before it ran any study (%s): starting the workers once more",
                        (str(e).strip().splitlines() or [type(e).__name__])[0])
            for a in actors:
                ray.kill(a, no_restart=True)
        actors = self._actors(ray, pending)
        self.worker_pids = ray.get([a.pid.remote() for a in actors])
        return actors

    def run(self, progress: Callable[[int, int, int, str], None] | None = None,
            on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
        """Predict every study on the cluster; return their outcomes in input order (see :meth:`BatchRunner.run`)."""
        n = len(self.studies)
        outcomes: dict[int, Outcome] = {}

        def finished(i: int, outcome: Outcome) -> None:
            outcomes[i] = outcome
            log.info("study %d/%d %s in %.1f s", i + 1, n,
                     "kept" if outcome.resumed else "done" if outcome.ok else "FAILED", outcome.seconds)
            if progress is not None:
                progress(len(outcomes) - 1, n, 100, "done")
            if on_outcome is not None:
                on_outcome(outcome)

        queue = []
        for i in range(n):
            previous = self.previous(i)
            if previous is None:
                queue.append(i)
            else:
                finished(i, previous)
        if queue:
            self._run_on_ray(queue, finished)
        self._sweep_temps()
        return self.finish([outcomes[i] for i in range(n)])

    def _run_on_ray(self, queue: list[int], finished: Callable[[int, Outcome], None]) -> None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports to any server
        if not self.address:  # read when ray is first imported: a local instance on 127.0.0.1 only (else Ray
            os.environ.setdefault(LOOPBACK_ONLY, "0")  # puts it on this machine's network address)
        import ray
        from ray.exceptions import RayError

        started = self._start(ray)
        try:
            actors = self._started_actors(ray, len(queue))
            queue = list(reversed(queue))  # pop() takes the next study in input order
            running: dict[Any, tuple[int, Any]] = {}

            def submit(actor) -> None:
                i = queue.pop()
                ref = actor.run.remote(self.studies[i], self.names[i], self.output_dir, self.options, self.push)
                running[ref] = (i, actor)

            for actor in actors:  # one study at a time per worker: the next goes to whichever is free first
                if queue:
                    submit(actor)
            while running:
                done, _ = ray.wait(list(running), num_returns=1)
                i, actor = running.pop(done[0])
                try:
                    outcome, alive = ray.get(done[0]), True
                except RayError as e:  # the worker died more than MAX_RESTARTS times (on this study or before)
                    alive, reason = False, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"
                    outcome = Outcome(self.studies[i], error=f"{self.studies[i]}: the Ray worker running this "
                                                             f"study failed: {reason}")
                finished(i, outcome)
                if queue and alive:
                    submit(actor)
                if queue and not running:  # every worker is gone for good
                    while queue:
                        i = queue.pop()
                        finished(i, Outcome(self.studies[i], error=f"{self.studies[i]}: not run: every Ray worker "
                                                                   f"failed ({reason})"))
        finally:
            if started:
                ray.shutdown()

    def _sweep_temps(self) -> None:
        """Remove the temporary files a killed worker left for this batch's studies."""
        if not self.output_dir.is_dir():
            return
        names = set(self.names)
        for tmp in self.output_dir.glob(".tmp-*-*"):  # OutputSet's
            rest = tmp.name.split("-", 2)[-1]  # the final file name
            if any(rest.startswith(f"{name}_") for name in names):
                tmp.unlink(missing_ok=True)
        for name in names:  # atomic_path's, of the result JSON rewritten after a push
            for tmp in self.output_dir.glob(f".{name}_result.json.*.tmp"):
                tmp.unlink(missing_ok=True)
