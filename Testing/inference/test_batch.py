"""Many studies: which paths are studies, unique output names, one failure does not stop the rest."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from infer_helpers import CT_SERIES
from scripts.inference.batch import BatchRunner, expand_inputs, unique_names


def _png(path, value=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.arange(256, dtype=np.uint8).reshape(16, 16) if value is None else np.full((16, 16), value, np.uint8)
    Image.fromarray(arr).save(path)
    return path


def test_expand_inputs(tmp_path):
    a = _png(tmp_path / "studies" / "a.png")
    b = _png(tmp_path / "studies" / "deeper" / "b.png")
    shutil.copytree(CT_SERIES, tmp_path / "studies" / "ct")
    (tmp_path / "studies" / "notes.txt").write_text("ignored")
    (tmp_path / "empty").mkdir()
    found = expand_inputs([tmp_path / "studies", {"image": str(a)}, tmp_path / "empty", CT_SERIES])
    assert found == [a, tmp_path / "studies" / "ct", b, a, tmp_path / "empty", CT_SERIES]


def test_unique_names(tmp_path):
    paths = [tmp_path / "x" / "scan.png", tmp_path / "y" / "scan.png", tmp_path / "x" / "scan.nii.gz", tmp_path / "z.png"]
    assert unique_names(paths) == ["x_scan", "y_scan", "x_scan-2", "z"]


def test_one_failure_does_not_stop_the_batch(predictor2d, tmp_path):
    good = _png(tmp_path / "in" / "good.png")
    blank = _png(tmp_path / "in" / "blank.png", value=0)
    also = _png(tmp_path / "in" / "zz.png")
    calls = []
    runner = BatchRunner(predictor2d, [tmp_path / "in"], tmp_path / "out", strict=False)
    outcomes = runner.run(progress=lambda i, n, p, s: calls.append((i, n, p, s)), on_outcome=lambda o: calls.append(o.ok))
    assert [o.input for o in outcomes] == [blank, good, also]
    assert [o.ok for o in outcomes] == [False, True, True]
    assert "blank.png: the image is blank" in outcomes[0].error and outcomes[0].result is None
    assert outcomes[1].result["diagnosis"]["label"] in predictor2d.card["classes"]
    assert calls.count(True) == 2 and (2, 3, 100, "done") in calls
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "good_overlay.png", "good_result.json", "good_seg.png", "zz_overlay.png", "zz_result.json", "zz_seg.png"]


def test_strict_batch_raises_after_trying_all(predictor2d, tmp_path):
    _png(tmp_path / "in" / "a_blank.png", value=7)
    _png(tmp_path / "in" / "b.png")
    runner = BatchRunner(predictor2d, [tmp_path / "in"], tmp_path / "out", overlay=False)
    with pytest.raises(RuntimeError, match=r"1 of 2 studies failed; first: .*a_blank\.png: the image is blank"):
        runner.run()
    assert (tmp_path / "out" / "b_result.json").is_file()


def test_unexpected_errors_are_recorded(predictor2d, tmp_path, monkeypatch):
    _png(tmp_path / "in" / "a.png")
    monkeypatch.setattr(predictor2d, "predict", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("kaputt")))
    outcomes = BatchRunner(predictor2d, [tmp_path / "in"], tmp_path / "out", strict=False).run()
    assert outcomes[0].error.endswith("a.png: RuntimeError: kaputt")
