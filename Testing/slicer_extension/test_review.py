"""MultiTaskUNetLib.review: decisions, override, edit detection, JSON round trip."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from MultiTaskUNetLib.review import Decision, ReviewError, ReviewRecord, default_reviewer, label_digest, now_iso

RESULT = SimpleNamespace(model_name="MultiTaskUNet", model_version="0.1.0", model_sha256="ab" * 32,
                         diagnosis="meningioma", probabilities={"glioma": 0.1, "meningioma": 0.8, "pituitary": 0.1})
T0, T1, T2 = "2026-01-02T10:00:00+00:00", "2026-01-02T10:05:00+00:00", "2026-01-02T10:09:00+00:00"


@pytest.fixture
def record():
    return ReviewRecord.from_result(RESULT, original_digest=label_digest(np.zeros((2, 3, 4), np.uint8)), created_at=T0)


def test_new_record_is_pending(record):
    assert record.decision is Decision.PENDING
    assert (record.original_diagnosis, record.final_diagnosis) == ("meningioma", "meningioma")
    assert record.classes == ["glioma", "meningioma", "pituitary"] and not record.diagnosis_overridden
    assert record.created_at == T0 and record.history == [] and not record.segment_edited


def test_accept_with_override_and_comment(record):
    record.override_diagnosis("glioma", "dr.a", when=T1)
    record.set_comment("enhancing rim", "dr.a", when=T1)
    record.accept(" dr.a ", when=T2)
    assert (record.decision, record.reviewer, record.reviewed_at) == (Decision.ACCEPTED, "dr.a", T2)
    assert record.diagnosis_overridden and record.final_diagnosis == "glioma" and record.original_diagnosis == "meningioma"
    assert [h["action"] for h in record.history] == ["diagnosis", "comment", "accepted"]
    assert record.history[0] == {"action": "diagnosis", "reviewer": "dr.a", "at": T1, "previous": "meningioma", "new": "glioma"}


def test_reject(record):
    record.reject("dr.b", when=T1)
    assert record.decision is Decision.REJECTED and record.reviewer == "dr.b"


def test_edit_after_accept_reopens_and_accept_becomes_edited(record):
    record.accept("dr.a", when=T1)
    edited = np.zeros((2, 3, 4), np.uint8)
    edited[0, 0, 0] = 1
    assert record.note_segment_state(label_digest(edited), "dr.a", when=T2) is True
    assert record.decision is Decision.PENDING and record.segment_edited
    assert record.history[-1]["action"] == "segment edited"
    record.note_segment_state(label_digest(edited), "dr.a")  # same state again: nothing new to log
    assert [h["action"] for h in record.history] == ["accepted", "segment edited"]
    record.accept("dr.a")
    assert record.decision is Decision.EDITED


def test_unchanged_segment_keeps_decision(record):
    record.accept("dr.a", when=T1)
    assert record.note_segment_state(record.original_digest) is False
    assert record.decision is Decision.ACCEPTED and not record.segment_edited


def test_edit_undone_is_not_edited(record):
    changed = np.ones((2, 3, 4), np.uint8)
    record.note_segment_state(label_digest(changed))
    assert record.segment_edited
    record.note_segment_state(record.original_digest)
    assert not record.segment_edited  # the final segment equals the model's


def test_digest_sees_shape_and_values():
    a = np.zeros((2, 3, 4), np.uint8)
    assert label_digest(a) == label_digest(a.copy())
    assert label_digest(a) != label_digest(a.reshape(3, 2, 4))
    assert label_digest(a) != label_digest(a.astype(np.uint16))


@pytest.mark.parametrize("action, match", [
    (lambda r: r.accept("  "), "needs the reviewer's name"),
    (lambda r: r.reject(""), "needs the reviewer's name"),
    (lambda r: r.override_diagnosis("lymphoma", "dr.a"), "'lymphoma' is not one of the classes"),
    (lambda r: r.override_diagnosis("glioma", ""), "diagnosis override needs the reviewer's name"),
])
def test_invalid_actions(record, action, match):
    with pytest.raises(ReviewError, match=match):
        action(record)


def test_no_digest_to_compare():
    record = ReviewRecord.from_result(RESULT)
    with pytest.raises(ReviewError, match="no digest of the model's segmentation"):
        record.note_segment_state("x")


def test_json_round_trip(record):
    record.override_diagnosis("pituitary", "dr.a", when=T1)
    record.reject("dr.a", when=T2)
    text = record.to_json()
    d = json.loads(text)
    assert d["decision"] == "rejected" and d["diagnosis_overridden"] is True and d["schema_version"] == 1
    back = ReviewRecord.from_json(text)
    assert back == record and back.decision is Decision.REJECTED


@pytest.mark.parametrize("mutate, match", [
    (lambda d: "{", "not valid JSON"),
    (lambda d: json.dumps({**d, "schema_version": 99}), "schema version 99, expected 1"),
    (lambda d: json.dumps([1]), "schema version None"),
    (lambda d: json.dumps({**d, "decision": "maybe"}), "unknown decision 'maybe'"),
    (lambda d: json.dumps({k: v for k, v in d.items() if k != "reviewer"} | {"extra": 1}), "fields do not match"),
    (lambda d: json.dumps({**d, "final_diagnosis": "lymphoma"}), "final diagnosis 'lymphoma' is not one of"),
])
def test_bad_json(record, mutate, match):
    with pytest.raises(ReviewError, match=match):
        ReviewRecord.from_json(mutate(record.to_dict()))


def test_helpers():
    assert now_iso().endswith("+00:00") and "T" in now_iso()
    assert isinstance(default_reviewer(), str)
