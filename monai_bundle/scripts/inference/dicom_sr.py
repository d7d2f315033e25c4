"""The diagnosis as a DICOM Structured Report: TID 1500 Measurement Report (highdicom), beside the SEG.

One Comprehensive 3D SR per study, in the source study, holding:

- the observation context: the model as device observer (its name, version, and a device UID
  derived from the weights' SHA-256, so reports of one model share it); after review also the
  reviewer as person observer;
- a measurement group (TID 1501) "diagnosis" over the source images (every instance of the
  series): the diagnosis as the group's coded finding (its CODE item DCM 121071 "Finding" = the
  class's SNOMED CT concept, :func:`scripts.inference.terminology.class_code`), its probability
  (DCM 122157 "Probability", unit UCUM "1"; temperature-calibrated when the model card has a
  temperature) and the algorithm (TID 4019: name and version);
- a volumetric ROI group (TID 1411) per segment: the segment of the DICOM SEG it measures (with
  the source series), its volume (SCT 118565006 "Volume", mL), the segment's type as finding type;
- after review, in the diagnosis group: "Review decision" = accepted / edited / rejected and, when
  the reviewer overrode the diagnosis, "Reviewer diagnosis" = the reviewer's class. These two
  concepts have no DICOM or SNOMED CT code; they are codes of the project's private scheme
  ``99MTUNET``, which the report declares (Coding Scheme Identification), as is every class
  without a SNOMED CT concept.

An unreviewed report is PRELIMINARY (a model's answer); a reviewed one FINAL. Both are left
UNVERIFIED: verification is a legal attestation a site does in its own reporting system.

Run as ``python -m scripts.inference.dicom_sr REQUEST.json`` it writes one report from a request
(:func:`main`): how the 3D Slicer module writes the SR of a reviewed study out of process, with the
bundle's code, beside the DICOM SEG that Slicer exported.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code as PydicomCode

from scripts.core.atomic import atomic_path
from scripts.inference.dicom_seg import content_seed, content_uid, pydicom_code
from scripts.inference.terminology import LOCAL_SCHEME, Code, class_code, segment_term

SERIES_NUMBER = 1000  # SR series number: after the source series and the SEG (999) in viewers
REVIEW_DECISIONS = ("accepted", "edited", "rejected")  # "pending": no decision yet
REVIEW_DECISION = Code("review", LOCAL_SCHEME, "Review decision")
REVIEWER_DIAGNOSIS = Code("reviewer-dx", LOCAL_SCHEME, "Reviewer diagnosis")
_DECISION_CODES = {"accepted": Code("accepted", LOCAL_SCHEME, "Accepted"),
                   "edited": Code("edited", LOCAL_SCHEME, "Accepted after editing"),
                   "rejected": Code("rejected", LOCAL_SCHEME, "Rejected")}
PROBABILITY = PydicomCode("122157", "DCM", "Probability")
MILLILITER = PydicomCode("ml", "UCUM", "milliliter")
_PN_MAX = 64  # a Person Name component holds 64 characters at most
# Type 2 attributes of the source that highdicom's SR copies by attribute access (absent in some exports)
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
          "StudyDate", "StudyTime", "ReferringPhysicianName")


@dataclass(frozen=True)
class Review:
    """The radiologist's review carried by the report.

    Args:
        decision: ``"accepted" | "edited" | "rejected"``, or ``"pending"`` (no decision yet).
        reviewer: who reviewed (free text; written as a DICOM person name).
        diagnosis: the reviewer's class when it overrides the model's; None keeps the model's.
    """

    decision: str
    reviewer: str
    diagnosis: str | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Review:
        """From the Slicer module's review record (``MultiTaskUNetLib.review.ReviewRecord.to_dict()``)."""
        overridden = record.get("final_diagnosis") != record.get("original_diagnosis")
        return cls(str(record.get("decision", "pending")), str(record.get("reviewer", "")),
                   record.get("final_diagnosis") if overridden else None)


def algorithm_identification(name: str, version: str) -> hd.sr.AlgorithmIdentification:
    """TID 4019 for the model: its name, version and, where highdicom has the row (0.28 and later),
    the family "Artificial Intelligence". 3D Slicer 5.12 ships highdicom 0.27, whose template has no
    family; the row is optional, so the module's SR there carries name and version only."""
    if "family" in inspect.signature(hd.sr.AlgorithmIdentification).parameters:
        return hd.sr.AlgorithmIdentification(name=name, version=version, family=codes.DCM.ArtificialIntelligence)
    return hd.sr.AlgorithmIdentification(name=name, version=version)


def person_name(text: str) -> str:
    """A reviewer's free-text name as a DICOM person name: ``"Jane Doe"`` -> ``"Jane Doe^"``.

    Text without a ``^`` is kept whole as the family-name component (the trailing caret says so);
    text that already has components is kept as it is.
    """
    text = " ".join(text.replace("\\", " ").split())
    return text if "^" in text else f"{text[:_PN_MAX]}^"


def _check_review(review: Review, classes: Sequence[str]) -> None:
    if review.decision not in (*REVIEW_DECISIONS, "pending"):
        raise ValueError(f"review decision must be one of {[*REVIEW_DECISIONS, 'pending']}, got {review.decision!r}")
    if review.diagnosis is not None and review.diagnosis not in classes:
        raise ValueError(f"reviewer diagnosis {review.diagnosis!r} is not one of the classes {list(classes)}")
    if not review.reviewer.strip():
        raise ValueError("a review in the report needs the reviewer's name")


def _evidence(sources: Sequence[Dataset], seg: Dataset) -> list[Dataset]:
    """The instances the report references; the first lends patient and study attributes, so its
    missing Type 2 attributes are filled empty (on a copy)."""
    first = Dataset()
    first.update(sources[0])
    for keyword in _TYPE2:
        if keyword not in first:
            setattr(first, keyword, None)
    return [first, *sources[1:], seg]


def _observation_context(result: Mapping[str, Any], review: Review | None) -> hd.sr.ObservationContext:
    model = result["model"]
    weights = model.get("sha256") or f"{model['name']} {model['version']}"
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=content_uid(weights, "device observer"), name=model["name"],  # one UID per model weights
            manufacturer_name="MultiTaskUNet", model_name=f"{model['name']} {model['version']}"))
    person = None
    if review is not None:
        person = hd.sr.ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                name=person_name(review.reviewer)))
    return hd.sr.ObservationContext(observer_person_context=person, observer_device_context=device)


def _diagnosis_group(result: Mapping[str, Any], sources: Sequence[Dataset], algorithm: hd.sr.AlgorithmIdentification,
                     review: Review | None, seed: str | None = None) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    diagnosis = result["diagnosis"]
    label = diagnosis["label"]
    evaluations = []
    if review is not None and review.decision in _DECISION_CODES:
        evaluations.append(hd.sr.QualitativeEvaluation(pydicom_code(REVIEW_DECISION), pydicom_code(_DECISION_CODES[review.decision])))
    if review is not None and review.diagnosis is not None and review.diagnosis != label:
        evaluations.append(hd.sr.QualitativeEvaluation(pydicom_code(REVIEWER_DIAGNOSIS), pydicom_code(class_code(review.diagnosis))))
    probability = hd.sr.Measurement(name=PROBABILITY, value=float(diagnosis["probabilities"][label]),
                                    unit=codes.UCUM.NoUnits, algorithm_id=algorithm)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=content_uid(seed, "diagnosis"), identifier="diagnosis"),
        finding_type=pydicom_code(class_code(label)), algorithm_id=algorithm, qualitative_evaluations=evaluations or None,
        measurements=[probability],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in sources])


def _segment_groups(result: Mapping[str, Any], seg: Dataset, algorithm: hd.sr.AlgorithmIdentification,
                    seed: str | None = None) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    """One group per segment of the result, referencing the SEG's segment of the same number.

    Raises:
        ValueError: the SEG has no segment with a result segment's label value.
    """
    numbers = {int(item.SegmentNumber) for item in seg.SegmentSequence}
    source_series = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    groups = []
    for segment in result["segmentation"]["segments"]:
        number = int(segment["value"])
        if number not in numbers:
            raise ValueError(f"DICOM SEG {seg.SOPInstanceUID} has no segment {number} ({segment['name']})")
        term = segment_term(segment["name"], number)
        measurements = []
        if segment.get("volume_ml") is not None:
            measurements.append(hd.sr.Measurement(name=codes.SCT.Volume, value=float(segment["volume_ml"]),
                                                  unit=MILLILITER, algorithm_id=algorithm))
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=content_uid(seed, f"segment {number}"),
                                                         identifier=f"segment {number} {segment['name']}"),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
                source_series=hd.sr.SourceSeriesForSegmentation(source_series)),
            finding_category=pydicom_code(term.category), finding_type=pydicom_code(term.type), algorithm_id=algorithm,
            measurements=measurements or None))
    return groups


def build_report(result: Mapping[str, Any], seg: Dataset, sources: Sequence[Dataset],
                 review: Review | None = None, uid_seed: str | None = None) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of one study (see the module docstring).

    Args:
        result: the study's result JSON (:meth:`scripts.inference.Predictor.predict`).
        seg: the study's DICOM SEG (headers suffice), whose segment numbers are the label values.
        sources: headers of the source series' instances (the SEG's source images).
        review: the reviewer's decision and diagnosis; None for the model's answer alone.
        uid_seed: None for random UIDs; else the report's UIDs follow from it, the SEG's UID, the
            diagnosis, the segments and the review (:func:`scripts.inference.dicom_seg.content_uid`):
            the same report written again gets the same UIDs.

    Raises:
        ValueError: no source instances, an invalid review, or a segment missing from the SEG.
    """
    if not sources:
        raise ValueError("a DICOM SR needs the source instances it reports on")
    classes = list(result["diagnosis"]["probabilities"])
    if review is not None:
        _check_review(review, classes)
    model = result["model"]
    seed = content_seed(uid_seed, [str(seg.SOPInstanceUID), json.dumps(
        [result["diagnosis"], result["segmentation"]["segments"], model, review and vars(review)], sort_keys=True)])
    algorithm = algorithm_identification(model["name"], model["version"])
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(result, review), procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=[_diagnosis_group(result, sources, algorithm, review, seed),
                              *_segment_groups(result, seg, algorithm, seed)])
    labels = [result["diagnosis"]["label"]] + ([review.diagnosis] if review and review.diagnosis else [])
    local = review is not None or any(class_code(c).scheme == LOCAL_SCHEME for c in labels)
    schemes = [CodingSchemeIdentificationItem(
        designator=LOCAL_SCHEME, name="MultiTaskUNet review and class codes",
        responsible_organization="MultiTaskUNet project")] if local else None
    return hd.sr.Comprehensive3DSR(
        evidence=_evidence(sources, seg), content=report[0], series_instance_uid=content_uid(seed, "series"),
        series_number=SERIES_NUMBER, sop_instance_uid=content_uid(seed, "instance"), instance_number=1,
        manufacturer="MultiTaskUNet", manufacturer_model_name=model["name"], software_versions=model["version"],
        device_serial_number="0", series_description=f"{model['name']} diagnosis",
        is_complete=True, is_final=review is not None and review.decision in REVIEW_DECISIONS,
        coding_schemes=schemes)


def write_dicom_sr(result: Mapping[str, Any], seg_path: str | os.PathLike, sources: Sequence[Dataset],
                   path: str | os.PathLike, review: Review | None = None, uid_seed: str | None = None) -> Path:
    """Write :func:`build_report` for the SEG at ``seg_path`` to ``path``, atomically.

    Raises:
        ValueError: see :func:`build_report`.
    """
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    report = build_report(result, seg, sources, review, uid_seed)
    with atomic_path(path, suffix=".dcm") as tmp:
        report.save_as(tmp)
    return Path(path)


#: keys of a request to :func:`main`
REQUEST_KEYS = ("result", "seg", "sources", "out")


def write_from_request(request: Mapping[str, Any]) -> Path:
    """Write the report a request describes (see :func:`main`).

    Raises:
        ValueError: a key is missing, a source is not a DICOM file, or :func:`build_report` refuses.
    """
    missing = [k for k in REQUEST_KEYS if k not in request]
    if missing:
        raise ValueError(f"DICOM SR request lacks {missing}")
    sources = []
    for name in request["sources"]:
        try:
            sources.append(pydicom.dcmread(name, stop_before_pixels=True))
        except (OSError, InvalidDicomError) as e:
            raise ValueError(f"{name}: not a readable DICOM source instance ({e})") from e
    record = request.get("review")
    review = Review.from_record(record) if record else None
    return write_dicom_sr(request["result"], request["seg"], sources, request["out"], review)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m scripts.inference.dicom_sr REQUEST.json``: write one SR.

    The request is a JSON object: ``result`` (the study's result JSON, its segments numbered as in
    the SEG), ``seg`` (the DICOM SEG file), ``sources`` (the source instances' files), ``out`` (the
    SR file to write) and optionally ``review`` (the Slicer module's review record, as
    :meth:`Review.from_record` reads it). Prints ``RESULT <path>``; on failure exits 1 with one
    line ``ERROR <message>`` on stderr (the worker's progress protocol).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m scripts.inference.dicom_sr REQUEST.json", file=sys.stderr)
        return 2
    try:
        with open(args[0], encoding="utf-8") as f:
            request = json.load(f)
        if not isinstance(request, dict):
            raise ValueError(f"{args[0]}: a DICOM SR request must be a JSON object")
        path = write_from_request(request)
    except (OSError, ValueError) as e:  # json.JSONDecodeError is a ValueError
        print(f"ERROR {e}", file=sys.stderr)
        return 1
    print(f"RESULT {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
