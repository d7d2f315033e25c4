"""The diagnosis as a DICOM SR (TID 1500): dciodvfy on the SR and the SEG, read back with highdicom."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from infer_helpers import CT_SERIES, mni_volume, write_dicom_series
from scripts.inference.dicom import read_dicom_folder
from scripts.inference.dicom_sr import (LOCAL_SCHEME, REVIEW_DECISION, REVIEWER_DIAGNOSIS, Review, build_report,
                                        person_name, write_dicom_sr)
from scripts.inference.terminology import class_code


def dciodvfy(path) -> list[str]:
    """dciodvfy's messages on ``path`` (Debian dicom3tools, installed by ``make system-deps``)."""
    exe = shutil.which("dciodvfy")
    assert exe, "dciodvfy not found: install Debian dicom3tools (make system-deps)"
    done = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]


def errors(messages: list[str]) -> list[str]:
    return [m for m in messages if m.startswith("Error")]


@pytest.fixture(scope="module")
def brain_outputs(predictor2d, tmp_path_factory):
    """The Predictor's DICOM SEG + SR of a real T1 brain (MNI152) written as an MR series."""
    folder = tmp_path_factory.mktemp("sr") / "brain"
    write_dicom_series(mni_volume(8), folder, spacing=(2.0, 2.0, 3.0))
    pred = predictor2d.predict(folder, output_dir=folder.parent / "out", seg_format="dicom-seg", overlay=False)
    return folder, pred


def _report(path) -> tuple[hd.sr.Comprehensive3DSR, hd.sr.MeasurementReport]:
    sr = hd.sr.srread(path)
    return sr, hd.sr.MeasurementReport.from_sequence(sr.content)


def _evaluations(group) -> dict[str, hd.sr.CodedConcept]:
    """``{concept name meaning: coded value}`` of a measurement group's qualitative evaluations."""
    return {e.name.meaning: e.value for e in group.get_qualitative_evaluations()}


def test_predictor_writes_the_sr_beside_the_seg(brain_outputs):
    folder, pred = brain_outputs
    out = folder.parent / "out"
    assert pred.paths["sr"] == out / "brain_sr.dcm"
    assert sorted(p.name for p in out.iterdir()) == ["brain_result.json", "brain_seg.dcm", "brain_sr.dcm"]  # no temp
    assert json.loads((out / "brain_result.json").read_text())["outputs"] == {"sr": str(out / "brain_sr.dcm")}


def test_sr_and_seg_pass_dciodvfy(brain_outputs):
    _, pred = brain_outputs
    seg_messages, sr_messages = dciodvfy(pred.paths["segmentation"]), dciodvfy(pred.paths["sr"])
    assert seg_messages[0] == "Segmentation" and errors(seg_messages) == []
    assert sr_messages == ["Comprehensive3DSR"]  # an unreviewed report uses standard codes only: not even a warning


def test_sr_reads_back_with_the_codes_and_the_references(brain_outputs):
    folder, pred = brain_outputs
    sr, report = _report(pred.paths["sr"])
    seg = pydicom.dcmread(pred.paths["segmentation"], stop_before_pixels=True)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in folder.iterdir()]
    assert sr.StudyInstanceUID == seg.StudyInstanceUID == sources[0].StudyInstanceUID
    assert (sr.CompletionFlag, sr.PreliminaryFlag, sr.VerificationFlag) == ("COMPLETE", "PRELIMINARY", "UNVERIFIED")

    (diagnosis,) = report.get_image_measurement_groups()
    label = pred.result["diagnosis"]["label"]
    assert diagnosis.finding_type.value == class_code(label).value and diagnosis.tracking_identifier == "diagnosis"
    (probability,) = diagnosis.get_measurements(name=codes.DCM.Probability)
    assert probability.value == pytest.approx(pred.result["diagnosis"]["probabilities"][label])
    assert {s.referenced_sop_instance_uid for s in diagnosis.source_images} == {ds.SOPInstanceUID for ds in sources}

    (tumor,) = report.get_volumetric_roi_measurement_groups()
    referenced = tumor.referenced_segment
    assert referenced.referenced_sop_instance_uid == seg.SOPInstanceUID and referenced.referenced_segment_numbers == [1]
    assert referenced.source_series_for_segmentation.value == sources[0].SeriesInstanceUID
    (volume,) = tumor.get_measurements(name=codes.SCT.Volume)
    assert volume.value == pytest.approx(pred.result["segmentation"]["segments"][0]["volume_ml"])
    assert volume.unit.value == "ml" and tumor.finding_type.value == "108369006"  # Neoplasm, as in the SEG

    (device,) = report.get_observer_contexts(observer_type=codes.DCM.Device)
    assert device.observer_identifying_attributes.name == pred.result["model"]["name"]
    (study,) = sr.CurrentRequestedProcedureEvidenceSequence
    evidence = {item.SeriesInstanceUID for item in study.ReferencedSeriesSequence}
    assert evidence == {sources[0].SeriesInstanceUID, seg.SeriesInstanceUID}


def _ct_result(label: str = "glioma") -> dict:
    probabilities = {"glioma": 0.1, "meningioma": 0.2, "no_tumor": 0.6, "pituitary": 0.1}
    return {"diagnosis": {"label": label, "probabilities": probabilities, "calibrated": True},
            "segmentation": {"segments": [{"name": "tumor", "value": 1, "voxels": 0, "volume_ml": 0.0}]},
            "model": {"name": "Tiny", "version": "0.0.1", "sha256": "ab" * 32}}


@pytest.fixture(scope="module")
def ct_seg(tmp_path_factory):
    """pydicom's real CT series with an empty DICOM SEG over it."""
    from scripts.inference.dicom_seg import write_dicom_seg

    study = read_dicom_folder(CT_SERIES)
    path = tmp_path_factory.mktemp("ctseg") / "ct_seg.dcm"
    write_dicom_seg(np.zeros(study.spatial_shape, np.uint8), study.dicom, ["background", "tumor"], "Tiny", "0.0.1",
                    path, CT_SERIES)
    return study.dicom, path


def test_review_decision_and_overridden_diagnosis(ct_seg, tmp_path):
    sources, seg_path = ct_seg
    path = write_dicom_sr(_ct_result("no_tumor"), seg_path, sources, tmp_path / "sr.dcm",
                          Review("edited", "Jane Doe", diagnosis="meningioma"))
    messages = dciodvfy(path)
    assert errors(messages) == []
    assert all(LOCAL_SCHEME in m for m in messages[1:])  # only warnings that the private scheme is not DICOM's own
    sr, report = _report(path)
    evaluations = _evaluations(report.get_image_measurement_groups()[0])
    assert report.get_image_measurement_groups()[0].finding_type.value == "17621005"  # no_tumor: SNOMED CT "Normal"
    assert evaluations[REVIEW_DECISION.meaning].value == "edited"
    assert evaluations[REVIEWER_DIAGNOSIS.meaning].value == "302820008"  # Intracranial meningioma
    (person,) = report.get_observer_contexts(observer_type=codes.DCM.Person)
    assert str(person.observer_identifying_attributes.name) == "Jane Doe^"
    assert sr.PreliminaryFlag == "FINAL"
    assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == LOCAL_SCHEME
    assert report.get_volumetric_roi_measurement_groups()[0].get_measurements()[0].value == 0.0


def test_review_from_the_slicer_record():
    record = {"decision": "accepted", "reviewer": "rad", "original_diagnosis": "glioma", "final_diagnosis": "pituitary"}
    assert Review.from_record(record) == Review("accepted", "rad", "pituitary")
    assert Review.from_record({**record, "final_diagnosis": "glioma"}).diagnosis is None


def test_pending_review_with_same_diagnosis_adds_only_the_reviewer(ct_seg):
    sources, seg_path = ct_seg
    report = build_report(_ct_result(), pydicom.dcmread(seg_path), sources, Review("pending", "rad", "glioma"))
    parsed = hd.sr.MeasurementReport.from_sequence(report.content)
    evaluations = _evaluations(parsed.get_image_measurement_groups()[0])
    assert REVIEW_DECISION.meaning not in evaluations and REVIEWER_DIAGNOSIS.meaning not in evaluations
    assert len(parsed.get_observer_contexts(observer_type=codes.DCM.Person)) == 1
    assert report.PreliminaryFlag == "PRELIMINARY"


@pytest.mark.parametrize("review, match", [
    (Review("approved", "rad"), "review decision must be one of"),
    (Review("accepted", "rad", "astrocytoma"), "reviewer diagnosis 'astrocytoma' is not one of the classes"),
    (Review("rejected", "  "), "needs the reviewer's name"),
])
def test_invalid_review_refused(ct_seg, tmp_path, review, match):
    sources, seg_path = ct_seg
    with pytest.raises(ValueError, match=match):
        write_dicom_sr(_ct_result(), seg_path, sources, tmp_path / "sr.dcm", review)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_segment_missing_from_the_seg_refused(ct_seg):
    sources, seg_path = ct_seg
    result = _ct_result()
    result["segmentation"]["segments"].append({"name": "edema", "value": 2, "voxels": 0, "volume_ml": 0.0})
    with pytest.raises(ValueError, match=r"has no segment 2 \(edema\)"):
        build_report(result, pydicom.dcmread(seg_path), sources)


def test_no_sources_refused(ct_seg):
    with pytest.raises(ValueError, match="needs the source instances"):
        build_report(_ct_result(), pydicom.dcmread(ct_seg[1]), [])


def test_sources_without_type2_patient_and_study_attributes(ct_seg, tmp_path):
    sources, seg_path = ct_seg
    stripped = [copy.deepcopy(ds) for ds in sources]
    for ds in stripped:
        for keyword in ("AccessionNumber", "PatientBirthDate", "PatientSex", "StudyID", "ReferringPhysicianName"):
            if keyword in ds:
                delattr(ds, keyword)
    path = write_dicom_sr(_ct_result(), seg_path, stripped, tmp_path / "sr.dcm")
    assert errors(dciodvfy(path)) == [] and "AccessionNumber" not in stripped[0]  # the caller's headers untouched


def test_unknown_class_gets_a_declared_local_code(ct_seg):
    sources, seg_path = ct_seg
    result = _ct_result("HGG")
    result["diagnosis"]["probabilities"] = {"HGG": 0.7, "LGG": 0.3}
    report = build_report(result, pydicom.dcmread(seg_path), sources)
    finding = hd.sr.MeasurementReport.from_sequence(report.content).get_image_measurement_groups()[0].finding_type
    assert (finding.value, finding.scheme_designator, finding.meaning) == ("HGG", LOCAL_SCHEME, "HGG")
    assert report.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == LOCAL_SCHEME


@pytest.mark.parametrize("text, name", [("Jane Doe", "Jane Doe^"), ("Doe^Jane", "Doe^Jane"), ("  rad  ", "rad^")])
def test_person_name(text, name):
    assert person_name(text) == name


def _request(ct_seg, tmp_path, **changes) -> dict:
    _, seg_path = ct_seg
    request = {"result": _ct_result(), "seg": str(seg_path), "sources": [],
               "out": str(tmp_path / "out" / "ct_sr.dcm"),
               "review": {"decision": "rejected", "reviewer": "Dr B", "original_diagnosis": "glioma",
                          "final_diagnosis": "pituitary"}}
    request.update(changes)
    return request


def _source_files(ct_seg) -> list[str]:
    """The CT series' files in the order of the study's instances."""
    by_uid = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: str(p) for p in CT_SERIES.iterdir()}
    return [by_uid[ds.SOPInstanceUID] for ds in ct_seg[0]]


def test_main_writes_the_sr_a_request_describes(ct_seg, tmp_path, capsys):
    """How the Slicer module writes the SR: a request file, the bundle's entry run out of process."""
    from scripts.inference.dicom_sr import main

    request = _request(ct_seg, tmp_path, sources=_source_files(ct_seg))
    (tmp_path / "request.json").write_text(json.dumps(request), encoding="utf-8")
    assert main([str(tmp_path / "request.json")]) == 0
    assert capsys.readouterr().out.strip() == f"RESULT {request['out']}"
    _, report = _report(request["out"])
    evaluations = _evaluations(report.get_image_measurement_groups()[0])
    assert evaluations[REVIEW_DECISION.meaning].value == "rejected"
    assert evaluations[REVIEWER_DIAGNOSIS.meaning].value == class_code("pituitary").value
    assert errors(dciodvfy(request["out"])) == []


@pytest.mark.parametrize("change, match", [
    ({"sources": ["/nonexistent/1.dcm"]}, r"/nonexistent/1.dcm: not a readable DICOM source instance"),
    ({"seg": None}, r"DICOM SR request lacks \['seg'\]"),
    ({"review": {"decision": "maybe", "reviewer": "Dr B"}}, "review decision must be one of"),
])
def test_main_reports_a_bad_request_on_one_error_line(ct_seg, tmp_path, capsys, change, match):
    from scripts.inference.dicom_sr import main

    request = _request(ct_seg, tmp_path, sources=_source_files(ct_seg))
    request.update(change)
    request = {k: v for k, v in request.items() if v is not None}
    (tmp_path / "request.json").write_text(json.dumps(request), encoding="utf-8")
    assert main([str(tmp_path / "request.json")]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("ERROR ") and re.search(match, line), line
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def _rows(template) -> list[str]:
    return [item.ConceptNameCodeSequence[0].CodeMeaning for item in template]


def test_algorithm_identification_with_the_family_where_highdicom_has_it(monkeypatch):
    """highdicom 0.28 writes TID 4019's family row; 3D Slicer 5.12 ships 0.27, whose template lacks it."""
    from scripts.inference.dicom_sr import algorithm_identification

    assert "Algorithm Family" in _rows(algorithm_identification("Tiny", "0.0.1"))

    class WithoutFamily(hd.sr.AlgorithmIdentification):  # highdicom 0.27's signature
        def __init__(self, name, version, parameters=None):
            super().__init__(name, version, parameters)

    monkeypatch.setattr(hd.sr, "AlgorithmIdentification", WithoutFamily)
    assert _rows(algorithm_identification("Tiny", "0.0.1")) == ["Algorithm Name", "Algorithm Version"]


def test_device_observer_uid_names_the_model_weights():
    """One Device Observer UID per model (from the weights' SHA-256): SRs of one model share it, another
    model's differ (pydicom's generate_uid(prefix=None, entropy_srcs=...) would give a random one)."""
    from scripts.inference.dicom_sr import _observation_context

    def device_uid(sha256):
        items = _observation_context({"model": {"name": "MultiTaskUNet", "version": "1", "sha256": sha256}}, None)
        return [item.UID for item in items if item.ValueType == "UIDREF"]

    assert device_uid("ab" * 32) == device_uid("ab" * 32) != device_uid("cd" * 32)
    assert len(device_uid("ab" * 32)) == 1 and device_uid("ab" * 32)[0].startswith("2.25.")
