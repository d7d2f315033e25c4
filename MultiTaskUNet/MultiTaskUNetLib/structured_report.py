"""The DICOM SR (TID 1500) of a reviewed study, written beside the DICOM SEG the module exports.

The report is the bundle's (``scripts.inference.dicom_sr``, the same writer as the batch CLI's); it
runs out of process in Slicer's Python (``PythonSlicer -m scripts.inference.dicom_sr REQUEST.json``)
as inference does, so nothing of the bundle (torch, MONAI) is imported into Slicer. This module
builds the request and runs it:

- the result as the export left it: the model's segments renumbered as Slicer's DICOM SEG exporter
  numbers them (1..n in the order of the exported, non-empty segments), with the voxel counts and
  volumes of the segmentation as exported (after the reviewer's edits), not the model's; segments the
  reviewer drew are in the SEG but not measured in the report;
- the review record, which the report carries as the decision (accepted / edited / rejected) and the
  overridden diagnosis; a record still pending and never signed leaves the report the model's answer;
- the source instances' files, from Slicer's DICOM database.

highdicom is what writes the report: 3D Slicer ships it from 5.12 (with pydicom 3). Slicer 5.10 ships
pydicom 2.4 and no highdicom, and the module does not install highdicom there (it needs pydicom 3,
which would replace Slicer's); there the export writes the SEG without the SR and says why. The same
when the packages Segment & Classify installs are not there yet (a saved scene opened in a fresh
Slicer, the extension build machines' self-test): the bundle's ``scripts.inference`` imports them.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from MultiTaskUNetLib.protocol import Error, Stream, parse_line
from MultiTaskUNetLib.worker import bundle_environment

#: the bundle's SR entry, run with ``-m`` from the bundle root
SR_MODULE = "scripts.inference.dicom_sr"
SR_FILE = Path("scripts") / "inference" / "dicom_sr.py"
NO_HIGHDICOM = ("DICOM SR not written: it needs highdicom, which 3D Slicer ships from version 5.12. The DICOM SEG "
                "and the review JSON were written; on Slicer 5.10 write the SR with the bundle's command line "
                "(python -m scripts.infer --format dicom-seg).")
NO_BUNDLE_PACKAGES = ("DICOM SR not written: the report is written with the model's code, which needs the packages "
                      "Segment & Classify installs (PyTorch, MONAI); run Segment & Classify once, then export again. "
                      "The DICOM SEG and the review JSON were written.")
TIMEOUT_S = 300.0  # the bundle's import (torch, MONAI) takes seconds; a hung child must not hold the export


class ReportError(RuntimeError):
    """The SR cannot be written (no source instances, the writer failed); the message says why."""


@dataclass(frozen=True)
class ExportedSegment:
    """A segment written into the DICOM SEG, in the SEG's order.

    ``label_value``: the model's label value (None for a segment the reviewer drew); ``voxels`` and
    ``volume_ml`` as exported.
    """

    name: str
    label_value: Optional[int]
    voxels: int
    volume_ml: Optional[float]


def unavailable_reason(bundle_dir: Optional[str | os.PathLike],
                       find_spec: Optional[Callable[[str], Any]] = None) -> Optional[str]:
    """Why this Slicer cannot write the SR (None when it can).

    ``bundle_dir``: the bundle code shipped with the module; ``find_spec`` (default
    ``importlib.util.find_spec``) looks highdicom up in the Python that runs the writer (Slicer's own,
    which ``PythonSlicer`` shares).
    """
    if bundle_dir is None or not (Path(bundle_dir) / SR_FILE).is_file():
        return f"DICOM SR not written: the bundle code next to the module has no {SR_FILE.as_posix()}"
    find_spec = find_spec or importlib.util.find_spec
    if find_spec("highdicom") is None:
        return NO_HIGHDICOM
    if find_spec("torch") is None or find_spec("monai") is None:  # the bundle's scripts.inference imports both
        return NO_BUNDLE_PACKAGES
    return None


def source_files(instance_uids: str, file_for_instance: Callable[[str], str]) -> list[str]:
    """The files of the input's DICOM instances, in the volume's order.

    Args:
        instance_uids: the volume's ``DICOM.instanceUIDs`` attribute (space-separated SOP instance UIDs).
        file_for_instance: the DICOM database's lookup (``slicer.dicomDatabase.fileForInstance``; '' when absent).

    Raises:
        ReportError: the volume was not loaded from DICOM, or instances are missing from the database.
    """
    uids = instance_uids.split()
    if not uids:
        raise ReportError("DICOM SR needs the input volume loaded from DICOM (it has no DICOM instance UIDs)")
    files = [file_for_instance(uid) or "" for uid in uids]
    missing = [uid for uid, path in zip(uids, files) if not path]
    if missing:
        raise ReportError(f"DICOM SR: {len(missing)} of {len(uids)} source instances are not in Slicer's DICOM "
                          f"database (first: {missing[0]}); import the study again through the DICOM module")
    return files


def report_result(raw: Mapping[str, Any], seg_file: str | os.PathLike, segments: Sequence[ExportedSegment]) -> dict:
    """The result JSON as the report sees the exported study (see the module docstring).

    Raises:
        ReportError: none of the model's segments was exported (the SEG holds only the reviewer's).
    """
    result = copy.deepcopy(dict(raw))
    names = {int(s["value"]): s["name"] for s in raw.get("segmentation", {}).get("segments", [])}
    measured = [{"name": names.get(s.label_value, s.name), "value": number, "voxels": int(s.voxels),
                 "volume_ml": None if s.volume_ml is None else round(float(s.volume_ml), 4)}
                for number, s in enumerate(segments, start=1) if s.label_value is not None]
    if not measured:
        raise ReportError("DICOM SR: none of the model's segments is in the DICOM SEG (all empty or removed)")
    result["segmentation"] = {**result.get("segmentation", {}), "path": Path(seg_file).name, "format": "dicom-seg",
                              "segments": measured}
    return result


def report_review(record: Mapping[str, Any]) -> Optional[dict]:
    """The review record for the report, or None while nobody has signed it (pending, no reviewer)."""
    if record.get("decision", "pending") == "pending" and not str(record.get("reviewer", "")).strip():
        return None
    return dict(record)


@dataclass
class ReportWriter:
    """Writes the SR of one study with the bundle's writer in a child process.

    Args:
        python: interpreter (Slicer's ``PythonSlicer``; ``sys.executable`` in tests).
        bundle_dir: bundle code holding ``scripts/inference/dicom_sr.py``.
        sources: the source instances' files (:func:`source_files`).
        base_env: environment to start from (Slicer's startup environment); ``os.environ`` if None.
        timeout_s: how long the child may take.
    """

    python: str
    bundle_dir: str | os.PathLike
    sources: list[str]
    base_env: Optional[Mapping[str, str]] = field(default=None, repr=False)
    timeout_s: float = TIMEOUT_S

    def write(self, raw_result: Mapping[str, Any], seg_file: str | os.PathLike, out: str | os.PathLike,
              record: Mapping[str, Any], segments: Sequence[ExportedSegment]) -> Path:
        """Write the SR of the exported SEG ``seg_file`` to ``out`` (atomically, by the bundle's writer).

        Raises:
            ReportError: see :func:`report_result`; or the writer failed (its ``ERROR`` line), timed out
                or could not start.
        """
        request = {"result": report_result(raw_result, seg_file, segments), "seg": str(seg_file),
                   "sources": list(self.sources), "out": str(out), "review": report_review(record)}
        bundle = Path(self.bundle_dir).resolve()
        with tempfile.TemporaryDirectory(prefix="MultiTaskUNet-sr-") as folder:
            request_path = Path(folder) / "request.json"
            request_path.write_text(json.dumps(request), encoding="utf-8")
            try:
                done = subprocess.run([str(self.python), "-m", SR_MODULE, str(request_path)], cwd=str(bundle),
                                      env=bundle_environment(bundle, self.base_env), stdin=subprocess.DEVNULL,
                                      capture_output=True, text=True, encoding="utf-8", errors="replace",
                                      timeout=self.timeout_s)
            except subprocess.TimeoutExpired as e:
                raise ReportError(f"DICOM SR: the writer did not finish within {self.timeout_s:.0f} s") from e
            except OSError as e:
                raise ReportError(f"DICOM SR: could not run {self.python} ({e})") from e
        if done.returncode != 0:
            raise ReportError(f"DICOM SR not written: {_failure(done.stderr)}")
        return Path(out)


def _failure(stderr: str) -> str:
    """The writer's ``ERROR`` message, else the last line it printed (an import error's traceback)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        event = parse_line(line, Stream.STDERR)
        if isinstance(event, Error):
            return event.message
    return lines[-1].strip() if lines else "the writer exited without a message"
