"""The DVC pipeline (dvc.yaml + params.yaml at the repository root) end to end on a tiny generated set.

A fresh git + DVC repository (no remote) under a temporary folder gets the repository's pipeline
files, DVC settings and the bundle's configs and scripts, and params.yaml with tiny values (a small
brain MRI set at 64 px, a 3-level network at 32 px, one epoch, TorchScript only). Then: ``dvc repro``
runs every stage; a second ``dvc repro`` runs none; a changed export parameter re-runs export alone;
a changed training parameter leaves generate, prepare, plan (and, until the model changes, export)
up to date; ``dvc metrics show`` prints the evaluation and ``dvc plots show`` finds the report's plots.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
STAGES = ["generate", "prepare", "plan", "train", "evaluate", "export"]
TINY = {
    "generate": {"kind": "brain-mri", "options": {"seed": 0, "n-train": 20, "n-test": 12, "size": 64}},
    "prepare": {"format": "brisc", "options": {"seed": 0, "no-duplicate-check": True}},
    "train": {"max_epochs": 1, "spatial_size": "[32, 32]", "network_channels": "[4, 8, 16]", "augment": "False"},
    "export": {"atol": 0.001, "no-onnx": True},
}
PLOTS = ["confusion_matrix.png", "roc.png", "reliability.png", "training_curves.png"]


def _dvc(repo: Path, *args: str, timeout: int = 900) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=timeout)
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"dvc {' '.join(args)}\n{out[-6000:]}"
    return out


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


def _set_params(repo: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict:
    repo = tmp_path_factory.mktemp("dvc_pipeline")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, repo / name)
    for folder in ("configs", "scripts"):
        shutil.copytree(REPO / "monai_bundle" / folder, repo / "monai_bundle" / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(TINY)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    first = _dvc(repo, "repro")
    return {"repo": repo, "first": first, "paths": params["paths"]}


def test_dvc_repro_runs_every_stage(pipeline):
    assert _ran(pipeline["first"]) == STAGES
    bundle = pipeline["repo"] / "monai_bundle"
    paths = pipeline["paths"]
    assert (bundle / paths["prepared"] / "datalist.json").is_file()
    plan = json.loads((bundle / paths["plan"]).read_text())
    card = json.loads((bundle / paths["models"] / "model_card.json").read_text())
    assert card["plan"]["datalist_sha256"] == plan["datalist_sha256"]  # training used the plan stage's plan ...
    assert not (bundle / paths["prepared"] / "plan.json").exists()  # ... and wrote none into prepare's output
    assert card["network"]["channels"] == [4, 8, 16] and card["spatial_size"] == [32, 32]  # params reached training
    assert (bundle / paths["models"] / "model.pt").is_file()
    assert (bundle / paths["export"] / "model.ts").is_file()
    for name in ["metrics.json", "report.md", *PLOTS]:
        assert (bundle / paths["eval"] / name).is_file(), name
    lock = yaml.safe_load((pipeline["repo"] / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)


def test_the_repository_keeps_dvc_offline(pipeline):
    out = _dvc(pipeline["repo"], "config", "-l")
    assert "core.analytics=false" in out and "core.check_update=false" in out


def test_a_second_repro_runs_nothing(pipeline):
    out = _dvc(pipeline["repo"], "repro")
    assert _ran(out) == []
    assert all(f"Stage '{s}' didn't change, skipping" in out for s in STAGES), out


def test_a_changed_export_parameter_reruns_export_only(pipeline):
    repo = pipeline["repo"]
    _set_params(repo, "export", "atol", 0.002)
    out = _dvc(repo, "repro")
    assert _ran(out) == ["export"], out
    assert _ran(_dvc(repo, "repro")) == []


def test_a_changed_training_parameter_touches_only_training_and_what_reads_it(pipeline):
    repo = pipeline["repo"]
    before = (repo / "params.yaml").read_text()
    try:
        _set_params(repo, "train", "max_epochs", 2)
        changed = json.loads(_dvc(repo, "status", "--json"))
        assert sorted(changed) == ["evaluate", "train"], changed  # export follows only when the model changes
        assert {"changed deps": {"params.yaml": {"train": "modified"}}} in changed["train"]
    finally:
        (repo / "params.yaml").write_text(before)
    assert json.loads(_dvc(repo, "status", "--json")) == {}


def test_dvc_metrics_show_prints_the_evaluation(pipeline):
    repo = pipeline["repo"]
    metrics_file = Path("monai_bundle") / pipeline["paths"]["eval"] / "metrics.json"
    metrics = json.loads((repo / metrics_file).read_text())
    shown = json.loads(_dvc(repo, "metrics", "show", "--json"))
    data = shown[""]["data"][metrics_file.as_posix()]["data"]
    assert data["seg"]["lesion"]["dice"] == metrics["seg"]["lesion"]["dice"]
    assert data["cls"]["accuracy"] == metrics["cls"]["accuracy"]
    table = _dvc(repo, "metrics", "show")
    assert "seg.lesion.dice" in table and "cls.accuracy" in table


def test_the_report_plots_are_dvc_plots(pipeline):
    shown = json.loads(_dvc(pipeline["repo"], "plots", "show", "--json"))
    names = {Path(p).name for p in shown["data"]}
    assert set(PLOTS) <= names, names
