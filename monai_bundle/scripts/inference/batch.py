"""Many studies through one Predictor: the CLI's batch mode and the bundle's ``inference`` run.

Which paths are studies (:func:`expand_inputs`): a file is one study (a zip of a DICOM series too); a
folder that directly holds DICOM files is one study (its series chosen by :mod:`scripts.inference.dicom`'s
rule); any other folder is searched, sub-folder by sub-folder, for image files, zips and DICOM folders
(links to folders followed, loops skipped). One failing study
does not stop the others; each outcome records its error.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.inference.dicom import is_dicom_file
from scripts.inference.errors import InputError
from scripts.inference.predictor import Predictor
from scripts.inference.readers import DICOM_SUFFIXES, RASTER_SUFFIXES, VOLUME_SUFFIXES, ZIP_SUFFIXES, study_name

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = RASTER_SUFFIXES + VOLUME_SUFFIXES + ZIP_SUFFIXES


@dataclass
class Outcome:
    """One study of a batch: its result, or the error that stopped it."""

    input: Path
    result: dict[str, Any] | None = None
    error: str | None = None
    seconds: float = 0.0
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


def _holds_dicom(folder: Path) -> bool:
    return any(p.is_file() and (p.name.lower().endswith(DICOM_SUFFIXES) or is_dicom_file(p)) for p in folder.iterdir())


def expand_inputs(paths: Iterable[str | os.PathLike | dict]) -> list[Path]:
    """The studies named by files, DICOM folders and folders of studies (see the module docstring).

    Items may be datalist entries (``{"image": path, ...}``). A folder with nothing recognisable
    is kept as one study, so that reading it reports what is wrong.
    """
    studies: list[Path] = []
    for item in paths:
        path = Path(item["image"] if isinstance(item, dict) else item)
        if not path.is_dir() or _holds_dicom(path):
            studies.append(path)
            continue
        found = _search(path)
        studies.extend(found or [path])
    return studies


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
        name = stem if stems.count(stem) == 1 else f"{path.parent.name}_{stem}"
        base, n = name, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


class BatchRunner:
    """Run a :class:`Predictor` over a list of inputs into one output folder.

    Args:
        predictor: the loaded model.
        inputs: files, folders or datalist entries (``{"image": ...}``); see :func:`expand_inputs`.
        output_dir: where every study's files go.
        seg_format, series_uid, axis, overlay, uncertainty_map: passed to :meth:`Predictor.predict`.
        strict: :meth:`run` raises after the batch when a study failed (the bundle's ``run``).
    """

    def __init__(self, predictor: Predictor, inputs: Iterable[str | os.PathLike | dict], output_dir: str | os.PathLike,
                 seg_format: str = "auto", series_uid: str | None = None, axis: int | None = None,
                 overlay: bool = True, strict: bool = True, uncertainty_map: bool = False) -> None:
        self.predictor, self.output_dir = predictor, Path(output_dir)
        self.studies = expand_inputs(inputs)
        self.options = {"seg_format": seg_format, "series_uid": series_uid, "axis": axis, "overlay": overlay,
                        "uncertainty_map": uncertainty_map}
        self.strict = strict

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
        names = unique_names(self.studies)
        for i, (study, name) in enumerate(zip(self.studies, names)):
            def report(percent: int, stage: str, i: int = i) -> None:
                if progress is not None:
                    progress(i, len(self.studies), percent, stage)

            start = time.perf_counter()
            outcome = Outcome(study)
            try:
                pred = self.predictor.predict(study, output_dir=self.output_dir, progress=report, name=name, **self.options)
                outcome.result, outcome.paths = pred.result, pred.paths
            except InputError as e:
                outcome.error = str(e)
            except Exception as e:  # noqa: BLE001 - one broken study must not stop the batch
                outcome.error = f"{study}: {type(e).__name__}: {e}"
            outcome.seconds = time.perf_counter() - start
            log.info("study %d/%d %s in %.1f s", i + 1, len(self.studies), "done" if outcome.ok else "FAILED", outcome.seconds)
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
        failed = [o for o in outcomes if not o.ok]
        if self.strict and failed:
            raise RuntimeError(f"{len(failed)} of {len(outcomes)} studies failed; first: {failed[0].error}")
        return outcomes
