"""The bundle as an ML engineer runs it: train -> resume -> evaluate -> infer -> verify, and DDP.

Every command runs in a subprocess from a temporary working directory (not the repo root), on a
copy of the bundle, with a tiny network and a tiny generated dataset. Runs of other settings
(warm-up, ResNet encoders, a killed run) reuse the trained copy's dataset with their own ``--ckpt_dir``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from scripts.core.networks import MultiTaskUNet

REPO = Path(__file__).resolve().parents[2]
MODEL_ZOO = Path(__file__).resolve().parent / "model_zoo.py"
TINY = [
    "--datalist_file#n_train", "16", "--datalist_file#n_val", "8", "--datalist_file#n_test", "8", "--datalist_file#size", "64",
    "--spatial_size", "[64,64]", "--network_channels", "[4,8,16,32]", "--batch_size", "8", "--val_batch_size", "8",
]


def _tiny(spatial_size: str = "[64,64]") -> list[str]:
    args = list(TINY)
    args[args.index("--spatial_size") + 1] = spatial_size
    return args


def _trainer_epochs(log: str) -> list[int]:
    """The epochs a training process ran, from the trainer's log (the evaluator logs its own Epoch[1])."""
    return [int(e) for e in re.findall(r"SupervisedTrainer - INFO - Epoch\[(\d+)\] Complete", log)]


def _history(models: Path) -> list[dict]:
    return json.loads((models / "history.json").read_text())


def _bundle_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "monai.bundle", *args]


def _run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert done.returncode == 0, f"{cmd}\nSTDOUT:\n{done.stdout[-3000:]}\nSTDERR:\n{done.stderr[-5000:]}"
    return done


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A copy of the bundle trained for 1 epoch on tiny synthetic data, run from another folder."""
    base = tmp_path_factory.mktemp("bundle_workflow")
    bundle = base / "bundle"
    shutil.copytree(REPO / "monai_bundle", bundle, ignore=shutil.ignore_patterns("models", "data", "eval", "__pycache__"))
    work = base / "elsewhere"
    work.mkdir()
    train = str(bundle / "configs" / "train.json")
    done = _run(_bundle_cmd("run", "training", "--config_file", train, "--max_epochs", "1", *TINY), cwd=work)
    return {"bundle": bundle, "work": work, "train": Path(train), "log": done.stdout + done.stderr}


def test_training_writes_model_card_weights_history_and_resume_state(trained: dict) -> None:
    models = trained["bundle"] / "models"
    card = json.loads((models / "model_card.json").read_text())
    assert card["classes"] == ["glioma", "meningioma", "no_tumor", "pituitary"]
    assert card["network"]["channels"] == [4, 8, 16, 32] and card["spatial_size"] == [64, 64]
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    MultiTaskUNet(**card["network"]).load_state_dict(state)  # strict: the card rebuilds the trained network
    history = json.loads((models / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1]
    assert history[0]["iterations"] == 2  # 16 training samples, batch 8, one process
    assert {"loss", "loss_seg", "loss_cls", "lr", "val_score"} <= set(history[0])
    assert (models / "checkpoint_last.pt").is_file()
    assert not list(models.glob(".*.tmp")), "a temporary file was left behind"


def test_plain_run_resumes_from_the_last_checkpoint(trained: dict) -> None:
    models = trained["bundle"] / "models"
    before = _history(models)
    done = _run(_bundle_cmd("run", "--config_file", str(trained["train"]), "--max_epochs", "2", *TINY), cwd=trained["work"])
    assert "at epoch 1" in done.stdout + done.stderr and _trainer_epochs(done.stdout + done.stderr) == [2]
    history = _history(models)
    assert [r["epoch"] for r in history] == [1, 2] and history[0] == before[0]  # kept, not trained again
    assert history[1]["lr"] <= history[0]["lr"]  # extended from 1 to 2 epochs: the schedule goes on, no restart
    assert torch.load(models / "checkpoint_last.pt", weights_only=True)["trainer"]["iteration"] == 4


def test_a_run_of_another_setup_refuses_the_checkpoint(trained: dict) -> None:
    models = trained["bundle"] / "models"
    before = {p.name: p.read_bytes() for p in models.iterdir() if p.is_file()}
    done = subprocess.run(_bundle_cmd("run", "training", "--config_file", str(trained["train"]), "--max_epochs", "3",
                                      *TINY, "--encoder", "resnet18"),
                          cwd=trained["work"], capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "network.encoder: 'unet' in the checkpoint, 'resnet18' now" in done.stderr, done.stderr[-3000:]
    assert "--resume false" in done.stderr and "Epoch[" not in done.stdout + done.stderr
    assert {p.name: p.read_bytes() for p in models.iterdir() if p.is_file()} == before  # nothing overwritten


def test_a_killed_run_loses_no_completed_epoch(trained: dict, tmp_path: Path) -> None:
    models = tmp_path / "models"
    cmd = _bundle_cmd("run", "training", "--config_file", str(trained["train"]), "--max_epochs", "3", *TINY,
                      "--ckpt_dir", str(models))
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(cmd, cwd=trained["work"], stdout=log, stderr=subprocess.STDOUT)
        try:  # stop it the moment history.json lists epoch 2: where a checkpoint written after it would lag
            deadline = time.monotonic() + 600
            while not ((models / "history.json").is_file() and len(_history(models)) >= 2):
                assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
                time.sleep(0.01)
            first.send_signal(signal.SIGSTOP)
            completed = _history(models)
        finally:
            first.kill()  # SIGKILL: no handler, no clean-up
            first.wait()
    assert [r["epoch"] for r in completed] == [1, 2]
    state = torch.load(models / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] // state["trainer"]["epoch_length"] == len(completed)  # 0 completed epochs lost
    done = _run(cmd, cwd=trained["work"])
    log = done.stdout + done.stderr
    assert "at epoch 2" in log and _trainer_epochs(log) == [3]
    history = _history(models)
    assert [r["epoch"] for r in history] == [1, 2, 3] and history[:2] == completed


def test_warmup_epochs_train_the_segmentation_alone_first(trained: dict, tmp_path: Path) -> None:
    models = tmp_path / "models"
    _run(_bundle_cmd("run", "training", "--config_file", str(trained["train"]), "--max_epochs", "2", *TINY,
                     "--warmup_epochs", "1", "--task_weighting", "fixed", "--task_weights#seg", "1.0",
                     "--task_weights#cls", "0.5", "--ckpt_dir", str(models)), cwd=trained["work"])
    warm, joint = _history(models)
    assert (warm["seg_only"], joint["seg_only"]) == (True, False)
    assert warm["loss"] == pytest.approx(warm["loss_seg"], rel=1e-5)  # the diagnosis term is computed, not used
    assert joint["loss"] == pytest.approx(joint["loss_seg"] + 0.5 * joint["loss_cls"], rel=1e-5)


# both ResNet block types (resnet34 is resnet18's block with more layers; test_networks.py runs it)
@pytest.mark.parametrize("encoder", ["resnet18", "resnet50"])
def test_resnet_encoders_train_through_the_bundle(trained: dict, tmp_path: Path, encoder: str) -> None:
    models = tmp_path / "models"
    _run(_bundle_cmd("run", "training", "--config_file", str(trained["train"]), "--max_epochs", "1", *_tiny("[32,32]"),
                     "--encoder", encoder, "--ckpt_dir", str(models)), cwd=trained["work"])
    card = json.loads((models / "model_card.json").read_text())
    assert card["network"]["encoder"] == encoder and card["spatial_size"] == [32, 32]
    MultiTaskUNet(**card["network"]).load_state_dict(torch.load(models / "model.pt", map_location="cpu", weights_only=True))
    history = _history(models)
    assert [r["epoch"] for r in history] == [1] and history[0]["iterations"] == 2 and history[0]["loss"] > 0
    shutil.rmtree(models)  # a ResNet checkpoint with its optimizer state is hundreds of MB


def test_evaluate_writes_metrics_and_report(trained: dict) -> None:
    configs = trained["bundle"] / "configs"
    files = f"['{configs / 'train.json'}','{configs / 'evaluate.json'}']"
    _run(_bundle_cmd("run", "evaluating", "--config_file", files, *TINY), cwd=trained["work"])
    out = trained["bundle"] / "eval"
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["seg"]["lesion"]["dice"] <= 1.0 and 0.0 <= metrics["cls"]["accuracy"] <= 1.0
    assert (out / "report.md").is_file() and list(out.glob("*.png"))


def test_evaluate_scores_the_trained_weights(trained: dict, tmp_path: Path) -> None:
    """Evaluating the validation split with model.pt reproduces the validation of the epoch that saved it.

    (model.pt holds the weight average that validation used; the evaluator once ran a fresh average of
    the freshly built network instead, so it scored random weights: another seed makes those differ from
    the one-epoch run's, whose first steps hardly move the weights.)
    """
    configs = trained["bundle"] / "configs"
    files = f"['{configs / 'train.json'}','{configs / 'evaluate.json'}']"
    out = tmp_path / "eval_val"
    datalist = trained["bundle"] / "data" / "synthetic" / "datalist.json"  # named: another seed must not regenerate it
    _run(_bundle_cmd("run", "evaluating", "--config_file", files, *TINY, "--output_dir", str(out), "--seed", "7",
                     "--datalist_file", str(datalist),
                     "--validate#dataset#data", "$@datalist.split('validation')"), cwd=trained["work"])
    metrics = json.loads((out / "metrics.json").read_text())
    best = max(_history(trained["bundle"] / "models"), key=lambda r: r["val_score"])["val_details"]["val_score"]
    assert metrics["seg"]["lesion"]["dice"] == pytest.approx(best["seg"]["lesion"]["dice"], abs=1e-4)
    assert metrics["cls"]["confusion_matrix"] == best["cls"]["confusion_matrix"]


def test_inference_cli_writes_segmentation_and_probabilities(trained: dict) -> None:
    bundle = trained["bundle"]
    datalist = json.loads((bundle / "data" / "synthetic" / "datalist.json").read_text())
    image = bundle / "data" / "synthetic" / datalist["test"][0]["image"]
    out = trained["work"] / "infer_out"
    _run([sys.executable, "-m", "scripts.infer", str(image), "--bundle", str(bundle), "--out", str(out)], cwd=trained["work"],
         env={"PYTHONPATH": str(bundle)})
    result = json.loads(next(out.glob("*_result.json")).read_text())
    probs = result["diagnosis"]["probabilities"]
    assert set(probs) == {"glioma", "meningioma", "no_tumor", "pituitary"} and sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
    assert Path(result["segmentation"]["path"]).is_file()


def test_model_zoo_checks_pass_on_the_trained_bundle(trained: dict) -> None:
    done = subprocess.run([sys.executable, str(MODEL_ZOO), str(trained["bundle"])], cwd=trained["work"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 passed, 0 failed" in done.stdout
    assert "ckpt_export of models/model.pt: scripted == eager" in done.stdout  # the trained weights, not random ones


def test_model_zoo_checks_fail_on_a_broken_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "monai_bundle", bundle, ignore=shutil.ignore_patterns("models", "data", "eval", "__pycache__"))
    meta_file = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["version"] = "9.9.9"  # not in the changelog
    meta["network_data_format"]["outputs"]["cls"]["num_channels"] = 5  # the network has 4 classes
    meta_file.write_text(json.dumps(meta, indent=4) + "\n")
    (bundle / "docs" / "weights.bin").write_bytes(b"\0" * (1024 * 1024 + 1))
    done = subprocess.run([sys.executable, str(MODEL_ZOO), str(bundle)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    failed = {line.split()[1]: line for line in done.stdout.splitlines() if line.startswith("FAIL ")}
    assert set(failed) == {"version", "net_in_out", "file_size"}, done.stdout
    assert "9.9.9" in failed["version"] and "docs/weights.bin" in failed["file_size"] and "cls: 4 channels, metadata 5" in failed["net_in_out"]


def test_no_committed_file_is_over_the_model_zoo_limit() -> None:
    from model_zoo import committed_files, large_files

    files = {p.relative_to(REPO).as_posix() for p in committed_files(REPO)}
    assert "monai_bundle/configs/train.json" in files and "Testing/bundle/meta_schema_20240725.json" in files
    assert not any(f.startswith(("monai_bundle/models/", ".venv/")) for f in files)  # produced, ignored by git
    assert large_files(REPO) == []


def _run_ddp(args: list[str], cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    """torchrun with 2 CPU processes (gloo, GPUs hidden even on a GPU host); a hang past ``timeout`` fails the test.

    torchrun and its workers run in a session of their own, so that on a timeout the whole group is
    killed and no worker is left behind waiting on a collective.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "monai.bundle", "run", "training", *args]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"DDP training did not finish within {timeout} s (a collective mismatch hangs):\n{err[-5000:]}")
    assert proc.returncode == 0, f"{cmd}\nSTDOUT:\n{out[-3000:]}\nSTDERR:\n{err[-5000:]}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _copy_bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "monai_bundle", bundle, ignore=shutil.ignore_patterns("models", "data", "eval", "__pycache__"))
    return bundle


def _ddp_configs(bundle: Path) -> str:
    configs = bundle / "configs"
    return f"['{configs / 'train.json'}','{configs / 'multi_gpu_train.json'}']"


def test_ddp_training_with_gloo_on_two_cpu_processes(tmp_path: Path) -> None:
    bundle = _copy_bundle(tmp_path)
    tiny = list(TINY)
    tiny[tiny.index("--datalist_file#n_val") + 1] = "9"  # an odd count: the two validation shards differ in size
    _run_ddp(["--config_file", _ddp_configs(bundle), "--max_epochs", "1", *tiny], cwd=tmp_path, timeout=900)
    history = json.loads((bundle / "models" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1]
    assert history[0]["iterations"] == 1  # the 16 samples are split between the 2 ranks: 8 each, one batch
    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in state), "rank 0 must save the unwrapped network"
    # validation is sharded and gathered: each validation sample is counted once, not once per rank
    n_val = len(json.loads((bundle / "data" / "synthetic" / "datalist.json").read_text())["validation"])
    details = history[0]["val_details"]["val_score"]
    assert n_val % 2 == 1
    assert details["seg"]["n_images"] == n_val and details["cls"]["n_samples"] == n_val


def _write_partial_datalist(root: Path) -> Path:
    """4 training images of which only one has a mask, 3 validation images with masks; all 64x64 with a diagnosis."""
    from PIL import Image

    (root / "img").mkdir(parents=True)
    (root / "mask").mkdir()
    rows, cols = np.mgrid[:64, :64]
    rng = np.random.default_rng(0)
    entries = []
    for i in range(7):
        cy, cx = 20 + 3 * i, 44 - 3 * i
        lesion = (rows - cy) ** 2 + (cols - cx) ** 2 < 64
        image = np.clip(60 + 120 * lesion + rng.normal(0, 10, (64, 64)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "img" / f"{i}.png")
        Image.fromarray((lesion * 255).astype(np.uint8)).save(root / "mask" / f"{i}.png")
        entries.append({"image": f"img/{i}.png", "label": f"mask/{i}.png", "class": i % 4, "group": f"p{i}"})
    training = [entries[0]] + [{k: v for k, v in e.items() if k != "label"} for e in entries[1:4]]
    datalist = {"name": "partial", "spatial_dims": 2, "channels": ["T1c"], "segments": ["background", "tumor"],
                "classes": ["glioma", "meningioma", "no_tumor", "pituitary"],
                "training": training, "validation": entries[4:], "test": []}
    (root / "datalist.json").write_text(json.dumps(datalist))
    return root / "datalist.json"


def test_ddp_uncertainty_weighting_when_one_rank_has_no_mask(tmp_path: Path) -> None:
    """2 ranks, batch 2, 4 training samples of which one has a mask: one rank's batch has none.

    With learned task weights that rank's segmentation term is absent; the loss weights' gradients
    must still be averaged with the same collectives on both ranks (no hang, same weights on both).
    """
    bundle = _copy_bundle(tmp_path)
    datalist = _write_partial_datalist(tmp_path / "data")
    args = ["--config_file", _ddp_configs(bundle), "--datalist_file", str(datalist), "--max_epochs", "2",
            "--task_weighting", "uncertainty", "--batch_size", "2", "--val_batch_size", "2", "--augment", "false",
            "--spatial_size", "[64,64]", "--network_channels", "[4,8,16,32]", "--calibrate", "false"]
    _run_ddp(args, cwd=tmp_path, timeout=600)
    history = json.loads((bundle / "models" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2] and [r["iterations"] for r in history] == [1, 1]
    log_vars = history[-1]["log_vars"]
    assert log_vars["seg"] != 0.0 and log_vars["cls"] != 0.0  # both learned weights moved
    assert history[-1]["val_details"]["val_score"]["seg"]["n_images"] == 3
    last = torch.load(bundle / "models" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert {k: float(v) for k, v in last["loss"].items() if "log_vars" in k} == pytest.approx(
        {f"log_vars.{k}": v for k, v in log_vars.items()})
