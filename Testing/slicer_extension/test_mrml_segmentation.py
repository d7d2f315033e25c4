"""MultiTaskUNetMRML.segmentation under slicer-core: the worker's label map as a segmentation node.

The label map comes from a real worker process (the threshold fake, through the Lib's job) for a
volume with anisotropic spacing, an offset origin and a rotated direction.
"""

import sys

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

import MultiTaskUNetMRML as mrml
from MultiTaskUNetLib.job import InferenceJob, JobState
from MultiTaskUNetLib.results import read_result
from MultiTaskUNetLib.terminology import BRAIN, parse_slicer_string, terminologies


@pytest.fixture
def worker_result(tmp_path, fake_bundle, volume_file):
    job = InferenceJob(sys.executable, volume_file, tmp_path / "out", fake_bundle("ok"), device="cpu")
    job.start()
    assert job.wait(timeout=120) is JobState.SUCCEEDED, job.error
    return read_result(job.result_paths[0])


def _segments(seg):
    s = seg.GetSegmentation()
    return [s.GetNthSegment(i) for i in range(s.GetNumberOfSegments())]


def _label(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # (K, J, I), like arrayFromVolume


def test_import_names_colors_terminology_geometry(scene, worker_result, volume_file):
    ref = mrml.read_volume(scene, volume_file, "input")
    terms = terminologies([("tumor", 1), ("edema", 2)], anatomic_region=BRAIN)  # edema: absent in the label map
    seg = mrml.import_label_map(scene, worker_result.segmentation_path, ref, terms, "result")
    tumor, edema = _segments(seg)
    assert [tumor.GetName(), edema.GetName()] == ["tumor", "edema"]
    assert tumor.GetColor() == pytest.approx(terms[1].color) and edema.GetColor() == pytest.approx(terms[2].color)
    assert parse_slicer_string(tumor.GetTerminology())["type"].value == "108369006"
    assert parse_slicer_string(edema.GetTerminology())["anatomic_region"] == BRAIN
    assert [mrml.segment_tag(s, mrml.LABEL_VALUE_TAG) for s in (tumor, edema)] == ["1", "2"]
    # reference geometry is the input volume's, and it is referenced (DICOM SEG export needs both)
    assert seg.GetNodeReference(seg.GetReferenceImageGeometryReferenceRole()) is ref
    array = mrml.label_map_array(scene, seg, ref)
    expected = _label(worker_result.segmentation_path)
    assert array.shape == expected.shape == slicer.util.arrayFromVolume(ref).shape
    np.testing.assert_array_equal(array, expected)
    assert 0 < int((array == 1).sum()) == worker_result.segments[0].voxels
    assert scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 0  # temporary nodes removed


def test_placed_under_the_input_study(scene, worker_result, volume_file):
    ref = mrml.read_volume(scene, volume_file, "input")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "patient"), "study")
    sh.SetItemParent(sh.CreateItem(sh.GetSceneItemID(), ref), study)
    seg = mrml.import_label_map(scene, worker_result.segmentation_path, ref, terminologies([("tumor", 1)]), "result")
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == study


def test_seg_nrrd_round_trip(scene, tmp_path, worker_result, volume_file):
    ref = mrml.read_volume(scene, volume_file, "input")
    seg = mrml.import_label_map(scene, worker_result.segmentation_path, ref, terminologies([("tumor", 1), ("cyst", 3)]), "r")
    path = mrml.write_segmentation(scene, seg, tmp_path / "exp" / "r.seg.nrrd")
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.seg.nrrd"]  # no temporary file left
    back = mrml.read_segmentation(scene, path, "back")
    for a, b in zip(_segments(seg), _segments(back), strict=True):
        assert (a.GetName(), a.GetTerminology(), mrml.segment_tag(a, mrml.LABEL_VALUE_TAG)) == \
            (b.GetName(), b.GetTerminology(), mrml.segment_tag(b, mrml.LABEL_VALUE_TAG))
        assert a.GetColor() == pytest.approx(b.GetColor(), abs=1e-6)
    np.testing.assert_array_equal(mrml.label_map_array(scene, back, ref), mrml.label_map_array(scene, seg, ref))


def test_nifti_export_keeps_values_and_geometry(scene, tmp_path, worker_result, volume_file):
    ref = mrml.read_volume(scene, volume_file, "input")
    seg = mrml.import_label_map(scene, worker_result.segmentation_path, ref, terminologies([("tumor", 1)]), "r")
    seg.GetSegmentation().GetNthSegment(0).SetName("renamed by the reviewer")  # values come from the tag, not names
    path = mrml.export_label_map(scene, seg, ref, tmp_path / "r_label.nii.gz")
    out, source = sitk.ReadImage(str(path)), sitk.ReadImage(str(volume_file))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), _label(worker_result.segmentation_path))
    assert out.GetSize() == source.GetSize()
    np.testing.assert_allclose(out.GetSpacing(), source.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(out.GetOrigin(), source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(out.GetDirection(), source.GetDirection(), atol=1e-6)


def test_3d_representation(scene, worker_result, volume_file):
    ref = mrml.read_volume(scene, volume_file, "input")
    seg = mrml.import_label_map(scene, worker_result.segmentation_path, ref, terminologies([("tumor", 1)]), "r")
    mrml.show_in_3d(seg)
    surface = _segments(seg)[0].GetRepresentation("Closed surface")
    assert surface is not None and surface.GetNumberOfPoints() > 0


def test_converter_rules_registered_once():
    mrml.register_converter_rules()
    mrml.register_converter_rules()
    names = [r.GetClassName() for r in slicer.vtkSegmentationConverterFactory.GetInstance().GetConverterRules()]
    assert names.count("vtkBinaryLabelmapToClosedSurfaceConversionRule") == 1


def _write_label(path, array_kji, like):
    image = sitk.GetImageFromArray(array_kji.astype(np.uint8))
    image.CopyInformation(sitk.ReadImage(str(like)))
    sitk.WriteImage(image, str(path))
    return path


def test_unknown_label_value_is_refused(scene, tmp_path, volume_file):
    ref = mrml.read_volume(scene, volume_file, "input")
    lab = np.zeros(slicer.util.arrayFromVolume(ref).shape, np.uint8)
    lab[2, 3, 4], lab[3, 3, 4] = 1, 7
    path = _write_label(tmp_path / "lab.nii.gz", lab, volume_file)
    with pytest.raises(ValueError, match=r"lab.nii.gz: label values \[7\] are not among the result's segments \[1\]"):
        mrml.import_label_map(scene, path, ref, terminologies([("tumor", 1)]), "r")
    assert scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 0


def test_geometry_mismatch_is_refused(scene, tmp_path, volume_file):
    ref = mrml.read_volume(scene, volume_file, "input")
    shape = slicer.util.arrayFromVolume(ref).shape
    small = sitk.GetImageFromArray(np.zeros((shape[0], shape[1], shape[2] - 1), np.uint8))
    sitk.WriteImage(small, str(tmp_path / "small.nii.gz"))
    with pytest.raises(ValueError, match="small.nii.gz: label map size"):
        mrml.import_label_map(scene, tmp_path / "small.nii.gz", ref, terminologies([("tumor", 1)]), "r")
    moved = sitk.GetImageFromArray(np.zeros(shape, np.uint8))
    moved.CopyInformation(sitk.ReadImage(str(volume_file)))
    moved.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(moved, str(tmp_path / "moved.nii.gz"))
    with pytest.raises(ValueError, match="moved.nii.gz: label map spacing/origin/direction differ"):
        mrml.import_label_map(scene, tmp_path / "moved.nii.gz", ref, terminologies([("tumor", 1)]), "r")


def test_unreadable_files(scene, tmp_path):
    with pytest.raises(ValueError, match="nope.nrrd: file not found"):
        mrml.read_volume(scene, tmp_path / "nope.nrrd", "x")
    (tmp_path / "junk.nrrd").write_text("not an image")
    with pytest.raises(ValueError, match="junk.nrrd: cannot read the volume"):
        mrml.read_volume(scene, tmp_path / "junk.nrrd", "x")
    with pytest.raises(ValueError, match="nope.seg.nrrd: file not found"):
        mrml.read_segmentation(scene, tmp_path / "nope.seg.nrrd", "x")
    (tmp_path / "junk.seg.nrrd").write_text("not a segmentation")
    with pytest.raises(ValueError, match="junk.seg.nrrd: cannot read the segmentation"):
        mrml.read_segmentation(scene, tmp_path / "junk.seg.nrrd", "x")


def test_write_failure_names_the_file(scene, tmp_path):
    no_image = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "no_image")
    with pytest.raises(ValueError, match=r"v.nrrd: writing no_image failed"):
        mrml.segmentation._write_node(scene, no_image, tmp_path / "v.nrrd", "vtkMRMLVolumeArchetypeStorageNode", ".nrrd")
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_dicom_seg_needs_slicer(scene, worker_result, volume_file, tmp_path):
    ref = mrml.read_volume(scene, volume_file, "input")
    seg = mrml.import_label_map(scene, worker_result.segmentation_path, ref, terminologies([("tumor", 1)]), "r")
    with pytest.raises(RuntimeError, match="DICOM SEG export needs 3D Slicer 5.12 or later"):
        mrml.export_dicom_seg(scene, seg, tmp_path)
