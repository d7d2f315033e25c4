"""A segment's terminology (name, colour, coded category and type) as the result gives it.

DICOM SEG export needs every segment to carry a coded category and type; 3D Slicer stores them as
one string per segment::

    <context>~<category>~<type>~<type modifier>~<anatomic context>~<region>~<region modifier>

where each coded term is ``scheme^value^meaning`` (empty: ``^^``). The worker writes each segment's
entry and colour into the result (the bundle's ``scripts/inference/terminology.py`` is the one
table); this module only reads and writes that string format. It holds no codes of its own: a
result without a segment's entry or colour (written by an older worker, or by hand) is refused
with a message that says what to do (:class:`MissingTerminology`), rather than coded by a guess.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Optional

SEGMENTATION_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
#: what a user does about a result without terminology (the panel shows the message as it is)
RERUN_ADVICE = ("Run Segment & Classify again, or re-run `python -m scripts.infer` with this version's bundle, "
                "and open the new result")


class MissingTerminology(ValueError):
    """A result's segment carries no terminology entry or colour (the message names the file and segments)."""


@dataclass(frozen=True)
class Code:
    """One coded term: coding scheme designator, code value, code meaning."""

    scheme: str
    value: str
    meaning: str

    def __str__(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"


def _rgb(r: int, g: int, b: int) -> tuple[float, float, float]:
    return (r / 255.0, g / 255.0, b / 255.0)


@dataclass(frozen=True)
class SegmentTerminology:
    """Name, color and codes of one segment, convertible to Slicer's terminology string."""

    name: str
    color: tuple[float, float, float]
    category: Code
    type: Code
    type_modifier: Optional[Code] = None
    anatomic_region: Optional[Code] = None

    def to_slicer_string(self) -> str:
        """The 3D Slicer terminology entry string (the segment tag ``vtkSegment.GetTerminologyEntryTagName()``)."""
        def c(code: Optional[Code]) -> str:
            return "^^" if code is None else str(code)

        return "~".join([SEGMENTATION_CONTEXT, str(self.category), str(self.type), c(self.type_modifier),
                         ANATOMIC_CONTEXT, c(self.anatomic_region), "^^"])


def _parse_code(text: str, source: str) -> Optional[Code]:
    parts = text.split("^")
    if len(parts) != 3:
        raise ValueError(f"terminology {source!r}: {text!r} is not 'scheme^value^meaning'")
    return None if not any(parts) else Code(*parts)


def parse_slicer_string(text: str) -> dict[str, Optional[Code]]:
    """Coded terms of a Slicer terminology string: ``category``, ``type``, ``type_modifier``,
    ``anatomic_region``, ``anatomic_region_modifier`` (None where empty).

    Raises:
        ValueError: not the 7-field ``~``-separated format, or a code not ``scheme^value^meaning``.
    """
    fields = text.split("~")
    if len(fields) != 7:
        raise ValueError(f"terminology {text!r}: expected 7 '~'-separated fields, got {len(fields)}")
    names = ("category", "type", "type_modifier", None, "anatomic_region", "anatomic_region_modifier")
    return {n: _parse_code(f, text) for n, f in zip(names, fields[1:]) if n is not None}


def from_slicer_string(name: str, text: str, color: str, anatomic_region: Optional[Code] = None) -> SegmentTerminology:
    """The terminology a result gives a segment: its Slicer terminology string and ``#rrggbb`` colour.
    ``anatomic_region``, when given, replaces the string's (empty, from the worker) anatomic region.

    Raises:
        ValueError: ``text`` is not a Slicer terminology string, or ``color`` not ``#rrggbb``.
    """
    codes = parse_slicer_string(text)
    if codes["category"] is None or codes["type"] is None:
        raise ValueError(f"terminology {text!r}: no category or type")
    return SegmentTerminology(name=name, color=hex_to_color(color), category=codes["category"], type=codes["type"],
                              type_modifier=codes["type_modifier"],
                              anatomic_region=anatomic_region or codes["anatomic_region"])


def segment_terminologies(segments: Iterable[Any], anatomic_region: Optional[Code] = None,
                          source: str | os.PathLike = "result") -> dict[int, SegmentTerminology]:
    """``{label value: terminology}`` of a result's segments (``name``, ``value``, ``terminology``, ``color``),
    as the result gives them; ``source`` (the result file) names the result in errors.

    Raises:
        MissingTerminology: a segment has no ``terminology`` or ``color`` (a result written by an older
            worker, or by hand): the message names ``source``, the segments and what is missing, and
            says what to do (:data:`RERUN_ADVICE`). No codes are made up for them.
        ValueError: a segment's terminology or colour is malformed (names ``source`` and the segment).
    """
    segments = list(segments)
    missing = [(s, [f for f in ("terminology", "color") if getattr(s, f) is None]) for s in segments]
    missing = [(s, fields) for s, fields in missing if fields]
    if missing:
        listed = "; ".join(f"{s.name!r} (value {s.value}): no {' and no '.join(fields)}" for s, fields in missing)
        raise MissingTerminology(
            f"{source}: the result does not give every segment its coded terminology and colour ({listed}). "
            "It was written by an older MultiTaskUNet worker or by hand; the module takes each segment's codes "
            f"and colour only from the result and does not guess them. {RERUN_ADVICE}.")
    out = {}
    for s in segments:
        try:
            out[s.value] = from_slicer_string(s.name, s.terminology, s.color, anatomic_region)
        except ValueError as e:
            raise ValueError(f"{source}: segment {s.name!r} (value {s.value}): {e}") from e
    return out


def color_to_hex(color: tuple[float, float, float]) -> str:
    """``#rrggbb`` for a 0..1 RGB color (panel swatches, reports)."""
    return "#" + "".join(f"{round(min(1.0, max(0.0, c)) * 255):02x}" for c in color)


def hex_to_color(text: str) -> tuple[float, float, float]:
    """The 0..1 RGB color of ``#rrggbb`` (a result's segment colour).

    Raises:
        ValueError: not ``#`` and six hex digits.
    """
    digits = text[1:] if text.startswith("#") else ""
    if len(digits) != 6 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise ValueError(f"color {text!r} is not #rrggbb")
    return _rgb(int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16))
