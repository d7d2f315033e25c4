"""The radiologist's review of one result: decision, diagnosis override, comment, audit trail.

A :class:`ReviewRecord` starts *pending* from a result. The reviewer accepts or rejects the
segmentation, may override the diagnosis and add a comment; editing the segment after a decision
sends the record back to *pending*, because the decision was about a segmentation that no longer
exists. Every change is appended to ``history``. The record serialises to JSON for a node attribute
(saved with the scene) and for export next to the segmentation files.
"""

from __future__ import annotations

import getpass
import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Optional

SCHEMA_VERSION = 1


class Decision(str, Enum):
    """Where the review stands. ``edited``: accepted after the reviewer changed the segment."""

    PENDING = "pending"
    ACCEPTED = "accepted"
    EDITED = "edited"
    REJECTED = "rejected"


class ReviewError(ValueError):
    """A review action or a serialised record is invalid."""


def now_iso() -> str:
    """Current UTC time, ISO 8601 with seconds (what the record stores)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def default_reviewer() -> str:
    """The operating-system user name, the default for "who" (editable in the panel)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user database entry (containers)
        return ""


def label_digest(array: Any) -> str:
    """SHA-256 of a label map's voxels and shape: tells whether the reviewer edited the segments.

    ``array`` is anything numpy-like; shape and dtype take part so a resampled map is a change too.
    """
    import numpy as np  # numpy is in Slicer and in every environment that runs the tests

    a = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{a.shape}{a.dtype.str}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


@dataclass
class ReviewRecord:
    """Review of one study's result. Times are ISO 8601 UTC strings."""

    model_name: str
    model_version: str
    model_sha256: str
    classes: list[str]
    original_diagnosis: str
    original_probabilities: dict[str, float]
    final_diagnosis: str
    original_digest: str = ""
    current_digest: str = ""
    decision: Decision = Decision.PENDING
    segment_edited: bool = False
    comment: str = ""
    reviewer: str = ""
    reviewed_at: str = ""
    created_at: str = field(default_factory=now_iso)
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_result(cls, result: Any, original_digest: str = "", created_at: Optional[str] = None) -> "ReviewRecord":
        """A pending record for a :class:`~MultiTaskUNetLib.results.StudyResult`."""
        return cls(model_name=result.model_name, model_version=result.model_version, model_sha256=result.model_sha256,
                   classes=list(result.probabilities), original_diagnosis=result.diagnosis,
                   original_probabilities=dict(result.probabilities), final_diagnosis=result.diagnosis,
                   original_digest=original_digest, created_at=created_at or now_iso())

    @property
    def diagnosis_overridden(self) -> bool:
        """The reviewer's diagnosis differs from the model's."""
        return self.final_diagnosis != self.original_diagnosis

    def _log(self, action: str, reviewer: str, when: Optional[str], **details: Any) -> None:
        self.history.append({"action": action, "reviewer": reviewer, "at": when or now_iso(), **details})

    def _decide(self, decision: Decision, reviewer: str, when: Optional[str]) -> None:
        if not reviewer.strip():
            raise ReviewError("a review decision needs the reviewer's name")
        self.decision, self.reviewer, self.reviewed_at = decision, reviewer.strip(), when or now_iso()
        self._log(decision.value, self.reviewer, self.reviewed_at)

    def accept(self, reviewer: str, when: Optional[str] = None) -> None:
        """Accept the segmentation as it is now (``edited`` if the reviewer changed it).

        Raises:
            ReviewError: empty reviewer name.
        """
        self._decide(Decision.EDITED if self.segment_edited else Decision.ACCEPTED, reviewer, when)

    def reject(self, reviewer: str, when: Optional[str] = None) -> None:
        """Reject the segmentation (it stays in the scene, marked rejected, and is exported as such).

        Raises:
            ReviewError: empty reviewer name.
        """
        self._decide(Decision.REJECTED, reviewer, when)

    def note_segment_state(self, current_digest: str, reviewer: str = "", when: Optional[str] = None) -> bool:
        """Record the segmentation's current digest; returns whether it differs from the model's.

        A change since the last call is logged, and after a decision it reopens the review
        (``pending``): the decision was about a segmentation that no longer exists.

        Raises:
            ReviewError: the record has no digest of the model's segmentation to compare with.
        """
        if not self.original_digest:
            raise ReviewError("review record has no digest of the model's segmentation to compare with")
        if current_digest != (self.current_digest or self.original_digest):
            self._log("segment edited", reviewer.strip(), when, digest=current_digest)
            self.decision = Decision.PENDING
        self.current_digest = current_digest
        self.segment_edited = current_digest != self.original_digest
        return self.segment_edited

    def override_diagnosis(self, label: str, reviewer: str, when: Optional[str] = None) -> None:
        """Set the reviewer's diagnosis (the model's stays in ``original_diagnosis``).

        Raises:
            ReviewError: ``label`` is not one of the model's classes, or empty reviewer name.
        """
        if label not in self.classes:
            raise ReviewError(f"diagnosis {label!r} is not one of the classes {self.classes}")
        if not reviewer.strip():
            raise ReviewError("a diagnosis override needs the reviewer's name")
        if label != self.final_diagnosis:
            self._log("diagnosis", reviewer.strip(), when, previous=self.final_diagnosis, new=label)
            self.final_diagnosis = label

    def set_comment(self, text: str, reviewer: str = "", when: Optional[str] = None) -> None:
        """Replace the free-text comment."""
        if text != self.comment:
            self.comment = text
            self._log("comment", reviewer.strip(), when)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary (with ``schema_version`` and ``diagnosis_overridden``)."""
        d = asdict(self)
        d["decision"] = self.decision.value
        d["diagnosis_overridden"] = self.diagnosis_overridden
        d["schema_version"] = SCHEMA_VERSION
        return d

    def to_json(self) -> str:
        """Compact JSON for a node attribute; :meth:`from_json` reads it back."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ReviewRecord":
        """Parse a record written by :meth:`to_json`.

        Raises:
            ReviewError: not JSON, unknown schema version, missing field, or unknown decision.
        """
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ReviewError(f"review record is not valid JSON ({e})") from e
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: Any) -> "ReviewRecord":
        """A record from the parsed JSON of :meth:`to_json` (``d`` is not changed).

        Raises:
            ReviewError: unknown schema version, missing field, or unknown decision.
        """
        if not isinstance(d, dict) or d.get("schema_version") != SCHEMA_VERSION:
            raise ReviewError(f"review record has schema version {d.get('schema_version') if isinstance(d, dict) else None!r}, expected {SCHEMA_VERSION}")
        d = {k: v for k, v in d.items() if k not in ("schema_version", "diagnosis_overridden")}
        try:
            d["decision"] = Decision(d.get("decision"))
        except ValueError as e:
            raise ReviewError(f"review record has unknown decision {d.get('decision')!r}") from e
        try:
            record = cls(**d)
        except TypeError as e:
            raise ReviewError(f"review record fields do not match ({e})") from e
        if record.final_diagnosis not in record.classes:
            raise ReviewError(f"review record's final diagnosis {record.final_diagnosis!r} is not one of {record.classes}")
        return record
