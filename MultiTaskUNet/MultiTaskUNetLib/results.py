"""Read and check one study's result JSON (``<stem>_result.json``, written by the bundle's ``scripts.inference.Predictor``).

The module shows the diagnosis with every class probability, imports the label map named in the
result, and keeps the result as node attributes so it survives saving the scene.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

#: prefix of every node attribute this module writes (Slicer convention: ``<Module>.<Name>``)
ATTRIBUTE_PREFIX = "MultiTaskUNet."


class ResultError(ValueError):
    """A result file is missing, unreadable or does not follow the Result contract."""


@dataclass(frozen=True)
class SegmentInfo:
    """One segment of the label map: its name, voxel value and size."""

    name: str
    value: int
    voxels: int
    volume_ml: Optional[float]


@dataclass(frozen=True)
class StudyResult:
    """A parsed result file. ``probabilities`` keeps the model's class order."""

    path: Path
    diagnosis: str
    diagnosis_index: int
    probabilities: dict[str, float]
    segmentation_path: Path
    segmentation_format: str
    segments: tuple[SegmentInfo, ...]
    model_name: str
    model_version: str
    model_sha256: str
    device: str
    warnings: tuple[str, ...]
    raw: dict[str, Any]
    #: flip-TTA disagreement of the study (0..1); None when the run had no TTA (not measured)
    segmentation_uncertainty: Optional[float] = None
    #: the voxel-wise uncertainty map on the input's grid, when the worker wrote one
    uncertainty_map_path: Optional[Path] = None

    @property
    def classes(self) -> list[str]:
        """Class names in the model's order."""
        return list(self.probabilities)

    def ranked(self) -> list[tuple[str, float]]:
        """``(class, probability)`` from most to least likely, for the panel's table."""
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])

    def summary(self) -> str:
        """One line for the panel and the log, e.g. ``meningioma (87%)``."""
        return f"{self.diagnosis} ({self.probabilities[self.diagnosis]:.0%})"


def _need(mapping: Any, key: str, where: str, path: Path) -> Any:
    if not isinstance(mapping, dict) or key not in mapping:
        raise ResultError(f"{path}: result lacks '{where}{key}'")
    return mapping[key]


def _probabilities(diag: dict, path: Path) -> dict[str, float]:
    probs = _need(diag, "probabilities", "diagnosis.", path)
    if not isinstance(probs, dict) or not probs:
        raise ResultError(f"{path}: 'diagnosis.probabilities' must be a non-empty object")
    out: dict[str, float] = {}
    for name, p in probs.items():
        if not isinstance(p, (int, float)) or math.isnan(p) or not 0.0 <= p <= 1.0:
            raise ResultError(f"{path}: probability of {name!r} is {p!r}, not a number in 0..1")
        out[str(name)] = float(p)
    if abs(sum(out.values()) - 1.0) > 1e-3:
        raise ResultError(f"{path}: class probabilities sum to {sum(out.values()):.4f}, not 1")
    return out


def _segments(seg: dict, path: Path) -> tuple[SegmentInfo, ...]:
    items = _need(seg, "segments", "segmentation.", path)
    if not isinstance(items, list):
        raise ResultError(f"{path}: 'segmentation.segments' must be a list")
    out = []
    for i, s in enumerate(items):
        name, value = _need(s, "name", f"segmentation.segments[{i}].", path), _need(s, "value", f"segmentation.segments[{i}].", path)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 255:
            raise ResultError(f"{path}: segment {name!r} has label value {value!r}; expected an integer 1..255")
        vol = s.get("volume_ml")
        out.append(SegmentInfo(name=str(name), value=value, voxels=int(s.get("voxels", 0)),
                               volume_ml=None if vol is None else float(vol)))
    values = [s.value for s in out]
    if len(set(values)) != len(values):
        raise ResultError(f"{path}: segment label values repeat: {values}")
    return tuple(out)


def _resolved(value: Any, path: Path) -> Path:
    p = Path(str(value))
    return p if p.is_absolute() else path.parent / p


def _uncertainty(seg: dict, path: Path) -> Optional[float]:
    value = seg.get("uncertainty")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ResultError(f"{path}: 'segmentation.uncertainty' is {value!r}, not null or a number in 0..1")
    return float(value)


def parse_result(data: dict[str, Any], path: str | os.PathLike) -> StudyResult:
    """Check a result dictionary against the contract; relative paths resolve next to ``path``.

    Raises:
        ResultError: a required field is missing or inconsistent (message names ``path``).
    """
    path = Path(path)
    diag = _need(data, "diagnosis", "", path)
    probs = _probabilities(diag, path)
    label = str(_need(diag, "label", "diagnosis.", path))
    if label not in probs:
        raise ResultError(f"{path}: diagnosis {label!r} is not one of the classes {list(probs)}")
    seg = _need(data, "segmentation", "", path)
    seg_path = _resolved(_need(seg, "path", "segmentation.", path), path)
    u_map = (data.get("outputs") or {}).get("uncertainty_map")
    model = data.get("model") or {}
    return StudyResult(
        path=path, diagnosis=label, diagnosis_index=int(diag.get("index", list(probs).index(label))),
        probabilities=probs, segmentation_path=seg_path, segmentation_format=str(seg.get("format", "nifti")),
        segments=_segments(seg, path), model_name=str(model.get("name", "")), model_version=str(model.get("version", "")),
        model_sha256=str(model.get("sha256", "")), device=str(data.get("device", "")),
        warnings=tuple(str(w) for w in data.get("warnings", [])), raw=data,
        segmentation_uncertainty=_uncertainty(seg, path), uncertainty_map_path=None if u_map is None else _resolved(u_map, path))


def read_result(path: str | os.PathLike) -> StudyResult:
    """Read a ``<stem>_result.json`` written by the worker.

    Raises:
        ResultError: the file is missing or not JSON, breaks the contract, or its label map (or the
            uncertainty map it names) is missing.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ResultError(f"{path}: result file not found") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultError(f"{path}: result file is not valid JSON ({e})") from e
    result = parse_result(data, path)
    if not result.segmentation_path.exists():
        raise ResultError(f"{path}: segmentation file {result.segmentation_path} does not exist")
    if result.uncertainty_map_path is not None and not result.uncertainty_map_path.exists():
        raise ResultError(f"{path}: uncertainty map {result.uncertainty_map_path} does not exist")
    return result


def result_attributes(result: StudyResult) -> dict[str, str]:
    """Node attributes that keep the diagnosis with the segmentation when the scene is saved.

    All values are strings (MRML attributes are); probabilities and the full result are JSON.
    """
    p = ATTRIBUTE_PREFIX
    return {
        p + "Diagnosis": result.diagnosis,
        p + "DiagnosisProbability": f"{result.probabilities[result.diagnosis]:.6f}",
        p + "Probabilities": json.dumps(result.probabilities),
        p + "ModelName": result.model_name,
        p + "ModelVersion": result.model_version,
        p + "ModelSha256": result.model_sha256,
        p + "Device": result.device,
        p + "Result": json.dumps(result.raw),
    }


def result_from_attributes(attributes: dict[str, str]) -> StudyResult:
    """Rebuild the result stored by :func:`result_attributes` (e.g. after loading a saved scene).

    Raises:
        ResultError: the attributes hold no result or a broken one.
    """
    raw = attributes.get(ATTRIBUTE_PREFIX + "Result")
    if raw is None:
        raise ResultError(f"node attributes: no '{ATTRIBUTE_PREFIX}Result' attribute")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ResultError(f"node attributes: '{ATTRIBUTE_PREFIX}Result' is not valid JSON ({e})") from e
    return parse_result(data, Path(str(data.get("input", "scene"))).with_name("result.json"))
