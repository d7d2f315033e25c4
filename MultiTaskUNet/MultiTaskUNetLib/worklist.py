"""A review worklist: the batch CLI's ``worklist.csv`` stepped through in priority order, its review state
saved beside it so a reviewer can stop and pick up where they left off.

The CLI ranks its studies by review priority (``rank`` 1 = look first) and lists failed studies after
them; only studies with a result can be reviewed, so failed rows are kept apart (:attr:`Worklist.failed`).

State lives beside the CSV and nowhere else, so a worklist folder moved or shared keeps its reviews:

- ``<stem>_review_state.json``: the position (which study was open) and, per study, its review
  record (:meth:`MultiTaskUNetLib.review.ReviewRecord.to_dict`) and the file of its segmentation as the
  reviewer left it; written atomically after every change;
- ``<stem>_review/<study>.seg.nrrd``: that segmentation (the reviewer's edits), written by the module.

Resuming opens the study that was open last; :meth:`Worklist.next_pending` finds the next one not
decided yet. Nothing here imports Slicer.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from MultiTaskUNetLib.exports import safe_stem, write_text_atomic
from MultiTaskUNetLib.review import Decision

SCHEMA_VERSION = 1
#: columns of ``worklist.csv`` the module needs (the CLI writes more)
REQUIRED_COLUMNS = ("rank", "study", "status", "review_priority", "diagnosis", "result")
#: decisions that close a study's review (``pending`` keeps it open)
DECIDED = tuple(d.value for d in Decision if d is not Decision.PENDING)
#: keyboard shortcuts while a worklist is open; none is one of Slicer's own (Ctrl+Shift+A / T / arrows,
#: Ctrl+O/S/W/Z/Y/X/C/V/H/F/B, Ctrl+digits, single keys of the Segment Editor)
SHORTCUTS = {"accept": "Ctrl+Alt+A", "reject": "Ctrl+Alt+R", "next": "Ctrl+Alt+N", "previous": "Ctrl+Alt+B"}


class WorklistError(ValueError):
    """A worklist or its state file is missing, unreadable or inconsistent; the message names the file."""


@dataclass(frozen=True)
class WorklistStudy:
    """One reviewable row of the worklist."""

    rank: int
    name: str
    priority: float
    diagnosis: str
    result_path: Path


def state_path(csv_path: str | os.PathLike) -> Path:
    """The review state file beside the worklist (``worklist.csv`` -> ``worklist_review_state.json``)."""
    csv_path = Path(csv_path)
    return csv_path.with_name(f"{csv_path.stem}_review_state.json")


def segmentation_folder(csv_path: str | os.PathLike) -> Path:
    """Where the reviewed segmentations go (``worklist.csv`` -> ``worklist_review/``)."""
    csv_path = Path(csv_path)
    return csv_path.with_name(f"{csv_path.stem}_review")


def resolve_beside(folder: Path, value: str) -> Path:
    """A path the CLI wrote, found from the worklist's folder: as written if it exists, else the file of
    that name in ``folder`` (the CLI writes results and worklist into one folder; a relative path was
    relative to where the CLI ran, and a moved folder keeps its names)."""
    path = Path(value)
    if path.is_absolute() and path.exists():
        return path
    for candidate in (folder / path, folder / path.name):
        if candidate.exists():
            return candidate
    return path if path.is_absolute() else folder / path


def read_worklist(csv_path: str | os.PathLike) -> tuple[list[WorklistStudy], list[dict[str, str]]]:
    """The reviewable studies in rank order, and the failed rows (as read).

    Raises:
        WorklistError: no file, not a worklist (columns missing), a bad rank or priority, or no study
            with a result.
    """
    csv_path = Path(csv_path)
    try:
        with open(csv_path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
            columns = rows[0].keys() if rows else []
    except FileNotFoundError as e:
        raise WorklistError(f"{csv_path}: worklist not found") from e
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise WorklistError(f"{csv_path}: cannot read the worklist ({e})") from e
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise WorklistError(f"{csv_path}: not a MultiTaskUNet worklist (columns {missing} missing; "
                            "write one with python -m scripts.infer over several studies)")
    studies, failed = [], []
    for line, row in enumerate(rows, start=2):
        if row["status"] != "ok":
            failed.append(row)
            continue
        try:
            rank, priority = int(row["rank"]), float(row["review_priority"])
        except ValueError as e:
            raise WorklistError(f"{csv_path}, line {line}: rank {row['rank']!r} / priority "
                                f"{row['review_priority']!r} are not numbers") from e
        studies.append(WorklistStudy(rank, row["study"], priority, row["diagnosis"],
                                     resolve_beside(csv_path.parent, row["result"])))
    if not studies:
        raise WorklistError(f"{csv_path}: no study with a result to review ({len(failed)} failed)")
    studies.sort(key=lambda s: s.rank)
    names = [s.name for s in studies]
    if len(set(names)) != len(names):
        raise WorklistError(f"{csv_path}: study names repeat; each study needs its own name")
    return studies, failed


def study_input(result: Any, folder: str | os.PathLike) -> tuple[str, Path]:
    """What to load for a study: ``("file", path)`` (a volume file) or ``("dicom-folder", path)``.

    ``result``: the study's :class:`~MultiTaskUNetLib.results.StudyResult`; its ``input`` is the path the
    CLI was given, found as written or relative to the worklist's folder or the folder above it.

    Raises:
        WorklistError: the input is gone, is a zip or a URL (import it through the DICOM module and
            select it), or the segmentation is a DICOM SEG (the module reviews label maps: run the CLI
            with its default format or ``--format seg.nrrd``).
    """
    if result.segmentation_format == "dicom-seg":
        raise WorklistError(f"{result.path}: the segmentation is a DICOM SEG, which the worklist cannot open for "
                            "review; run the CLI with its default format (NIfTI) or --format seg.nrrd")
    value = result.input
    if "://" in value or value.lower().endswith(".zip"):
        raise WorklistError(f"{result.path}: the input {value} is a zip or a URL; import the study through the "
                            "DICOM module first")
    folder = Path(folder)
    path = Path(value)
    candidates = [path] if path.is_absolute() else [folder / path, folder.parent / path]
    for candidate in candidates:
        if value and candidate.exists():
            return ("dicom-folder" if candidate.is_dir() else "file"), candidate
    raise WorklistError(f"{result.path}: the study's input {value!r} was not found (looked in "
                        f"{', '.join(str(c) for c in candidates)}); run the CLI with absolute paths")


def result_series_uid(result: Any) -> str | None:
    """The SeriesInstanceUID the CLI read for the study (the result's ``source``), or None: a result
    written before the CLI recorded it, or a non-DICOM input."""
    return result.series_instance_uid


def series_to_load(series_of_files: dict[str, str], series_uid: str | None = None) -> str:
    """The series to load from a DICOM folder, ``{file: series UID}`` (UID '' when not in the database):
    ``series_uid``, the one the CLI read (:func:`result_series_uid`), when given; else the one with the most
    files, as the CLI chooses when a folder holds several.

    Raises:
        WorklistError: no file of the folder is in the DICOM database, or ``series_uid`` is not among them.
    """
    counts: dict[str, int] = {}
    for uid in series_of_files.values():
        if uid:
            counts[uid] = counts.get(uid, 0) + 1
    if not counts:
        raise WorklistError("no DICOM series was imported from the study's folder")
    if series_uid:
        if series_uid not in counts:
            raise WorklistError(f"the series the result was computed on ({series_uid}) is not in the study's folder "
                                f"(it holds {', '.join(sorted(counts))})")
        return series_uid
    return max(sorted(counts), key=lambda uid: counts[uid])


class Worklist:
    """A worklist being reviewed: its studies, where the reviewer is, and each study's saved review.

    Use :meth:`open`. ``index`` is the open study's position in priority order.
    """

    def __init__(self, csv_path: Path, studies: list[WorklistStudy], failed: list[dict[str, str]],
                 reviews: dict[str, dict[str, Any]], index: int) -> None:
        self.csv_path, self.studies, self.failed, self.reviews, self.index = csv_path, studies, failed, reviews, index

    @classmethod
    def open(cls, csv_path: str | os.PathLike) -> "Worklist":
        """Read the worklist and its saved state; resume at the study open last (else the first pending).

        Raises:
            WorklistError: see :func:`read_worklist`; or the state file is not this module's JSON.
        """
        csv_path = Path(csv_path).resolve()
        studies, failed = read_worklist(csv_path)
        path = state_path(csv_path)
        state: dict[str, Any] = {"reviews": {}, "position": None}
        if path.exists():
            try:
                state = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise WorklistError(f"{path}: review state is not readable JSON ({e})") from e
            if not isinstance(state, dict) or state.get("schema_version") != SCHEMA_VERSION:
                raise WorklistError(f"{path}: review state of an unknown version; expected {SCHEMA_VERSION}")
        names = [s.name for s in studies]
        reviews = {k: v for k, v in dict(state.get("reviews") or {}).items() if k in names}
        worklist = cls(csv_path, studies, failed, reviews, 0)
        position = state.get("position")
        worklist.index = names.index(position) if position in names else worklist.next_pending(start=0) or 0
        return worklist

    # -- where the reviewer is --------------------------------------------------------------------

    @property
    def current(self) -> WorklistStudy:
        return self.studies[self.index]

    def go_to(self, index: int) -> WorklistStudy:
        """Open the study at ``index`` (clamped to the list) and save the position."""
        self.index = min(max(index, 0), len(self.studies) - 1)
        self.save()
        return self.current

    def next(self) -> WorklistStudy:
        """The next study in priority order (stays on the last)."""
        return self.go_to(self.index + 1)

    def previous(self) -> WorklistStudy:
        """The previous study (stays on the first)."""
        return self.go_to(self.index - 1)

    def next_pending(self, start: Optional[int] = None) -> Optional[int]:
        """Index of the first undecided study from ``start`` (default: after the open one), wrapping
        around; None when every study is decided."""
        start = self.index + 1 if start is None else start
        n = len(self.studies)
        for i in (k % n for k in range(start, start + n)):
            if self.decision(self.studies[i].name) not in DECIDED:
                return i
        return None

    # -- review state -----------------------------------------------------------------------------

    def decision(self, name: str) -> str:
        """``pending | accepted | edited | rejected`` of a study."""
        return str(self.reviews.get(name, {}).get("record", {}).get("decision", "pending"))

    def review(self, name: str) -> Optional[dict[str, Any]]:
        """The saved review of a study: ``{"record": {...}, "segmentation": "<file>" | None}``, or None."""
        return self.reviews.get(name)

    def saved_segmentation(self, name: str) -> Optional[Path]:
        """The study's segmentation as the reviewer left it, if saved and still there."""
        file = (self.reviews.get(name) or {}).get("segmentation")
        path = segmentation_folder(self.csv_path) / file if file else None
        return path if path is not None and path.is_file() else None

    def segmentation_path(self, name: str) -> Path:
        """Where the module saves the study's segmentation (``<stem>_review/<study>.seg.nrrd``)."""
        return segmentation_folder(self.csv_path) / f"{safe_stem(name)}.seg.nrrd"

    def record(self, name: str, record: dict[str, Any], segmentation: Optional[str | os.PathLike] = None) -> None:
        """Save a study's review record (and the file of its saved segmentation), atomically.

        Raises:
            WorklistError: ``name`` is not a study of this worklist.
        """
        if name not in {s.name for s in self.studies}:
            raise WorklistError(f"{self.csv_path}: no study {name!r} in this worklist")
        self.reviews[name] = {"record": dict(record), "segmentation": Path(segmentation).name if segmentation else None}
        self.save()

    def progress(self) -> tuple[int, int]:
        """``(decided, total)`` studies."""
        return sum(self.decision(s.name) in DECIDED for s in self.studies), len(self.studies)

    def describe(self) -> str:
        """One line for the panel, e.g. ``Study 2 of 12: brain_07 (priority 0.81, glioma) - accepted; 5 of 12 reviewed``."""
        s, (done, total) = self.current, self.progress()
        return (f"Study {self.index + 1} of {total}: {s.name} (priority {s.priority:.2f}, {s.diagnosis}) - "
                f"{self.decision(s.name)}; {done} of {total} reviewed")

    def save(self) -> Path:
        """Write the state file beside the worklist, atomically."""
        state = {"schema_version": SCHEMA_VERSION, "worklist": self.csv_path.name, "position": self.current.name,
                 "reviews": self.reviews}
        return write_text_atomic(state_path(self.csv_path), json.dumps(state, indent=2, sort_keys=True) + "\n")
