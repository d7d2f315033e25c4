"""The real worker (``python -m scripts.infer``) driven by the Lib, its output imported with slicer-core.

A tiny random-weight copy of the bundle (``MultiTaskUNetLib.tiny_bundle``, made in a subprocess as
the Slicer self-test does) segments a synthetic volume from ``scripts.datasets.synthetic.make_volume``; the
answers are meaningless, the plumbing is what is tested: protocol, files, geometry, terminology.
"""

import re
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

import MultiTaskUNetMRML as mrml
from MultiTaskUNetLib import tiny_bundle
from MultiTaskUNetLib.job import InferenceJob, JobState
from MultiTaskUNetLib.results import read_result
from MultiTaskUNetLib.terminology import hex_to_color, parse_slicer_string

from extension_helpers import DIRECTION, ORIGIN


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, bundle_root):
    return tiny_bundle.make_in_subprocess(sys.executable, bundle_root, tmp_path_factory.mktemp("tiny") / "bundle")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny):
    """(input file, finished job) for one synthetic study with anisotropic, rotated geometry."""
    from scripts.datasets.synthetic import make_volume

    work = tmp_path_factory.mktemp("study")
    vol, _ = make_volume(seed=3, label=1, shape=(40, 36, 12), spacing=(1.0, 1.1, 3.0))  # (X, Y, Z)
    image = sitk.GetImageFromArray(np.ascontiguousarray(vol.transpose(2, 1, 0)))  # SimpleITK wants (Z, Y, X)
    image.SetSpacing((1.0, 1.1, 3.0))
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    path = work / "study.nrrd"
    sitk.WriteImage(image, str(path))
    logged = []
    job = InferenceJob(sys.executable, path, work / "out", tiny, device="cpu", on_log=logged.append)
    job.start()
    assert job.wait(timeout=300) is JobState.SUCCEEDED, f"{job.error}\n" + "\n".join(logged[-30:])
    return path, job, logged


def test_tiny_bundle_has_a_model(tiny):
    assert (tiny / "models" / "model.pt").is_file() and (tiny / "models" / "model_card.json").is_file()
    assert not (tiny / "data").exists()  # code and configs only


def test_protocol_of_the_real_worker(run):
    path, job, logged = run
    assert job.percent == 100 and not job.retried_on_cpu
    progress = [int(m.group(1)) for m in map(re.compile(r"^\s*(\d+)% \S").match, logged) if m]
    assert len(progress) >= 3 and progress == sorted(progress) and progress[-1] == 100
    result = read_result(job.result_paths[0])
    assert result.device == "cpu" and result.model_version.endswith("+tiny-random")
    assert [(s.name, s.value) for s in result.segments] == [("tumor", 1)]
    assert result.diagnosis in ("glioma", "meningioma", "no_tumor", "pituitary")


def test_real_result_imported_as_segmentation(scene, run, tmp_path):
    path, job, _ = run
    result = read_result(job.result_paths[0])
    ref = mrml.read_volume(scene, path, "study")
    seg = mrml.import_study(scene, result, ref)
    segmentation = seg.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1  # present even if the random model found no tumor
    segment = segmentation.GetNthSegment(0)
    assert segment.GetName() == "tumor"
    assert parse_slicer_string(mrml.segment_terminology(segment))["type"].meaning == "Neoplasm"
    # as the worker wrote them into the result (the bundle's one terminology table)
    assert mrml.segment_terminology(segment) == result.segments[0].terminology
    assert segment.GetColor() == pytest.approx(hex_to_color(result.segments[0].color))
    assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is ref
    worker_label = sitk.GetArrayFromImage(sitk.ReadImage(str(result.segmentation_path)))
    np.testing.assert_array_equal(mrml.label_map_array(scene, seg, ref), worker_label)
    assert worker_label.shape == slicer.util.arrayFromVolume(ref).shape
    # .seg.nrrd written and read back equal
    written = mrml.export_study(scene, seg, ref, tmp_path, ["seg.nrrd"])
    back = mrml.read_segmentation(scene, written["seg.nrrd"], "back")
    np.testing.assert_array_equal(mrml.label_map_array(scene, back, ref), worker_label)
    assert mrml.segment_terminology(back.GetSegmentation().GetNthSegment(0)) == mrml.segment_terminology(segment)


def test_a_model_added_to_the_store_runs(tmp_path, tiny, run):
    """The parts ``install_folder`` copies (code, configs, card, weights) are all the worker needs; a zip of
    the bundle installs to the same thing."""
    import zipfile

    from MultiTaskUNetLib import models

    study, first, _ = run
    archive = tmp_path / "tiny.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(tiny.rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts:
                z.write(f, "bundle/" + f.relative_to(tiny).as_posix())
    info = models.install_zip(archive, tmp_path / "store", sha256=models.sha256_of(archive))
    assert info.version.endswith("+tiny-random") and [i.root for i in models.list_models(tmp_path / "store")] == [info.root]
    job = InferenceJob(sys.executable, study, tmp_path / "out", info.root, device="cpu")
    job.start()
    assert job.wait(timeout=300) is JobState.SUCCEEDED, job.error
    assert read_result(job.result_paths[0]).probabilities == read_result(first.result_paths[0]).probabilities
