"""``prepare reviewed``: review layouts on disk -> datalist entries with provenance, merging, errors.

Review folders are made the way users make them: results and label maps by the bundle's Predictor
(an untrained tiny network: only the files matter here), review records by the Slicer module's
own Lib code (``ReviewRecord``, ``Worklist``, ``review_report``) or as a script writes them.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from MultiTaskUNetLib.exports import review_report
from MultiTaskUNetLib.results import read_result
from MultiTaskUNetLib.review import ReviewRecord
from MultiTaskUNetLib.worklist import Worklist
from scripts.core.datalist import load_datalist
from scripts.inference import Predictor
from scripts.inference.writers import write_seg_nrrd
from scripts.core.model_card import DEFAULT_CARD, build_network
from scripts.prepare.__main__ import main
from scripts.prepare.imageio import read_image
from scripts.core.datalist import provenance_counts
from scripts.prepare.reviewed import MERGED_NAME
from scripts.prepare.segnrrd import SegNrrdError, label_map_for_image
from scripts.prepare.validate import validate
from scripts.datasets.synthetic import CLASSES, ensure_dataset

SIZE = 32


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny synthetic set and the model's results on its 6 test images (CLI layout: <name>_result.json)."""
    root = tmp_path_factory.mktemp("reviewed")
    datalist = ensure_dataset(root / "data", seed=3, n_train=8, n_val=4, n_test=6, size=SIZE)
    dl = load_datalist(datalist)
    card = json.loads(json.dumps(DEFAULT_CARD)) | {"spatial_size": [SIZE, SIZE]}
    card["network"] |= {"channels": [4, 8, 16], "dropout": 0.0}
    torch.manual_seed(0)
    predictor = Predictor(build_network(card), card, device="cpu", tta=False)
    results = root / "results"
    for sample in dl.split("test"):
        predictor.predict(sample["image"], results, overlay=False)
    return root, {"datalist": datalist, "dl": dl, "results": results}


def _copy_results(studies, dest: Path) -> list[Path]:
    shutil.copytree(studies[1]["results"], dest)
    return sorted(dest.glob("*_result.json"))


def _truth(studies, result_file: Path) -> dict:
    image = json.loads(result_file.read_text())["input"]
    return next(s for s in studies[1]["dl"].split("test") if s["image"] == image)


def _other_class(result_file: Path) -> str:
    model = json.loads(result_file.read_text())["diagnosis"]["label"]
    return next(c for c in CLASSES if c != model)


def _write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def _entries(out: Path, name: str = "datalist.json") -> dict:
    dl = json.loads((out / name).read_text())
    return {Path(e["image"]).name: e for key in ("training", "validation", "test", "rejected") for e in dl.get(key, [])}


def test_script_records_follow_the_rules(studies, tmp_path):
    """accepted / edited / overridden / rejected records a script writes, one study each."""
    review = tmp_path / "review"
    files = _copy_results(studies, review)
    truth = _truth(studies, files[1])
    edited_mask = tmp_path / "corrected.png"
    Image.fromarray(np.full((SIZE, SIZE), 0, np.uint8)).save(edited_mask)
    other = _other_class(files[2])
    records = [{"decision": "accepted"}, {"decision": "edited", "mask": str(edited_mask)},
               {"decision": "overridden", "final_diagnosis": other},
               {"decision": "rejected"}, {"decision": "rejected", "final_diagnosis": _other_class(files[4])},
               {"decision": "pending"}]
    for f, rec in zip(files, records):
        _write(f.with_name(f.name.replace("_result.json", "_review.json")), rec)
    out = tmp_path / "out"
    assert main(["reviewed", str(review), "--out", str(out), "--no-duplicate-check"]) == 0
    entries = _entries(out)
    results = [json.loads(f.read_text()) for f in files]
    names = [Path(r["input"]).name for r in results]
    model_class = [CLASSES.index(r["diagnosis"]["label"]) for r in results]
    # accepted: the model's class; its mask, the model's own output, trains nothing (--accepted-masks skip)
    assert entries[names[0]]["provenance"] == "accepted" and entries[names[0]]["class"] == model_class[0]
    assert "label" not in entries[names[0]]
    # edited: the reviewer's mask, the model's class
    assert entries[names[1]]["provenance"] == "edited" and entries[names[1]]["class"] == model_class[1]
    assert Path(entries[names[1]]["label"]).name == "corrected.png" and truth["image"].endswith(names[1])
    # overridden: the reviewer's class; the mask was accepted unedited, so no label either
    assert entries[names[2]]["provenance"] == "overridden" and entries[names[2]]["class"] == CLASSES.index(other)
    assert "label" not in entries[names[2]]
    # rejected: listed, no labels; rejected with another diagnosis: the class only
    assert entries[names[3]]["provenance"] == "rejected" and {"label", "class"}.isdisjoint(entries[names[3]])
    assert entries[names[4]]["provenance"] == "overridden" and "label" not in entries[names[4]]
    assert names[5] not in entries  # pending: left out
    dl = json.loads((out / "datalist.json").read_text())
    assert [Path(e["image"]).name for e in dl["rejected"]] == [names[3]]
    assert validate(out / "datalist.json").ok
    # --accepted-masks train: the accepted masks become labels; nothing else changes
    trained = tmp_path / "trained"
    assert main(["reviewed", str(review), "--out", str(trained), "--no-duplicate-check", "--accepted-masks", "train"]) == 0
    again = _entries(trained)
    for i in (0, 2):
        assert Path(again[names[i]]["label"]).name == Path(results[i]["segmentation"]["path"]).name
        assert {k: v for k, v in again[names[i]].items() if k != "label"} == entries[names[i]]
    assert all(again[n] == entries[n] for n in names[:5] if n not in (names[0], names[2]))
    assert validate(trained / "datalist.json").ok


def test_slicer_worklist_layout(studies, tmp_path):
    """The module's worklist state + <stem>_review/<study>.seg.nrrd: edits are read from the .seg.nrrd."""
    review = tmp_path / "review"
    files = _copy_results(studies, review)
    table = review / "worklist.csv"
    with open(table, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "study", "status", "review_priority", "diagnosis", "result"])
        for i, r in enumerate(files, start=1):
            w.writerow([i, r.name[: -len("_result.json")], "ok", 0.5, "glioma", r.name])
    wl = Worklist.open(table)
    first, second, third = (read_result(f) for f in files[:3])
    rec = ReviewRecord.from_result(first, original_digest="x")
    rec.accept("dr")
    wl.record(wl.studies[0].name, rec.to_dict())
    # the reviewer painted a 5x4 tumour; saved as Slicer does, a one-slice volume with a cropped extent
    truth = np.zeros((SIZE, SIZE), np.uint8)
    truth[10:15, 20:24] = 1
    seg = wl.segmentation_path(wl.studies[1].name)
    seg.parent.mkdir()
    _write_cropped_seg_nrrd(truth[8:17, 18:26], (18, 8), seg)
    rec = ReviewRecord.from_result(second, original_digest="x")
    rec.note_segment_state("y")
    rec.accept("dr")
    rec.override_diagnosis(_other_class(files[1]), "dr")
    wl.record(wl.studies[1].name, rec.to_dict(), seg)
    rec = ReviewRecord.from_result(third, original_digest="x")
    rec.reject("dr")
    wl.record(wl.studies[2].name, rec.to_dict())
    out = tmp_path / "out"
    assert main(["reviewed", str(review), "--out", str(out), "--no-duplicate-check"]) == 0
    entries = _entries(out)
    name = Path(second.raw["input"]).name
    assert entries[name]["provenance"] == "overridden" and entries[name]["class"] == CLASSES.index(_other_class(files[1]))
    mask = read_image(out / entries[name]["label"])[0][0]
    assert np.array_equal(mask, truth)
    assert entries[Path(first.raw["input"]).name]["provenance"] == "accepted"
    assert entries[Path(third.raw["input"]).name]["provenance"] == "rejected"
    assert len(entries) == 3  # the three undecided studies have no review
    assert validate(out / "datalist.json").ok


def _write_cropped_seg_nrrd(label: np.ndarray, corner_xy: tuple[int, int], path: Path) -> None:
    """A one-layer .seg.nrrd of ``label`` (H, W) whose extent starts at pixel ``corner_xy`` (x, y)."""
    import nrrd

    header = {"type": "unsigned char", "dimension": 3, "space": "left-posterior-superior",
              "space directions": np.eye(3), "space origin": np.array([corner_xy[0], corner_xy[1], 0.0]),
              "kinds": ["domain"] * 3, "encoding": "gzip", "Segment0_Name": "tumor", "Segment0_LabelValue": "1",
              "Segment0_Layer": "0", "Segment0_ID": "Segment_1"}
    nrrd.write(str(path), label.T[..., None].copy(), header, index_order="F")


def test_slicer_export_review_json_and_seg_nrrd(studies, tmp_path):
    """The export's <node>_review.json (node '<study> MultiTaskUNet') with its .seg.nrrd."""
    review = tmp_path / "review"
    files = _copy_results(studies, review)
    result = read_result(files[0])
    rec = ReviewRecord.from_result(result, original_digest="x")
    rec.note_segment_state("y")
    rec.accept("dr")
    stem = files[0].name[: -len("_result.json")] + "_MultiTaskUNet"
    truth = np.zeros((SIZE, SIZE), np.uint8)
    truth[3:9, 4:7] = 1
    geom = read_image(result.raw["input"], header_only=True)[1]
    assert geom.spacing is None
    from scripts.inference.readers import Geometry  # the CLI's own writer of a 2D study's .seg.nrrd

    write_seg_nrrd(truth, Geometry.identity(2), True, ["background", "tumor"], review / f"{stem}.seg.nrrd")
    _write(review / f"{stem}_review.json", review_report(rec, result, {"seg.nrrd": f"{stem}.seg.nrrd"}))
    out = tmp_path / "out"
    assert main(["reviewed", str(review), "--out", str(out), "--no-duplicate-check"]) == 0
    entry = _entries(out)[Path(result.raw["input"]).name]
    assert entry["provenance"] == "edited"
    assert np.array_equal(read_image(out / entry["label"])[0][0], truth)


def test_merge_keeps_the_base_splits_and_counts_provenance(studies, tmp_path):
    review = tmp_path / "review"
    files = _copy_results(studies, review)
    for f in files[:3]:
        _write(f.with_name(f.name.replace("_result.json", "_review.json")), {"decision": "accepted"})
    _write(files[3].with_name(files[3].name.replace("_result.json", "_review.json")), {"decision": "rejected"})
    base = json.loads(studies[1]["datalist"].read_text())
    base["test"] = []  # the reviewed images are the base's test images: moved out of it first
    base_file = studies[1]["datalist"].parent / "base.json"
    _write(base_file, base)
    out = tmp_path / "out"
    assert main(["reviewed", str(review), "--out", str(out), "--merge", str(base_file), "--no-duplicate-check"]) == 0
    merged = json.loads((out / MERGED_NAME).read_text())
    assert merged["synthetic"] == base["synthetic"] and merged["channels"] == base["channels"]
    assert len(merged["validation"]) == len(base["validation"])
    assert provenance_counts(merged) == {"training": {"original": len(base["training"]), "accepted": 3},
                                         "validation": {"original": len(base["validation"])},
                                         "rejected": {"rejected": 1}}
    assert validate(out / MERGED_NAME).ok
    # a reviewed study that is in the base's test split would be scored on after training on it
    base["test"] = json.loads(studies[1]["datalist"].read_text())["test"]
    _write(base_file, base)
    assert main(["reviewed", str(review), "--out", str(tmp_path / "out2"), "--merge", str(base_file),
                 "--no-duplicate-check"]) == 1


@pytest.mark.parametrize("record, match", [
    ({"decision": "maybe"}, r"decision 'maybe'.*not one of"),
    ({"decision": "accepted", "final_diagnosis": "cyst"}, r"reviewer's diagnosis 'cyst'.*not one of"),
    ({"decision": "edited"}, r"edited but the reviewer's segmentation is not there"),
    ({"decision": "edited", "mask": "gone.png"}, r"its mask 'gone.png' was not found"),
    ({"decision": "overridden"}, r"'overridden'.*needs a final_diagnosis"),
    ({"decision": "accepted", "result": "nowhere_result.json"}, None),  # falls back to <name>_result.json
])
def test_bad_records_name_the_file(studies, tmp_path, capsys, record, match):
    review = tmp_path / "review"
    files = _copy_results(studies, review)
    record_file = files[0].with_name(files[0].name.replace("_result.json", "_review.json"))
    _write(record_file, record)
    code = main(["reviewed", str(review), "--out", str(tmp_path / "out"), "--no-duplicate-check"])
    if match is None:
        assert code == 0
        return
    err = capsys.readouterr().err
    assert code == 1 and str(record_file) in err
    assert __import__("re").search(match, err), err


def test_missing_inputs_name_the_file(studies, tmp_path, capsys):
    review = tmp_path / "review"
    files = _copy_results(studies, review)
    record_file = files[0].with_name(files[0].name.replace("_result.json", "_review.json"))
    _write(record_file, {"decision": "accepted"})
    Path(json.loads(files[0].read_text())["segmentation"]["path"]).unlink(missing_ok=True)
    for f in review.glob("*_seg.png"):
        f.unlink()
    # the accepted mask would be a label: its absence is an error; by default it is not read at all
    assert main(["reviewed", str(review), "--out", str(tmp_path / "o1"), "--no-duplicate-check",
                 "--accepted-masks", "train"]) == 1
    assert f"{files[0]}: the model's segmentation" in capsys.readouterr().err
    assert main(["reviewed", str(review), "--out", str(tmp_path / "o0"), "--no-duplicate-check"]) == 0
    capsys.readouterr()
    files[0].write_text("{not json", encoding="utf-8")
    assert main(["reviewed", str(review), "--out", str(tmp_path / "o2"), "--no-duplicate-check"]) == 1
    assert f"{files[0]}: not readable JSON" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["reviewed", str(empty), "--out", str(tmp_path / "o3")]) == 1
    assert "no review found" in capsys.readouterr().err


def test_seg_nrrd_errors(studies, tmp_path):
    image = json.loads(next(studies[1]["results"].glob("*_result.json")).read_text())["input"]
    path = tmp_path / "x.seg.nrrd"
    _write_cropped_seg_nrrd(np.ones((4, 4), np.uint8), (2, 2), path)
    assert label_map_for_image(path, image, ["background", "tumor"])[0].sum() == 16
    with pytest.raises(SegNrrdError, match=r"x.seg.nrrd: segment 'tumor' is none of the datalist's segments"):
        label_map_for_image(path, image, ["background", "lesion"])
    _write_cropped_seg_nrrd(np.ones((4, 4), np.uint8), (SIZE + 5, 0), path)
    with pytest.raises(SegNrrdError, match=r"x.seg.nrrd: lies outside its image"):
        label_map_for_image(path, image, ["background", "tumor"])
    path.write_bytes(b"NRRD0004\nbroken")
    with pytest.raises(SegNrrdError, match=r"x.seg.nrrd: cannot read"):
        label_map_for_image(path, image, ["background", "tumor"])
