"""Segment names -> SNOMED CT codes and colours; class names -> SNOMED CT codes."""

from __future__ import annotations

import pytest

from scripts.inference.terminology import LOCAL_SCHEME, TISSUE, Code, class_code, segment_term, slicer_terminology_tag


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


@pytest.mark.parametrize("name, code", [
    ("glioma", "393564001"), ("Low grade glioma", "393564001"), ("meningioma", "302820008"),
    ("pituitary", "254956000"), ("no_tumor", "17621005"), ("No Tumour", "17621005"), ("normal", "17621005"),
    ("benign", "30807003"), ("malignant", "21594007")])
def test_class_codes_are_snomed(name, code):
    assert class_code(name) == Code(code, "SCT", class_code(name).meaning)


@pytest.mark.parametrize("name", ["abnormal", "glioblastoma", "HGG", "nonmalignant"])
def test_classes_without_a_known_concept_get_a_local_code(name):
    assert class_code(name) == Code(name, LOCAL_SCHEME, name)


def test_long_local_codes_fit_and_stay_apart():
    a, b = class_code("a class with a long name one"), class_code("a class with a long name two")
    assert len(a.value) == len(b.value) == 16 and a.value != b.value and a.meaning == "a class with a long name one"


def test_empty_class_name_refused():
    with pytest.raises(ValueError, match="class name must not be empty"):
        class_code(" ")


@pytest.mark.parametrize("name", ["no_tumor", "No Tumour", "notumor", "Normal", "healthy", "no-lesion", "No lesion"])
def test_tumor_free_names_agree_between_metrics_and_dicom(name):
    # the contradiction rule and the metrics (tasks.tumor_free_class) and the SR's coded diagnosis
    # must read the same class names as tumour-free
    from scripts.core.tasks import tumor_free_class
    assert tumor_free_class(["glioma", name]) == 1
    assert class_code(name).value == "17621005"
