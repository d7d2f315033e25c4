"""Review priority of a study and the batch's ``worklist.csv``: which results a radiologist should look at first.

A study's ``review_priority`` (0..1) combines three reasons to look, as a noisy OR (any one of them
alone raises it; together they add up without passing 1)::

    priority = 1 - (1 - u_dx) * (1 - u_seg) * (1 - CONTRADICTION_WEIGHT * contradiction)

- ``u_dx``: the diagnosis's uncertainty, the normalised entropy of its (calibrated) class
  probabilities: 0 when one class has all the probability, 1 when all classes are equally likely;
- ``u_seg``: the segmentation's uncertainty, ``result["segmentation"]["uncertainty"]`` when the
  Predictor reports one (flip test-time-augmentation disagreement), else 0;
- ``contradiction``: 1 when the two heads disagree (a tumour-free diagnosis over marked tumour
  voxels, or a tumour class over an empty segmentation: :func:`scripts.inference.engine.consistency_warnings`).

The worklist ranks the studies of a batch by priority, highest first (ties: the more uncertain
diagnosis first); failed studies follow, with their error.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scripts.core.atomic import write_bytes_atomic
from scripts.inference.engine import consistency_warnings

CONTRADICTION_WEIGHT = 0.5  # a contradiction alone puts a study at priority 0.5 at least
WORKLIST_FILE = "worklist.csv"
COLUMNS = ("rank", "study", "status", "review_priority", "diagnosis", "probability", "diagnosis_uncertainty",
           "segmentation_uncertainty", "heads_disagree", "tumor_ml", "tumor_voxels", "result")


def diagnosis_uncertainty(probabilities: Mapping[str, float]) -> float:
    """Normalised entropy (0..1) of class probabilities ``{class: p}``.

    Raises:
        ValueError: fewer than two classes.
    """
    if len(probabilities) < 2:
        raise ValueError(f"diagnosis uncertainty needs two or more classes, got {list(probabilities)}")
    entropy = -sum(p * math.log(p) for p in probabilities.values() if p > 0)
    return min(1.0, max(0.0, entropy / math.log(len(probabilities))))


def tumor_voxels(result: Mapping[str, Any]) -> int:
    return sum(int(s["voxels"]) for s in result["segmentation"]["segments"])


def heads_disagree(result: Mapping[str, Any], no_tumor_class: str | None) -> bool:
    """The diagnosis contradicts the segmentation (the rule of the result's consistency warnings)."""
    return bool(consistency_warnings(result["diagnosis"], tumor_voxels(result), no_tumor_class))


def review_priority(result: Mapping[str, Any], no_tumor_class: str | None) -> float:
    """The study's review priority (0..1, see the module docstring), rounded to 4 decimals."""
    u_dx = diagnosis_uncertainty(result["diagnosis"]["probabilities"])
    u_seg = float(result["segmentation"].get("uncertainty") or 0.0)
    keep = (1 - u_dx) * (1 - u_seg) * (1 - CONTRADICTION_WEIGHT * heads_disagree(result, no_tumor_class))
    return round(1 - keep, 4)


def annotate(result: dict[str, Any], no_tumor_class: str | None) -> dict[str, Any]:
    """Add ``diagnosis.uncertainty`` (unless the Predictor set one) and ``review_priority`` to a result."""
    result["diagnosis"].setdefault("uncertainty", round(diagnosis_uncertainty(result["diagnosis"]["probabilities"]), 4))
    result["review_priority"] = review_priority(result, no_tumor_class)
    return result


def _row(name: str, result: Mapping[str, Any], result_path: Path | None, no_tumor_class: str | None) -> dict:
    diag, segments = result["diagnosis"], result["segmentation"]["segments"]
    ml = [s["volume_ml"] for s in segments if s.get("volume_ml") is not None]
    seg_u = result["segmentation"].get("uncertainty")
    return {"study": name, "status": "ok", "review_priority": review_priority(result, no_tumor_class),
            "diagnosis": diag["label"], "probability": diag["probabilities"][diag["label"]],
            "diagnosis_uncertainty": round(diagnosis_uncertainty(diag["probabilities"]), 4),
            "segmentation_uncertainty": "" if seg_u is None else seg_u,
            "heads_disagree": int(heads_disagree(result, no_tumor_class)),
            "tumor_ml": round(sum(ml), 4) if ml else "", "tumor_voxels": tumor_voxels(result),
            "result": "" if result_path is None else str(result_path)}


def ranked_rows(outcomes: Sequence[Any], no_tumor_class: str | None) -> list[dict]:
    """Worklist rows of batch outcomes (:class:`scripts.inference.batch.Outcome`), ranked."""
    done = [_row(o.input.name, o.result, o.paths.get("result"), no_tumor_class) for o in outcomes if o.ok]
    done.sort(key=lambda r: (-r["review_priority"], -r["diagnosis_uncertainty"]))
    failed = [{"study": o.input.name, "status": "failed", "result": o.error} for o in outcomes if not o.ok]
    return [{"rank": i, **row} for i, row in enumerate(done, start=1)] + failed


def write_worklist(outcomes: Sequence[Any], folder: str | os.PathLike, no_tumor_class: str | None) -> Path:
    """Write ``worklist.csv`` (:data:`COLUMNS`, ranked) into ``folder``, atomically; return its path."""
    return write_rows(ranked_rows(outcomes, no_tumor_class), folder)


def write_rows(rows: Sequence[Mapping[str, Any]], folder: str | os.PathLike) -> Path:
    """Write rows of :func:`ranked_rows` as ``worklist.csv`` into ``folder``, atomically; return its path."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_bytes_atomic(Path(folder) / WORKLIST_FILE, text.getvalue().encode("utf-8"))
