"""MultiTaskUNetLib.job: progress state, success, failure, GPU out-of-memory retry, cancel."""

import json
import sys
import time

import pytest

from MultiTaskUNetLib.job import InferenceJob, JobState


def _job(bundle, volume_file, tmp_path, device="auto", **kw):
    return InferenceJob(sys.executable, volume_file, tmp_path / "out", bundle, device=device, **kw)


def test_success_reports_progress_and_result(tmp_path, fake_bundle, volume_file):
    logged = []
    job = _job(fake_bundle("ok"), volume_file, tmp_path, on_log=logged.append)
    assert job.state is JobState.NOT_STARTED and job.elapsed_s == 0.0
    job.start()
    percents = []
    while job.poll() is JobState.RUNNING:
        percents.append(job.percent)
        time.sleep(0.01)
    assert job.state is JobState.SUCCEEDED and job.done
    assert (job.percent, job.stage, job.error) == (100, "done", "")
    assert percents == sorted(percents)  # progress never goes backwards within one run
    assert job.result_paths == [tmp_path / "out" / "input_result.json"]
    assert " 40% inference" in logged and "a free-form log line" in logged
    assert logged[0] == "Starting worker on device 'auto'"
    assert not job.retried_on_cpu


def test_failure_keeps_the_worker_error_line(tmp_path, fake_bundle, volume_file):
    job = _job(fake_bundle("error"), volume_file, tmp_path)
    job.start()
    assert job.wait(timeout=60) is JobState.FAILED
    assert job.error == f"{volume_file}: cannot read the image (not a volume file)"
    assert "ERROR " + job.error in job.log_lines
    assert job.advice is None  # bad input, not an environment problem: no install advice


def test_gpu_out_of_memory_retries_on_cpu(tmp_path, fake_bundle, volume_file):
    logged = []
    job = _job(fake_bundle("oom"), volume_file, tmp_path, device="cuda", on_log=logged.append)
    job.start()
    assert job.wait(timeout=60) is JobState.SUCCEEDED
    assert job.retried_on_cpu
    assert "The GPU ran out of memory; running again on the CPU (slower)." in logged
    runs = [json.loads(line) for line in (tmp_path / "out" / "invocations.jsonl").read_text().splitlines()]
    assert [r["device"] for r in runs] == ["cuda", "cpu"]
    assert runs[1]["cuda_visible_devices"] == ""
    assert json.loads(job.result_paths[0].read_text())["device"] == "cpu"


def test_out_of_memory_on_cpu_is_not_retried(tmp_path, fake_bundle, volume_file):
    # the oom fake succeeds on cpu, so give it a worker that always fails with an OOM-like message
    bundle = fake_bundle("error")
    (bundle / "scripts" / "infer.py").write_text(
        "import sys\nprint('ERROR CUDA out of memory', file=sys.stderr)\nsys.exit(1)\n")
    job = _job(bundle, volume_file, tmp_path, device="cpu")
    job.start()
    assert job.wait(timeout=60) is JobState.FAILED
    assert not job.retried_on_cpu and job.error == "CUDA out of memory"


def test_exit_zero_without_result_is_a_failure(tmp_path, fake_bundle, volume_file):
    bundle = fake_bundle("error")
    (bundle / "scripts" / "infer.py").write_text("print('PROGRESS 100 done')\n")
    job = _job(bundle, volume_file, tmp_path)
    job.start()
    assert job.wait(timeout=60) is JobState.FAILED
    assert job.error == "the worker finished without reporting a result (no RESULT line)"


def test_crash_without_error_line_reports_last_stderr_and_advice(tmp_path, fake_bundle, volume_file):
    bundle = fake_bundle("error")
    (bundle / "scripts" / "infer.py").write_text("import monai_is_not_installed_here\n")
    job = _job(bundle, volume_file, tmp_path)
    job.start()
    assert job.wait(timeout=60) is JobState.FAILED
    assert job.error == "ModuleNotFoundError: No module named 'monai_is_not_installed_here'"
    assert job.advice is not None and "accept the installation" in job.advice


def test_cancel(tmp_path, fake_bundle, volume_file):
    job = _job(fake_bundle("sleep"), volume_file, tmp_path)
    job.start()
    deadline = time.monotonic() + 60
    while job.percent == 0 and time.monotonic() < deadline:  # wait until the worker is really running
        job.poll()
        time.sleep(0.02)
    assert job.stage == "waiting forever"
    job.cancel()
    assert job.state is JobState.CANCELLED and job.done
    assert job._worker.returncode is not None  # the process is gone, not just forgotten
    assert job.poll() is JobState.CANCELLED
    assert "Cancelled by the user." in job.log_lines


def test_cancel_without_waiting(tmp_path, fake_bundle, volume_file):
    """The panel's Cancel: returns at once (job cancelling), polling finishes it once the processes are gone."""
    job = _job(fake_bundle("stubborn"), volume_file, tmp_path)
    job.start()
    deadline = time.monotonic() + 60
    while job.percent == 0 and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.02)
    t0 = time.monotonic()
    job.cancel(wait=False, grace_s=1.0)
    assert time.monotonic() - t0 < 0.5
    assert job.state is JobState.CANCELLING and job.active and not job.done and job.stage == "cancelling"
    assert job.poll() is JobState.CANCELLING  # SIGTERM ignored: still within the grace period
    while job.poll() is JobState.CANCELLING:
        assert time.monotonic() - t0 < 30
        time.sleep(0.05)
    assert job.state is JobState.CANCELLED and job.done and not job.active
    assert job._worker.returncode is not None and "Cancelled by the user." in job.log_lines
    assert job.result_paths == []


def test_cancel_reason_and_waiting_on_a_cancelling_job(tmp_path, fake_bundle, volume_file):
    job = _job(fake_bundle("stubborn"), volume_file, tmp_path)
    job.start()
    job.cancel(wait=False, grace_s=0.5, reason="The scene was closed: run cancelled.")
    assert job.state is JobState.CANCELLING
    job.cancel(wait=True)  # e.g. the module is closed meanwhile: blocks until the tree is gone
    assert job.state is JobState.CANCELLED and job._worker.returncode is not None
    assert "The scene was closed: run cancelled." in job.log_lines


def test_wait_timeout_cancels(tmp_path, fake_bundle, volume_file):
    job = _job(fake_bundle("sleep"), volume_file, tmp_path)
    job.start()
    assert job.wait(timeout=0.5) is JobState.CANCELLED


def test_elapsed_time_freezes_at_the_end(tmp_path, fake_bundle, volume_file):
    ticks = iter([100.0, 103.5, 107.0, 1000.0])
    job = _job(fake_bundle("error"), volume_file, tmp_path, clock=lambda: next(ticks))
    job.start()  # t = 100
    assert job.elapsed_s == 3.5  # t = 103.5, running
    job.wait(timeout=60)  # ends at t = 107
    assert job.elapsed_s == 7.0 and job.elapsed_s == 7.0  # frozen: the clock is not read again


def test_bad_interpreter_fails_the_job(tmp_path, fake_bundle, volume_file):
    job = InferenceJob(tmp_path / "missing-python", volume_file, tmp_path / "out", fake_bundle("ok"))
    job.start()
    assert job.state is JobState.FAILED and "cannot start the worker" in job.error


def test_start_twice_and_bad_device(tmp_path, fake_bundle, volume_file):
    with pytest.raises(ValueError, match="device must be one of"):
        _job(fake_bundle("ok"), volume_file, tmp_path, device="tpu")
    job = _job(fake_bundle("error"), volume_file, tmp_path)
    job.start()
    with pytest.raises(RuntimeError, match="job already running"):
        job.start()
    job.wait(timeout=60)
