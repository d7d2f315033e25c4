"""MultiTaskUNetLib.worker: the command line, a real child process, cancel of its whole tree."""

import json
import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from MultiTaskUNetLib.protocol import Error, Log, Progress, Result, Stream
from MultiTaskUNetLib.worker import WorkerProcess, build_worker_command, kill_process_tree


def test_command_line(tmp_path, fake_bundle):
    bundle = fake_bundle("ok")
    cmd = build_worker_command("/opt/Slicer/bin/PythonSlicer", "/tmp/in.nrrd", tmp_path / "out", bundle, device="cuda",
                               seg_format="seg.nrrd", checkpoint="/w/best.pt", base_env={"PYTHONPATH": "/a" + os.pathsep + "/b", "X": "1"})
    assert cmd.argv == ["/opt/Slicer/bin/PythonSlicer", "-m", "scripts.infer", "/tmp/in.nrrd", "--out", str(tmp_path / "out"),
                        "--bundle", str(bundle.resolve()), "--device", "cuda", "--format", "seg.nrrd", "--progress",
                        "--checkpoint", "/w/best.pt"]
    assert cmd.env["PYTHONPATH"].split(os.pathsep) == [str(bundle.resolve()), "/a", "/b"]
    assert cmd.env["X"] == "1" and cmd.env["PYTHONUNBUFFERED"] == "1"
    assert cmd.env["PYTHONIOENCODING"] == "utf-8" and cmd.env["PYTHONUTF8"] == "1"  # not the Windows ANSI code page
    assert "CUDA_VISIBLE_DEVICES" not in cmd.env
    assert cmd.cwd == str(bundle.resolve())


def test_cpu_hides_the_gpu(fake_bundle):
    bundle = fake_bundle("ok")
    cmd = build_worker_command(sys.executable, "in.nrrd", "out", bundle, device="cpu", base_env={})
    assert cmd.env["CUDA_VISIBLE_DEVICES"] == ""
    assert cmd.env["PYTHONPATH"] == str(bundle.resolve())


@pytest.mark.parametrize("kwargs, match", [
    ({"device": "gpu"}, "device must be one of"),
    ({"seg_format": "png"}, "seg_format must be one of"),
])
def test_bad_arguments(fake_bundle, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_worker_command(sys.executable, "in.nrrd", "out", fake_bundle("ok"), **kwargs)


def test_not_a_bundle(tmp_path):
    with pytest.raises(ValueError, match="not a MultiTaskUNet bundle"):
        build_worker_command(sys.executable, "in.nrrd", "out", tmp_path)


def test_runs_the_worker_and_parses_its_output(tmp_path, fake_bundle, volume_file):
    out = tmp_path / "out"
    worker = WorkerProcess(build_worker_command(sys.executable, volume_file, out, fake_bundle("ok"), device="cpu"))
    worker.start()
    events = worker.wait(timeout=60)
    assert worker.finished and worker.returncode == 0
    assert [e for e in events if isinstance(e, Progress)] == [Progress(5, "loading model"), Progress(40, "inference"),
                                                              Progress(100, "done")]
    assert Log("a free-form log line", Stream.STDOUT) in events
    [result] = [e for e in events if isinstance(e, Result)]
    assert Path(result.path) == out / "input_result.json" and Path(result.path).is_file()
    invocation = json.loads((out / "invocations.jsonl").read_text())
    assert invocation["device"] == "cpu" and invocation["cuda_visible_devices"] == ""


def test_error_line_and_exit_code(tmp_path, fake_bundle, volume_file):
    worker = WorkerProcess(build_worker_command(sys.executable, volume_file, tmp_path / "out", fake_bundle("error")))
    worker.start()
    events = worker.wait(timeout=60)
    assert worker.returncode == 2
    assert Error(f"{volume_file}: cannot read the image (not a volume file)") in events


def test_poll_does_not_block(tmp_path, fake_bundle, volume_file):
    worker = WorkerProcess(build_worker_command(sys.executable, volume_file, tmp_path / "out", fake_bundle("sleep")))
    worker.start()
    try:
        t0 = time.monotonic()
        worker.poll()
        # generous bound: the point is that poll returns although the worker runs for minutes
        assert time.monotonic() - t0 < 5.0 and not worker.finished
    finally:
        worker.cancel()


def _wait_for(path: Path, timeout: float = 60.0) -> str:
    """The file's content once it exists and is not empty."""
    deadline = time.monotonic() + timeout
    while not (path.is_file() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


def test_cancel_kills_the_process_tree(tmp_path, fake_bundle, volume_file):
    out = tmp_path / "out"
    worker = WorkerProcess(build_worker_command(sys.executable, volume_file, out, fake_bundle("sleep")))
    worker.start()
    child_pid = int(_wait_for(out / "pids.txt").split()[0])
    parent_pid = worker.proc.pid
    assert psutil.pid_exists(child_pid)
    worker.cancel(grace_s=2.0)
    assert worker.cancelled and worker.returncode is not None and worker.returncode != 0
    psutil.wait_procs([p for p in (_proc(child_pid),) if p], timeout=5)
    assert not _alive(child_pid) and not _alive(parent_pid)


def _proc(pid):
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def _alive(pid: int) -> bool:
    p = _proc(pid)
    return p is not None and p.is_running() and p.status() != psutil.STATUS_ZOMBIE


def test_kill_process_tree_kills_grandchildren(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time, pathlib\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
            f"pathlib.Path({str(pid_file)!r}).write_text(str(c.pid))\n"
            "time.sleep(600)\n")
    parent = psutil.Popen([sys.executable, "-c", code])
    child = int(_wait_for(pid_file))
    kill_process_tree(parent.pid, grace_s=2.0)
    psutil.wait_procs([p for p in (_proc(child),) if p], timeout=5)
    assert not _alive(parent.pid) and not _alive(child)


def test_kill_process_tree_of_a_finished_process_is_harmless():
    proc = psutil.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    kill_process_tree(proc.pid)  # gone already: nothing to do, no error
    assert not _alive(proc.pid)


def test_start_twice_and_missing_interpreter(tmp_path, fake_bundle):
    cmd = build_worker_command(tmp_path / "no-such-python", "in.nrrd", tmp_path / "out", fake_bundle("ok"))
    with pytest.raises(OSError, match="no-such-python: cannot start the worker"):
        WorkerProcess(cmd).start()
    worker = WorkerProcess(build_worker_command(sys.executable, "in.nrrd", tmp_path / "out", fake_bundle("error")))
    worker.start()
    with pytest.raises(RuntimeError, match="already started"):
        worker.start()
    worker.wait(timeout=60)


def test_non_ascii_paths_survive_the_pipe(tmp_path, fake_bundle, volume_file):
    """A result path under a user name like "Zoë Ærø" comes back intact, even when the environment Slicer
    starts from asks for a legacy code page (what Windows gives a child without PYTHONIOENCODING)."""
    home = tmp_path / "Users" / "Zoë Ærø"
    home.mkdir(parents=True)
    study = home / "étude.nrrd"
    study.write_bytes(volume_file.read_bytes())
    env = dict(os.environ, PYTHONIOENCODING="cp1252")
    worker = WorkerProcess(build_worker_command(sys.executable, study, home / "sortie", fake_bundle("ok"), device="cpu",
                                                base_env=env))
    worker.start()
    events = worker.wait(timeout=60)
    assert worker.returncode == 0, events
    [result] = [e for e in events if isinstance(e, Result)]
    assert result.path == str(home / "sortie" / "étude_result.json") and Path(result.path).is_file()


def _pids(out: Path) -> list[int]:
    return [int(_wait_for(out / "pids.txt").split()[0])]


def test_terminate_returns_at_once_and_reap_kills_after_the_grace_period(tmp_path, fake_bundle, volume_file):
    out = tmp_path / "out"
    worker = WorkerProcess(build_worker_command(sys.executable, volume_file, out, fake_bundle("stubborn")))
    worker.start()
    [child] = _pids(out)
    t0 = time.monotonic()
    worker.terminate(grace_s=1.0)
    assert time.monotonic() - t0 < 0.5  # the GUI thread never waits
    assert worker.cancelled and not worker.reap()  # SIGTERM is ignored: still alive within the grace period
    assert _alive(child) and _alive(worker.proc.pid)
    deadline = time.monotonic() + 30
    while not worker.reap():
        assert time.monotonic() < deadline, "the worker tree outlived the grace period"
        time.sleep(0.05)
    assert time.monotonic() - t0 >= 1.0  # killed only after the grace period
    psutil.wait_procs([p for p in (_proc(child),) if p], timeout=5)
    assert not _alive(child) and worker.returncode is not None
