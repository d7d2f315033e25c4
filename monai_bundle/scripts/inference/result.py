"""The result contract: one study's ``<name>_result.json``, checked against ``configs/result.schema.json`` and typed.

The schema file is the one description of the result JSON. :class:`scripts.inference.Predictor`
checks every result against it before writing it (:func:`validate_result`); the CLI summary, the web
demo and the 3D Slicer module read results through :func:`parse_result` / :func:`read_result`, which
check the same way and return a typed :class:`Result`. A result that breaks the contract is refused
with a :class:`ResultError` naming the file and every offending field.

Besides the schema, :func:`validate_result` checks what a schema cannot say: the diagnosis is one of
the classes, the probabilities sum to 1, no two segments share a label value.

Compatibility: the schema requires only what every reader needs and every Predictor has written.
Properties that older Predictors did not write (``review_priority``, ``tta``, the uncertainties,
``source``, a segment's ``terminology`` and ``color``, ...) are None in the typed result when absent.
Fields this reader does not know (a newer writer) are allowed and kept in :attr:`Result.raw`.

Standard library only, and no import from the bundle's ``scripts`` package: the Slicer module
(``MultiTaskUNetLib.results``) loads this file from the bundle installed beside it, in Slicer's own
Python, which has neither torch nor the bundle on its path. The schema is checked by the small
validator below (the keywords of :data:`KEYWORDS`; a schema using any other is refused), so that
Slicer needs no ``jsonschema``; the tests check it against ``jsonschema`` itself.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

#: the schema of ``<name>_result.json``, in the bundle's ``configs/`` (shipped with the Slicer extension)
SCHEMA_FILE = Path(__file__).resolve().parents[2] / "configs" / "result.schema.json"
#: JSON Schema keywords the validator implements; annotations (:data:`ANNOTATIONS`) are read by people only
KEYWORDS = frozenset({"$ref", "$defs", "type", "properties", "required", "additionalProperties", "items", "enum",
                      "minimum", "maximum", "minLength", "minProperties", "pattern"})
ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description", "examples", "default"})
MAX_REPORTED = 8  # problems named in one error message
_NAMES = {"object": "an object", "array": "a list", "string": "a string", "integer": "an integer",
          "number": "a number", "boolean": "true or false", "null": "null"}


class ResultError(ValueError):
    """A result file that is missing, unreadable or breaks the contract; the message names the file and the fields."""


class SchemaError(ValueError):
    """The schema file itself is unusable (missing, not JSON, or a keyword the validator does not implement)."""


# ---------------------------------------------------------------- the typed result


@dataclass(frozen=True)
class Segment:
    """One segment of the label map (the background has none)."""

    name: str
    value: int
    voxels: Optional[int] = None
    volume_ml: Optional[float] = None  # None for 2D images
    terminology: Optional[str] = None  # 3D Slicer terminology entry; None in results written before it was added
    color: Optional[str] = None  # "#rrggbb"; None in results written before it was added


@dataclass(frozen=True)
class Diagnosis:
    label: str
    probabilities: dict[str, float]  # in the model's class order
    index: Optional[int] = None
    calibrated: Optional[bool] = None
    uncertainty: Optional[float] = None

    @property
    def probability(self) -> float:
        """The probability of the diagnosis."""
        return self.probabilities[self.label]

    @property
    def position(self) -> int:
        """The diagnosis's index among the classes (``index``, or its place in ``probabilities``)."""
        return self.index if self.index is not None else list(self.probabilities).index(self.label)


@dataclass(frozen=True)
class Segmentation:
    path: str
    segments: tuple[Segment, ...]
    format: Optional[str] = None
    uncertainty: Optional[float] = None  # None: not measured (no flip TTA), or an older result

    @property
    def tumor_voxels(self) -> int:
        """Voxels (pixels) of all segments together."""
        return sum(s.voxels or 0 for s in self.segments)

    @property
    def tumor_ml(self) -> Optional[float]:
        """Volume of all segments together in mL; None when no segment has one (a 2D image)."""
        volumes = [s.volume_ml for s in self.segments if s.volume_ml is not None]
        return sum(volumes) if volumes else None


@dataclass(frozen=True)
class Model:
    name: str
    version: str
    sha256: str


@dataclass(frozen=True)
class Source:
    """The DICOM series the result was computed on."""

    study_instance_uid: Optional[str]
    series_instance_uid: Optional[str]


@dataclass(frozen=True)
class Outputs:
    """Other files written for the study, each None when not written."""

    sr: Optional[str] = None
    overlay: Optional[str] = None
    uncertainty_map: Optional[str] = None


@dataclass(frozen=True)
class Pushed:
    """Where the CLI stored the study's DICOM SEG and SR (``--push``)."""

    url: str
    instances: tuple[str, ...]


@dataclass(frozen=True)
class Result:
    """A checked ``<name>_result.json``. ``file`` and ``raw`` are not in the JSON: where it was read
    from, and the JSON as read (with any field this reader does not know)."""

    diagnosis: Diagnosis
    segmentation: Segmentation
    input: Optional[str] = None
    source: Optional[Source] = None
    outputs: Optional[Outputs] = None
    pushed: Optional[Pushed] = None
    review_priority: Optional[float] = None
    model: Optional[Model] = None
    device: Optional[str] = None
    tta: Optional[bool] = None
    timings_s: Optional[dict[str, float]] = None
    warnings: Optional[tuple[str, ...]] = None
    file: Optional[Path] = field(default=None, compare=False)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


#: fields of :class:`Result` that are not properties of the JSON
NOT_IN_JSON = ("file", "raw")


# ---------------------------------------------------------------- schema and validation


@functools.lru_cache(maxsize=4)
def load_schema(path: str | os.PathLike = SCHEMA_FILE) -> dict[str, Any]:
    """The result schema (read once).

    Raises:
        SchemaError: the file is missing or not JSON, or uses a keyword :data:`KEYWORDS` lacks.
    """
    path = Path(path)
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SchemaError(f"{path}: the result schema cannot be read ({e})") from e
    _check_keywords(schema, path, "")
    return schema


def _check_keywords(schema: Any, path: Path, where: str) -> None:
    if not isinstance(schema, dict):
        raise SchemaError(f"{path}: the schema at '{where or '/'}' is not an object")
    unknown = set(schema) - KEYWORDS - ANNOTATIONS
    if unknown:
        raise SchemaError(f"{path}: keywords {sorted(unknown)} at '{where or '/'}' are not implemented by "
                          f"{Path(__file__).name}'s validator")
    for key in ("properties", "$defs"):
        for name, sub in schema.get(key, {}).items():
            _check_keywords(sub, path, f"{where}/{key}/{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            _check_keywords(schema[key], path, f"{where}/{key}")


def _is(value: Any, kind: str) -> bool:
    if kind in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return kind == "number" or isinstance(value, int) or value.is_integer()
    types = {"object": dict, "array": list, "string": str, "boolean": bool}
    return value is None if kind == "null" else isinstance(value, types[kind])


def _resolve(ref: str, root: dict) -> dict:
    if not ref.startswith("#/"):
        raise SchemaError(f"$ref {ref!r}: only references within the schema ('#/...') are implemented")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _problems(value: Any, schema: dict, root: dict, where: str) -> list[str]:
    """What is wrong with ``value`` (at field path ``where``) under ``schema``; empty when it fits."""
    if "$ref" in schema:
        found = _problems(value, _resolve(schema["$ref"], root), root, where)
        if found:
            return found
    name = f"'{where}'" if where else "the result"
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, k) for k in kinds):
            return [f"{name} must be {' or '.join(_NAMES[k] for k in kinds)}, not {value!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{name} must be one of {schema['enum']}, not {value!r}"]
    if _is(value, "number"):
        low, high = schema.get("minimum"), schema.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"within {low:g}..{high:g}" if low is not None and high is not None else \
                f">= {low:g}" if low is not None else f"<= {high:g}"
            return [f"{name} must be {bounds}, not {value!r}"]
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            return [f"{name} must not be empty" if schema["minLength"] == 1 else
                    f"{name} must have {schema['minLength']} characters or more, not {value!r}"]
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return [f"{name} must match {schema['pattern']}, not {value!r}"]
    found: list[str] = []
    if isinstance(value, dict):
        prefix = f"{where}." if where else ""
        if len(value) < schema.get("minProperties", 0):
            found.append(f"{name} must be a non-empty object" if schema["minProperties"] == 1 else
                         f"{name} must have {schema['minProperties']} entries or more")
        found += [f"result lacks '{prefix}{key}'" for key in schema.get("required", ()) if key not in value]
        properties, extra = schema.get("properties", {}), schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                found += _problems(item, properties[key], root, prefix + str(key))
            elif extra is False:
                found.append(f"'{prefix}{key}' is not a field of the result")
            elif isinstance(extra, dict):
                found += _problems(item, extra, root, prefix + str(key))
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            found += _problems(item, schema["items"], root, f"{where}[{i}]")
    return found


def schema_problems(data: Any, schema: Optional[dict] = None) -> list[str]:
    """Every place where ``data`` breaks the result schema (default: :func:`load_schema`), as messages
    naming the field (``'segmentation.segments[0].value' must be an integer, not 'x'``); empty when none."""
    schema = load_schema() if schema is None else schema
    return _problems(data, schema, schema, "")


def _consistency_problems(data: Mapping[str, Any]) -> list[str]:
    """What the schema cannot say (``data`` already fits the schema)."""
    found = []
    diag = data["diagnosis"]
    probs = diag["probabilities"]
    if diag["label"] not in probs:
        found.append(f"diagnosis {diag['label']!r} is not one of the classes {list(probs)}")
    total = sum(probs.values())
    if abs(total - 1.0) > 1e-3 + 5e-5 * len(probs):  # the Predictor rounds each probability to 4 decimals
        found.append(f"class probabilities sum to {total:.4f}, not 1")
    values = [s["value"] for s in data["segmentation"]["segments"]]
    if len(set(values)) != len(values):
        found.append(f"segment label values repeat: {values}")
    return found


def validate_result(data: Any, where: str | os.PathLike) -> None:
    """Check a result against the contract: the schema, then what it cannot say.

    Args:
        data: the result (a dict, as JSON gives it).
        where: the result's file (or another name for it), named in the error.

    Raises:
        ResultError: ``"<where>: <problem>; <problem>..."``, each problem naming its field.
    """
    found = schema_problems(data)
    if not found:
        found = _consistency_problems(data)
    if found:
        more = f"; and {len(found) - MAX_REPORTED} more" if len(found) > MAX_REPORTED else ""
        raise ResultError(f"{where}: " + "; ".join(found[:MAX_REPORTED]) + more)


def parse_result(data: Any, where: str | os.PathLike) -> Result:
    """The typed result of a result dictionary, after :func:`validate_result`.

    Raises:
        ResultError: the result breaks the contract (names ``where`` and the fields).
    """
    validate_result(data, where)
    diag, seg = data["diagnosis"], data["segmentation"]
    model, source, outputs, pushed = data.get("model"), data.get("source"), data.get("outputs"), data.get("pushed")
    return Result(
        diagnosis=Diagnosis(label=diag["label"], probabilities={str(k): float(v) for k, v in diag["probabilities"].items()},
                            index=_int(diag.get("index")), calibrated=diag.get("calibrated"),
                            uncertainty=_float(diag.get("uncertainty"))),
        segmentation=Segmentation(path=seg["path"], segments=tuple(_segment(s) for s in seg["segments"]),
                                  format=seg.get("format"), uncertainty=_float(seg.get("uncertainty"))),
        input=data.get("input"),
        source=None if source is None else Source(source["study_instance_uid"], source["series_instance_uid"]),
        outputs=None if outputs is None else Outputs(outputs.get("sr"), outputs.get("overlay"), outputs.get("uncertainty_map")),
        pushed=None if pushed is None else Pushed(pushed["url"], tuple(pushed["instances"])),
        review_priority=_float(data.get("review_priority")),
        model=None if model is None else Model(model["name"], model["version"], model["sha256"]),
        device=data.get("device"), tta=data.get("tta"),
        timings_s=None if data.get("timings_s") is None else {k: float(v) for k, v in data["timings_s"].items()},
        warnings=None if data.get("warnings") is None else tuple(data["warnings"]),
        file=Path(where), raw=data)


def read_result(path: str | os.PathLike) -> Result:
    """Read and check a ``<name>_result.json``.

    Raises:
        ResultError: the file is missing, unreadable or not JSON, or breaks the contract (names the file).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ResultError(f"{path}: result file not found") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultError(f"{path}: result file is not valid JSON ({e})") from e
    except OSError as e:
        raise ResultError(f"{path}: result file cannot be read ({e.strerror or e})") from e
    return parse_result(data, path)


def _segment(s: Mapping[str, Any]) -> Segment:
    return Segment(name=s["name"], value=int(s["value"]), voxels=_int(s.get("voxels")),
                   volume_ml=_float(s.get("volume_ml")), terminology=s.get("terminology"), color=s.get("color"))


def _int(value: Any) -> Optional[int]:
    return None if value is None else int(value)


def _float(value: Any) -> Optional[float]:
    return None if value is None else float(value)
