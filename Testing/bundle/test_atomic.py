"""Atomic writes: the target holds the old content or the whole new one, never a temp file."""

from __future__ import annotations

import json
import os
import stat

import pytest

from scripts.core import atomic
from scripts.core.atomic import atomic_path, write_bytes_atomic, write_json_atomic


def test_writes_create_folders_and_readable_files(tmp_path) -> None:
    target = write_json_atomic(tmp_path / "a" / "b" / "x.json", {"k": 1})
    assert json.loads(target.read_text()) == {"k": 1}
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(os.listdir(target.parent)) == ["x.json"]


def test_a_failing_writer_leaves_the_old_file_and_no_temp(tmp_path) -> None:
    target = tmp_path / "m.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="writer broke"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer broke")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["m.json"]


def test_a_failing_rename_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("old")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomic(target, b"new")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["metrics.json"]


def test_temp_suffix_is_kept_for_writers_that_pick_a_format_by_suffix(tmp_path) -> None:
    with atomic_path(tmp_path / "v.nii.gz", suffix=".nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    assert (tmp_path / "v.nii.gz").read_bytes() == b"x"


def test_bytes_only(tmp_path) -> None:
    with pytest.raises(TypeError, match="data must be bytes, got str"):
        write_bytes_atomic(tmp_path / "g.json", "not bytes")  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []
