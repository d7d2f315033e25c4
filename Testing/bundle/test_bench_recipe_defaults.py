"""The recipe benchmark's ``--defaults`` mode (Testing/benchmarks/bench_recipe.py): the project trains with
nothing overridden but the seed, and each baseline gets the minutes the project's training of its seed took.

The runs themselves are replaced by recorders here (the benchmark trains for hours); what is tested is the
command the project is trained with and the budget every run of a seed is handed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_recipe as br  # noqa: E402


class Stop(Exception):
    """Raised by the recording ``run`` after the training command: nothing is trained."""


@pytest.mark.parametrize("budget, expected", [(None, []), (6.0, ["--time_budget_min", "6.0", "--max_epochs", "1000"])])
def test_the_project_is_trained_with_the_plan_s_own_epochs_under_defaults(tmp_path, monkeypatch, budget, expected):
    commands = []

    def record(cmd, cwd, log_file, env):
        commands.append([str(c) for c in cmd])
        raise Stop

    monkeypatch.setattr(br, "run", record)
    monkeypatch.setattr(br, "copy_bundle", lambda dest: dest)
    with pytest.raises(Stop):
        br.run_project(tmp_path / "datalist.json", [], 2, 3, budget, tmp_path / "run", "cpu", {})
    (cmd,) = commands
    i = cmd.index("--datalist_file")
    assert cmd[i + 2:] == [*expected, "--seed", "3"]


def test_baselines_get_the_minutes_the_project_s_training_took(tmp_path, monkeypatch):
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({
        "name": "tiny", "spatial_dims": 2, "channels": ["grey"], "segments": ["background", "tumor"],
        "classes": ["a", "b"], "training": [{"image": "t0.png", "class": 0}], "validation": [],
        "test": [{"image": "x0.png", "class": 0}, {"image": "x1.png", "class": 1}]}))
    monkeypatch.setattr(br, "prepare_set", lambda name, cache, quick, env: datalist)
    budgets = []
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    minutes = {0: 750.0, 1: 1020.0}  # the project's training process, seconds, per seed

    def project(datalist, test, dims, seed, budget, run_dir, device, env):
        budgets.append(("project", seed, budget))
        info = {"epochs": 5, "seconds_per_epoch": 1.0, "train_process_s": minutes[seed], "ms_per_image": [3.0, 5.0]}
        return info, {"segments": ["background", "tumor"], "classes": ["a", "b"]}, None, probs

    def baseline(kind, datalist, card, seed, budget, run_dir, device, lr, env):
        budgets.append((kind, seed, budget))
        return {"epochs": 4, "seconds_per_epoch": 2.0, "ms_per_image": [1.0, 1.0]}, None, probs

    monkeypatch.setattr(br, "run_project", project)
    monkeypatch.setattr(br, "run_baseline", baseline)
    args = SimpleNamespace(defaults=True, budget_min=6.0, budget_3d_min=7.5, seeds=[0, 1], cache=tmp_path,
                           quick=False, device="cpu", baseline_lr=1e-3)
    res = br.bench_set("brain-mri", args, tmp_path / "work", {})
    assert budgets == [("project", 0, None), ("unet", 0, 12.5), ("densenet", 0, 12.5),
                       ("project", 1, None), ("unet", 1, 17.0), ("densenet", 1, 17.0)]
    assert [r["budget_min"] for r in res["runs"]["project"]] == [12.5, 17.0]
    assert res["summary"]["project"]["accuracy"]["mean"] == 1.0
    table = br.markdown({"config": {"quick": False, "seeds": [0, 1], "defaults": True, "device": "cpu",
                                    "torch": "t", "load_average_start": [0.0]}, "sets": {"brain-mri": res}})
    assert "the defaults: the plan's epochs and time ceiling for the project" in table
    assert "project training 12.5, 17.0 min by seed" in table
    floor = res["runs"]["project"][0]["ece_floor"]
    assert floor > 0 and f"would show an ECE of {floor:.3f} on these 2 images" in table  # one set of probabilities

    args.defaults = False  # the fixed budget: every run of a seed gets it
    budgets.clear()
    br.bench_set("brain-mri", args, tmp_path / "work2", {})
    assert {b for _, _, b in budgets} == {6.0}
