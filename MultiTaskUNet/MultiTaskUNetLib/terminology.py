"""Standard terminology (name, color, SNOMED CT codes) for the segments a model produces.

DICOM SEG export needs every segment to carry a coded category and type; 3D Slicer stores them as
one string per segment::

    <context>~<category>~<type>~<type modifier>~<anatomic context>~<region>~<region modifier>

where each coded term is ``scheme^value^meaning`` (empty: ``^^``). The worker writes each segment's
entry and colour into the result (the bundle's ``scripts/inference/terminology.py`` is the one table);
:func:`segment_terminologies` takes them from there. Only results written before the worker did so
fall back to this module's keyword rule (``tumor`` -> Neoplasm; an unknown name still gets a valid
entry, ``Tissue``, so export works, and the caller can tell: ``known`` is False).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional

SEGMENTATION_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass(frozen=True)
class Code:
    """One coded term: coding scheme designator, code value, code meaning."""

    scheme: str
    value: str
    meaning: str

    def __str__(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"


#: SNOMED CT "Morphologically abnormal structure" (DICOM CID 7150 category)
ABNORMAL = Code("SCT", "49755003", "Morphologically Altered Structure")
TISSUE = Code("SCT", "85756007", "Tissue")
NEOPLASM = Code("SCT", "108369006", "Neoplasm")
EDEMA = Code("SCT", "79654002", "Edema")
NECROSIS = Code("SCT", "6574001", "Necrosis")
BRAIN = Code("SCT", "12738006", "Brain")
BREAST = Code("SCT", "76752008", "Breast")


def _rgb(r: int, g: int, b: int) -> tuple[float, float, float]:
    return (r / 255.0, g / 255.0, b / 255.0)


# FALLBACK ONLY, for results written before the worker put each segment's terminology and colour into the
# result (the bundle's configs/result.schema.json); results of the current worker never come here.
# Keyword in the segment name -> (type code, display color); first match wins, so the specific words
# come first. Same codes and colors as the bundle's scripts/inference/terminology.py (the overlay and
# .seg.nrrd the worker writes); Testing/slicer_extension/test_lib_terminology.py checks that the two agree.
_KEYWORDS: tuple[tuple[tuple[str, ...], Code, tuple[float, float, float]], ...] = (
    (("edema", "oedema"), EDEMA, _rgb(255, 214, 0)),
    (("necro",), NECROSIS, _rgb(139, 69, 19)),
    (("enhanc",), NEOPLASM, _rgb(255, 64, 64)),
    (("tumor", "tumour", "lesion", "mass", "neoplasm", "cancer", "nodule"), NEOPLASM, _rgb(230, 40, 40)),
)
# colors for segments the keywords do not know (by label value), so neighbours stay distinguishable
_PALETTE = (_rgb(60, 120, 255), _rgb(0, 200, 120), _rgb(200, 0, 200), _rgb(255, 140, 0))


@dataclass(frozen=True)
class SegmentTerminology:
    """Name, color and codes of one segment, convertible to Slicer's terminology string."""

    name: str
    color: tuple[float, float, float]
    category: Code
    type: Code
    type_modifier: Optional[Code] = None
    anatomic_region: Optional[Code] = None
    known: bool = True  # False: no keyword matched and the generic ``Tissue`` code was used

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


def terminology_for_segment(name: str, value: int = 1, anatomic_region: Optional[Code] = None) -> SegmentTerminology:
    """Terminology for a segment named by the model; ``value`` (its label value) picks a fallback color.

    Raises:
        ValueError: empty name.
    """
    if not name.strip():
        raise ValueError("segment name is empty")
    words = name.lower()
    for keys, code, color in _KEYWORDS:
        if any(k in words for k in keys):
            return SegmentTerminology(name=name, color=color, category=ABNORMAL, type=code,
                                      anatomic_region=anatomic_region)
    return SegmentTerminology(name=name, color=_PALETTE[(value - 1) % len(_PALETTE)], category=TISSUE, type=TISSUE,
                              anatomic_region=anatomic_region, known=False)


def terminologies(segments: Iterable[tuple[str, int]], anatomic_region: Optional[Code] = None) -> dict[int, SegmentTerminology]:
    """``{label value: terminology}`` for ``(name, value)`` pairs by the keyword rule (results without terminology)."""
    return {value: terminology_for_segment(name, value, anatomic_region) for name, value in segments}


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
                              anatomic_region=anatomic_region or codes["anatomic_region"], known=codes["type"] != TISSUE)


def segment_terminologies(segments: Iterable[Any], anatomic_region: Optional[Code] = None) -> dict[int, SegmentTerminology]:
    """``{label value: terminology}`` of a result's segments (``name``, ``value``, ``terminology``, ``color``):
    as the result gives them; by the keyword rule for a segment without them (a result written before
    the worker wrote terminology).

    Raises:
        ValueError: a segment's terminology or colour is malformed.
    """
    out = {}
    for s in segments:
        if s.terminology is not None and s.color is not None:
            out[s.value] = from_slicer_string(s.name, s.terminology, s.color, anatomic_region)
        else:
            out[s.value] = terminology_for_segment(s.name, s.value, anatomic_region)
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
