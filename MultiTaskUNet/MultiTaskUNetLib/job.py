"""One inference job: worker runs, progress state, GPU out-of-memory retry on CPU.

:class:`InferenceJob` is what the module's timer polls and what ``Logic.process`` waits on in
batch use. It owns the worker process, turns protocol events into state the panel shows
(percent, stage, elapsed time, log), and restarts the worker on CPU when the GPU ran out of memory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Callable, Optional

from MultiTaskUNetLib import protocol
from MultiTaskUNetLib.dependencies import worker_error_advice
from MultiTaskUNetLib.worker import WorkerProcess, build_worker_command

#: how many worker stderr lines are kept for the error message when the worker prints no ERROR line
_STDERR_TAIL = 20


class JobState(str, Enum):
    """Life cycle of a job; the last three are final. ``CANCELLING``: asked to stop, processes still exiting."""

    NOT_STARTED = "not started"
    RUNNING = "running"
    CANCELLING = "cancelling"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class InferenceJob:
    """Run the worker on one study (retrying once on CPU after a GPU out-of-memory failure).

    Args:
        python: interpreter (Slicer's ``PythonSlicer``; ``sys.executable`` in tests).
        input_path, out_dir, bundle_dir, device, seg_format, checkpoint, base_env, uncertainty_map: as for
            :func:`~MultiTaskUNetLib.worker.build_worker_command`.
        on_log: called with every log line meant for the user (the panel's log box).
        clock: time source (seconds); injectable for tests of the elapsed time.
    """

    def __init__(self, python: str | os.PathLike, input_path: str | os.PathLike, out_dir: str | os.PathLike,
                 bundle_dir: str | os.PathLike, device: str = "auto", seg_format: str = "nifti",
                 checkpoint: str | os.PathLike | None = None, base_env: Mapping[str, str] | None = None,
                 on_log: Optional[Callable[[str], None]] = None, clock: Callable[[], float] = time.monotonic,
                 uncertainty_map: bool = False) -> None:
        self._args = dict(python=python, input_path=input_path, out_dir=out_dir, bundle_dir=bundle_dir,
                          seg_format=seg_format, checkpoint=checkpoint, base_env=base_env, uncertainty_map=uncertainty_map)
        build_worker_command(device=device, **self._args)  # fail now, not at start(), on a bad argument
        self.device = device
        self.on_log = on_log
        self.clock = clock
        self.state = JobState.NOT_STARTED
        self.percent = 0
        self.stage = ""
        self.result_paths: list[Path] = []
        self.error: str = ""
        self.advice: Optional[str] = None
        self.retried_on_cpu = False
        self.log_lines: list[str] = []
        self._stderr_tail: list[str] = []
        self._worker: Optional[WorkerProcess] = None
        self._started_at: Optional[float] = None
        self._ended_at: Optional[float] = None

    @property
    def elapsed_s(self) -> float:
        """Seconds since start (frozen once the job ended)."""
        if self._started_at is None:
            return 0.0
        return (self._ended_at if self._ended_at is not None else self.clock()) - self._started_at

    @property
    def done(self) -> bool:
        return self.state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    def _log(self, text: str) -> None:
        self.log_lines.append(text)
        if self.on_log is not None:
            self.on_log(text)

    def start(self) -> None:
        """Start the worker on the requested device.

        Raises:
            RuntimeError: the job was started before.
        """
        if self.state is not JobState.NOT_STARTED:
            raise RuntimeError(f"job already {self.state.value}")
        self._started_at = self.clock()
        self._launch(self.device)

    def _launch(self, device: str) -> None:
        command = build_worker_command(device=device, **self._args)
        self._worker = WorkerProcess(command)
        self._stderr_tail, self.result_paths = [], []  # a retry starts from scratch
        self.percent, self.stage, self.error = 0, "starting", ""
        self.state = JobState.RUNNING
        self._log(f"Starting worker on device '{device}'")
        try:
            self._worker.start()
        except OSError as e:
            self._finish(JobState.FAILED, str(e))

    def _handle(self, event: protocol.Event) -> None:
        if isinstance(event, protocol.Progress):
            self.percent, self.stage = event.percent, event.stage
            self._log(f"{event.percent:3d}% {event.stage}")
        elif isinstance(event, protocol.Result):
            self.result_paths.append(Path(event.path))
        elif isinstance(event, protocol.Error):
            self.error = event.message
            self._log("ERROR " + event.message)
        else:
            if event.stream is protocol.Stream.STDERR:
                self._stderr_tail = (self._stderr_tail + [event.text])[-_STDERR_TAIL:]
            self._log(event.text)

    @property
    def active(self) -> bool:
        """Running, or cancelled but its processes not gone yet (keep polling)."""
        return self.state in (JobState.RUNNING, JobState.CANCELLING)

    def poll(self) -> JobState:
        """Process the worker's new output; never blocks. Returns the (possibly new) state."""
        if self.state is JobState.CANCELLING and self._worker is not None:
            self._worker.poll()  # drop output written while stopping; it is no longer wanted
            if self._worker.reap():
                self._finish(JobState.CANCELLED, "")
            return self.state
        if self.state is not JobState.RUNNING or self._worker is None:
            return self.state
        finished = self._worker.finished  # read before draining so no line is left behind
        for event in self._worker.poll():
            self._handle(event)
        if finished:
            self._on_exit(self._worker.returncode)
        return self.state

    def _on_exit(self, returncode: Optional[int]) -> None:
        if returncode == 0 and self.result_paths:
            self.percent, self.stage = 100, "done"
            self._finish(JobState.SUCCEEDED, "")
            return
        error = self.error or (self._stderr_tail[-1] if self._stderr_tail else "")
        if returncode == 0:
            error = "the worker finished without reporting a result (no RESULT line)"
        oom_text = " ".join([error] + self._stderr_tail)
        if self.device != "cpu" and not self.retried_on_cpu and protocol.is_cuda_out_of_memory(oom_text):
            self.retried_on_cpu = True
            self._log("The GPU ran out of memory; running again on the CPU (slower).")
            self._launch("cpu")
            return
        self._finish(JobState.FAILED, error or f"the worker exited with code {returncode}")

    def _finish(self, state: JobState, error: str) -> None:
        self.state, self.error = state, error
        self._ended_at = self.clock()
        if state is JobState.FAILED:
            self.advice = worker_error_advice(error)
            if self.advice:
                self._log(self.advice)

    def cancel(self, wait: bool = True, grace_s: float = 3.0, reason: str = "Cancelled by the user.") -> None:
        """Stop the worker's process tree; the job ends ``cancelled``.

        ``wait=True`` (batch use) returns once every process is gone. ``wait=False`` (the panel)
        returns at once with the job ``cancelling``; :meth:`poll` kills what is still alive after
        ``grace_s`` seconds and turns the job ``cancelled`` once the processes are gone. ``reason``
        goes to the log. ``wait=True`` on a ``cancelling`` job waits for its processes to be gone.
        """
        if self.state is JobState.CANCELLING and wait and self._worker is not None:
            self._worker.cancel(grace_s)  # already terminated: waits out the grace period, then kills
            self._finish(JobState.CANCELLED, "")
            return
        if self.state is not JobState.RUNNING:
            return
        self._log(reason)
        if self._worker is None:
            self._finish(JobState.CANCELLED, "")
        elif wait:
            self._worker.cancel(grace_s)
            self._finish(JobState.CANCELLED, "")
        else:
            self._worker.terminate(grace_s)
            self.state, self.stage = JobState.CANCELLING, "cancelling"

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> JobState:
        """Block until done (batch and console use); on ``timeout`` seconds the job is cancelled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() in (JobState.RUNNING, JobState.CANCELLING):
            if deadline is not None and time.monotonic() > deadline and self.state is JobState.RUNNING:
                self.cancel()
                break
            time.sleep(interval)
        return self.state
