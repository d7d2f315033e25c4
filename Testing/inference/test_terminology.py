"""Segment names -> SNOMED CT codes and colours."""

from __future__ import annotations

import pytest

from scripts.inference.terminology import TISSUE, segment_term, slicer_terminology_tag


@pytest.mark.parametrize("name, code", [("tumor", "108369006"), ("Whole Tumour", "108369006"), ("lesion", "108369006"),
                                        ("peritumoral edema", "79654002"), ("necrotic core", "6574001"),
                                        ("enhancing tumor", "108369006")])
def test_known_names(name, code):
    term = segment_term(name, 1)
    assert term.type.value == code and term.type.scheme == "SCT"
    assert term.category.value == "49755003"


def test_unknown_names_are_tissue_with_distinct_colours():
    a, b = segment_term("liver", 1), segment_term("spleen", 2)
    assert a.type == TISSUE and a.category == TISSUE
    assert a.color != b.color


def test_slicer_tag_format():
    tag = slicer_terminology_tag(segment_term("tumor", 1))
    assert tag == ("Segmentation category and type - DICOM master list~SCT^49755003^Morphologically "
                   "Altered Structure~SCT^108369006^Neoplasm~^^~Anatomic codes - DICOM master list~^^~^^")
