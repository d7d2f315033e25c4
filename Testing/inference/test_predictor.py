"""The one inference API: model loading, the Result JSON, geometry of the outputs, refused input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from infer_helpers import CT_SERIES, dice, make_bundle, mni_volume, oblique_direction, tiny_card
from scripts.inference import InputError, Predictor
from scripts.core.model_card import build_network
from scripts.core.transforms import normalize_intensity


#: the Slicer terminology entry of a "tumor" segment (scripts.inference.terminology), as the result carries it
NEOPLASM_TAG = ("Segmentation category and type - DICOM master list~SCT^49755003^Morphologically Altered Structure"
                "~SCT^108369006^Neoplasm~^^~Anatomic codes - DICOM master list~^^~^^")


def _save_nifti(arr_ijk: np.ndarray, path, spacing=(2.0, 2.0, 2.5), origin=(-90.0, -126.0, -72.0), direction=None):
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr_ijk.T))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple((oblique_direction() if direction is None else direction).ravel()))
    sitk.WriteImage(image, str(path))
    return path


def _same_grid(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)


def test_png_result_json_and_files(predictor2d, bundle2d, tmp_path):
    rng = np.random.default_rng(0)
    img = (rng.random((32, 32)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "scan.png")
    stages = []
    pred = predictor2d.predict(tmp_path / "scan.png", output_dir=tmp_path / "out", progress=lambda p, s: stages.append((p, s)))
    expected = (normalize_intensity(img[None].astype(np.float32))[0] > 0.5).astype(np.uint8)
    np.testing.assert_array_equal(pred.label, expected)
    assert pred.image.shape == (1, 32, 32)
    r = pred.result
    assert list(r) == ["input", "diagnosis", "segmentation", "model", "device", "tta", "timings_s", "warnings",
                       "review_priority", "outputs"]
    assert r["outputs"] == {"overlay": str(tmp_path / "out" / "scan_overlay.png")}  # no SR: not DICOM SEG
    assert set(r["diagnosis"]) == {"label", "index", "probabilities", "calibrated", "uncertainty"}
    assert 0 <= r["diagnosis"]["uncertainty"] <= r["review_priority"] <= 1
    assert r["tta"] is False and r["diagnosis"]["calibrated"] is False  # the tiny card has no temperature
    assert r["diagnosis"]["index"] == ["glioma", "meningioma", "no_tumor", "pituitary"].index(r["diagnosis"]["label"])
    assert sum(r["diagnosis"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert r["segmentation"] == {"path": str(tmp_path / "out" / "scan_seg.png"), "format": "png",
                                 "segments": [{"name": "tumor", "value": 1, "voxels": int(expected.sum()), "volume_ml": None,
                                               "terminology": NEOPLASM_TAG, "color": "#e62828"}],
                                 "uncertainty": None}  # null: no flip TTA, nothing to measure it from
    assert r["model"] == {"name": "TinyThreshold", "version": "0.0.1",
                          "sha256": hashlib.sha256((bundle2d / "models" / "model.pt").read_bytes()).hexdigest()}
    assert r["device"] == "cpu" and set(r["timings_s"]) == {"load", "infer", "write"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scan_overlay.png", "scan_result.json", "scan_seg.png"]
    assert json.loads(pred.paths["result"].read_text()) == r
    assert stages[0] == (0, "read") and stages[-1] == (100, "done") and [p for p, _ in stages] == sorted(p for p, _ in stages)


def test_nothing_written_without_output_dir(predictor2d, tmp_path):
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "a.png")
    pred = predictor2d.predict(tmp_path / "a.png")
    assert pred.paths == {} and pred.result["segmentation"]["path"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_2d_model_on_a_real_brain_volume_keeps_geometry(predictor2d, tmp_path):
    vol = mni_volume(10)
    src = _save_nifti(vol, tmp_path / "brain.nii.gz")
    pred = predictor2d.predict(src, output_dir=tmp_path / "out", seg_format="nifti", name="b")
    _same_grid(sitk.ReadImage(str(pred.paths["segmentation"])), sitk.ReadImage(str(src)))
    back = sitk.GetArrayFromImage(sitk.ReadImage(str(pred.paths["segmentation"]))).T
    np.testing.assert_array_equal(back, pred.label)
    assert dice(pred.label, normalize_intensity(vol[None])[0] > 0.5) > 0.9  # the brain where the brain is
    seg = pred.result["segmentation"]["segments"][0]
    assert seg["voxels"] == int(pred.label.sum()) and seg["volume_ml"] == pytest.approx(seg["voxels"] * 0.01, abs=1e-3)


def test_seg_nrrd_output(predictor2d, tmp_path):
    src = _save_nifti(mni_volume(4), tmp_path / "brain.nii.gz")
    pred = predictor2d.predict(src, output_dir=tmp_path / "out", seg_format="seg.nrrd", overlay=False)
    assert pred.paths["segmentation"].name == "brain_seg.seg.nrrd" and "overlay" not in pred.paths
    _same_grid(sitk.ReadImage(str(pred.paths["segmentation"])), sitk.ReadImage(str(src)))


def test_dicom_seg_output_of_a_real_ct(predictor2d, tmp_path):
    pred = predictor2d.predict(CT_SERIES, output_dir=tmp_path / "out", seg_format="dicom-seg")
    assert pred.paths["segmentation"].name == "CT5N_seg.dcm" and pred.label.shape == (16, 16, 5)
    assert pred.result["segmentation"]["format"] == "dicom-seg"
    assert pred.paths["sr"].name == "CT5N_sr.dcm" and pred.result["outputs"]["sr"] == str(pred.paths["sr"])
    # the series read is named, so a viewer (the Slicer worklist) loads that one and not its own guess
    first = pydicom.dcmread(sorted(p for p in Path(CT_SERIES).rglob("*") if p.is_file())[0], stop_before_pixels=True)
    assert pred.result["source"] == {"study_instance_uid": first.StudyInstanceUID,
                                     "series_instance_uid": first.SeriesInstanceUID}


def test_3d_model_sliding_window_equals_the_threshold(predictor3d, tmp_path):
    vol = np.ascontiguousarray(mni_volume(20)[25:65, 35:75])  # 40 x 40 x 20 of real brain: 32 windows
    src = _save_nifti(vol, tmp_path / "brain.nii.gz")
    pred = predictor3d.predict(src, output_dir=tmp_path / "out", overlay=True)
    np.testing.assert_array_equal(pred.label, (normalize_intensity(vol[None])[0] > 0.5).astype(np.uint8))
    _same_grid(sitk.ReadImage(str(pred.paths["segmentation"])), sitk.ReadImage(str(src)))


def test_training_checkpoint_is_accepted(tmp_path):
    root = make_bundle(tmp_path / "b")
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    torch.save({"network": state, "epoch": 3}, root / "models" / "checkpoint_last.pt")
    predictor = Predictor.from_bundle(root, device="cpu", checkpoint=root / "models" / "checkpoint_last.pt")
    assert predictor.spatial_dims == 2


def test_missing_weights(tmp_path):
    root = make_bundle(tmp_path / "b")
    (root / "models" / "model.pt").unlink()
    with pytest.raises(InputError, match=r"model\.pt: no trained weights here"):
        Predictor.from_bundle(root, device="cpu")


def test_mismatched_checkpoint(tmp_path):
    root = make_bundle(tmp_path / "b")
    torch.save(build_network(tiny_card(3)).state_dict(), tmp_path / "other.pt")
    with pytest.raises(InputError, match=r"other\.pt: checkpoint does not match the network of the model card"):
        Predictor.from_bundle(root, device="cpu", checkpoint=tmp_path / "other.pt")


def test_corrupt_checkpoint(tmp_path):
    root = make_bundle(tmp_path / "b")
    data = (root / "models" / "model.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.pt: not a readable PyTorch checkpoint"):
        Predictor.from_bundle(root, device="cpu", checkpoint=tmp_path / "cut.pt")


def test_checkpoint_that_is_not_a_state_dict(tmp_path):
    root = make_bundle(tmp_path / "b")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(InputError, match=r"list\.pt: not a state_dict \(found list\)"):
        Predictor.from_bundle(root, device="cpu", checkpoint=tmp_path / "list.pt")


def test_bad_card(tmp_path):
    root = make_bundle(tmp_path / "b")
    (tmp_path / "card.json").write_text("{not json")
    with pytest.raises(InputError, match=r"card\.json: model card is not valid JSON"):
        Predictor.from_bundle(root, device="cpu", card=tmp_path / "card.json")
    card = tiny_card()
    card["network"]["encoder"] = "vgg"
    (tmp_path / "vgg.json").write_text(json.dumps(card))
    with pytest.raises(InputError, match=r"vgg\.json: cannot build the network it describes: encoder must be one of"):
        Predictor.from_bundle(root, device="cpu", card=tmp_path / "vgg.json")


# ------------------------------------------------------------------ refused input: error, and nothing written
def _refused(predictor, path, tmp_path, match, **kwargs):
    out = tmp_path / "out"
    with pytest.raises(InputError, match=match):
        predictor.predict(path, output_dir=out, **kwargs)
    assert not out.exists() or list(out.iterdir()) == []


def test_4d_input_to_a_3d_model(predictor3d, tmp_path):
    arr = np.random.default_rng(0).random((3, 8, 8, 8)).astype(np.float32)
    image = sitk.JoinSeries([sitk.GetImageFromArray(np.ascontiguousarray(a.T)) for a in arr])
    sitk.WriteImage(image, str(tmp_path / "fmri.nii.gz"))
    _refused(predictor3d, tmp_path / "fmri.nii.gz", tmp_path, r"fmri\.nii\.gz: 4D input with 3 volumes, but the model takes 1")


def test_wrong_channel_count(predictor2d, tmp_path):
    arr = np.random.default_rng(0).random((2, 8, 8, 4)).astype(np.float32)
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr.T), isVector=True)
    sitk.WriteImage(image, str(tmp_path / "two.nrrd"))
    _refused(predictor2d, tmp_path / "two.nrrd", tmp_path, r"two\.nrrd: has 2 channel\(s\) but the model expects 1")


def test_all_zero_image(predictor2d, tmp_path):
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "black.png")
    _refused(predictor2d, tmp_path / "black.png", tmp_path, r"black\.png: the image is blank \(every voxel is 0\)")


def test_non_finite_image(predictor2d, tmp_path):
    arr = np.ones((8, 8, 3), np.float32)
    arr[1, 1, 1] = np.nan
    _refused(predictor2d, _save_nifti(arr, tmp_path / "nan.nii.gz"), tmp_path, r"nan\.nii\.gz: the image contains NaN")


def test_2d_image_to_a_3d_model(predictor3d, tmp_path):
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "flat.png")
    _refused(predictor3d, tmp_path / "flat.png", tmp_path, r"flat\.png: a 2D image cannot go to a 3D model")


def test_dicom_seg_needs_dicom_input(predictor2d, tmp_path):
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "a.png")
    _refused(predictor2d, tmp_path / "a.png", tmp_path, r"a\.png: DICOM SEG output needs a DICOM", seg_format="dicom-seg")


def test_unknown_format(predictor2d, tmp_path):
    _refused(predictor2d, tmp_path / "a.png", tmp_path, r"a\.png: unknown segmentation format 'mesh'", seg_format="mesh")


def test_axis_out_of_range(predictor2d, tmp_path):
    src = _save_nifti(mni_volume(4), tmp_path / "brain.nii.gz")
    _refused(predictor2d, src, tmp_path, r"brain\.nii\.gz: axis must be in 0\.\.2", axis=5)


def test_unwritable_output_folder(predictor2d, tmp_path):
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "a.png")
    (tmp_path / "blocked").write_text("a file where the output folder should be")
    with pytest.raises(InputError, match=r"blocked/out: output folder cannot be created"):
        predictor2d.predict(tmp_path / "a.png", output_dir=tmp_path / "blocked" / "out")


def test_a_failing_writer_leaves_nothing(predictor2d, tmp_path, monkeypatch):
    import scripts.inference.predictor as predictor_module

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(predictor_module, "write_overlay", broken)
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "a.png")
    with pytest.raises(OSError, match="disk full"):
        predictor2d.predict(tmp_path / "a.png", output_dir=tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []
