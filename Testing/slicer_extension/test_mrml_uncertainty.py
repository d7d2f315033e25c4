"""The uncertainty map as a second layer: worker option, result fields, MRML import (slicer-core).

The Logic's slice-view layers are tested in test_module_logic.py (it holds the application stand-ins)."""

import json
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
import slicer.util

import MultiTaskUNetMRML as mrml
from MultiTaskUNetLib.job import InferenceJob, JobState
from MultiTaskUNetLib.results import ResultError, parse_result, read_result
from MultiTaskUNetLib.worker import build_worker_command
from MultiTaskUNetMRML.uncertainty import SHOW_FROM
from test_results import RESULT


def test_worker_runs_tta_and_asks_for_the_map(tmp_path, fake_bundle):
    bundle = fake_bundle("ok")
    plain = build_worker_command("py", "/tmp/in.nrrd", tmp_path / "out", bundle)
    mapped = build_worker_command("py", "/tmp/in.nrrd", tmp_path / "out", bundle, uncertainty_map=True)
    assert "--tta" not in plain.argv and "--uncertainty-map" not in plain.argv
    assert mapped.argv == plain.argv + ["--tta", "--uncertainty-map"]


def test_result_uncertainty_fields(tmp_path):
    data = json.loads(json.dumps(RESULT))
    assert parse_result(data, tmp_path / "r.json").segmentation_uncertainty is None  # no TTA: absent, not 0
    data["segmentation"]["uncertainty"] = None
    assert parse_result(data, tmp_path / "r.json").uncertainty_map_path is None
    data["segmentation"]["uncertainty"] = 0.3
    data["outputs"] = {"uncertainty_map": "r_uncertainty.nii.gz"}
    parsed = parse_result(data, tmp_path / "r.json")
    assert parsed.segmentation_uncertainty == 0.3 and parsed.uncertainty_map_path == tmp_path / "r_uncertainty.nii.gz"
    for bad in (1.5, -0.1, "high", True):
        data["segmentation"]["uncertainty"] = bad
        with pytest.raises(ResultError, match="segmentation.uncertainty"):
            parse_result(data, tmp_path / "r.json")


def test_read_result_refuses_a_missing_map(tmp_path):
    data = json.loads(json.dumps(RESULT))
    data["outputs"] = {"uncertainty_map": "gone_uncertainty.nii.gz"}
    (tmp_path / "study_seg.nii.gz").write_bytes(b"x")
    (tmp_path / "r.json").write_text(json.dumps(data))
    with pytest.raises(ResultError, match="uncertainty map .*gone_uncertainty.nii.gz does not exist"):
        read_result(tmp_path / "r.json")


@pytest.fixture
def mapped_result(tmp_path, fake_bundle, volume_file):
    job = InferenceJob(sys.executable, volume_file, tmp_path / "out", fake_bundle("ok"), device="cpu", uncertainty_map=True)
    job.start()
    assert job.wait(timeout=120) is JobState.SUCCEEDED, job.error
    return job, read_result(job.result_paths[0])


def test_map_imported_on_the_input_grid_with_its_colours(scene, mapped_result, volume_file):
    _, result = mapped_result
    ref = mrml.read_volume(scene, volume_file, "input")
    node = mrml.import_uncertainty_map(scene, result.uncertainty_map_path, ref, "input uncertainty")
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(result.uncertainty_map_path)))  # (k, j, i)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(node), expected)
    display = node.GetDisplayNode()
    assert display.GetColorNodeID() == slicer.vtkMRMLColorLogic.GetColorTableNodeID(slicer.vtkMRMLColorTableNode.ReverseRainbow)
    assert (display.GetAutoWindowLevel(), display.GetWindowLevelMin(), display.GetWindowLevelMax()) == (0, 0.0, 1.0)
    assert (display.GetApplyThreshold(), display.GetLowerThreshold(), display.GetUpperThreshold()) == (1, SHOW_FROM, 1.0)
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert sh.GetItemParent(sh.GetItemByDataNode(node)) == sh.GetItemParent(sh.GetItemByDataNode(ref))


def test_map_on_another_grid_is_refused_and_leaves_no_node(scene, mapped_result, volume_file, tmp_path):
    _, result = mapped_result
    ref = mrml.read_volume(scene, volume_file, "input")
    other = sitk.ReadImage(str(result.uncertainty_map_path))[:, :, :-1]  # one slice fewer
    sitk.WriteImage(other, str(tmp_path / "other.nii.gz"))
    before = scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    with pytest.raises(ValueError, match="other.nii.gz: label map size"):
        mrml.import_uncertainty_map(scene, tmp_path / "other.nii.gz", ref, "bad")
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == before
