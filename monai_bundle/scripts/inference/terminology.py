"""DICOM / SNOMED CT terminology and display colours of the segments a model card names.

DICOM SEG needs a segmented property category and type for each segment; 3D Slicer reads the same
codes from a ``.seg.nrrd`` ``TerminologyEntry`` tag. A segment name is matched by keyword; one we
do not know is written as the generic "Tissue" so that the export still succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Code:
    """A coded concept (value, scheme designator, meaning), e.g. SNOMED CT ``108369006`` Neoplasm."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class SegmentTerm:
    category: Code
    type: Code
    color: tuple[int, int, int]  # sRGB 0..255, the colour of the overlay and of the Slicer segment


MORPH_ALTERED = Code("49755003", "SCT", "Morphologically Altered Structure")
TISSUE = Code("85756007", "SCT", "Tissue")

# keyword in the segment name (lower case) -> term; first match wins, so specific words come first
_TERMS: tuple[tuple[tuple[str, ...], SegmentTerm], ...] = (
    (("edema", "oedema"), SegmentTerm(MORPH_ALTERED, Code("79654002", "SCT", "Edema"), (255, 214, 0))),
    (("necro",), SegmentTerm(MORPH_ALTERED, Code("6574001", "SCT", "Necrosis"), (139, 69, 19))),
    (("enhanc",), SegmentTerm(MORPH_ALTERED, Code("108369006", "SCT", "Neoplasm"), (255, 64, 64))),
    (("tumor", "tumour", "lesion", "mass", "neoplasm", "cancer", "nodule"),
     SegmentTerm(MORPH_ALTERED, Code("108369006", "SCT", "Neoplasm"), (230, 40, 40))),
)
_FALLBACK_COLORS = ((60, 120, 255), (0, 200, 120), (200, 0, 200), (255, 140, 0))


def segment_term(name: str, value: int) -> SegmentTerm:
    """Terminology and colour for segment ``name`` with label value ``value`` (>= 1)."""
    lower = name.lower()
    for keywords, term in _TERMS:
        if any(k in lower for k in keywords):
            return term
    return SegmentTerm(TISSUE, TISSUE, _FALLBACK_COLORS[(value - 1) % len(_FALLBACK_COLORS)])


def slicer_terminology_tag(term: SegmentTerm) -> str:
    """The ``TerminologyEntry`` value 3D Slicer stores in a ``.seg.nrrd`` segment's tags.

    The context is the DICOM master list, the one the Slicer module sets on the segments it creates
    (``MultiTaskUNetLib.terminology``): a ``.seg.nrrd`` from the worker and one saved from Slicer agree.
    """
    cat, typ = term.category, term.type
    return (f"Segmentation category and type - DICOM master list~{cat.scheme}^{cat.value}^{cat.meaning}"
            f"~{typ.scheme}^{typ.value}^{typ.meaning}~^^~Anatomic codes - DICOM master list~^^~^^")
