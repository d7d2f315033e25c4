"""Manifest CSV inputs, --resume without a cluster, and the engine options' checks (no server, no Ray cluster)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from scripts.infer import main
from scripts.inference import InputError
from scripts.inference.batch import expand_inputs, read_manifest
from scripts.inference.dicomweb import DicomWebUrl

URL = "http://pacs:8042/dicom-web/studies/1.2.3/series/4.5"


def _png(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((16, 16)) * 255).astype(np.uint8)).save(path)
    return path


def test_manifest_rows_relative_paths_urls_and_nested_manifests(tmp_path):
    a, b = _png(tmp_path / "m" / "a.png"), _png(tmp_path / "m" / "sub" / "b.png", 1)
    (tmp_path / "m" / "more.csv").write_text("path\n# a comment\n\nsub/b.png\n", encoding="utf-8")
    (tmp_path / "m" / "list.csv").write_text(f"Study,site\na.png,x\n{URL},y\nmore.csv,z\n{b},w\n", encoding="utf-8-sig")
    found = expand_inputs([tmp_path / "m" / "list.csv"])
    assert found == [a, URL, b, b] and isinstance(found[1], DicomWebUrl) and found[1].name == "4.5"
    (tmp_path / "plain.csv").write_text("m/a.png\nm/sub\n", encoding="utf-8")  # no header: the first column
    assert read_manifest(tmp_path / "plain.csv") == [str(tmp_path / "m" / "a.png"), str(tmp_path / "m" / "sub")]


@pytest.mark.parametrize("text, match", [
    ("input\n# nothing\n", "the manifest lists no input"),
    ("self.csv\n", "the manifest lists itself"),
    (b"\xff\xfe\x00bad", "cannot read the manifest"),
])
def test_bad_manifests_are_refused_naming_them(tmp_path, text, match):
    path = tmp_path / "self.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    with pytest.raises(InputError, match=match) as e:
        expand_inputs([path])
    assert str(e.value).startswith(str(path))


def test_a_bad_manifest_stops_the_cli_before_any_study(bundle2d, tmp_path, capsys):
    (tmp_path / "empty.csv").write_text("input\n", encoding="utf-8")
    assert main([str(tmp_path / "empty.csv"), "--out", str(tmp_path / "out"), "--bundle", str(bundle2d)]) == 1
    assert capsys.readouterr().err.strip() == f"ERROR {tmp_path / 'empty.csv'}: the manifest lists no input " \
                                              "(one file, folder or DICOMweb URL per row)"
    assert not (tmp_path / "out").exists()


def test_engine_options_need_the_ray_engine(bundle2d, tmp_path, capsys):
    _png(tmp_path / "a.png")
    for flags in (["--workers", "2"], ["--address", "127.0.0.1:6379"]):
        assert main([str(tmp_path / "a.png"), "--out", str(tmp_path), "--bundle", str(bundle2d), *flags]) == 1
        assert capsys.readouterr().err.strip() == "ERROR --workers and --address need --engine ray"


def test_resume_with_every_study_done_starts_no_cluster(bundle2d, tmp_path, capsys):
    for k in range(3):
        _png(tmp_path / "in" / f"s{k}.png", k)
    common = [str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--bundle", str(bundle2d), "--device", "cpu"]
    assert main(common) == 0
    first = capsys.readouterr().out
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").iterdir()}
    (tmp_path / "out" / "s1_result.json").write_text("{not json", encoding="utf-8")  # unreadable: run again
    assert main(common + ["--resume"]) == 0
    assert "3 of 3 studies done (2 kept from an earlier run)" in capsys.readouterr().out
    assert main(common + ["--engine", "ray", "--workers", "2", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()  # Ray not even imported, as a rule
    assert "3 of 3 studies done (3 kept from an earlier run)" in out
    assert [line.split()[:2] for line in out.splitlines()[1:4]] == [["s0.png", "kept"], ["s1.png", "kept"],
                                                                   ["s2.png", "kept"]]
    assert out.splitlines()[-2] == first.splitlines()[-2]  # the same review-first line
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in (tmp_path / "out").iterdir()
               if p.name not in ("s1_result.json", "s1_seg.png", "s1_overlay.png", "worklist.csv"))
