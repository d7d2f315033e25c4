"""The pipeline: k-fold datalists, absolute paths, report on failure, the module entry point."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from scripts.core.datalist import load_datalist
from scripts.prepare.__main__ import main
from scripts.prepare.busi import collect_busi
from scripts.prepare.common import Collection, PrepareError, Sample
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


def _patients(per_class: int) -> dict[str, str]:
    """Key -> patient of a BUSI replica: every two images of a class are one patient."""
    return {f"{c} ({n})": f"{c}-patient-{(n - 1) // 2}" for c in ("benign", "malignant", "normal")
            for n in range(1, per_class + 1)}


def test_groups_csv_keeps_each_patient_in_one_split(busi_replica, tmp_path, capsys):
    source = busi_replica(per_class=8)
    patients = _patients(8)
    table = tmp_path / "patients.csv"
    rows = ["image,patient,plane"]  # the aliases of case,group; extra columns are ignored
    for i, (key, patient) in enumerate(sorted(patients.items())):
        if key == "normal (8)":
            continue  # not listed: keeps a group of its own
        rows.append(f"{key}.png,{patient},ax" if i % 2 else f"{key},{patient},ax")  # file name or key
    rows.append("benign (99),benign-patient-9,ax")  # a case the data set does not have
    table.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    assert main(["busi", str(source), "--out", str(out), "--groups-csv", str(table), "--no-duplicate-check",
                 "--val-fraction", "0.3", "--test-fraction", "0.3"]) == 0
    printed = capsys.readouterr().out
    assert "groups: 23 samples in 12 groups from" in printed and "(1 sample(s) not listed)" in printed

    dl = json.loads((out / "datalist.json").read_text())
    split_of: dict[str, set] = {}
    for split in ("training", "validation", "test"):
        assert dl[split], split
        for s in dl[split]:
            split_of.setdefault(s["group"], set()).add(split)
    assert all(len(splits) == 1 for splits in split_of.values())  # no patient straddles two splits
    assert len(split_of) == 13 and "normal (8)" in split_of and "benign-patient-0" in split_of
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["groups"] == {"samples_grouped": 23, "groups": 12, "samples_not_listed": 1, "cases_not_found": 1}
    assert any("1 case(s) of the group table are not in the data set, e.g. ['benign (99)']" in w
               for w in report["warnings"])
    assert any("1 sample(s) not in the group table keep a group of their own, e.g. ['normal (8)']" in w
               for w in report["warnings"])
    assert not any("no patient ids" in w for w in report["warnings"])


def test_without_patient_ids_the_report_says_validation_is_drawn_image_by_image(busi_replica, tmp_path, capsys):
    source = busi_replica()
    assert main(["busi", str(source), "--out", str(tmp_path / "out"), "--no-duplicate-check"]) == 0
    assert "warning: no patient ids: every image is its own group" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / REPORT_FILE).read_text())
    assert any("--groups-csv FILE (columns case,group)" in w for w in report["warnings"])
    # an official validation split is not drawn here: nothing to warn about
    assert main(["busi", str(source), "--out", str(tmp_path / "out2"), "--no-duplicate-check",
                 "--val-fraction", "0"]) == 0
    assert "no patient ids" not in capsys.readouterr().out
    # nor for volumes: a 3D case is a patient's volume
    volumes = Collection("volumes", 3, ["T1"], ["background", "tumor"], ["a", "b"],
                         samples=[Sample(f"case{i}", str(tmp_path / f"case{i}.nii.gz"), class_index=i % 2) for i in range(10)])
    report = build(volumes, tmp_path / "out3", Options(check_duplicates=False))
    assert not any("no patient ids" in w for w in report["warnings"])


@pytest.mark.parametrize("text, message", [
    ("case,class\na,benign\n", r"needs a header with columns 'case' \(or 'image'\) and 'group' \(or 'patient'\), "
                               r"got \['case', 'class'\]"),
    ("case,group\nbenign (1),p1\nbenign (1),p2\n", r"line 3: case 'benign \(1\)' listed again with another group"),
    ("case,group\nbenign (1),\n", "lists no case with a group"),
])
def test_a_bad_group_table_is_refused_before_anything_is_written(busi_replica, tmp_path, capsys, text, message):
    table = tmp_path / "patients.csv"
    table.write_text(text)
    out = tmp_path / "out"
    assert main(["busi", str(busi_replica()), "--out", str(out), "--groups-csv", str(table)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"ERROR {table}: ") and re.search(message, err)
    assert not (out / "datalist.json").exists()
    assert main(["busi", str(busi_replica()), "--out", str(out), "--groups-csv", str(tmp_path / "nope.csv")]) == 1
    assert f"ERROR {tmp_path / 'nope.csv'}: group table not found" in capsys.readouterr().err
