"""Read and check one study's result JSON (``<stem>_result.json``, written by the bundle's ``scripts.inference.Predictor``).

The contract is the bundle's: ``configs/result.schema.json``, checked and typed by the bundle's
``scripts/inference/result.py``, which the CLI and the web demo read results through too. This
module loads that file from the bundle installed with the extension (``monai_bundle/`` beside
``MultiTaskUNetLib``, :func:`MultiTaskUNetLib.bundles.default_bundle_dir`) as a module of its own:
it needs only the standard library, so Slicer's Python runs it without torch and without the
bundle's ``scripts`` package on its path. The installed bundle, not the one the user picked, so that
reader and schema always come from the same release as this module.

The module shows the diagnosis with every class probability, imports the label map named in the
result (each segment with the terminology and colour the result gives it), and keeps the result as
node attributes so it survives saving the scene.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

from MultiTaskUNetLib.bundles import default_bundle_dir

#: prefix of every node attribute this module writes (Slicer convention: ``<Module>.<Name>``)
ATTRIBUTE_PREFIX = "MultiTaskUNet."
#: the bundle's typed result module, relative to the bundle root
CONTRACT_FILE = Path("scripts") / "inference" / "result.py"


def _load_contract() -> ModuleType:
    """The bundle's ``scripts/inference/result.py``, loaded by file from the installed bundle.

    Raises:
        ImportError: no bundle is installed beside the module (a broken install).
    """
    name = f"{__package__ or 'MultiTaskUNetLib'}._bundle_result"
    if name in sys.modules:
        return sys.modules[name]
    bundle = default_bundle_dir(Path(__file__).resolve().parents[1])
    if bundle is None or not (bundle / CONTRACT_FILE).is_file():
        raise ImportError(f"{Path(__file__).resolve().parents[1]}: the MONAI bundle installed with MultiTaskUNet "
                          f"(monai_bundle/{CONTRACT_FILE.as_posix()}) is missing; reinstall the extension")
    spec = importlib.util.spec_from_file_location(name, bundle / CONTRACT_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


contract = _load_contract()
#: a result file that is missing, unreadable or breaks the contract (the bundle's ``ResultError``)
ResultError = contract.ResultError
#: one segment of a result: name, label value, voxels, volume_ml, terminology, color (the bundle's ``Segment``)
SegmentInfo = contract.Segment


@dataclass(frozen=True)
class StudyResult:
    """A parsed result file, as the module uses it. ``probabilities`` keeps the model's class order."""

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
    #: the study as the worker was given it (file, DICOM folder, zip or URL); '' when not recorded
    input: str = ""
    #: the DICOM series the worker read; None for other input and for results written before it was recorded
    series_instance_uid: Optional[str] = None

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


def _resolved(value: Any, path: Path) -> Path:
    p = Path(str(value))
    return p if p.is_absolute() else path.parent / p


def _study(r: Any, data: dict[str, Any], path: Path) -> StudyResult:
    """The module's view of the bundle's typed result ``r``; relative paths resolve next to ``path``."""
    model = r.model or contract.Model("", "", "")
    u_map = r.outputs.uncertainty_map if r.outputs is not None else None
    return StudyResult(
        path=path, diagnosis=r.diagnosis.label, diagnosis_index=r.diagnosis.position,
        probabilities=dict(r.diagnosis.probabilities), segmentation_path=_resolved(r.segmentation.path, path),
        segmentation_format=r.segmentation.format or "nifti", segments=r.segmentation.segments,
        model_name=model.name, model_version=model.version, model_sha256=model.sha256, device=r.device or "",
        warnings=r.warnings or (), raw=data, segmentation_uncertainty=r.segmentation.uncertainty,
        uncertainty_map_path=None if u_map is None else _resolved(u_map, path), input=r.input or "",
        series_instance_uid=(r.source.series_instance_uid or None) if r.source is not None else None)


def parse_result(data: dict[str, Any], path: str | os.PathLike) -> StudyResult:
    """Check a result dictionary against the contract; relative paths resolve next to ``path``.

    Raises:
        ResultError: the result breaks the contract (the message names ``path`` and the fields).
    """
    path = Path(path)
    return _study(contract.parse_result(data, path), data, path)


def read_result(path: str | os.PathLike) -> StudyResult:
    """Read a ``<stem>_result.json`` written by the worker.

    Raises:
        ResultError: the file is missing or not JSON, breaks the contract, or its label map (or the
            uncertainty map it names) is missing.
    """
    path = Path(path)
    r = contract.read_result(path)
    result = _study(r, r.raw, path)
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
    where = data.get("input") if isinstance(data, dict) else None
    return parse_result(data, Path(str(where or "scene")).with_name("result.json"))
