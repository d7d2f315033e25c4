"""The bundle trains on prepared layouts: 1 epoch from a prepared 2D (BUSI) and 3D (BraTS) replica.

Runs the user's command, ``python -m monai.bundle run training --config_file ... --datalist_file
<prepared datalist> --max_epochs 1``, from a folder outside the repository, with a tiny network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from scripts.prepare.__main__ import main

TINY = [
    "--network_channels",
    "[4,8,16]",
    "--batch_size",
    "2",
    "--val_batch_size",
    "1",
    "--num_workers",
    "0",
    "--augment",
    "False",
]


def _train(
    repo: Path, config: str, datalist: Path, ckpt: Path, extra: list[str], cwd: Path
) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        config,
        "--datalist_file",
        str(datalist),
        "--max_epochs",
        "1",
        "--ckpt_dir",
        str(ckpt),
        *TINY,
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=600
    )


def _check_trained(run: subprocess.CompletedProcess, ckpt: Path, datalist: Path) -> None:
    assert run.returncode == 0, run.stderr[-4000:]
    assert (ckpt / "model.pt").is_file()
    card = json.loads((ckpt / "model_card.json").read_text())
    dl = json.loads(datalist.read_text())
    assert (
        card["channels"] == dl["channels"] and card["classes"] == dl["classes"] and card["segments"] == dl["segments"]
    )
    history = json.loads((ckpt / "history.json").read_text())
    assert len(history) >= 1


def test_one_epoch_from_prepared_busi_2d(busi_replica, tmp_path, repo_root):
    out = tmp_path / "busi"
    assert main(["busi", str(busi_replica(per_class=4)), "--out", str(out), "--test-fraction", "0"]) == 0
    config = str(repo_root / "monai_bundle" / "configs" / "train.json")
    run = _train(repo_root, config, out / "datalist.json", tmp_path / "models", ["--spatial_size", "[32,32]"], tmp_path)
    _check_trained(run, tmp_path / "models", out / "datalist.json")


def test_one_epoch_from_prepared_brats_3d(brats2020_replica, tmp_path, repo_root):
    out = tmp_path / "brats"
    assert (
        main(
            ["brats", str(brats2020_replica(n=6)), "--out", str(out), "--test-fraction", "0", "--val-fraction", "0.34"]
        )
        == 0
    )
    configs = [str(repo_root / "monai_bundle" / "configs" / c) for c in ("train.json", "train_3d.json")]
    run = _train(
        repo_root,
        str(configs),
        out / "datalist.json",
        tmp_path / "models",
        ["--spatial_size", "[16,16,8]", "--sw_batch_size", "1"],  # strided stem: 3 levels of 8x8x4
        tmp_path,
    )
    _check_trained(run, tmp_path / "models", out / "datalist.json")
    card = json.loads((tmp_path / "models" / "model_card.json").read_text())
    assert card["network"]["stem_stride"] == 2 and card["plan"]["stem_stride"] == 2  # the CPU 3D plan's stem
