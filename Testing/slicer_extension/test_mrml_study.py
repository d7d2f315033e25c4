"""MultiTaskUNetMRML.study under slicer-core: result attributes, review with edit detection, export."""

import json
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicer

import MultiTaskUNetMRML as mrml
from MultiTaskUNetLib.job import InferenceJob, JobState
from MultiTaskUNetLib.results import ResultError, read_result
from MultiTaskUNetLib.review import Decision, ReviewError, ReviewRecord


@pytest.fixture
def study(scene, tmp_path, fake_bundle, volume_file):
    """(reference volume, segmentation node, result) after a real (fake-model) worker run."""
    job = InferenceJob(sys.executable, volume_file, tmp_path / "out", fake_bundle("ok"), device="cpu")
    job.start()
    assert job.wait(timeout=120) is JobState.SUCCEEDED, job.error
    result = read_result(job.result_paths[0])
    ref = mrml.read_volume(scene, volume_file, "input")
    return ref, mrml.import_study(scene, result, ref), result


def paint(scene, seg, reference, mask_kji):
    """Replace the first segment's voxels with ``mask_kji`` (what a Segment Editor stroke does)."""
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "paint")
    label.CopyOrientation(reference)
    slicer.util.updateVolumeFromArray(label, mask_kji.astype(np.uint8))
    image = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(label)
    segment_id = seg.GetSegmentation().GetNthSegmentID(0)
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(image, seg, segment_id)
    scene.RemoveNode(label)


def test_import_study_stores_result_and_pending_review(study):
    ref, seg, result = study
    assert seg.GetName() == "input MultiTaskUNet"
    assert seg.GetAttribute("MultiTaskUNet.Diagnosis") == "meningioma"
    assert json.loads(seg.GetAttribute("MultiTaskUNet.Probabilities")) == result.probabilities
    stored = mrml.get_result(seg)
    assert (stored.diagnosis, stored.probabilities, stored.segments) == (result.diagnosis, result.probabilities, result.segments)
    record = mrml.get_review(seg)
    assert record.decision is Decision.PENDING and record.original_digest and not record.segment_edited
    assert seg.GetAttribute("MultiTaskUNet.ReviewDecision") == "pending"


def test_segments_are_named_coded_and_coloured_as_the_result_says(scene, tmp_path, fake_bundle, volume_file):
    """The worker writes each segment's terminology and colour into the result and the import takes them as
    they are; a result without them is refused, naming the file, and leaves nothing in the scene."""
    from scripts.inference.terminology import hex_color, segment_term, slicer_terminology_tag

    from MultiTaskUNetLib.terminology import MissingTerminology

    job = InferenceJob(sys.executable, volume_file, tmp_path / "out", fake_bundle("ok"), device="cpu")
    job.start()
    assert job.wait(timeout=120) is JobState.SUCCEEDED, job.error
    path = job.result_paths[0]
    ref = mrml.read_volume(scene, volume_file, "input")
    first = mrml.import_study(scene, read_result(path), ref, "first").GetSegmentation().GetNthSegment(0)
    assert mrml.segment_terminology(first) == slicer_terminology_tag(segment_term("tumor", 1))  # the bundle's table
    assert first.GetColor() == pytest.approx(tuple(c / 255 for c in segment_term("tumor", 1).color))
    assert hex_color(segment_term("tumor", 1).color) == read_result(path).segments[0].color
    edema = ("Segmentation category and type - DICOM master list~SCT^49755003^Morphologically Altered Structure"
             "~SCT^79654002^Edema~^^~Anatomic codes - DICOM master list~^^~^^")
    data = json.loads(path.read_text(encoding="utf-8"))
    data["segmentation"]["segments"][0].update(terminology=edema, color="#00ff00")
    path.write_text(json.dumps(data), encoding="utf-8")
    new = mrml.import_study(scene, read_result(path), ref, "new").GetSegmentation().GetNthSegment(0)
    assert new.GetName() == "tumor" and mrml.segment_terminology(new) == edema
    assert new.GetColor() == pytest.approx((0.0, 1.0, 0.0))

    for key in ("terminology", "color"):
        del data["segmentation"]["segments"][0][key]  # a result of an older worker
    path.write_text(json.dumps(data), encoding="utf-8")
    nodes = scene.GetNumberOfNodes()
    with pytest.raises(MissingTerminology, match="Run Segment & Classify again") as e:
        mrml.import_study(scene, read_result(path), ref, "old")
    assert str(path) in str(e.value) and "'tumor' (value 1): no terminology and no color" in str(e.value)
    assert scene.GetNumberOfNodes() == nodes  # nothing half-imported


def test_attributes_survive_saving_the_scene(scene, study, tmp_path):
    ref, seg, _ = study
    record = mrml.get_review(seg)
    record.override_diagnosis("glioma", "dr.a")
    record.accept("dr.a")
    mrml.set_review(seg, record)
    scene.SetRootDirectory(str(tmp_path))
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()
    reloaded = slicer.vtkMRMLScene()
    reloaded.SetURL(str(tmp_path / "scene.mrml"))
    assert reloaded.Import()
    back = reloaded.GetFirstNodeByName(seg.GetName())
    assert mrml.get_review(back) == record
    assert mrml.get_result(back).diagnosis == "meningioma" and back.GetAttribute("MultiTaskUNet.FinalDiagnosis") == "glioma"


def test_edit_is_detected(scene, study):
    ref, seg, _ = study
    record = mrml.refresh_edit_state(scene, seg, ref, "dr.a")
    assert not record.segment_edited
    mask = (mrml.label_map_array(scene, seg, ref) == 1)
    mask[:, :, :2] = True  # the reviewer adds a strip
    paint(scene, seg, ref, mask)
    record = mrml.refresh_edit_state(scene, seg, ref, "dr.a")
    assert record.segment_edited and record.history[-1]["action"] == "segment edited"
    record.accept("dr.a")
    mrml.set_review(seg, record)
    assert mrml.get_review(seg).decision is Decision.EDITED


def test_export_study(scene, study, tmp_path):
    ref, seg, result = study
    record = mrml.get_review(seg)
    record.reject("dr.b")
    mrml.set_review(seg, record)
    written = mrml.export_study(scene, seg, ref, tmp_path / "export", ["seg.nrrd", "nifti"], reviewer="dr.b")
    assert sorted(written) == ["nifti", "review", "seg.nrrd"]
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "input_MultiTaskUNet.seg.nrrd", "input_MultiTaskUNet_label.nii.gz", "input_MultiTaskUNet_review.json"]
    report = json.loads(written["review"].read_text())
    assert report["review"]["decision"] == "rejected" and report["review"]["reviewer"] == "dr.b"
    assert report["model_result"]["diagnosis"] == "meningioma"
    assert report["files"] == {"seg.nrrd": "input_MultiTaskUNet.seg.nrrd", "nifti": "input_MultiTaskUNet_label.nii.gz"}
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(written["nifti"]))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(result.segmentation_path))))


def test_export_errors(scene, study, tmp_path):
    ref, seg, _ = study
    with pytest.raises(ValueError, match=r"unknown export format\(s\) \['png'\]"):
        mrml.export_study(scene, seg, ref, tmp_path, ["png"])
    with pytest.raises(RuntimeError, match="DICOM SEG export needs 3D Slicer"):
        mrml.export_study(scene, seg, ref, tmp_path, ["dicom-seg"])
    plain = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "plain")
    with pytest.raises(ResultError, match="no 'MultiTaskUNet.Result' attribute"):
        mrml.get_result(plain)
    with pytest.raises(ReviewError, match="plain: no MultiTaskUNet review record"):
        mrml.get_review(plain)


def _algorithm(segment):
    return mrml.segment_tag(segment, mrml.ALGORITHM_TYPE_TAG), mrml.segment_tag(segment, mrml.ALGORITHM_NAME_TAG)


def test_segment_algorithm_automatic_then_semiautomatic_after_an_edit(scene, study, tmp_path):
    """DICOM SEG / .seg.nrrd say how the segments were made: the model's untouched, then edited by the reviewer."""
    ref, seg, _ = study
    segmentation = seg.GetSegmentation()
    assert _algorithm(segmentation.GetNthSegment(0)) == ("AUTOMATIC", "FakeMultiTaskUNet 0.0.1")
    added = segmentation.GetSegment(segmentation.AddEmptySegment("", "reviewer note"))
    mask = mrml.label_map_array(scene, seg, ref) == 1
    mask[:, :, :2] = True
    paint(scene, seg, ref, mask)
    mrml.refresh_edit_state(scene, seg, ref, "dr.a")
    assert _algorithm(segmentation.GetNthSegment(0)) == ("SEMIAUTOMATIC", "FakeMultiTaskUNet 0.0.1")
    assert _algorithm(added) == ("MANUAL", "")  # drawn by the reviewer
    written = mrml.export_study(scene, seg, ref, tmp_path / "export", ["seg.nrrd"], reviewer="dr.a")
    back = mrml.read_segmentation(scene, written["seg.nrrd"], "back")
    assert _algorithm(back.GetSegmentation().GetNthSegment(0)) == ("SEMIAUTOMATIC", "FakeMultiTaskUNet 0.0.1")


def test_export_study_dicom_seg_through_slicers_exporter(scene, study, tmp_path, monkeypatch):
    """With a DICOM SEG exporter present (Slicer 5.12 core / QuantitativeReporting): one file named like the
    others, listed in the review report, written with the reviewer as content creator."""
    import types

    calls = []

    class Exporter:
        def __init__(self, node, creator=None):
            self.creator = creator

        def export(self, outputDirectory, segFileName, metadata, segmentIDs=None, skipEmpty=False):
            calls.append((segFileName, metadata, list(segmentIDs), skipEmpty, self.creator))
            (Path(outputDirectory) / segFileName).write_bytes(b"DICM")

        def cleanup(self):
            pass

    monkeypatch.setitem(sys.modules, "DICOMSegmentationPlugin", types.SimpleNamespace(DICOMSegmentationExporter=Exporter))
    ref, seg, _ = study
    ref.SetAttribute("DICOM.instanceUIDs", "1.2.3")
    written = mrml.export_study(scene, seg, ref, tmp_path / "export", ["dicom-seg"], reviewer="dr.b")
    assert written["dicom-seg"] == tmp_path / "export" / "input_MultiTaskUNet_seg.dcm"
    assert calls == [("input_MultiTaskUNet_seg.dcm", {"SeriesDescription": "input MultiTaskUNet", "ContentCreatorName": "dr.b"},
                      [seg.GetSegmentation().GetNthSegmentID(0)], True, "dr.b")]
    assert json.loads(written["review"].read_text())["files"] == {"dicom-seg": "input_MultiTaskUNet_seg.dcm"}


def test_repeated_reviews_leave_no_nodes_behind(scene, study):
    ref, seg, _ = study
    count = scene.GetNumberOfNodes()
    for _ in range(4):
        mrml.refresh_edit_state(scene, seg, ref, "dr.a")
    assert scene.GetNumberOfNodes() == count


CT_SERIES = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "98892001" / "CT5N"


@pytest.fixture
def dicom_export(monkeypatch, study):
    """Export with a DICOM SEG exporter and a DICOM database standing in for Slicer's.

    The exporter writes a real DICOM SEG (the bundle's highdicom writer, over pydicom's real 5-slice CT
    series, which plays the input's DICOM series) numbering the segments as Slicer's does: 1..n in the
    order of the segment IDs it is given, labelled with the segments' names. The lookup plays
    ``slicer.dicomDatabase.fileForInstance``."""
    import types

    from scripts.inference.dicom_seg import write_dicom_seg

    files = sorted(CT_SERIES.iterdir())
    headers = sorted((pydicom.dcmread(f, stop_before_pixels=True) for f in files), key=lambda ds: int(ds.InstanceNumber))
    by_uid = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID: str(f) for f in files}
    calls = []

    class Exporter:
        def __init__(self, node, creator=None):
            self.node = node

        def export(self, outputDirectory, segFileName, metadata, segmentIDs=None, skipEmpty=False):
            names = [self.node.GetSegmentation().GetSegment(i).GetName() for i in segmentIDs]
            calls.append(names)
            label = np.zeros((16, 16, len(headers)), np.uint8)  # (X, Y, Z) of the CT series
            for number in range(1, len(names) + 1):
                label[number * 3:number * 3 + 2, 4:8, 1:3] = number
            write_dicom_seg(label, headers, ["background", *names], "Fake", "0", Path(outputDirectory) / segFileName, CT_SERIES)

        def cleanup(self):
            pass

    monkeypatch.setitem(sys.modules, "DICOMSegmentationPlugin", types.SimpleNamespace(DICOMSegmentationExporter=Exporter))
    ref, seg, result = study
    ref.SetAttribute("DICOM.instanceUIDs", " ".join(ds.SOPInstanceUID for ds in headers))
    return ref, seg, result, by_uid.get, calls


def _report(path):
    return hd.sr.MeasurementReport.from_sequence(hd.sr.srread(path).content)


def test_export_writes_the_dicom_sr_with_the_review(scene, dicom_export, tmp_path, bundle_root):
    """Export of a reviewed study: SEG + SR beside it; the SR carries the decision, the overridden diagnosis,
    the tumour volume as exported (after the reviewer's edit), and references the SEG and the source series."""
    from MultiTaskUNetLib.structured_report import ReportWriter, source_files

    ref, seg, result, lookup, calls = dicom_export
    mask = mrml.label_map_array(scene, seg, ref) == 1
    mask[:, :, :2] = True  # the reviewer adds a strip
    paint(scene, seg, ref, mask)
    record = mrml.refresh_edit_state(scene, seg, ref, "Dr B")
    record.override_diagnosis("glioma", "Dr B")
    record.accept("Dr B")
    mrml.set_review(seg, record)
    sources = source_files(ref.GetAttribute("DICOM.instanceUIDs"), lookup)
    writer = ReportWriter(sys.executable, bundle_root, sources)
    written = mrml.export_study(scene, seg, ref, tmp_path / "export", ["dicom-seg"], "Dr B", report_writer=writer)

    assert written["dicom-sr"] == tmp_path / "export" / "input_MultiTaskUNet_sr.dcm"
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "input_MultiTaskUNet_review.json", "input_MultiTaskUNet_seg.dcm", "input_MultiTaskUNet_sr.dcm"]
    assert json.loads(written["review"].read_text())["files"] == {"dicom-seg": "input_MultiTaskUNet_seg.dcm",
                                                                  "dicom-sr": "input_MultiTaskUNet_sr.dcm"}
    report = _report(written["dicom-sr"])
    (group,) = report.get_image_measurement_groups()
    evaluations = {e.name.meaning: e.value for e in group.get_qualitative_evaluations()}
    assert evaluations["Review decision"].value == "edited"
    assert evaluations["Reviewer diagnosis"].value == "393564001"  # SNOMED CT glioma
    assert group.finding_type.value == "302820008"  # the model's diagnosis: intracranial meningioma
    (roi,) = report.get_volumetric_roi_measurement_groups()
    voxels = int(mask.sum())
    assert roi.get_measurements()[0].value == pytest.approx(round(voxels * np.prod(ref.GetSpacing()) / 1000, 4))
    assert voxels != result.segments[0].voxels  # the edited segment's volume, not the model's
    seg_ds = pydicom.dcmread(written["dicom-seg"], stop_before_pixels=True)
    referenced = roi.referenced_segment
    assert referenced.referenced_sop_instance_uid == seg_ds.SOPInstanceUID and referenced.referenced_segment_numbers == [1]
    assert calls == [["tumor"]]


def test_pending_unsigned_review_gives_the_models_report(scene, dicom_export, tmp_path, bundle_root):
    from MultiTaskUNetLib.structured_report import ReportWriter, source_files

    ref, seg, _, lookup, _ = dicom_export
    writer = ReportWriter(sys.executable, bundle_root, source_files(ref.GetAttribute("DICOM.instanceUIDs"), lookup))
    written = mrml.export_study(scene, seg, ref, tmp_path / "export", ["dicom-seg"], report_writer=writer)
    sr = hd.sr.srread(written["dicom-sr"])
    assert sr.PreliminaryFlag == "PRELIMINARY"
    group = _report(written["dicom-sr"]).get_image_measurement_groups()[0]
    meanings = {e.name.meaning for e in group.get_qualitative_evaluations()}
    assert not meanings & {"Review decision", "Reviewer diagnosis"}  # the model's answer, unreviewed


def test_sr_failure_names_the_reason_and_leaves_no_sr(scene, dicom_export, tmp_path, bundle_root):
    from MultiTaskUNetLib.structured_report import ReportError, ReportWriter

    ref, seg, _, _, _ = dicom_export
    writer = ReportWriter(sys.executable, bundle_root, [str(tmp_path / "missing.dcm")])
    with pytest.raises(ReportError, match=r"DICOM SR not written: .*missing.dcm: not a readable DICOM source instance"):
        mrml.export_study(scene, seg, ref, tmp_path / "export", ["dicom-seg"], "Dr B", report_writer=writer)
    assert not (tmp_path / "export" / "input_MultiTaskUNet_sr.dcm").exists()


def test_restore_a_reviewed_study_from_its_saved_segmentation(scene, study, tmp_path):
    """A worklist study left after an edit and a decision comes back as it was: same voxels, same record,
    and checking it again finds no new edit (the decision stands)."""
    ref, seg, result = study
    mask = mrml.label_map_array(scene, seg, ref) == 1
    mask[:, :, :2] = True
    paint(scene, seg, ref, mask)
    record = mrml.refresh_edit_state(scene, seg, ref, "Dr A")
    record.override_diagnosis("glioma", "Dr A")
    record.accept("Dr A")
    mrml.set_review(seg, record)
    saved = mrml.write_segmentation(scene, seg, tmp_path / "review" / "study.seg.nrrd")
    labels = mrml.label_map_array(scene, seg, ref)
    scene.RemoveNode(seg)

    back = mrml.restore_study(scene, read_result(result.path), ref, ReviewRecord.from_json(record.to_json()), saved,
                              "study MultiTaskUNet")
    np.testing.assert_array_equal(mrml.label_map_array(scene, back, ref), labels)
    again = mrml.refresh_edit_state(scene, back, ref, "Dr A")
    assert (again.decision, again.final_diagnosis, again.segment_edited) == (Decision.EDITED, "glioma", True)
    assert again.history == record.history  # no spurious "segment edited"
    assert mrml.get_result(back).diagnosis == "meningioma" and mrml.segment_tag(
        back.GetSegmentation().GetNthSegment(0), mrml.LABEL_VALUE_TAG) == "1"
    with pytest.raises(ValueError, match="gone.seg.nrrd: file not found"):
        mrml.restore_study(scene, result, ref, record, tmp_path / "gone.seg.nrrd")
