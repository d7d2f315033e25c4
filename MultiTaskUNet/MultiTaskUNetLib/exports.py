"""File names and the review report written by Export (segmentation files are written by the MRML side)."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

#: export format -> file suffix; the DICOM SEG file is written by Slicer's DICOM SEG exporter, the DICOM SR
#: beside it by the bundle (:mod:`MultiTaskUNetLib.structured_report`); names as the batch CLI's
SUFFIXES = {"seg.nrrd": ".seg.nrrd", "nifti": "_label.nii.gz", "dicom-seg": "_seg.dcm", "dicom-sr": "_sr.dcm",
            "review": "_review.json"}

#: DICOM Segment Algorithm Type (C.8.20.2) of the model's segments: untouched, or edited by the reviewer
AUTOMATIC, SEMIAUTOMATIC, MANUAL = "AUTOMATIC", "SEMIAUTOMATIC", "MANUAL"
_LO_MAX = 64  # Segment Algorithm Name is a DICOM LO value: at most 64 characters


def segment_algorithm(edited: bool, model_name: str, model_version: str = "") -> tuple[str, str]:
    """``(SegmentAlgorithmType, SegmentAlgorithmName)`` for the model's segments.

    ``AUTOMATIC`` as the model made them, ``SEMIAUTOMATIC`` once the reviewer edited them; the name
    is the model's name and version (DICOM requires a name for both types).
    """
    name = " ".join(p for p in ((model_name or "MultiTaskUNet").strip(), (model_version or "").strip()) if p)
    return (SEMIAUTOMATIC if edited else AUTOMATIC), name[:_LO_MAX]


def safe_stem(name: str) -> str:
    """A file-name-safe stem from a node name (``"2: T1 post/contrast"`` -> ``"2_T1_post_contrast"``).

    Raises:
        ValueError: nothing usable is left of the name.
    """
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    if not stem:
        raise ValueError(f"cannot make a file name from {name!r}")
    return stem


def export_paths(out_dir: str | os.PathLike, name: str, formats: list[str]) -> dict[str, Path]:
    """Where each requested format goes: ``{format: path}`` in ``out_dir``.

    Raises:
        ValueError: unknown format.
    """
    unknown = [f for f in formats if f not in SUFFIXES]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; expected some of {list(SUFFIXES)}")
    stem = safe_stem(name)
    return {f: Path(out_dir) / (stem + SUFFIXES[f]) for f in formats}


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write to a temporary file in the same folder, then rename: no half-written file is ever seen."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def review_report(record: Any, result: Any, files: dict[str, str]) -> dict[str, Any]:
    """The exported review JSON: the record, the model's answer, and the files written with it."""
    return {
        "review": record.to_dict(),
        "model_result": {"diagnosis": result.diagnosis, "probabilities": result.probabilities,
                         "segments": [{"name": s.name, "value": s.value, "voxels": s.voxels, "volume_ml": s.volume_ml}
                                      for s in result.segments],
                         "model": {"name": result.model_name, "version": result.model_version,
                                   "sha256": result.model_sha256},
                         "device": result.device, "warnings": list(result.warnings)},
        "files": files,
    }


def write_review_report(path: str | os.PathLike, record: Any, result: Any, files: dict[str, str]) -> Path:
    """Write :func:`review_report` as JSON, atomically."""
    return write_text_atomic(path, json.dumps(review_report(record, result, files), indent=2) + "\n")
