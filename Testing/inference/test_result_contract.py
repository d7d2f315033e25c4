"""The result contract: ``configs/result.schema.json`` and ``scripts.inference.result`` describe the same
``<name>_result.json``, every kind of result the Predictor writes fits both, and a broken one is refused
naming the file and the field.

``jsonschema`` (a development requirement, not in 3D Slicer) is the independent judge here: the schema
is a valid JSON Schema, and the contract module's own validator agrees with it on good and broken results.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import json
import re
import sys
import typing
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from infer_helpers import mni_volume, write_dicom_series
from scripts.inference import Predictor
from scripts.inference import result as contract
from scripts.inference.result import (SCHEMA_FILE, ResultError, SchemaError, load_schema, parse_result, read_result,
                                      schema_problems, validate_result)
from scripts.inference.terminology import hex_color, segment_term, slicer_terminology_tag

SCHEMA = load_schema()
JUDGE = jsonschema.Draft202012Validator(SCHEMA)


def _nifti(volume: np.ndarray, path: Path, spacing=(2.0, 2.0, 3.0)) -> Path:
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.T))
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def _png(path: Path) -> Path:
    image = np.zeros((40, 36), np.uint8)
    image[10:22, 8:20] = 220
    Image.fromarray(image + 10).save(path)
    return path


# every kind of result the Predictor writes: (name, properties of the schema the file lacks, as dotted paths)
# ("pushed" is the batch runner's, with --push: Testing/inference/test_dicomweb.py)
KINDS = {
    "png": {"source", "pushed", "outputs.sr", "outputs.uncertainty_map"},
    "nifti-3d": {"source", "pushed", "outputs.sr", "outputs.uncertainty_map"},
    "dicom-seg-sr": {"pushed", "outputs.overlay", "outputs.uncertainty_map"},
    "tta-uncertainty-map": {"source", "pushed", "outputs.sr"},
}


@pytest.fixture(scope="module")
def written(predictor2d, predictor3d, bundle2d, tmp_path_factory) -> dict[str, Path]:
    """``{kind: result file}``, one study of each kind run through the Predictor."""
    work = tmp_path_factory.mktemp("contract")
    brain = np.ascontiguousarray(mni_volume(8)[20:70, 30:80])  # 50 x 50 x 8 of real brain
    tta = Predictor.from_bundle(bundle2d, device="cpu", tta=True)
    write_dicom_series(mni_volume(6), work / "series", spacing=(2.0, 2.0, 3.0))
    runs = {
        "png": (predictor2d, _png(work / "scan.png"), {}),
        "nifti-3d": (predictor3d, _nifti(brain, work / "brain.nii.gz"), {}),
        "dicom-seg-sr": (predictor2d, work / "series", {"seg_format": "dicom-seg", "overlay": False}),
        "tta-uncertainty-map": (tta, _nifti(brain, work / "tta.nii.gz"), {"seg_format": "seg.nrrd", "uncertainty_map": True}),
    }
    out = {}
    for kind, (predictor, source, options) in runs.items():
        out[kind] = predictor.predict(source, output_dir=work / kind, **options).paths["result"]
    return out


def _absent(data, schema: dict, where: str = "") -> set[str]:
    """Dotted paths of the schema's properties that ``data`` lacks (objects of lists: their first item)."""
    if "$ref" in schema:
        return _absent(data, SCHEMA["$defs"][schema["$ref"].split("/")[-1]], where)
    found = set()
    if isinstance(data, dict):
        for key, sub in schema.get("properties", {}).items():
            path = f"{where}.{key}" if where else key
            found |= _absent(data[key], sub, path) if key in data else {path}
    if isinstance(data, list) and data and "items" in schema:
        found |= _absent(data[0], schema["items"], where)
    return found


def _undocumented(data, schema: dict, where: str = "") -> set[str]:
    """Dotted paths of fields in ``data`` that the schema does not describe."""
    if "$ref" in schema:
        return _undocumented(data, SCHEMA["$defs"][schema["$ref"].split("/")[-1]], where)
    found = set()
    if isinstance(data, dict):
        properties, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for key, value in data.items():
            path = f"{where}.{key}" if where else key
            if key in properties:
                found |= _undocumented(value, properties[key], path)
            elif isinstance(extra, dict):
                found |= _undocumented(value, extra, path)
            else:
                found.add(path)
    if isinstance(data, list) and "items" in schema:
        for item in data:
            found |= _undocumented(item, schema["items"], where)
    return found


def _same(typed, data, where: str = "result") -> None:
    """The typed result holds exactly what the JSON holds: every value equal, every absent property None."""
    if dataclasses.is_dataclass(typed):
        names = [f.name for f in dataclasses.fields(typed) if f.name not in contract.NOT_IN_JSON]
        assert set(data) <= set(names), f"{where}: {set(data) - set(names)} not typed"
        for name in names:
            if name in data:
                _same(getattr(typed, name), data[name], f"{where}.{name}")
            else:
                assert getattr(typed, name) is None, f"{where}.{name}: absent in the file, but typed as {getattr(typed, name)!r}"
    elif isinstance(data, list):
        assert isinstance(typed, tuple) and len(typed) == len(data), where
        for i, (t, d) in enumerate(zip(typed, data)):
            _same(t, d, f"{where}[{i}]")
    elif isinstance(data, dict):
        assert typed == data and list(typed) == list(data), where  # a map (probabilities, timings): same order too
    else:
        assert typed == data and (typed is None) == (data is None), f"{where}: {typed!r} != {data!r}"


# ---------------------------------------------------------------- the schema and the typed module agree


def test_the_schema_is_json_schema_and_the_validator_implements_every_keyword_it_uses():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA_FILE == Path(contract.__file__).resolve().parents[2] / "configs" / "result.schema.json"
    assert SCHEMA_FILE.read_text(encoding="utf-8") == json.dumps(SCHEMA, indent=4, ensure_ascii=False) + "\n"


def test_a_schema_with_a_keyword_the_validator_lacks_is_refused(tmp_path):
    schema = copy.deepcopy(SCHEMA)
    schema["$defs"]["Segment"]["properties"]["voxels"]["exclusiveMaximum"] = 10
    (tmp_path / "s.json").write_text(json.dumps(schema), encoding="utf-8")
    with pytest.raises(SchemaError, match=r"s\.json: keywords \['exclusiveMaximum'\] at '/\$defs/Segment/properties/voxels'"):
        load_schema(tmp_path / "s.json")


@pytest.mark.parametrize("name", sorted(SCHEMA["$defs"]))
def test_each_typed_class_has_the_properties_of_its_schema_object(name):
    """One class per object of the schema, a field per property; a field has a default iff it is not required."""
    cls, schema = getattr(contract, name), SCHEMA["$defs"][name]
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in contract.NOT_IN_JSON}
    assert set(fields) == set(schema["properties"])
    required = {n for n, f in fields.items()
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    assert required == set(schema.get("required", ()))
    hints = typing.get_type_hints(cls)
    for prop, sub in schema["properties"].items():  # a property that refers to an object is typed as its class
        if "$ref" in sub:
            assert sub["$ref"].split("/")[-1] in str(hints[prop]), (name, prop)


def test_the_contract_module_needs_only_the_standard_library():
    """The Slicer module loads this file in Slicer's Python: no torch, numpy, or the bundle's own package."""
    tree = ast.parse(Path(contract.__file__).read_text(encoding="utf-8"), feature_version=(3, 9))  # as the Lib's files
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree))
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


# ---------------------------------------------------------------- every result the Predictor writes


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_of_predictor_result_fits_the_schema_and_reads_back_whole(written, kind):
    data = json.loads(written[kind].read_text(encoding="utf-8"))
    JUDGE.validate(data)  # jsonschema's verdict
    assert schema_problems(data) == []  # the contract module's
    assert _undocumented(data, SCHEMA) == set(), "the Predictor writes a field the schema does not describe"
    assert _absent(data, SCHEMA) == KINDS[kind], "the Predictor no longer writes a property the schema describes"
    result = read_result(written[kind])
    assert result.file == written[kind] and result.raw == data
    _same(result, data)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_segment_carries_its_terminology_and_colour(written, kind):
    result = read_result(written[kind])
    assert result.segmentation.segments
    for s in result.segmentation.segments:
        term = segment_term(s.name, s.value)
        assert s.terminology == slicer_terminology_tag(term) and s.color == hex_color(term.color)
    assert hex_color((230, 40, 40)) == "#e62828"


def test_what_each_kind_records(written):
    png, volume, dicom, tta = (read_result(written[k]) for k in ("png", "nifti-3d", "dicom-seg-sr", "tta-uncertainty-map"))
    assert png.segmentation.format == "png" and png.segmentation.tumor_ml is None and png.segmentation.tumor_voxels > 0
    assert volume.segmentation.format == "nifti" and volume.segmentation.tumor_ml > 0
    assert dicom.segmentation.format == "dicom-seg" and Path(dicom.outputs.sr).is_file()
    assert dicom.source.series_instance_uid and dicom.source.study_instance_uid
    assert tta.tta is True and 0.0 <= tta.segmentation.uncertainty <= 1.0 and Path(tta.outputs.uncertainty_map).is_file()
    assert png.tta is False and png.segmentation.uncertainty is None  # null: not measured
    for r in (png, volume, dicom, tta):
        assert r.diagnosis.position == r.diagnosis.index and 0.0 <= r.review_priority <= 1.0


# ---------------------------------------------------------------- broken results are refused


def _set(data: dict, dotted: str, value) -> dict:
    """``data`` with the field at ``dotted`` (``segmentation.segments.0.voxels``) set, or deleted (``KeyError``)."""
    data = copy.deepcopy(data)
    *parents, key = dotted.split(".")
    target = data
    for p in parents:
        target = target[int(p)] if isinstance(target, list) else target[p]
    key = int(key) if isinstance(target, list) else key
    if value is KeyError:
        del target[key]
    else:
        target[key] = value
    return data


BROKEN = [  # (field, new value or KeyError to delete it, what the message says)
    ("diagnosis.label", KeyError, "result lacks 'diagnosis.label'"),
    ("segmentation", KeyError, "result lacks 'segmentation'"),
    ("segmentation.segments.0.name", KeyError, r"result lacks 'segmentation\.segments\[0\]\.name'"),
    ("model.sha256", KeyError, r"result lacks 'model\.sha256'"),
    ("segmentation.segments.0.voxels", "many", r"'segmentation\.segments\[0\]\.voxels' must be an integer, not 'many'"),
    ("segmentation.segments.0.voxels", -1, r"'segmentation\.segments\[0\]\.voxels' must be >= 0, not -1"),
    ("segmentation.segments.0.volume_ml", "1 mL", r"'segmentation\.segments\[0\]\.volume_ml' must be a number or null"),
    ("segmentation.segments.0.color", "#E62828", r"'segmentation\.segments\[0\]\.color' must match"),
    ("segmentation.segments.0.terminology", "SCT^108369006^Neoplasm", r"'segmentation\.segments\[0\]\.terminology' must match"),
    ("segmentation.format", "jpeg", r"'segmentation\.format' must be one of \['png', 'nifti', 'seg.nrrd', 'dicom-seg'\]"),
    ("segmentation.path", "", r"'segmentation\.path' must not be empty"),
    ("segmentation.uncertainty", 2, r"'segmentation\.uncertainty' must be within 0\.\.1, not 2"),
    ("diagnosis.probabilities", [0.5, 0.5], r"'diagnosis\.probabilities' must be an object"),
    ("diagnosis.calibrated", "yes", r"'diagnosis\.calibrated' must be true or false, not 'yes'"),
    ("diagnosis.index", 1.5, r"'diagnosis\.index' must be an integer, not 1\.5"),
    ("review_priority", None, r"'review_priority' must be a number, not None"),
    ("timings_s.infer", -0.1, r"'timings_s\.infer' must be >= 0"),
    ("warnings", [3], r"'warnings\[0\]' must be a string, not 3"),
    ("outputs.overlay", 1, r"'outputs\.overlay' must be a string, not 1"),
    ("tta", "on", r"'tta' must be true or false"),
    ("pushed", {"url": "http://pacs/dicom-web"}, r"result lacks 'pushed\.instances'"),
    ("input", None, r"'input' must be a string, not None"),
]


@pytest.mark.parametrize("dotted, value, message", BROKEN, ids=[b[0] + ("-gone" if b[1] is KeyError else "") for b in BROKEN])
def test_a_broken_result_is_refused_naming_the_file_and_the_field(written, tmp_path, dotted, value, message):
    data = _set(json.loads(written["png"].read_text(encoding="utf-8")), dotted, value)
    assert not JUDGE.is_valid(data)  # jsonschema refuses it too
    path = tmp_path / "scan_result.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ResultError, match=rf"^{re.escape(str(path))}: (.*; )?{message}"):
        read_result(path)


@pytest.mark.parametrize("dotted, value, message", [
    ("diagnosis.label", "lymphoma", r"diagnosis 'lymphoma' is not one of the classes \['glioma'"),
    ("diagnosis.probabilities.glioma", 0.9, r"class probabilities sum to 1\.\d{4}, not 1"),
])
def test_what_the_schema_cannot_say_is_checked_too(written, dotted, value, message):
    data = _set(json.loads(written["png"].read_text(encoding="utf-8")), dotted, value)
    assert JUDGE.is_valid(data)
    with pytest.raises(ResultError, match=f"^x_result.json: {message}"):
        parse_result(data, "x_result.json")


def test_a_result_with_repeated_segment_values_is_refused(written):
    data = json.loads(written["nifti-3d"].read_text(encoding="utf-8"))
    data["segmentation"]["segments"].append(dict(data["segmentation"]["segments"][0], name="copy"))
    with pytest.raises(ResultError, match=r"segment label values repeat: \[1, 1\]"):
        validate_result(data, "x")


def test_every_problem_is_named_at_once(written):
    data = _set(_set(json.loads(written["png"].read_text(encoding="utf-8")), "device", 3), "diagnosis.index", KeyError)
    data = _set(data, "segmentation.segments.0.value", 0)
    with pytest.raises(ResultError) as e:
        validate_result(data, "r.json")
    assert str(e.value) == ("r.json: 'segmentation.segments[0].value' must be within 1..255, not 0; "
                            "'device' must be a string, not 3")  # index is not required: older results lack it


def test_missing_unreadable_and_non_json_files(tmp_path):
    with pytest.raises(ResultError, match=r"gone_result\.json: result file not found"):
        read_result(tmp_path / "gone_result.json")
    (tmp_path / "bad_result.json").write_text("{", encoding="utf-8")
    with pytest.raises(ResultError, match=r"bad_result\.json: result file is not valid JSON"):
        read_result(tmp_path / "bad_result.json")
    with pytest.raises(ResultError, match=r"^list_result\.json: the result must be an object, not \[\]$"):
        parse_result([], "list_result.json")


def test_fields_a_reader_does_not_know_are_accepted_and_kept(written):
    """A newer writer may add fields; older readers keep working."""
    data = json.loads(written["png"].read_text(encoding="utf-8"))
    data["reviewed_by"] = "dr.a"
    data["segmentation"]["segments"][0]["centroid_mm"] = [1.0, 2.0]
    assert JUDGE.is_valid(data)
    result = parse_result(data, "x")
    assert result.raw["reviewed_by"] == "dr.a"


def test_a_push_recorded_by_the_batch_runner_reads(written):
    data = json.loads(written["dicom-seg-sr"].read_text(encoding="utf-8"))
    data["pushed"] = {"url": "http://pacs/dicom-web", "instances": ["1.2.3", "1.2.4"]}
    JUDGE.validate(data)
    result = parse_result(data, "x")
    assert result.pushed == contract.Pushed("http://pacs/dicom-web", ("1.2.3", "1.2.4"))
    _same(result, data)


def test_a_result_written_before_the_later_fields_still_reads(written):
    """What the first Predictor wrote (no review priority, TTA, uncertainties, source, terminology, colour)."""
    data = json.loads(written["nifti-3d"].read_text(encoding="utf-8"))
    for dotted in ("review_priority", "tta", "diagnosis.calibrated", "diagnosis.uncertainty", "segmentation.uncertainty",
                   "segmentation.segments.0.terminology", "segmentation.segments.0.color"):
        data = _set(data, dotted, KeyError)
    result = parse_result(data, "old_result.json")
    assert (result.review_priority, result.tta, result.source, result.segmentation.uncertainty) == (None, None, None, None)
    assert result.segmentation.segments[0].terminology is None and result.segmentation.segments[0].color is None


def test_the_predictor_never_writes_a_result_that_breaks_the_contract(predictor2d, tmp_path, monkeypatch):
    made = predictor2d._result

    def broken(*args, **kwargs):
        result = made(*args, **kwargs)
        result["segmentation"]["segments"][0]["color"] = "red"
        return result

    monkeypatch.setattr(predictor2d, "_result", broken)
    with pytest.raises(ResultError, match=r"scan_result\.json: 'segmentation\.segments\[0\]\.color' must match .*, not 'red'"):
        predictor2d.predict(_png(tmp_path / "scan.png"), output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing written


# ---------------------------------------------------------------- the CLI reads through the contract


def test_resume_runs_a_study_again_whose_result_breaks_the_contract(predictor2d, tmp_path):
    from scripts.inference import BatchRunner

    source = _png(tmp_path / "scan.png")
    first, = BatchRunner(predictor2d, [source], tmp_path / "out", resume=True).run()
    data = json.loads(first.paths["result"].read_text(encoding="utf-8"))
    kept, = BatchRunner(predictor2d, [source], tmp_path / "out", resume=True).run()
    assert first.ok and not first.resumed and kept.resumed
    data["segmentation"]["segments"][0]["voxels"] = "many"
    first.paths["result"].write_text(json.dumps(data), encoding="utf-8")
    again, = BatchRunner(predictor2d, [source], tmp_path / "out", resume=True).run()
    assert again.ok and not again.resumed and read_result(again.paths["result"]).segmentation.tumor_voxels > 0


def test_the_cli_summary_reads_results_through_the_contract(written):
    from scripts.infer import summary_table
    from scripts.inference import Outcome

    png, volume = (json.loads(written[k].read_text(encoding="utf-8")) for k in ("png", "nifti-3d"))
    old = _set(volume, "review_priority", KeyError)  # a result of an earlier run (--resume) written before priorities
    outcomes = [Outcome(Path("scan.png"), png, paths={"result": written["png"]}),
                Outcome(Path("old.nii.gz"), old, paths={"result": written["nifti-3d"]}, resumed=True)]
    lines = summary_table(outcomes).splitlines()
    p_png = read_result(written["png"])
    assert lines[1].split()[:6] == ["scan.png", "ok", p_png.diagnosis.label, f"{p_png.diagnosis.probability:.2f}",
                                    str(p_png.segmentation.tumor_voxels), "px"]
    assert lines[2].split()[1] == "kept" and f"{read_result(written['nifti-3d']).segmentation.tumor_ml:.2f}" in lines[2]
    assert lines[2].split()[-2] == "-"  # no priority recorded: said, not invented
    broken = _set(png, "diagnosis.probabilities", KeyError)
    with pytest.raises(ResultError, match=r"scan_result\.json: result lacks 'diagnosis\.probabilities'"):
        summary_table([Outcome(Path("scan.png"), broken, paths={"result": written["png"]})])
