"""Review priority (diagnosis uncertainty, segmentation uncertainty, heads that disagree) and worklist.csv."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from scripts.inference.batch import Outcome
from scripts.inference.worklist import (COLUMNS, CONTRADICTION_WEIGHT, annotate, diagnosis_uncertainty,
                                        heads_disagree, review_priority, write_worklist)


def _result(probabilities: dict, voxels: int = 0, seg_uncertainty: float | None = None) -> dict:
    label = max(probabilities, key=probabilities.get)
    segmentation = {"segments": [{"name": "tumor", "value": 1, "voxels": voxels, "volume_ml": voxels * 0.001}]}
    if seg_uncertainty is not None:
        segmentation["uncertainty"] = seg_uncertainty
    return {"diagnosis": {"label": label, "probabilities": probabilities}, "segmentation": segmentation}


def test_diagnosis_uncertainty_by_hand():
    assert diagnosis_uncertainty({"a": 1.0, "b": 0.0, "c": 0.0}) == 0.0
    assert diagnosis_uncertainty({"a": 0.25, "b": 0.25, "c": 0.25, "d": 0.25}) == pytest.approx(1.0)
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)  # 0.8113
    assert diagnosis_uncertainty({"a": 0.75, "b": 0.25}) == pytest.approx(expected)


def test_diagnosis_uncertainty_needs_two_classes():
    with pytest.raises(ValueError, match="needs two or more classes"):
        diagnosis_uncertainty({"a": 1.0})


def test_heads_disagree_both_ways():
    assert heads_disagree(_result({"glioma": 0.9, "no_tumor": 0.1}, voxels=0), "no_tumor")  # tumour class, no tumour
    assert heads_disagree(_result({"glioma": 0.1, "no_tumor": 0.9}, voxels=5), "no_tumor")  # no tumour, tumour marked
    assert not heads_disagree(_result({"glioma": 0.9, "no_tumor": 0.1}, voxels=5), "no_tumor")
    assert not heads_disagree(_result({"glioma": 0.9, "no_tumor": 0.1}, voxels=0), None)  # no tumour-free class


def test_priority_is_a_noisy_or_of_the_three_reasons():
    certain = {"glioma": 1.0, "no_tumor": 0.0}
    assert review_priority(_result(certain, voxels=5), "no_tumor") == 0.0
    assert review_priority(_result(certain, voxels=0), "no_tumor") == CONTRADICTION_WEIGHT
    assert review_priority(_result(certain, voxels=5, seg_uncertainty=0.2), "no_tumor") == pytest.approx(0.2)
    split = {"glioma": 0.5, "no_tumor": 0.5}  # u_dx = 1: the top priority whatever else holds
    assert review_priority(_result(split, voxels=5, seg_uncertainty=0.2), "no_tumor") == 1.0
    u = diagnosis_uncertainty({"glioma": 0.75, "no_tumor": 0.25})
    both = review_priority(_result({"glioma": 0.75, "no_tumor": 0.25}, voxels=0, seg_uncertainty=0.2), "no_tumor")
    assert both == pytest.approx(1 - (1 - u) * 0.8 * (1 - CONTRADICTION_WEIGHT), abs=1e-4)


def test_annotate_keeps_a_predictor_uncertainty():
    result = _result({"glioma": 0.75, "no_tumor": 0.25}, voxels=3)
    assert annotate(result, "no_tumor")["diagnosis"]["uncertainty"] == pytest.approx(0.8113, abs=1e-4)
    result["diagnosis"]["uncertainty"] = 0.5
    assert annotate(result, "no_tumor")["diagnosis"]["uncertainty"] == 0.5 and "review_priority" in result


def test_worklist_ranks_by_priority_and_lists_failures_last(tmp_path):
    outcomes = [Outcome(Path("sure.png"), _result({"glioma": 0.99, "no_tumor": 0.01}, voxels=9)),
                Outcome(Path("broken.png"), error="broken.png: not an image"),
                Outcome(Path("torn.png"), _result({"glioma": 0.55, "no_tumor": 0.45}, voxels=9)),
                Outcome(Path("odd.png"), _result({"glioma": 0.1, "no_tumor": 0.9}, voxels=9))]
    path = write_worklist(outcomes, tmp_path, "no_tumor")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert path == tmp_path / "worklist.csv" and list(rows[0]) == list(COLUMNS)
    assert [r["study"] for r in rows] == ["torn.png", "odd.png", "sure.png", "broken.png"]
    assert [r["rank"] for r in rows] == ["1", "2", "3", ""] and rows[1]["heads_disagree"] == "1"
    assert rows[3]["status"] == "failed" and rows[3]["result"] == "broken.png: not an image"
    assert float(rows[0]["review_priority"]) > float(rows[1]["review_priority"]) > float(rows[2]["review_priority"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worklist.csv"]  # written atomically: no temp left
