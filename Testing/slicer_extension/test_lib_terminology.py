"""MultiTaskUNetLib.terminology: segment names -> SNOMED CT codes, colors, Slicer's string format."""

import pytest

from MultiTaskUNetLib.terminology import (ABNORMAL, BRAIN, NEOPLASM, TISSUE, Code, color_to_hex, hex_to_color,
                                          parse_slicer_string, segment_terminologies, terminologies,
                                          terminology_for_segment)


@pytest.mark.parametrize("name, code_value, meaning", [
    ("tumor", "108369006", "Neoplasm"),
    ("Tumour", "108369006", "Neoplasm"),
    ("GD-enhancing tumor", "108369006", "Neoplasm"),
    ("peritumoral_edema", "79654002", "Edema"),  # the specific word wins over "tumor"
    ("necrotic tumor core", "6574001", "Necrosis"),
    ("mass", "108369006", "Neoplasm"),
])
def test_known_names(name, code_value, meaning):
    t = terminology_for_segment(name)
    assert (t.type.scheme, t.type.value, t.type.meaning) == ("SCT", code_value, meaning)
    assert t.category == ABNORMAL and t.known and t.name == name


def test_unknown_name_still_exportable():
    a, b = terminology_for_segment("label_7", value=1), terminology_for_segment("label_8", value=2)
    assert not a.known and a.type == TISSUE and a.category == TISSUE
    assert a.color != b.color  # neighbours stay distinguishable


def test_slicer_string_format():
    t = terminology_for_segment("tumor", anatomic_region=BRAIN)
    s = t.to_slicer_string()
    assert s == ("Segmentation category and type - DICOM master list"
                 "~SCT^49755003^Morphologically Altered Structure~SCT^108369006^Neoplasm~^^"
                 "~Anatomic codes - DICOM master list~SCT^12738006^Brain~^^")
    parsed = parse_slicer_string(s)
    assert parsed == {"category": ABNORMAL, "type": NEOPLASM, "type_modifier": None, "anatomic_region": BRAIN,
                      "anatomic_region_modifier": None}


def test_slicer_string_without_region():
    parsed = parse_slicer_string(terminology_for_segment("edema").to_slicer_string())
    assert parsed["anatomic_region"] is None and parsed["type"] == Code("SCT", "79654002", "Edema")


@pytest.mark.parametrize("text, match", [
    ("a~b", "expected 7 '~'-separated fields, got 2"),
    ("ctx~SCT^1~SCT^2^x~^^~actx~^^~^^", "'SCT\\^1' is not 'scheme\\^value\\^meaning'"),
])
def test_bad_slicer_strings(text, match):
    with pytest.raises(ValueError, match=match):
        parse_slicer_string(text)


def test_empty_name():
    with pytest.raises(ValueError, match="segment name is empty"):
        terminology_for_segment("  ")


def test_one_entry_per_segment_of_a_result():
    terms = terminologies([("tumor", 1), ("edema", 2), ("whatever", 4)])
    assert sorted(terms) == [1, 2, 4]
    assert [terms[v].type.meaning for v in (1, 2, 4)] == ["Neoplasm", "Edema", "Tissue"]


def test_color_to_hex():
    assert color_to_hex((1.0, 0.0, 0.5)) == "#ff0080"
    assert color_to_hex((1.2, -0.1, 0.0)) == "#ff0000"


@pytest.mark.parametrize("name, value", [("tumor", 1), ("peritumoral edema", 2), ("necrotic core", 3),
                                         ("enhancing tumor", 4), ("lesion", 1), ("label_5", 5), ("vessel", 2)])
def test_same_codes_and_colors_as_the_bundle(name, value):
    """The segmentation the module shows must look and be coded like the worker's own outputs."""
    from scripts.inference.terminology import segment_term, slicer_terminology_tag

    ours, bundle = terminology_for_segment(name, value), segment_term(name, value)
    assert ours.to_slicer_string() == slicer_terminology_tag(bundle)  # the .seg.nrrd tag the worker writes
    assert (ours.category.value, ours.category.scheme, ours.category.meaning) == \
        (bundle.category.value, bundle.category.scheme, bundle.category.meaning)
    assert (ours.type.value, ours.type.scheme, ours.type.meaning) == (bundle.type.value, bundle.type.scheme, bundle.type.meaning)
    assert tuple(round(c * 255) for c in ours.color) == bundle.color


# ---------------------------------------------------------------- from the result (the worker's table)


def _segment(name, value, terminology=None, color=None):
    from MultiTaskUNetLib.results import SegmentInfo

    return SegmentInfo(name, value, 10, 0.5, terminology, color)


@pytest.mark.parametrize("name, value", [("tumor", 1), ("peritumoral edema", 2), ("label_5", 5)])
def test_terms_from_the_result_are_the_workers(name, value):
    """A result of the current worker carries each segment's string and colour (the bundle's table): taken as they are."""
    from scripts.inference.terminology import hex_color, segment_term, slicer_terminology_tag

    bundle = segment_term(name, value)
    term = segment_terminologies([_segment(name, value, slicer_terminology_tag(bundle), hex_color(bundle.color))])[value]
    assert term.to_slicer_string() == slicer_terminology_tag(bundle) and term.name == name
    assert color_to_hex(term.color) == hex_color(bundle.color)
    assert term.known == (bundle.type.meaning != "Tissue")


def test_the_result_wins_over_the_keyword_rule():
    """What the worker wrote is used, also where this module's fallback rule would say otherwise."""
    edema = "Segmentation category and type - DICOM master list~SCT^49755003^Morphologically Altered Structure" \
            "~SCT^79654002^Edema~^^~Anatomic codes - DICOM master list~^^~^^"
    term = segment_terminologies([_segment("tumor", 1, edema, "#00ff00")], anatomic_region=BRAIN)[1]
    assert term.type == Code("SCT", "79654002", "Edema") and term.color == (0.0, 1.0, 0.0)
    assert parse_slicer_string(term.to_slicer_string())["anatomic_region"] == BRAIN  # the module's region added


def test_results_written_before_the_terms_fall_back_to_the_keyword_rule():
    terms = segment_terminologies([_segment("tumor", 1), _segment("whatever", 2)])
    assert terms[1] == terminology_for_segment("tumor", 1) and terms[2] == terminology_for_segment("whatever", 2)


@pytest.mark.parametrize("text", ["e62828", "#e6282", "#gg0000", ""])
def test_bad_hex_colors(text):
    with pytest.raises(ValueError, match="is not #rrggbb"):
        hex_to_color(text)


def test_hex_round_trip():
    assert hex_to_color("#e62828") == (230 / 255, 40 / 255, 40 / 255) and color_to_hex(hex_to_color("#E62828")) == "#e62828"
