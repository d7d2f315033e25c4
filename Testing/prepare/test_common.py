"""Shared pieces: output folder rule, datalist paths, atomic writes, sample entries."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.prepare.common import (
    PrepareError,
    Sample,
    check_out_dir,
    path_for_datalist,
    sample_entry,
)


def test_out_dir_rule(tmp_path):
    check_out_dir(tmp_path / "src", tmp_path / "out")
    for bad in (tmp_path / "src", tmp_path / "src" / "prepared"):
        with pytest.raises(PrepareError, match="the output folder must not be the source folder or inside it"):
            check_out_dir(tmp_path / "src", bad)
    check_out_dir(tmp_path / "src", tmp_path / "src" / "prepared", inside=False)


def test_paths_relative_to_the_datalist_or_absolute(tmp_path):
    out = tmp_path / "out"
    assert path_for_datalist(str(out / "masks" / "a b.png"), out, absolute=False) == "masks/a b.png"
    assert path_for_datalist(str(tmp_path / "data" / "x.png"), out, absolute=False) == "../data/x.png"
    assert path_for_datalist(str(tmp_path / "data" / "x.png"), out, absolute=True) == str(tmp_path / "data" / "x.png")


def test_sample_entry_omits_missing_targets(tmp_path):
    s = Sample(key="k", image=[str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz")], class_index=2)
    assert sample_entry(s, tmp_path, absolute=False) == {"image": ["a.nii.gz", "b.nii.gz"], "class": 2, "group": "k"}
    s = Sample(key="k", image=str(tmp_path / "a.png"), label=str(tmp_path / "m.png"), group="p1")
    assert sample_entry(s, tmp_path, absolute=False) == {"image": "a.png", "label": "m.png", "group": "p1"}


