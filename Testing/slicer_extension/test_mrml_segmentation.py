"""MultiTaskUNetMRML.segmentation under slicer-core: the worker's label map as a segmentation node.

The label map comes from a real worker process (the threshold fake, through the Lib's job) for a
volume with anisotropic spacing, an offset origin and a rotated direction.
"""

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

import MultiTaskUNetMRML as mrml
from MultiTaskUNetLib.job import InferenceJob, JobState
from MultiTaskUNetLib.results import read_result
from MultiTaskUNetLib.terminology import Code, parse_slicer_string
from extension_helpers import worker_terms

BRAIN = Code("SCT", "12738006", "Brain")  # an anatomic region a caller may add (the worker writes none)


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
    terms = worker_terms([("tumor", 1), ("edema", 2)], anatomic_region=BRAIN)  # edema: absent in the label map
    seg = mrml.import_label_map(scene, worker_result.segmentation_path, ref, terms, "result")
    tumor, edema = _segments(seg)
    assert [tumor.GetName(), edema.GetName()] == ["tumor", "edema"]
    assert tumor.GetColor() == pytest.approx(terms[1].color) and edema.GetColor() == pytest.approx(terms[2].color)
    assert parse_slicer_string(mrml.segment_terminology(tumor))["type"].value == "108369006"
    assert parse_slicer_string(mrml.segment_terminology(edema))["anatomic_region"] == BRAIN
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
    seg = mrml.import_label_map(scene, worker_result.segmentation_path, ref, worker_terms([("tumor", 1)]), "result")
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == study


def test_seg_nrrd_round_trip(scene, tmp_path, worker_result, volume_file):
    ref = mrml.read_volume(scene, volume_file, "input")
    seg = mrml.import_label_map(scene, worker_result.segmentation_path, ref, worker_terms([("tumor", 1), ("cyst", 3)]), "r")
    path = mrml.write_segmentation(scene, seg, tmp_path / "exp" / "r.seg.nrrd")
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.seg.nrrd"]  # no temporary file left
    back = mrml.read_segmentation(scene, path, "back")
    for a, b in zip(_segments(seg), _segments(back), strict=True):
        assert (a.GetName(), mrml.segment_terminology(a), mrml.segment_tag(a, mrml.LABEL_VALUE_TAG)) == \
            (b.GetName(), mrml.segment_terminology(b), mrml.segment_tag(b, mrml.LABEL_VALUE_TAG))
        assert a.GetColor() == pytest.approx(b.GetColor(), abs=1e-6)
    np.testing.assert_array_equal(mrml.label_map_array(scene, back, ref), mrml.label_map_array(scene, seg, ref))


def test_nifti_export_keeps_values_and_geometry(scene, tmp_path, worker_result, volume_file):
    ref = mrml.read_volume(scene, volume_file, "input")
    seg = mrml.import_label_map(scene, worker_result.segmentation_path, ref, worker_terms([("tumor", 1)]), "r")
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
    seg = mrml.import_label_map(scene, worker_result.segmentation_path, ref, worker_terms([("tumor", 1)]), "r")
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
        mrml.import_label_map(scene, path, ref, worker_terms([("tumor", 1)]), "r")
    assert scene.GetNodesByClass("vtkMRMLLabelMapVolumeNode").GetNumberOfItems() == 0


def test_geometry_mismatch_is_refused(scene, tmp_path, volume_file):
    ref = mrml.read_volume(scene, volume_file, "input")
    shape = slicer.util.arrayFromVolume(ref).shape
    small = sitk.GetImageFromArray(np.zeros((shape[0], shape[1], shape[2] - 1), np.uint8))
    sitk.WriteImage(small, str(tmp_path / "small.nii.gz"))
    with pytest.raises(ValueError, match="small.nii.gz: label map size"):
        mrml.import_label_map(scene, tmp_path / "small.nii.gz", ref, worker_terms([("tumor", 1)]), "r")
    moved = sitk.GetImageFromArray(np.zeros(shape, np.uint8))
    moved.CopyInformation(sitk.ReadImage(str(volume_file)))
    moved.SetOrigin((0.0, 0.0, 0.0))
    sitk.WriteImage(moved, str(tmp_path / "moved.nii.gz"))
    with pytest.raises(ValueError, match="moved.nii.gz: label map spacing/origin/direction differ"):
        mrml.import_label_map(scene, tmp_path / "moved.nii.gz", ref, worker_terms([("tumor", 1)]), "r")


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
    seg = mrml.import_label_map(scene, worker_result.segmentation_path, ref, worker_terms([("tumor", 1)]), "r")
    assert not mrml.dicom_seg_available()
    with pytest.raises(RuntimeError, match="DICOM SEG export needs 3D Slicer 5.12 or later, or the QuantitativeReporting "
                                           "extension on Slicer 5.10"):
        mrml.export_dicom_seg(scene, seg, ref, tmp_path / "r_seg.dcm")


def test_terminology_is_stored_in_the_tag_every_slicer_reads(scene, worker_result, volume_file):
    """Written through ``vtkSegment.GetTerminologyEntryTagName()`` (Slicer 5.x), not ``SetTerminology`` (5.10+)."""
    ref = mrml.read_volume(scene, volume_file, "input")
    seg = mrml.import_label_map(scene, worker_result.segmentation_path, ref, worker_terms([("tumor", 1)]), "r")
    segment = _segments(seg)[0]
    expected = worker_terms([("tumor", 1)])[1].to_slicer_string()
    assert mrml.segment_tag(segment, slicer.vtkSegment.GetTerminologyEntryTagName()) == expected
    assert mrml.segment_terminology(segment) == expected
    if hasattr(segment, "GetTerminology"):  # slicer-core here is newer than 5.10: the API reads the same tag
        assert segment.GetTerminology() == expected


def _node_classes(scene):
    return sorted(scene.GetNthNode(i).GetClassName() for i in range(scene.GetNumberOfNodes()))


def test_label_map_and_exports_leave_no_nodes_behind(scene, tmp_path, worker_result, volume_file):
    """Slicer's labelmap export makes a color table per temporary labelmap; none may pile up in the scene."""
    ref = mrml.read_volume(scene, volume_file, "input")
    terms = worker_terms([("tumor", 1), ("edema", 2)])
    seg = mrml.import_label_map(scene, worker_result.segmentation_path, ref, terms, "r")
    before = _node_classes(scene)
    assert "vtkMRMLColorTableNode" not in before
    for _ in range(5):
        mrml.label_map_array(scene, seg, ref)
        mrml.non_empty_segment_ids(scene, seg, ref)
    mrml.export_label_map(scene, seg, ref, tmp_path / "r_label.nii.gz")
    mrml.write_segmentation(scene, seg, tmp_path / "r.seg.nrrd")
    assert _node_classes(scene) == before


def test_color_tables_that_existed_before_are_kept(scene, worker_result, volume_file):
    ref = mrml.read_volume(scene, volume_file, "input")
    seg = mrml.import_label_map(scene, worker_result.segmentation_path, ref, worker_terms([("tumor", 1)]), "r")
    mine = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "user colors")
    mrml.label_map_array(scene, seg, ref)
    assert scene.IsNodePresent(mine)


def test_non_empty_segment_ids(scene, worker_result, volume_file):
    ref = mrml.read_volume(scene, volume_file, "input")
    seg = mrml.import_label_map(scene, worker_result.segmentation_path, ref, worker_terms([("tumor", 1), ("edema", 2)]), "r")
    segmentation = seg.GetSegmentation()
    assert mrml.non_empty_segment_ids(scene, seg, ref) == [segmentation.GetNthSegmentID(0)]  # edema has no voxels


class _FakeExporter:
    """Stands in for ``DICOMSegmentationPlugin.DICOMSegmentationExporter`` (Slicer 5.12 / QuantitativeReporting):
    same constructor and ``export``/``cleanup``; raises the exporter's "empty segments" question if asked
    to export an empty segment without ``skipEmpty`` (that is where the real one prompts)."""

    calls = []
    fail = None

    def __init__(self, segmentationNode, contentCreatorName=None):
        self.node, self.creator, self.cleaned = segmentationNode, contentCreatorName, False
        _FakeExporter.calls.append(self)

    def export(self, outputDirectory, segFileName, metadata, segmentIDs=None, skipEmpty=False):
        self.args = dict(outputDirectory=outputDirectory, segFileName=segFileName, metadata=dict(metadata),
                         segmentIDs=list(segmentIDs or []), skipEmpty=skipEmpty)
        segmentation = self.node.GetSegmentation()
        self.tags = {sid: (mrml.segment_tag(segmentation.GetSegment(sid), mrml.ALGORITHM_TYPE_TAG),
                           mrml.segment_tag(segmentation.GetSegment(sid), mrml.ALGORITHM_NAME_TAG)) for sid in segmentIDs}
        if _FakeExporter.fail:
            raise ValueError(_FakeExporter.fail)
        (Path(outputDirectory) / segFileName).write_bytes(b"DICM")
        return True

    def cleanup(self):
        self.cleaned = True


@pytest.fixture
def fake_dicom_seg_plugin(monkeypatch):
    module = types.ModuleType("DICOMSegmentationPlugin")
    module.DICOMSegmentationExporter = _FakeExporter
    _FakeExporter.calls, _FakeExporter.fail = [], None
    monkeypatch.setitem(sys.modules, "DICOMSegmentationPlugin", module)
    return _FakeExporter


def test_dicom_seg_export_skips_empty_segments_without_asking(scene, tmp_path, worker_result, volume_file,
                                                               fake_dicom_seg_plugin):
    ref = mrml.read_volume(scene, volume_file, "input")
    seg = mrml.import_label_map(scene, worker_result.segmentation_path, ref, worker_terms([("tumor", 1), ("edema", 2)]), "r")
    mrml.set_segment_algorithm(seg, "AUTOMATIC", "MultiTaskUNet 0.1.0")
    with pytest.raises(RuntimeError, match="needs the input volume loaded from DICOM"):
        mrml.export_dicom_seg(scene, seg, ref, tmp_path / "r_seg.dcm")
    ref.SetAttribute("DICOM.instanceUIDs", "1.2.3.4 1.2.3.5")  # what Slicer's DICOM volume loader sets
    assert mrml.dicom_seg_available()
    path = mrml.export_dicom_seg(scene, seg, ref, tmp_path / "out" / "r_seg.dcm", content_creator="Dr A")
    assert path == tmp_path / "out" / "r_seg.dcm" and path.read_bytes() == b"DICM"
    [call] = fake_dicom_seg_plugin.calls
    tumor_id = seg.GetSegmentation().GetNthSegmentID(0)
    assert call.args == {"outputDirectory": str(tmp_path / "out"), "segFileName": "r_seg.dcm",
                         "metadata": {"SeriesDescription": "r", "ContentCreatorName": "Dr A"},
                         "segmentIDs": [tumor_id], "skipEmpty": True}  # edema (empty) left out: no question asked
    assert call.tags == {tumor_id: ("AUTOMATIC", "MultiTaskUNet 0.1.0")} and call.creator == "Dr A" and call.cleaned


def test_dicom_seg_export_errors(scene, tmp_path, worker_result, volume_file, fake_dicom_seg_plugin):
    ref = mrml.read_volume(scene, volume_file, "input")
    ref.SetAttribute("DICOM.instanceUIDs", "1.2.3.4")
    seg = mrml.import_label_map(scene, worker_result.segmentation_path, ref, worker_terms([("tumor", 1)]), "r")
    fake_dicom_seg_plugin.fail = "Referenced volume files were not found in the DICOM database"
    with pytest.raises(RuntimeError, match="DICOM SEG export failed: Referenced volume files were not found"):
        mrml.export_dicom_seg(scene, seg, ref, tmp_path / "r_seg.dcm")
    assert fake_dicom_seg_plugin.calls[-1].cleaned  # the exporter's temporary folder is removed on failure too
    empty = mrml.import_label_map(scene, _write_label(tmp_path / "zero.nii.gz", np.zeros(slicer.util.arrayFromVolume(ref).shape),
                                                      volume_file), ref, worker_terms([("tumor", 1)]), "empty")
    with pytest.raises(RuntimeError, match="every segment is empty"):
        mrml.export_dicom_seg(scene, empty, ref, tmp_path / "e_seg.dcm")
