"""The CLI's Ray engine on real local 2-worker Ray clusters: the same files as the single-process run
(inputs: a manifest CSV of PNGs, a NIfTI volume, a DICOM folder, a DICOMweb URL on a real Orthanc, a
study that fails) on a Ray instance the CLI starts, --resume on a running cluster joined with
--address (``ray start --head``), and a worker killed mid-batch without a study lost or run twice
(the CLI's Ray instance listening on 127.0.0.1 only)."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pydicom
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from infer_helpers import mni_volume, write_dicom_series
from pacs_helpers import free_ports
from scripts.infer import main

RAY_START_TIMEOUT_S = 120


def _png(path: Path, seed: int, blank: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    arr = np.zeros((48, 40), np.uint8) if blank else (rng.random((48, 40)) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _nifti(path: Path, seed: int, shape=(40, 36, 12)) -> Path:
    vol = np.random.default_rng(seed).random(shape[::-1]).astype(np.float32) * 100  # (k, j, i)
    image = sitk.GetImageFromArray(vol)
    image.SetSpacing((1.5, 1.5, 4.0))
    sitk.WriteImage(image, str(path))
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _without_timings(data: bytes) -> bytes:
    """A result JSON's text with its ``timings_s`` values blanked (the only part allowed to differ)."""
    lines = data.decode("utf-8").splitlines()
    out, skip = [], False
    for line in lines:
        if '"timings_s": {' in line:
            skip = True
            out.append(line)
            continue
        if skip and line.strip().startswith("}"):
            skip = False
        if not skip:
            out.append(line)
    return "\n".join(out).encode("utf-8")


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def ray_head(tmp_path):
    """A running 2-CPU Ray cluster on 127.0.0.1 (``ray start --head --block``, free ports, no dashboard), as an
    operator would start one; stopped by ending that command (never ``ray stop``: it ends every Ray on the machine)."""
    names = ("ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "runtime-env-agent-port", "metrics-export-port", "node-manager-port", "object-manager-port")
    port, *others = free_ports(len(names) + 1)  # distinct: two components given one port make ray start fail
    ports = {f"--{name}": str(p) for name, p in zip(names, others)}
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port", str(port),
           "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--include-dashboard", "false",
           "--object-store-memory", str(100 * 1024 * 1024), "--disable-usage-stats",
           *[x for kv in ports.items() for x in kv]]
    log = open(tmp_path / "ray-head.log", "w+", encoding="utf-8")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")  # 127.0.0.1 only
    head = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + RAY_START_TIMEOUT_S
        while "Ray runtime started" not in (tmp_path / "ray-head.log").read_text(encoding="utf-8"):
            assert head.poll() is None, f"ray start failed:\n{(tmp_path / 'ray-head.log').read_text(encoding='utf-8')}"
            assert time.monotonic() < deadline, f"ray start did not finish within {RAY_START_TIMEOUT_S} s"
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        log.close()


@pytest.fixture
def one_thread():
    """The single-process run on one torch thread, as each Ray worker runs (--threads 1): the same arithmetic."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_ray_engine_writes_what_the_single_process_run_writes(orthanc, bundle2d, tmp_path, capsys, monkeypatch,
                                                              one_thread, ray_head):
    for key, value in orthanc.env().items():
        monkeypatch.setenv(key, value)
    studies = tmp_path / "studies"
    studies.mkdir()
    pngs = [_png(studies / f"us{k}.png", k) for k in range(3)]
    _png(studies / "black.png", 0, blank=True)  # fails: blank
    _nifti(studies / "vol.nii.gz", 7)
    write_dicom_series(mni_volume(6), studies / "mr", spacing=(2.0, 2.0, 3.0))
    write_dicom_series(mni_volume(4), tmp_path / "pacs")
    orthanc.upload(tmp_path / "pacs")
    ds = pydicom.dcmread(next((tmp_path / "pacs").iterdir()), stop_before_pixels=True)
    url = f"{orthanc.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
    manifest = studies / "manifest.csv"
    with open(manifest, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["input", "note"])
        writer.writerows([[p.name, "ultrasound"] for p in pngs] + [["black.png", "blank"], [url, "from the PACS"]])
    inputs = [manifest, studies / "vol.nii.gz", studies / "mr"]
    out = tmp_path / "out"
    common = ["--out", out, "--bundle", bundle2d, "--device", "cpu"]

    code, local_out, local_err = _cli(capsys, *inputs, *common)
    assert code == 1 and "6 of 7 studies done" in local_out  # black.png fails
    local = _files(out)
    shutil.rmtree(out)
    code, ray_out, ray_err = _cli(capsys, *inputs, *common, "--engine", "ray", "--workers", "2")
    assert code == 1, ray_err
    ray = _files(out)

    assert sorted(ray) == sorted(local) and len(local) == 3 * 6 + 1  # seg, result, overlay of 6 studies + worklist
    for name in local:
        if name.endswith("_result.json"):
            assert _without_timings(ray[name]) == _without_timings(local[name]), name
        else:
            assert ray[name] == local[name], name
    # the same summary (but the seconds) and the same error, last on stderr
    strip = [line.rsplit(None, 1)[0] if line.split()[-1].replace(".", "").isdigit() else line
             for line in ray_out.strip().splitlines()]
    assert strip == [line.rsplit(None, 1)[0] if line.split()[-1].replace(".", "").isdigit() else line
                     for line in local_out.strip().splitlines()]
    assert ray_err.strip().splitlines()[-1] == local_err.strip().splitlines()[-1]
    assert "black.png: the image is blank" in ray_err.strip().splitlines()[-1]
    assert not list(out.glob(".*"))  # no temporary file left

    # --resume on a running cluster (--address): only the study whose result is gone runs again, the rest are kept
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    for p in out.glob("us1_*"):
        p.unlink()
    code, resumed_out, err = _cli(capsys, *inputs, *common, "--engine", "ray", "--workers", "2", "--resume",
                                  "--address", ray_head)
    assert code == 1, err
    assert "6 of 7 studies done (5 kept from an earlier run)" in resumed_out
    assert [line.split()[:2] for line in resumed_out.splitlines() if line.startswith("us1.png")] == [["us1.png", "ok"]]
    again = _files(out)
    assert sorted(again) == sorted(local)
    assert _without_timings(again["us1_result.json"]) == _without_timings(local["us1_result.json"])
    assert again["worklist.csv"] == local["worklist.csv"]
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in out.iterdir()
               if not p.name.startswith("us1_") and p.name != "worklist.csv")


def _actors(root: psutil.Process) -> list[psutil.Process]:
    found = []
    for p in root.children(recursive=True):
        try:
            if "PredictorActor" in " ".join(p.cmdline()) or "PredictorActor" in p.name():
                found.append(p)
        except psutil.Error:
            pass
    return found


def _listening(root: psutil.Process) -> list[str]:
    """The addresses the processes under ``root`` (the CLI's local Ray instance) listen on."""
    found = []
    for p in [root, *root.children(recursive=True)]:
        try:
            found += [c.laddr.ip for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            pass
    return found


def _loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip in ("::1", "::ffff:127.0.0.1") or ip.startswith("::ffff:127.")


def test_a_worker_killed_mid_batch_loses_and_repeats_no_study(bundle_root, bundle2d, tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    n = 14
    for k in range(n):
        _nifti(studies / f"v{k:02d}.nii.gz", k, shape=(64, 64, 24))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(bundle_root), OMP_NUM_THREADS="1")
    run = subprocess.Popen([sys.executable, "-m", "scripts.infer", str(studies), "--out", str(out), "--bundle",
                            str(bundle2d), "--device", "cpu", "--no-overlay", "--engine", "ray", "--workers", "2"],
                           cwd=bundle_root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        driver, killed, deadline = psutil.Process(run.pid), None, time.monotonic() + 240
        while killed is None and time.monotonic() < deadline and run.poll() is None:
            done = len(list(out.glob("*_result.json"))) if out.is_dir() else 0
            actors = _actors(driver)
            if done >= 1 and len(actors) == 2:
                assert done < n, "the batch ended before a worker could be killed: give it more studies"
                assert _listening(driver) and all(_loopback(a) for a in _listening(driver)), _listening(driver)
                killed = actors[0]
                killed.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        assert killed is not None, "no worker was killed (the batch did not start in time)"
        stdout, stderr = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, stderr
    assert f"{n} of {n} studies done" in stdout
    rows = [line.split()[0] for line in stdout.splitlines() if line.startswith("v")]
    assert rows == [f"v{k:02d}.nii.gz" for k in range(n)]  # every study once, in input order
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"v{k:02d}_{kind}" for k in range(n) for kind in ("result.json", "seg.nii.gz")] + ["worklist.csv"])
    with open(out / "worklist.csv", encoding="utf-8") as f:
        assert sorted(r["study"] for r in csv.DictReader(f)) == [f"v{k:02d}.nii.gz" for k in range(n)]
    assert not psutil.pid_exists(killed.pid) or killed.status() == psutil.STATUS_ZOMBIE


def test_workers_that_die_before_any_study_are_started_once_more(bundle_root, bundle2d, tmp_path, monkeypatch,
                                                                  caplog):
    """A worker lost before it ran anything (in CI once: "The actor never ran - it was cancelled before it
    started running") costs a second start, not the batch. Here a real local Ray loses the first workers:
    they are killed before they run (ray.kill, as a cluster cancels them); the second ones run the batch.
    A worker whose Predictor cannot load is not started again: its error comes at once."""
    import ray
    from ray.exceptions import RayActorError
    from scripts.inference.distributed import PredictorSpec, RayBatchRunner

    monkeypatch.setenv("PYTHONPATH", str(bundle_root))
    studies = [_png(tmp_path / f"us{k}.png", k) for k in range(2)]
    starts = []

    class FirstWorkersLost(RayBatchRunner):
        def _actors(self, ray_, pending):
            actors = super()._actors(ray_, pending)
            starts.append(len(actors))
            if len(starts) == 1:
                for actor in actors:
                    ray.kill(actor, no_restart=True)
            return actors

    runner = FirstWorkersLost(PredictorSpec(str(bundle2d), overrides={"device": "cpu"}), studies, tmp_path / "out",
                              workers=1, overlay=False)
    with caplog.at_level("WARNING", logger="scripts.inference.distributed"):
        outcomes = runner.run()
    assert starts == [1, 1]
    assert [o.ok for o in outcomes] == [True, True], [o.error for o in outcomes]
    assert len(runner.worker_pids) == 1
    assert any("died before it ran any study" in r.getMessage() for r in caplog.records), caplog.text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        f"us{k}_{kind}" for k in range(2) for kind in ("result.json", "seg.png"))

    starts.clear()

    class Counted(RayBatchRunner):
        def _actors(self, ray_, pending):
            starts.append(pending)
            return super()._actors(ray_, pending)

    with pytest.raises(RayActorError, match="no_bundle/models/model.pt: no trained weights"):
        Counted(PredictorSpec(str(tmp_path / "no_bundle"), overrides={"device": "cpu"}), studies, tmp_path / "out2",
                workers=1, overlay=False).run()
    assert starts == [2]  # one start: Ray's own restarts already tried it
