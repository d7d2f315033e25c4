"""MultiTaskUNetLib.worklist: the CLI's worklist.csv read, stepped through, and resumed from its saved state.

The worklists are written by the bundle's own writer (``scripts.inference.worklist.write_worklist``), so a
change of the CLI's format shows up here.
"""

import json
import types
from pathlib import Path

import pytest

from MultiTaskUNetLib.results import parse_result
from MultiTaskUNetLib.worklist import (SHORTCUTS, Worklist, WorklistError, read_worklist, result_series_uid, series_to_load,
                                       state_path, study_input)


def _result(p_top: float, voxels: int = 40) -> dict:
    rest = (1 - p_top) / 3
    return {"input": "in.nrrd", "diagnosis": {"label": "glioma", "probabilities": {
        "glioma": p_top, "meningioma": rest, "no_tumor": rest, "pituitary": rest}},
        "segmentation": {"path": "x_seg.nii.gz", "format": "nifti",
                         "segments": [{"name": "tumor", "value": 1, "voxels": voxels, "volume_ml": 0.1}]},
        "model": {"name": "M", "version": "1", "sha256": ""}}


@pytest.fixture
def worklist_csv(tmp_path):
    """A worklist of 4 studies (DICOM folders, sure ... unsure) and one failure, in the CLI's output folder."""
    from scripts.inference.worklist import write_worklist

    out = tmp_path / "out"
    out.mkdir()
    outcomes = []
    for name, p in (("sure", 0.97), ("unsure", 0.4), ("middle", 0.7), ("fairly", 0.85)):
        path = out / f"{name}_result.json"
        path.write_text(json.dumps(_result(p)), encoding="utf-8")
        outcomes.append(types.SimpleNamespace(ok=True, input=Path(f"studies/{name}"), result=_result(p),
                                              paths={"result": Path("out") / path.name}, error=None))
    outcomes.append(types.SimpleNamespace(ok=False, input=Path("studies/broken"), result=None, paths={},
                                          error="studies/broken.nii.gz: not an image"))
    return write_worklist(outcomes, out, "no_tumor")


def test_read_in_priority_order_with_results_found_beside_the_csv(worklist_csv):
    """The CLI wrote result paths relative to where it ran (out/...): they are found beside the worklist."""
    studies, failed = read_worklist(worklist_csv)
    assert [s.name for s in studies] == ["unsure", "middle", "fairly", "sure"]
    assert [s.rank for s in studies] == [1, 2, 3, 4] and studies[0].priority > studies[-1].priority
    assert all(s.result_path.is_file() and s.result_path.parent == worklist_csv.parent for s in studies)
    assert [row["study"] for row in failed] == ["broken"]


@pytest.mark.parametrize("text, match", [
    (None, "worklist not found"),
    ("a,b\n1,2\n", r"not a MultiTaskUNet worklist \(columns \['rank', 'study', 'status', 'review_priority'"),
    ("rank,study,status,review_priority,diagnosis,result\n,x,failed,,,boom\n", r"no study with a result to review \(1 failed\)"),
    ("rank,study,status,review_priority,diagnosis,result\nfirst,x,ok,0.5,glioma,r.json\n", "line 2: rank 'first'"),
    ("rank,study,status,review_priority,diagnosis,result\n1,x,ok,0.5,glioma,a.json\n2,x,ok,0.4,glioma,b.json\n",
     "study names repeat"),
])
def test_bad_worklists_refused(tmp_path, text, match):
    path = tmp_path / "worklist.csv"
    if text is not None:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(WorklistError, match=match):
        read_worklist(path)


def test_step_through_and_stay_at_the_ends(worklist_csv):
    wl = Worklist.open(worklist_csv)
    assert wl.current.name == "unsure"  # nothing saved yet: the first pending, i.e. the top of the list
    assert wl.previous().name == "unsure"
    assert [wl.next().name for _ in range(4)] == ["middle", "fairly", "sure", "sure"]
    assert wl.previous().name == "fairly"


def test_state_saved_beside_the_worklist_and_resumed(worklist_csv):
    """Stop after two decisions on the third study; reopening the worklist finds both and that study."""
    wl = Worklist.open(worklist_csv)
    wl.record("unsure", {"decision": "rejected", "reviewer": "Dr A"})
    wl.next()
    wl.record("middle", {"decision": "edited", "reviewer": "Dr A"}, wl.segmentation_path("middle"))
    wl.next()
    assert wl.describe() == "Study 3 of 4: fairly (priority 0.42, glioma) - pending; 2 of 4 reviewed"
    state = json.loads(state_path(worklist_csv).read_text(encoding="utf-8"))
    assert state["position"] == "fairly" and state["reviews"]["middle"]["segmentation"] == "middle.seg.nrrd"
    assert sorted(p.name for p in worklist_csv.parent.iterdir() if p.name.startswith(".")) == []  # no temp left

    again = Worklist.open(worklist_csv)
    assert again.current.name == "fairly" and again.progress() == (2, 4)
    assert again.decision("unsure") == "rejected" and again.review("middle")["record"]["decision"] == "edited"
    assert again.saved_segmentation("middle") is None  # the module had not written the file
    again.segmentation_path("middle").parent.mkdir()
    again.segmentation_path("middle").write_bytes(b"NRRD")
    assert again.saved_segmentation("middle") == worklist_csv.parent / "worklist_review" / "middle.seg.nrrd"


def test_next_pending_skips_decided_studies_and_wraps(worklist_csv):
    wl = Worklist.open(worklist_csv)
    for name in ("middle", "fairly"):
        wl.record(name, {"decision": "accepted", "reviewer": "Dr A"})
    assert wl.next_pending() == 3  # from "unsure": past the two decided ones to "sure"
    wl.go_to(3)
    assert wl.next_pending() == 0  # wraps to the top
    wl.record("unsure", {"decision": "accepted", "reviewer": "Dr A"})
    wl.record("sure", {"decision": "pending", "reviewer": "Dr A"})  # edited after a decision: open again
    assert wl.next_pending() == 3
    wl.record("sure", {"decision": "rejected", "reviewer": "Dr A"})
    assert wl.next_pending() is None and wl.progress() == (4, 4)


def test_resume_without_a_saved_position_opens_the_first_pending(worklist_csv):
    wl = Worklist.open(worklist_csv)
    wl.record("unsure", {"decision": "accepted", "reviewer": "Dr A"})
    state = json.loads(state_path(worklist_csv).read_text(encoding="utf-8"))
    state["position"] = "no longer in the worklist"
    state_path(worklist_csv).write_text(json.dumps(state), encoding="utf-8")
    assert Worklist.open(worklist_csv).current.name == "middle"


def test_bad_state_and_unknown_study_refused(worklist_csv):
    wl = Worklist.open(worklist_csv)
    with pytest.raises(WorklistError, match="no study 'other' in this worklist"):
        wl.record("other", {"decision": "accepted"})
    state_path(worklist_csv).write_text("{", encoding="utf-8")
    with pytest.raises(WorklistError, match="review state is not readable JSON"):
        Worklist.open(worklist_csv)
    state_path(worklist_csv).write_text(json.dumps({"schema_version": 99}), encoding="utf-8")
    with pytest.raises(WorklistError, match="review state of an unknown version"):
        Worklist.open(worklist_csv)


def test_study_input_found_beside_or_above_the_worklist(tmp_path):
    (tmp_path / "studies" / "dcm").mkdir(parents=True)
    (tmp_path / "studies" / "a.nii.gz").write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()

    def result(input_value, fmt="nifti"):
        data = _result(0.9)
        data["input"], data["segmentation"]["format"] = input_value, fmt
        return parse_result(data, out / "a_result.json")

    assert study_input(result("studies/a.nii.gz"), out) == ("file", tmp_path / "studies" / "a.nii.gz")
    assert study_input(result(str(tmp_path / "studies" / "dcm")), out) == ("dicom-folder", tmp_path / "studies" / "dcm")
    with pytest.raises(WorklistError, match=r"the study's input 'gone.nii.gz' was not found"):
        study_input(result("gone.nii.gz"), out)
    with pytest.raises(WorklistError, match="is a zip or a URL"):
        study_input(result("studies/series.zip"), out)
    with pytest.raises(WorklistError, match="the segmentation is a DICOM SEG"):
        study_input(result("studies/a.nii.gz", "dicom-seg"), out)


def test_series_to_load_is_the_largest():
    assert series_to_load({"a": "1.2", "b": "1.3", "c": "1.3", "d": ""}) == "1.3"
    with pytest.raises(WorklistError, match="no DICOM series was imported"):
        series_to_load({"a": ""})


def test_series_to_load_is_the_one_the_result_names():
    files = {"a": "1.2", "b": "1.3", "c": "1.3"}
    assert series_to_load(files, "1.2") == "1.2"
    with pytest.raises(WorklistError, match=r"the series the result was computed on \(1.9\) is not in the study's folder"):
        series_to_load(files, "1.9")
    data = _result(0.9)
    assert result_series_uid(parse_result(data, Path("a_result.json"))) is None
    data["source"] = {"study_instance_uid": "1.1", "series_instance_uid": "1.2"}
    assert result_series_uid(parse_result(data, Path("a_result.json"))) == "1.2"


def test_shortcuts_are_distinct_and_not_slicers_own():
    """Slicer 5.10 / 5.12 bind Ctrl+Shift+A (Markups), Ctrl+Shift+arrows (Sequences), Ctrl+letters of the menus."""
    keys = list(SHORTCUTS.values())
    assert len(set(keys)) == len(keys) == 4
    slicer_keys = {"Ctrl+Shift+A", "Ctrl+Shift+T", "Ctrl+Shift+Left", "Ctrl+Shift+Right", "Ctrl+Shift+Down",
                   "Ctrl+O", "Ctrl+S", "Ctrl+W", "Ctrl+Z", "Ctrl+Y", "Ctrl+X", "Ctrl+C", "Ctrl+V", "Ctrl+H", "Ctrl+F",
                   "Ctrl+B"}
    assert not set(keys) & slicer_keys
