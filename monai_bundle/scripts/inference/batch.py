"""Many studies through one Predictor: the CLI's batch mode and the bundle's ``inference`` run.

Which paths are studies (:func:`expand_inputs`): a file is one study (a zip of a DICOM series too); a
folder that directly holds DICOM files is one study (its series chosen by :mod:`scripts.inference.dicom`'s
rule); any other folder is searched, sub-folder by sub-folder, for image files, zips and DICOM folders
(links to folders followed, loops skipped); an ``http(s)://`` address is a DICOMweb study or series
(:mod:`scripts.inference.dicomweb`); a ``.csv`` file is a manifest, one input per row
(:func:`read_manifest`). One failing study does not stop the others; each outcome records its error.

With ``push`` each study's DICOM SEG and SR are stored on a DICOMweb server after they are written
(one STOW-RS request); a study whose push fails is a failed study, and its result JSON records no
push. With ``resume`` a study whose ``<name>_result.json`` is already in the output folder (with
``push``: one that records a push to that server) is not run again: its outcome is read from there.
:func:`run_study` is the whole of one study, shared with the Ray engine (:mod:`.distributed`), so
both engines write the same files.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.core.atomic import write_json_atomic
from scripts.imageio import DICOM_SUFFIXES, RASTER_SUFFIXES, VOLUME_SUFFIXES, ZIP_SUFFIXES, is_dicom_file
from scripts.inference.dicomweb import DicomWebUrl, check_root, is_url, push_instances
from scripts.inference.errors import InputError
from scripts.inference.predictor import Predictor
from scripts.inference.result import validate_result
from scripts.inference.study import study_name

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = RASTER_SUFFIXES + VOLUME_SUFFIXES + ZIP_SUFFIXES
MANIFEST_SUFFIXES = (".csv",)
#: header names of a manifest's input column (any case); without one the first column is read
MANIFEST_COLUMNS = ("input", "path", "url", "study", "image")


@dataclass
class Outcome:
    """One study of a batch: its result, or the error that stopped it. ``input`` is a path, or a
    :class:`~scripts.inference.dicomweb.DicomWebUrl` (a str with ``name``); ``resumed``: read from an
    earlier run's result (``resume``), not run again."""

    input: Path
    result: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0
    paths: dict[str, Path] = field(default_factory=dict)
    resumed: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def _holds_dicom(folder: Path) -> bool:
    return any(p.is_file() and (p.name.lower().endswith(DICOM_SUFFIXES) or is_dicom_file(p)) for p in folder.iterdir())


def expand_inputs(paths: Iterable[str | os.PathLike | dict], _manifests: tuple[str, ...] = ()) -> list[Path]:
    """The studies named by files, DICOM folders, folders of studies, DICOMweb URLs and manifest CSVs
    (see the module docstring).

    Items may be datalist entries (``{"image": path, ...}``). A folder with nothing recognisable
    is kept as one study, so that reading it reports what is wrong.

    Raises:
        InputError: a manifest that cannot be read, or that lists itself (directly or not).
    """
    studies: list[Path] = []
    for item in paths:
        item = item["image"] if isinstance(item, dict) else item
        if is_url(item):
            studies.append(DicomWebUrl(item))
            continue
        path = Path(item)
        if path.name.lower().endswith(MANIFEST_SUFFIXES) and path.is_file():
            real = os.path.realpath(path)
            if real in _manifests:
                raise InputError(f"{path}: the manifest lists itself (through {len(_manifests)} manifest(s))")
            studies.extend(expand_inputs(read_manifest(path), (*_manifests, real)))
            continue
        if not path.is_dir() or _holds_dicom(path):
            studies.append(path)
            continue
        found = _search(path)
        studies.extend(found or [path])
    return studies


def read_manifest(path: Path) -> list[str]:
    """The inputs a manifest CSV lists: files, folders, DICOMweb URLs or other manifests, one a row.

    The column is the one headed ``input``, ``path``, ``url``, ``study`` or ``image`` (any case);
    without such a header, the first column of every row. Empty rows and rows whose first cell starts
    with ``#`` are skipped; relative paths are relative to the manifest's folder.

    Raises:
        InputError: the file cannot be read as UTF-8 CSV, or lists nothing.
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = [row for row in csv.reader(f) if row and row[0].strip() and not row[0].lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{path}: cannot read the manifest ({e})") from e
    column = 0
    if rows:
        header = [cell.strip().lower() for cell in rows[0]]
        named = [c for c in MANIFEST_COLUMNS if c in header]
        if named:
            column, rows = header.index(named[0]), rows[1:]
    items = [row[column].strip() for row in rows if len(row) > column and row[column].strip()]
    if not items:
        raise InputError(f"{path}: the manifest lists no input (one file, folder or DICOMweb URL per row)")
    return [item if is_url(item) or os.path.isabs(item) else str(path.parent / item) for item in items]


def _search(folder: Path, seen: set[str] | None = None) -> list[Path]:
    seen = {os.path.realpath(folder)} if seen is None else seen
    found: list[Path] = []
    for child in sorted(folder.iterdir()):
        if child.is_file() and child.name.lower().endswith(IMAGE_SUFFIXES):
            found.append(child)
        elif child.is_dir():
            real = os.path.realpath(child)
            if real in seen or Path(os.path.realpath(folder)).is_relative_to(real):  # a link loop or a repeat
                log.warning("skipped %s: a symbolic link to a folder above it or already searched", child)
                continue
            seen.add(real)
            found.extend([child] if _holds_dicom(child) else _search(child, seen))
    return found


def unique_names(studies: list[Path]) -> list[str]:
    """Output stems, made unique by prefixing the parent folder (then a counter) on clashes."""
    stems = [study_name(p) for p in studies]
    names: list[str] = []
    for path, stem in zip(studies, stems):
        name = stem if stems.count(stem) == 1 else f"{path.parent.name}_{stem}"  # a URL's parent: its study or host
        base, n = name, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def previous_outcome(study: Path, name: str, output_dir: Path, push: str | None = None) -> Outcome | None:
    """The outcome of ``study`` from an earlier run into ``output_dir`` (``resume``), or None when it
    must run: no readable ``<name>_result.json`` there, or (with ``push``) none that records a push to
    that server. The result JSON is the last file of a study to appear, so its other files are there."""
    path = output_dir / f"{name}_result.json"
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        validate_result(result, path)  # one that breaks the contract (configs/result.schema.json) is run again
        seg = Path(result["segmentation"]["path"])
        outputs = {key: Path(value) for key, value in (result.get("outputs") or {}).items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if push is not None and (result.get("pushed") or {}).get("url") != push:
        return None
    return Outcome(study, result, paths={"segmentation": seg, "result": path, **outputs}, resumed=True)


def run_study(predictor: Predictor, study: Path, name: str, output_dir: Path, options: dict[str, Any],
              push: str | None = None, progress: Callable[[int, str], None] | None = None) -> Outcome:
    """One study of a batch: predict it into ``output_dir``, push its SEG and SR when ``push`` names
    a DICOMweb root, and record the push in its result JSON. Never raises for the study's sake: the
    outcome holds the error (a failed push included)."""
    start = time.perf_counter()
    outcome = Outcome(study)
    try:
        pred = predictor.predict(study, output_dir=output_dir, progress=progress, name=name, **options)
        if push is not None:
            instances = push_instances(push, [pred.paths["segmentation"], pred.paths["sr"]])
            pred.result["pushed"] = {"url": push, "instances": instances}
            write_json_atomic(pred.paths["result"], pred.result)  # the same text as the Predictor's
        outcome.result, outcome.paths = pred.result, pred.paths
    except InputError as e:
        outcome.error = str(e)
    except Exception as e:  # noqa: BLE001 - one broken study must not stop the batch
        outcome.error = f"{study}: {type(e).__name__}: {e}"
    outcome.seconds = time.perf_counter() - start
    return outcome


class BatchRunner:
    """Run a :class:`Predictor` over a list of inputs into one output folder.

    Args:
        predictor: the loaded model.
        inputs: files, folders or datalist entries (``{"image": ...}``); see :func:`expand_inputs`.
        output_dir: where every study's files go.
        seg_format, series_uid, axis, overlay, uncertainty_map: passed to :meth:`Predictor.predict`.
        strict: :meth:`run` raises after the batch when a study failed (the bundle's ``run``).
        push: a DICOMweb root (``http://pacs/dicom-web``) to store each study's DICOM SEG and SR on;
            it needs DICOM SEG output (``seg_format`` ``"auto"`` becomes ``"dicom-seg"``).
        resume: do not run studies whose results are already in ``output_dir`` (:func:`previous_outcome`).

    Raises:
        InputError: a manifest that cannot be read; a push URL that is not a DICOMweb root.
        ValueError: ``push`` with a segmentation format other than DICOM SEG.
    """

    def __init__(self, predictor: Predictor | None, inputs: Iterable[str | os.PathLike | dict],
                 output_dir: str | os.PathLike, seg_format: str = "auto", series_uid: str | None = None,
                 axis: int | None = None, overlay: bool = True, strict: bool = True, uncertainty_map: bool = False,
                 push: str | None = None, resume: bool = False) -> None:
        self.predictor, self.output_dir = predictor, Path(output_dir)
        self.studies = expand_inputs(inputs)
        self.names = unique_names(self.studies)
        if push is not None:
            push = check_root(push)
            if seg_format == "auto":
                seg_format = "dicom-seg"
            elif seg_format != "dicom-seg":
                raise ValueError(f"pushing to {push} stores the DICOM SEG and SR: it needs the dicom-seg format, "
                                 f"not {seg_format}")
        self.options = {"seg_format": seg_format, "series_uid": series_uid, "axis": axis, "overlay": overlay,
                        "uncertainty_map": uncertainty_map}
        self.strict, self.push, self.resume = strict, push, resume

    def previous(self, i: int) -> Outcome | None:
        """Study ``i``'s outcome from an earlier run when resuming, else None (it must run)."""
        return previous_outcome(self.studies[i], self.names[i], self.output_dir, self.push) if self.resume else None

    def finish(self, outcomes: list[Outcome]) -> list[Outcome]:
        """Raise when ``strict`` and a study failed; else return ``outcomes``."""
        failed = [o for o in outcomes if not o.ok]
        if self.strict and failed:
            raise RuntimeError(f"{len(failed)} of {len(outcomes)} studies failed; first: {failed[0].error}")
        return outcomes

    def run(self, progress: Callable[[int, int, int, str], None] | None = None,
            on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
        """Predict every study; return their outcomes in input order.

        Args:
            progress: called with (study index, study count, percent of that study, stage).
            on_outcome: called after each study.

        Raises:
            RuntimeError: ``strict`` and at least one study failed (after all were tried).
        """
        outcomes = []
        for i, (study, name) in enumerate(zip(self.studies, self.names)):
            def report(percent: int, stage: str, i: int = i) -> None:
                if progress is not None:
                    progress(i, len(self.studies), percent, stage)

            outcome = self.previous(i)
            if outcome is None:
                outcome = run_study(self.predictor, study, name, self.output_dir, self.options, self.push, report)
            else:
                report(100, "done")
            log.info("study %d/%d %s in %.1f s", i + 1, len(self.studies),
                     "kept" if outcome.resumed else "done" if outcome.ok else "FAILED", outcome.seconds)
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
        return self.finish(outcomes)
