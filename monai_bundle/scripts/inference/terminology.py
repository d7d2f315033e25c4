"""DICOM / SNOMED CT terminology: display colours and codes of the segments, codes of the classes.

DICOM SEG needs a segmented property category and type for each segment; 3D Slicer reads the same
codes from a ``.seg.nrrd`` ``TerminologyEntry`` tag. A segment name is matched by keyword; one we
do not know is written as the generic "Tissue" so that the export still succeeds.

The DICOM SR (:mod:`scripts.inference.dicom_sr`) codes the diagnosis with :func:`class_code`: a
class name is matched by keyword to a SNOMED CT concept; one we do not know gets a code of the
project's own scheme :data:`LOCAL_SCHEME` (value and meaning = the class name), which the SR
declares, rather than a wrong SNOMED code.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from scripts.core.tasks import TUMOR_FREE_NAMES


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


# Diagnosis classes: a word of the class name starting with a keyword -> SNOMED CT concept ("abnormal"
# is not "normal"); first match wins, so "no tumor" is tested before any tumour word. Where each code
# was checked: DICOM CIDs 222 and 6063 (17621005, 30807003, 21594007), the SNOMED CT International
# release notes (302820008 Intracranial meningioma), the HPO / Mondo cross-references (254956000),
# public SNOMED mappings of brain MRI findings (393564001 Glioma). 393563007 is Glioblastoma
# multiforme, not glioma.
NORMAL = Code("17621005", "SCT", "Normal")
_CLASS_CODES: tuple[tuple[tuple[str, ...], Code], ...] = (
    (TUMOR_FREE_NAMES, NORMAL),  # the names the metrics and the contradiction rule read as tumour-free
    (("glioma",), Code("393564001", "SCT", "Glioma")),
    (("mening",), Code("302820008", "SCT", "Intracranial meningioma")),
    (("pituitar",), Code("254956000", "SCT", "Pituitary adenoma")),
    (("malignan",), Code("21594007", "SCT", "Malignant")),
    (("benign",), Code("30807003", "SCT", "Benign")),
)
#: coding scheme of the classes without a SNOMED CT concept (a private DICOM scheme: "99" prefix)
LOCAL_SCHEME = "99MTUNET"
_CODE_VALUE_MAX = 16  # DICOM Code Value is SH: 16 characters at most


def class_code(name: str) -> Code:
    """SNOMED CT concept of diagnosis class ``name``; a :data:`LOCAL_SCHEME` code if none fits.

    Raises:
        ValueError: ``name`` is empty.
    """
    if not name.strip():
        raise ValueError("class name must not be empty")
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    joined = "_".join(words)  # "No Tumor" -> "no_tumor"
    for keywords, code in _CLASS_CODES:
        if any(("_" in k and k in joined) or any(w.startswith(k) for w in words) for k in keywords):
            return code
    value = "".join(c if c.isascii() and c.isalnum() else "_" for c in name.strip())
    if len(value) > _CODE_VALUE_MAX:  # a digest keeps two long names that share a start apart
        value = value[:_CODE_VALUE_MAX - 5] + "_" + hashlib.sha256(name.strip().encode()).hexdigest()[:4]
    return Code(value, LOCAL_SCHEME, name.strip())


def segment_term(name: str, value: int) -> SegmentTerm:
    """Terminology and colour for segment ``name`` with label value ``value`` (>= 1)."""
    lower = name.lower()
    for keywords, term in _TERMS:
        if any(k in lower for k in keywords):
            return term
    return SegmentTerm(TISSUE, TISSUE, _FALLBACK_COLORS[(value - 1) % len(_FALLBACK_COLORS)])


def hex_color(rgb: tuple[int, int, int]) -> str:
    """``#rrggbb`` of an sRGB colour 0..255 (a result's segment ``color``)."""
    return "#" + "".join(f"{int(c):02x}" for c in rgb)


def rgb_color(text: str) -> tuple[int, int, int]:
    """The sRGB colour 0..255 of ``#rrggbb`` (a result's segment ``color``), the inverse of :func:`hex_color`.

    Raises:
        ValueError: ``text`` is not ``#rrggbb``.
    """
    if not re.fullmatch(r"#[0-9a-fA-F]{6}", text or ""):
        raise ValueError(f"color {text!r} is not #rrggbb")
    return tuple(int(text[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def slicer_terminology_tag(term: SegmentTerm) -> str:
    """The ``TerminologyEntry`` value 3D Slicer stores in a ``.seg.nrrd`` segment's tags.

    The context is the DICOM master list, the one the Slicer module sets on the segments it creates
    (``MultiTaskUNetLib.terminology``): a ``.seg.nrrd`` from the worker and one saved from Slicer agree.
    """
    cat, typ = term.category, term.type
    return (f"Segmentation category and type - DICOM master list~{cat.scheme}^{cat.value}^{cat.meaning}"
            f"~{typ.scheme}^{typ.value}^{typ.meaning}~^^~Anatomic codes - DICOM master list~^^~^^")
