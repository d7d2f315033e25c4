"""MultiTaskUNetLib.terminology: each segment's terminology and colour as the result gives them, Slicer's string format.

The Lib holds no code table of its own (the bundle's ``scripts/inference/terminology.py`` is the one):
a result with the entries gives exactly the bundle's strings and colours; one without them is refused.
"""

import ast
import re
from pathlib import Path

import pytest
from extension_helpers import worker_segment

from MultiTaskUNetLib.terminology import (Code, MissingTerminology, SegmentTerminology, color_to_hex, hex_to_color,
                                          parse_slicer_string, segment_terminologies)

EXTENSION = Path(__file__).resolve().parents[2] / "MultiTaskUNet"
# codes used by these tests only (the format, not a table of the extension)
ALTERED = Code("SCT", "49755003", "Morphologically Altered Structure")
NEOPLASM = Code("SCT", "108369006", "Neoplasm")
BRAIN = Code("SCT", "12738006", "Brain")
EDEMA_STRING = ("Segmentation category and type - DICOM master list~SCT^49755003^Morphologically Altered Structure"
                "~SCT^79654002^Edema~^^~Anatomic codes - DICOM master list~^^~^^")


def _segment(name, value, terminology=None, color=None):
    from MultiTaskUNetLib.results import SegmentInfo

    return SegmentInfo(name, value, 10, 0.5, terminology, color)


def test_slicer_string_format():
    t = SegmentTerminology("tumor", (0.9, 0.15, 0.15), ALTERED, NEOPLASM, anatomic_region=BRAIN)
    s = t.to_slicer_string()
    assert s == ("Segmentation category and type - DICOM master list"
                 "~SCT^49755003^Morphologically Altered Structure~SCT^108369006^Neoplasm~^^"
                 "~Anatomic codes - DICOM master list~SCT^12738006^Brain~^^")
    assert parse_slicer_string(s) == {"category": ALTERED, "type": NEOPLASM, "type_modifier": None,
                                      "anatomic_region": BRAIN, "anatomic_region_modifier": None}


def test_slicer_string_without_region():
    parsed = parse_slicer_string(EDEMA_STRING)
    assert parsed["anatomic_region"] is None and parsed["type"] == Code("SCT", "79654002", "Edema")


@pytest.mark.parametrize("text, match", [
    ("a~b", "expected 7 '~'-separated fields, got 2"),
    ("ctx~SCT^1~SCT^2^x~^^~actx~^^~^^", "'SCT\\^1' is not 'scheme\\^value\\^meaning'"),
])
def test_bad_slicer_strings(text, match):
    with pytest.raises(ValueError, match=match):
        parse_slicer_string(text)


def test_color_to_hex():
    assert color_to_hex((1.0, 0.0, 0.5)) == "#ff0080"
    assert color_to_hex((1.2, -0.1, 0.0)) == "#ff0000"


@pytest.mark.parametrize("text", ["e62828", "#e6282", "#gg0000", ""])
def test_bad_hex_colors(text):
    with pytest.raises(ValueError, match="is not #rrggbb"):
        hex_to_color(text)


def test_hex_round_trip():
    assert hex_to_color("#e62828") == (230 / 255, 40 / 255, 40 / 255) and color_to_hex(hex_to_color("#E62828")) == "#e62828"


# ---------------------------------------------------------------- from the result (the bundle's table)


@pytest.mark.parametrize("name, value", [("tumor", 1), ("peritumoral edema", 2), ("necrotic core", 3),
                                         ("enhancing tumor", 4), ("lesion", 1), ("label_5", 5), ("vessel", 2)])
def test_a_result_with_entries_gives_exactly_the_bundles_strings_and_colours(name, value):
    from scripts.inference.terminology import hex_color, segment_term, slicer_terminology_tag

    bundle = segment_term(name, value)
    term = segment_terminologies([worker_segment(name, value)])[value]
    assert term.name == name and term.to_slicer_string() == slicer_terminology_tag(bundle)
    assert color_to_hex(term.color) == hex_color(bundle.color)
    assert tuple(round(c * 255) for c in term.color) == bundle.color


def test_the_result_is_taken_as_it_is():
    """What the worker wrote is used whatever the segment is called; a caller's anatomic region is added."""
    term = segment_terminologies([_segment("tumor", 1, EDEMA_STRING, "#00ff00")], anatomic_region=BRAIN)[1]
    assert term.type == Code("SCT", "79654002", "Edema") and term.color == (0.0, 1.0, 0.0)
    assert parse_slicer_string(term.to_slicer_string())["anatomic_region"] == BRAIN


def test_a_result_without_entries_is_refused_with_what_to_do():
    """An older worker's (or hand-made) result: a clear message naming the file, no invented codes."""
    segments = [_segment("tumor", 1), _segment("edema", 2, EDEMA_STRING), worker_segment("necrosis", 3)]
    with pytest.raises(MissingTerminology) as e:
        segment_terminologies(segments, source="/data/out/case1_result.json")
    text = str(e.value)
    assert text.startswith("/data/out/case1_result.json: ")
    assert "'tumor' (value 1): no terminology and no color" in text and "'edema' (value 2): no color" in text
    assert "necrosis" not in text  # the complete segment is not named
    assert "Run Segment & Classify again, or re-run `python -m scripts.infer` with this version's bundle" in text
    assert isinstance(e.value, ValueError)  # the panel and the worklist show it as any other result problem


def test_a_malformed_entry_names_the_result_and_the_segment():
    with pytest.raises(ValueError, match=r"^r_result.json: segment 'tumor' \(value 1\): color 'red' is not #rrggbb"):
        segment_terminologies([_segment("tumor", 1, EDEMA_STRING, "red")], source="r_result.json")


def test_the_fake_worker_writes_what_the_real_worker_writes():
    """The tests' threshold worker stands in for the real one: same entry and colour for its "tumor"."""
    import importlib.util

    from scripts.inference.terminology import hex_color, segment_term, slicer_terminology_tag

    spec = importlib.util.spec_from_file_location("_fake_common", Path(__file__).parent / "fake_workers" / "_fake_common.py")
    fake = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fake)
    term = segment_term("tumor", 1)
    assert (fake.TUMOR_TERMINOLOGY, fake.TUMOR_COLOR) == (slicer_terminology_tag(term), hex_color(term.color))


# ---------------------------------------------------------------- one terminology table: the bundle's


def _extension_sources():
    return sorted(p for p in EXTENSION.rglob("*.py") if "Testing" not in p.relative_to(EXTENSION).parts)


def test_the_extension_defines_no_snomed_code_table():
    """No ``Code(...)`` with a coding scheme and value outside tests, nor a SNOMED code in the Lib or MRML
    code (the module file's self-test builds a worker-style result, so only the ``Code(`` rule applies there)."""
    sources = _extension_sources()
    assert any(p.name == "terminology.py" for p in sources)
    offenders = []
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(text)):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Code"
                    and any(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in node.args)):
                offenders.append(f"{path.relative_to(EXTENSION)}:{node.lineno}: Code(...) constant")
        if path.name != "MultiTaskUNet.py":
            for m in re.finditer(r"\bSCT\b\W{1,4}\d{5,}|\b(?:SCT|SNOMED)\b[\"']", text):
                offenders.append(f"{path.relative_to(EXTENSION)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}")
    assert not offenders, "the bundle's scripts/inference/terminology.py is the one table:\n" + "\n".join(offenders)


def test_no_keyword_rule_left_in_the_lib():
    from MultiTaskUNetLib import terminology

    for gone in ("terminology_for_segment", "terminologies", "_KEYWORDS", "_PALETTE", "NEOPLASM", "TISSUE"):
        assert not hasattr(terminology, gone), gone
