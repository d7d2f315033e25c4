"""Run the bundle's inference CLI out of process, without blocking the caller.

Slicer's user interface must stay live during inference, so the worker runs in a child process
(Slicer's ``PythonSlicer`` running ``python -m scripts.infer``); two reader threads move its output
into a queue and :meth:`WorkerProcess.poll` hands the parsed lines to whoever asks (the module's
``qt.QTimer``, or a blocking loop in batch use). Cancel stops the whole process tree: the worker may
have started helper processes (data loaders) that would otherwise keep the GPU busy. It comes in two
halves so the user interface never waits: :meth:`WorkerProcess.terminate` asks the tree to stop and
returns at once, :meth:`WorkerProcess.reap` (called from the same timer) kills whatever is still
alive after the grace period; :meth:`WorkerProcess.cancel` does both, blocking, for batch use.

The child's standard streams are UTF-8 whatever the platform (``PYTHONIOENCODING``/``PYTHONUTF8``):
on Windows Python would otherwise write the ANSI code page, and a result path under a user name
such as ``Zoë`` would come back garbled.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from MultiTaskUNetLib.protocol import Event, Stream, parse_line

DEVICES = ("auto", "cpu", "cuda")
SEG_FORMATS = ("nifti", "seg.nrrd", "dicom-seg")


@dataclass(frozen=True)
class WorkerCommand:
    """Everything needed to start the worker: argument vector, environment, working folder."""

    argv: list[str]
    env: dict[str, str] = field(repr=False)
    cwd: str


def build_worker_command(python: str | os.PathLike, input_path: str | os.PathLike, out_dir: str | os.PathLike,
                         bundle_dir: str | os.PathLike, device: str = "auto", seg_format: str = "nifti",
                         checkpoint: str | os.PathLike | None = None,
                         base_env: Mapping[str, str] | None = None, uncertainty_map: bool = False) -> WorkerCommand:
    """The command line of ``scripts.infer`` for one study, with the bundle root on ``PYTHONPATH``.

    Args:
        python: interpreter to run (Slicer's ``PythonSlicer``; ``sys.executable`` in tests).
        input_path: the study written to a temporary file (NRRD/NIfTI) or a DICOM folder.
        out_dir: where the worker writes ``<stem>_seg.nii.gz`` and ``<stem>_result.json``.
        bundle_dir: the MONAI bundle root (holds ``configs/``, ``scripts/``, ``models/``).
        device: ``auto``, ``cpu`` or ``cuda``.
        seg_format: ``nifti``, ``seg.nrrd`` or ``dicom-seg``.
        checkpoint: optional weights file other than the bundle's ``models/model.pt``.
        base_env: environment to start from (Slicer's startup environment); ``os.environ`` if None.
        uncertainty_map: run with flip TTA and also write ``<stem>_uncertainty.nii.gz`` (the voxel-wise
            disagreement of the image and its mirror; twice the network time).

    Raises:
        ValueError: unknown ``device`` or ``seg_format``, or ``bundle_dir`` without ``scripts/``.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if seg_format not in SEG_FORMATS:
        raise ValueError(f"seg_format must be one of {SEG_FORMATS}, got {seg_format!r}")
    bundle = Path(bundle_dir).resolve()
    if not (bundle / "scripts").is_dir():
        raise ValueError(f"{bundle}: not a MultiTaskUNet bundle (no scripts/ folder)")
    argv = [str(python), "-m", "scripts.infer", str(input_path), "--out", str(out_dir), "--bundle", str(bundle),
            "--device", device, "--format", seg_format, "--progress"]
    if checkpoint is not None:
        argv += ["--checkpoint", str(checkpoint)]
    if uncertainty_map:
        argv += ["--tta", "--uncertainty-map"]
    env = bundle_environment(bundle, base_env)
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU run (or CPU retry) never touches a broken or full GPU
    return WorkerCommand(argv=argv, env=env, cwd=str(bundle))


def bundle_environment(bundle: Path, base_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of a child running the bundle's code: the bundle root first on ``PYTHONPATH``,
    unbuffered UTF-8 output whatever the platform (``os.environ`` if ``base_env`` is None)."""
    env = dict(os.environ if base_env is None else base_env)
    env["PYTHONPATH"] = os.pathsep.join([str(bundle)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"  # progress lines must arrive while the worker runs, not at exit
    env["PYTHONIOENCODING"] = "utf-8"  # what the reader threads decode, on every platform
    env["PYTHONUTF8"] = "1"  # and file names / arguments in UTF-8 mode (Windows: not the ANSI code page)
    return env


class WorkerProcess:
    """One running worker: start, poll its parsed output, cancel, wait.

    ``poll()`` never blocks; it returns the events read since the last call. ``finished`` turns true
    once the process has exited and both pipes are drained, and ``returncode`` is then set.
    """

    def __init__(self, command: WorkerCommand) -> None:
        self.command = command
        self.proc: subprocess.Popen[str] | None = None
        self.cancelled = False
        self._lines: queue.Queue[tuple[Stream, str]] = queue.Queue()
        self._readers: list[threading.Thread] = []
        self._tree: list = []  # descendants listed when terminate() was called
        self._kill_at: float | None = None  # monotonic time after which terminate() escalates to kill

    def start(self) -> None:
        """Start the child in its own process group and the two reader threads.

        Raises:
            RuntimeError: already started.
            OSError: the interpreter could not be executed (message names it).
        """
        if self.proc is not None:
            raise RuntimeError("worker already started")
        kwargs: dict = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True  # own process group: cancel reaches every descendant
        try:
            self.proc = subprocess.Popen(
                self.command.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                text=True, encoding="utf-8", errors="replace", bufsize=1,
                env=self.command.env, cwd=self.command.cwd, **kwargs)
        except OSError as e:
            raise OSError(f"{self.command.argv[0]}: cannot start the worker ({e})") from e
        for stream, pipe in ((Stream.STDOUT, self.proc.stdout), (Stream.STDERR, self.proc.stderr)):
            t = threading.Thread(target=self._read, args=(stream, pipe), daemon=True)
            t.start()
            self._readers.append(t)

    def _read(self, stream: Stream, pipe) -> None:
        for line in iter(pipe.readline, ""):
            self._lines.put((stream, line))
        pipe.close()

    @property
    def finished(self) -> bool:
        """The process exited and all of its output has been read (``poll`` may still hold events)."""
        return (self.proc is not None and self.proc.poll() is not None
                and not any(t.is_alive() for t in self._readers))

    @property
    def returncode(self) -> int | None:
        """Exit status once exited (negative: killed by that signal on POSIX), else None."""
        return None if self.proc is None else self.proc.poll()

    def poll(self) -> list[Event]:
        """Parsed events read since the last call; never blocks."""
        events: list[Event] = []
        while True:
            try:
                stream, line = self._lines.get_nowait()
            except queue.Empty:
                return events
            events.append(parse_line(line, stream))

    def wait(self, timeout: float | None = None) -> list[Event]:
        """Block until the worker has finished (or ``timeout`` s passed); return all unread events."""
        deadline = None if timeout is None else time.monotonic() + timeout
        events: list[Event] = []
        while not self.finished:
            if deadline is not None and time.monotonic() > deadline:
                break
            events += self.poll()
            time.sleep(0.02)
        return events + self.poll()

    def terminate(self, grace_s: float = 3.0) -> None:
        """Ask the worker and every process it started to stop; returns at once.

        :meth:`reap` then kills whatever is still alive ``grace_s`` seconds later.
        """
        self.cancelled = True
        if self.proc is None or self._kill_at is not None:
            return
        self._kill_at = time.monotonic() + grace_s
        if self.proc.poll() is not None:
            return
        self._tree = _descendants(self.proc.pid)  # list them before the parent dies and they are reparented
        self.proc.terminate()
        _terminate(self._tree)

    def reap(self) -> bool:
        """After :meth:`terminate`: True once the whole tree is gone; kills survivors after the grace period.

        Never blocks. Before :meth:`terminate` it only reports whether the worker has exited.
        """
        if self.proc is None:
            return True
        parent_gone = self.proc.poll() is not None  # reaps the child through Popen: returncode stays real
        if self._kill_at is None:
            return parent_gone
        alive = [p for p in self._tree if _is_alive(p)]
        if parent_gone and not alive:
            _kill_group(self.proc.pid)  # a grandchild reparented before it was listed is still in the group
            return True
        if time.monotonic() >= self._kill_at:
            if not parent_gone:
                self.proc.kill()
            _kill(alive)
            _kill_group(self.proc.pid)
        return False

    def cancel(self, grace_s: float = 3.0) -> None:
        """Stop the worker tree and wait until it is gone: terminate, then kill what is left (blocking)."""
        self.terminate(grace_s)
        while not self.reap():
            time.sleep(0.02)
        if self.proc is not None:
            self.proc.wait()


def _descendants(pid: int) -> list:
    import psutil  # Slicer ships psutil; imported here so the Lib imports without it

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _terminate(procs: list) -> None:
    import psutil

    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass


def _kill(procs: list) -> None:
    import psutil

    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _is_alive(proc) -> bool:
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _reap(procs: list, grace_s: float) -> None:
    import psutil

    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    _kill(alive)


def _kill_group(pgid: int) -> None:
    if sys.platform != "win32":
        try:  # a grandchild reparented before it was listed is still in the worker's process group
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def kill_process_tree(pid: int, grace_s: float = 3.0) -> None:
    """Terminate ``pid`` (not a child of this process) and its descendants; kill what survives ``grace_s``."""
    import psutil

    try:
        root = [psutil.Process(pid)]
    except psutil.NoSuchProcess:
        return
    procs = _descendants(pid) + root
    _terminate(procs)
    _reap(procs, grace_s)
