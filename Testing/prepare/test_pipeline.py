"""The pipeline: k-fold datalists, absolute paths, report on failure, the module entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from scripts.core.datalist import load_datalist
from scripts.prepare.__main__ import main
from scripts.prepare.busi import collect_busi
from scripts.prepare.common import Collection, PrepareError
from scripts.prepare.pipeline import REPORT_FILE, Options, build, datalist_names


def test_kfold_writes_one_loadable_datalist_per_fold(busi_replica, tmp_path):
    out = tmp_path / "out"
    assert (
        main(["busi", str(busi_replica(per_class=5)), "--out", str(out), "--folds", "3", "--test-fraction", "0.2"]) == 0
    )
    assert not (out / "datalist.json").exists()
    names = datalist_names(3)
    lists = [load_datalist(out / n) for n in names]
    tests = [sorted(s["image"] for s in dl.split("test")) for dl in lists]
    assert tests[0] and tests[0] == tests[1] == tests[2]
    vals = [{s["image"] for s in dl.split("validation")} for dl in lists]
    assert not (vals[0] & vals[1]) and not (vals[1] & vals[2]) and sum(map(len, vals)) == 15 - len(tests[0])
    report = json.loads((out / REPORT_FILE).read_text())
    assert [d["file"] for d in report["datalists"]] == names


def test_absolute_paths(busi_replica, tmp_path):
    out = tmp_path / "out"
    assert main(["busi", str(busi_replica()), "--out", str(out), "--absolute-paths", "--no-duplicate-check"]) == 0
    dl = json.loads((out / "datalist.json").read_text())
    assert all(os.path.isabs(s["image"]) and os.path.isabs(s["label"]) for s in dl["training"])
    assert json.loads((out / REPORT_FILE).read_text())["duplicates"] is None


def test_problems_fail_but_are_reported(busi_replica, tmp_path):
    source = busi_replica()
    (source / "benign" / "benign (1)_mask.png").unlink()
    (source / "benign" / "benign (1)_mask_1.png").unlink()
    with pytest.raises(PrepareError, match=r"BUSI: 1 problem\(s\) \(rerun with --skip-bad"):
        build(collect_busi(source, tmp_path / "out"), tmp_path / "out", Options())
    report = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert len(report["problems"]) == 1 and not (tmp_path / "out" / "datalist.json").exists()


def test_no_sample_left(tmp_path):
    with pytest.raises(PrepareError, match="empty: no usable sample found"):
        build(Collection("empty", 2, ["x"], ["b", "t"], ["a", "b"]), tmp_path / "out", Options())


@pytest.mark.parametrize("from_bundle", [True, False])
def test_module_entry_point(busi_replica, tmp_path, bundle_root, from_bundle):
    """``python -m scripts.prepare`` run in the bundle folder, or anywhere with the bundle on PYTHONPATH."""
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": "" if from_bundle else str(bundle_root)}
    run = subprocess.run(
        [sys.executable, "-m", "scripts.prepare", "busi", str(busi_replica()), "--out", str(out)],
        cwd=bundle_root if from_bundle else tmp_path,
        env=env,
        capture_output=True,
        encoding="utf-8",
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert "BUSI: 12 samples ->" in run.stdout and "next: python -m scripts.prepare validate" in run.stdout
    assert main(["validate", str(out / "datalist.json")]) == 0
