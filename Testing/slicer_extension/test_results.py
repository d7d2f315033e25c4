"""MultiTaskUNetLib.results: reading and checking the result JSON, node attributes."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from MultiTaskUNetLib.results import (ATTRIBUTE_PREFIX, ResultError, SegmentInfo, parse_result, read_result,
                                      result_attributes, result_from_attributes)

RESULT = {
    "input": "/data/study.nii.gz",
    "diagnosis": {"label": "meningioma", "index": 1,
                  "probabilities": {"glioma": 0.03, "meningioma": 0.87, "no_tumor": 0.02, "pituitary": 0.08}},
    "segmentation": {"path": "study_seg.nii.gz", "format": "nifti",
                     "segments": [{"name": "tumor", "value": 1, "voxels": 1234, "volume_ml": 4.2}]},
    "model": {"name": "MultiTaskUNet", "version": "0.1.0", "sha256": "ab" * 32},
    "device": "cuda:0", "timings_s": {"load": 1.0, "infer": 2.0, "write": 0.1}, "warnings": ["2D model on a 3D study"],
}


@pytest.fixture
def result_file(tmp_path):
    (tmp_path / "study_seg.nii.gz").write_bytes(b"not read here")
    path = tmp_path / "study_result.json"
    path.write_text(json.dumps(RESULT))
    return path


def test_read_result(result_file):
    r = read_result(result_file)
    assert (r.diagnosis, r.diagnosis_index, r.device) == ("meningioma", 1, "cuda:0")
    assert r.classes == ["glioma", "meningioma", "no_tumor", "pituitary"]  # the model's order
    assert r.ranked()[:2] == [("meningioma", 0.87), ("pituitary", 0.08)]
    assert r.summary() == "meningioma (87%)"
    assert r.segmentation_path == result_file.parent / "study_seg.nii.gz"  # relative to the result file
    assert r.segments == (SegmentInfo("tumor", 1, 1234, 4.2),)
    assert (r.model_name, r.model_version, r.model_sha256) == ("MultiTaskUNet", "0.1.0", "ab" * 32)
    assert r.warnings == ("2D model on a 3D study",)


def test_missing_and_broken_files(tmp_path, result_file):
    with pytest.raises(ResultError, match="nothing.json: result file not found"):
        read_result(tmp_path / "nothing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ResultError, match="bad.json: result file is not valid JSON"):
        read_result(bad)
    (tmp_path / "study_seg.nii.gz").unlink()
    with pytest.raises(ResultError, match="study_seg.nii.gz does not exist"):
        read_result(result_file)


def _broken(**changes):
    data = copy.deepcopy(RESULT)
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = data
        for p in parents:
            target = target[p]
        if value is KeyError:
            del target[key]
        else:
            target[key] = value
    return data


@pytest.mark.parametrize("changes, match", [
    ({"diagnosis": KeyError}, "lacks 'diagnosis'"),
    ({"diagnosis__probabilities": KeyError}, "lacks 'diagnosis.probabilities'"),
    ({"diagnosis__probabilities": {}}, "must be a non-empty object"),
    ({"diagnosis__probabilities": {"a": 0.5, "b": "x"}}, r"'diagnosis.probabilities.b' must be a number, not 'x'"),
    ({"diagnosis__probabilities": {"a": 1.5, "b": -0.5}}, r"'diagnosis.probabilities.a' must be within 0\.\.1, not 1.5; "
                                                          r"'diagnosis.probabilities.b' must be within 0\.\.1, not -0.5"),
    ({"diagnosis__probabilities": {"meningioma": 0.5, "glioma": 0.3}}, "sum to 0.8000, not 1"),
    ({"diagnosis__label": KeyError}, "lacks 'diagnosis.label'"),
    ({"diagnosis__label": "lymphoma"}, "diagnosis 'lymphoma' is not one of the classes"),
    ({"segmentation": KeyError}, "lacks 'segmentation'"),
    ({"segmentation__path": KeyError}, "lacks 'segmentation.path'"),
    ({"segmentation__segments": KeyError}, "lacks 'segmentation.segments'"),
    ({"segmentation__segments": "tumor"}, "'segmentation.segments' must be a list"),
    ({"segmentation__segments": [{"value": 1}]}, r"lacks 'segmentation.segments\[0\].name'"),
    ({"segmentation__segments": [{"name": "t", "value": 0}]}, r"'segmentation.segments\[0\].value' must be within 1\.\.255, not 0"),
    ({"segmentation__segments": [{"name": "t", "value": True}]}, r"'segmentation.segments\[0\].value' must be an integer, not True"),
    ({"segmentation__segments": [{"name": "t", "value": 1, "voxels": 2.5}]}, r"segments\[0\].voxels' must be an integer"),
    ({"segmentation__segments": [{"name": "t", "value": 1, "color": "red"}]}, r"segments\[0\].color' must match"),
    ({"segmentation__segments": [{"name": "t", "value": 1, "terminology": "Neoplasm"}]}, r"segments\[0\].terminology' must match"),
    ({"model__sha256": KeyError}, "lacks 'model.sha256'"),
    ({"device": 0}, "'device' must be a string, not 0"),
    ({"warnings": "none"}, "'warnings' must be a list"),
    ({"segmentation__segments": [{"name": "a", "value": 1}, {"name": "b", "value": 1}]}, r"label values repeat: \[1, 1\]"),
])
def test_contract_violations_name_the_file(changes, match):
    with pytest.raises(ResultError, match="r.json: .*" + match):
        parse_result(_broken(**changes), "/x/r.json")


def test_minimal_result_defaults():
    data = {"diagnosis": {"label": "a", "probabilities": {"b": 0.25, "a": 0.75}},
            "segmentation": {"path": "/abs/seg.nii.gz", "segments": []}}
    r = parse_result(data, "/x/r.json")
    assert r.diagnosis_index == 1 and r.segments == () and r.model_name == "" and r.segmentation_format == "nifti"
    assert str(r.segmentation_path) == "/abs/seg.nii.gz"


def test_attributes_round_trip(result_file):
    r = read_result(result_file)
    attrs = result_attributes(r)
    assert all(k.startswith(ATTRIBUTE_PREFIX) and isinstance(v, str) for k, v in attrs.items())
    assert attrs[ATTRIBUTE_PREFIX + "Diagnosis"] == "meningioma"
    assert json.loads(attrs[ATTRIBUTE_PREFIX + "Probabilities"]) == RESULT["diagnosis"]["probabilities"]
    back = result_from_attributes(attrs)
    assert (back.diagnosis, back.probabilities, back.segments, back.model_version) == \
        (r.diagnosis, r.probabilities, r.segments, r.model_version)


def test_attributes_missing_or_broken():
    with pytest.raises(ResultError, match="no 'MultiTaskUNet.Result' attribute"):
        result_from_attributes({})
    with pytest.raises(ResultError, match="'MultiTaskUNet.Result' is not valid JSON"):
        result_from_attributes({ATTRIBUTE_PREFIX + "Result": "{"})


def test_the_lib_reads_through_the_bundles_result_contract(bundle_root):
    """One contract: the Lib checks results with the bundle's scripts/inference/result.py and its schema,
    loaded from the bundle installed beside the module (here: the source tree's), not a copy of its own."""
    from MultiTaskUNetLib import results

    assert Path(results.contract.__file__) == bundle_root / "scripts" / "inference" / "result.py"
    assert results.contract.SCHEMA_FILE == bundle_root / "configs" / "result.schema.json"
    assert ResultError is results.contract.ResultError and SegmentInfo is results.contract.Segment
    assert "scripts" not in results.contract.__name__  # its own module, not the bundle's package


def test_segments_carry_the_workers_terminology_and_colour(result_file):
    data = json.loads(result_file.read_text())
    tag = ("Segmentation category and type - DICOM master list~SCT^49755003^Morphologically Altered Structure"
           "~SCT^108369006^Neoplasm~^^~Anatomic codes - DICOM master list~^^~^^")
    data["segmentation"]["segments"][0].update(terminology=tag, color="#e62828")
    result_file.write_text(json.dumps(data))
    segment = read_result(result_file).segments[0]
    assert (segment.terminology, segment.color) == (tag, "#e62828")
    assert read_result(result_file).segments[0] == SegmentInfo("tumor", 1, 1234, 4.2, tag, "#e62828")


def test_a_result_of_the_real_predictor_reads(tmp_path):
    """What the bundle's Predictor writes (a PNG study, TTA off) is what the Lib reads."""
    from scripts.inference import Predictor
    from scripts.core.model_card import build_network, make_card

    card = make_card({"spatial_dims": 2, "in_channels": 1, "seg_classes": 2, "num_classes": 2, "encoder": "unet",
                      "channels": [4, 8], "dropout": 0.0, "cls_hidden": 0}, channels=["x"],
                     segments=["background", "tumor"], classes=["benign", "malignant"], spatial_size=[16, 16])
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(tmp_path / "scan.png")
    pred = Predictor(build_network(card), card, device="cpu").predict(tmp_path / "scan.png", output_dir=tmp_path / "out")
    r = read_result(pred.paths["result"])
    assert r.diagnosis == pred.result["diagnosis"]["label"] and r.segmentation_format == "png"
    assert r.segments[0].terminology.startswith("Segmentation category and type") and r.segments[0].color == "#e62828"
    assert r.segments[0].volume_ml is None and r.segmentation_uncertainty is None and r.input == str(tmp_path / "scan.png")
