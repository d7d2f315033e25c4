"""The CLI on real images (a brain as an oblique DICOM series, pydicom's CT, a PNG), batch, progress, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from infer_helpers import (
    CT_LOCALIZERS,
    CT_SERIES,
    CT_UNEVEN,
    NO_IMAGES,
    dice,
    mni_volume,
    oblique_direction,
    tiny_card,
    write_dicom_series,
)
from scripts.infer import main
from scripts.core.model_card import build_network
from scripts.core.transforms import normalize_intensity


@pytest.fixture(scope="module")
def brain_series(tmp_path_factory):
    """A real T1 brain (MNI152, 2 mm) written as an oblique, shuffled MR DICOM series."""
    vol = mni_volume(12)
    folder = tmp_path_factory.mktemp("dicom") / "brain"
    write_dicom_series(vol, folder, spacing=(2.0, 2.0, 3.0), origin=(-95.0, -110.0, 12.0), direction=oblique_direction())
    return folder, np.round(vol)


def _read_series(folder) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("flags, expected", [
    ([], {"device": None, "tta": None}),  # not given: the bundle's configs/inference.json decides
    (["--device", "cpu", "--tta"], {"device": "cpu", "tta": True}),
    (["--no-tta"], {"device": None, "tta": False}),
])
def test_device_and_tta_flags_override_the_bundle_settings_only_when_given(monkeypatch, tmp_path, capsys, flags, expected):
    from scripts.inference import InputError, Predictor

    seen = {}

    def from_bundle(bundle, **kwargs):
        seen.update(kwargs)
        raise InputError("stop here")

    monkeypatch.setattr(Predictor, "from_bundle", from_bundle)
    assert _cli(capsys, tmp_path / "x.png", "--out", tmp_path / "out", *flags)[0] == 1
    assert {k: seen[k] for k in expected} == expected


def test_brain_dicom_series_label_has_the_series_geometry(brain_series, bundle2d, tmp_path, capsys):
    folder, vol = brain_series
    code, out, err = _cli(capsys, folder, "--out", tmp_path / "out", "--bundle", bundle2d, "--device", "cpu")
    assert code == 0, err
    label_img = sitk.ReadImage(str(tmp_path / "out" / "brain_seg.nii.gz"))
    source = _read_series(folder)  # GDCM's own reading of the series, independent of ours
    assert label_img.GetSize() == source.GetSize()
    np.testing.assert_allclose(label_img.GetSpacing(), source.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(label_img.GetOrigin(), source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(label_img.GetDirection(), source.GetDirection(), atol=1e-5)
    label = sitk.GetArrayFromImage(label_img).T
    assert dice(label, normalize_intensity(vol[None])[0] > 0.5) > 0.9  # on the brain, not transposed or flipped
    result = json.loads((tmp_path / "out" / "brain_result.json").read_text())
    assert result["segmentation"]["segments"][0]["voxels"] == int(label.sum())
    assert result["segmentation"]["segments"][0]["volume_ml"] == pytest.approx(label.sum() * 0.012, abs=1e-3)
    assert (tmp_path / "out" / "brain_overlay.png").is_file() and result["diagnosis"]["label"] in out


def test_dicom_seg_reread_with_highdicom_and_pydicom_matches_the_label(brain_series, bundle2d, tmp_path, capsys):
    folder, _ = brain_series
    assert _cli(capsys, folder, "--out", tmp_path / "nii", "--bundle", bundle2d, "--device", "cpu")[0] == 0
    code, _, err = _cli(capsys, folder, "--out", tmp_path / "seg", "--bundle", bundle2d, "--format", "dicom-seg")
    assert code == 0, err
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "nii" / "brain_seg.nii.gz")))  # (Z, Y, X)
    sources = sorted((pydicom.dcmread(p, stop_before_pixels=True) for p in folder.iterdir()),
                     key=lambda ds: float(np.dot([float(v) for v in ds.ImagePositionPatient], oblique_direction()[:, 2])))
    uids = [ds.SOPInstanceUID for ds in sources]
    seg = hd.seg.segread(tmp_path / "seg" / "brain_seg.dcm")
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    np.testing.assert_array_equal(frames, label)
    raw = pydicom.dcmread(tmp_path / "seg" / "brain_seg.dcm")  # plain pydicom: frame -> source instance by reference
    rebuilt = np.zeros_like(label)
    for frame, item in zip(raw.pixel_array.reshape(-1, *label.shape[1:]), raw.PerFrameFunctionalGroupsSequence):
        source_uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        rebuilt[uids.index(source_uid)] |= frame.astype(label.dtype)
    np.testing.assert_array_equal(rebuilt, label)
    assert raw.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    # --format dicom-seg writes the diagnosis as a DICOM SR beside the SEG; the result JSON lists it
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == [
        "brain_overlay.png", "brain_result.json", "brain_seg.dcm", "brain_sr.dcm"]
    result = json.loads((tmp_path / "seg" / "brain_result.json").read_text())
    assert result["outputs"]["sr"] == str(tmp_path / "seg" / "brain_sr.dcm")
    sr = hd.sr.srread(tmp_path / "seg" / "brain_sr.dcm")
    assert sr.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID == raw.StudyInstanceUID


def test_real_ct_series_and_png(bundle2d, tmp_path, capsys):
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 50)) * 255).astype(np.uint8)).save(tmp_path / "us.png")
    code, out, err = _cli(capsys, CT_SERIES, tmp_path / "us.png", "--out", tmp_path / "out", "--bundle", bundle2d,
                          "--format", "seg.nrrd", "--no-overlay")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "CT5N_result.json", "CT5N_seg.seg.nrrd", "us_result.json", "us_seg.seg.nrrd", "worklist.csv"]
    table = out.strip().splitlines()
    assert table[0].split() == ["study", "status", "diagnosis", "p", "tumor", "priority", "seconds"]
    assert table[1].startswith("CT5N") and " mL " in table[1] and table[2].startswith("us.png") and " px " in table[2]
    worklist = tmp_path / "out" / "worklist.csv"
    assert table[-2].startswith("review first: ") and table[-2].endswith(f"; all ranked in {worklist}")
    assert table[-1] == "2 of 2 studies done"
    ct = sitk.ReadImage(str(tmp_path / "out" / "CT5N_seg.seg.nrrd"))
    assert ct.GetSize() == (16, 16, 5) and ct.GetOrigin() == pytest.approx((-72.199997, -143.0, -1.2375), abs=1e-4)


def test_batch_with_a_failure_reports_it_in_the_exit_code(bundle2d, tmp_path, capsys):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save((tmp_path / "in").mkdir() or tmp_path / "in" / "black.png")
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "in" / "ok.png")
    code, out, err = _cli(capsys, tmp_path / "in", "--out", tmp_path / "out", "--bundle", bundle2d)
    assert code == 1
    assert "black.png  FAILED" in out and "1 of 2 studies done" in out
    assert err.strip().splitlines()[-1].startswith("ERROR ") and "black.png: the image is blank" in err
    assert (tmp_path / "out" / "ok_result.json").is_file()


def _run_worker(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(cwd), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "scripts.infer", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_progress_protocol_in_a_subprocess(bundle_root, bundle2d, tmp_path):
    """The Slicer worker's view: PROGRESS and RESULT lines on stdout, ERROR last on stderr, exit 1 on a failure."""
    Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "zero.png")
    run = _run_worker(tmp_path / "a.png", CT_SERIES, tmp_path / "zero.png", "--out", tmp_path / "out",
                      "--bundle", bundle2d, "--device", "cpu", "--progress", cwd=bundle_root)
    assert run.returncode == 1
    lines = run.stdout.strip().splitlines()
    assert all(line.split()[0] in ("PROGRESS", "RESULT") for line in lines)
    progress = [int(line.split()[1]) for line in lines if line.startswith("PROGRESS ")]
    assert progress == sorted(progress) and progress[0] == 0 and max(progress) <= 100
    results = [line.split(" ", 1)[1] for line in lines if line.startswith("RESULT ")]
    assert results == [str(tmp_path / "out" / "a_result.json"), str(tmp_path / "out" / "CT5N_result.json")]
    assert json.loads((tmp_path / "out" / "CT5N_result.json").read_text())["device"] == "cpu"
    assert run.stderr.strip().splitlines()[-1].startswith(f"ERROR {tmp_path / 'zero.png'}: the image is blank")


# ----------------------------------------------------- every bad-input case: ERROR naming the file, exit 1, nothing written
def _four_d(tmp_path):
    arr = np.random.default_rng(0).random((3, 8, 8, 8)).astype(np.float32)
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(np.ascontiguousarray(a.T)) for a in arr]),
                    str(tmp_path / "fmri.nii.gz"))
    return tmp_path / "fmri.nii.gz"


def _two_channels(tmp_path):
    arr = np.random.default_rng(0).random((2, 8, 8, 4)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(np.ascontiguousarray(arr.T), isVector=True), str(tmp_path / "two.nrrd"))
    return tmp_path / "two.nrrd"


def _truncated(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    return tmp_path / "cut.png"


def _corrupt_nifti(tmp_path):
    (tmp_path / "junk.nii.gz").write_bytes(b"\x1f\x8b" + b"garbage" * 20)
    return tmp_path / "junk.nii.gz"


def _black(tmp_path):
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "black.png")
    return tmp_path / "black.png"


def _tiny_nifti(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(8, dtype=np.float32).reshape(2, 2, 2)), str(tmp_path / "tiny.nii.gz"))
    return tmp_path / "tiny.nii.gz"


def _zero_voxel_nifti(tmp_path):
    import nibabel as nib

    image = nib.Nifti1Image(np.random.default_rng(0).random((16, 16, 4)).astype(np.float32), None)
    image.header.set_zooms((0.0, 0.0, 0.0))
    image.header.set_qform(None, code=0)
    image.header.set_sform(None, code=0)
    nib.save(image, tmp_path / "nosize.nii")
    return tmp_path / "nosize.nii"


def _half_slice(tmp_path):
    """A DICOM series whose second slice (in file order) holds half its pixel data: a valid file, a corrupt study."""
    write_dicom_series(mni_volume(4), tmp_path / "series")
    victim = sorted((tmp_path / "series").iterdir())[1]
    ds = pydicom.dcmread(victim)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(victim)
    return tmp_path / "series", victim


def _fine(tmp_path):
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "fine.png")
    return tmp_path / "fine.png"


CASES = {  # name: (input maker, bundle fixture, extra args maker, expected message after "ERROR <path>")
    "truncated file": (_truncated, "bundle2d", None, "cannot decode the image"),
    "corrupt nifti": (_corrupt_nifti, "bundle2d", None, "cannot read the image"),
    "dicom folder without image series": (lambda t: NO_IMAGES, "bundle2d", None, "no DICOM image series found"),
    "non-parallel slices": (lambda t: CT_LOCALIZERS, "bundle2d", None, "slices are not parallel"),
    "unevenly spaced slices": (lambda t: CT_UNEVEN, "bundle2d", None, "slices are unevenly spaced"),
    "4D input to a 3D model": (_four_d, "bundle3d", None, "4D input with 3 volumes"),
    "wrong channel count": (_two_channels, "bundle2d", None, r"has 2 channel\(s\) but the model expects 1"),
    "all-zero image": (_black, "bundle2d", None, "the image is blank"),
    "2x2x2 volume": (_tiny_nifti, "bundle2d", None, r"the image is 2x2x2 voxels, too small to be a study; at least 8x8"),
    "zero voxel size": (_zero_voxel_nifti, "bundle2d", None, r"zero voxel size \(pixdim \[0\.0, 0\.0, 0\.0\]\) and no qform"),
    "slice with half its pixel data": (_half_slice, "bundle2d", None,
                                       r"cannot read the pixel data: it holds 11584 bytes, .* needs 23166"),
    "unwritable output folder": (_fine, "bundle2d", "out_blocked", "output folder cannot be created"),
    "mismatched checkpoint": (_fine, "bundle2d", "checkpoint_3d", "checkpoint does not match the network"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, request, tmp_path, capsys):
    make, bundle_name, extra, message = CASES[case]
    made, bundle = make(tmp_path), request.getfixturevalue(bundle_name)
    src, blamed = made if isinstance(made, tuple) else (made, made)  # (input, the file the error must name)
    out = tmp_path / "out"
    args = [src, "--out", out, "--bundle", bundle]
    if extra == "out_blocked":
        (tmp_path / "blocked").write_text("")
        out = blamed = tmp_path / "blocked" / "out"
        args[2] = out
    elif extra == "checkpoint_3d":
        torch.save(build_network(tiny_card(3)).state_dict(), tmp_path / "wrong.pt")
        blamed = tmp_path / "wrong.pt"
        args += ["--checkpoint", blamed]
    code, _, err = _cli(capsys, *args)
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"ERROR {blamed}") and __import__("re").search(message, last), last
    assert not out.exists() or list(out.iterdir()) == []
