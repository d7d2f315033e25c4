"""Image reading conventions shared by prepare and validate: axes, channels, LPS geometry, atomic writes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from scripts.prepare.imageio import binary_mask, read_image, save_nifti_like, save_png, strip_suffix, to_grey


def test_raster_is_channels_first_rows_first(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    Image.fromarray(grey).save(tmp_path / "g.png")
    arr, geom = read_image(tmp_path / "g.png")
    assert arr.shape == (1, 3, 4) and geom.shape == (3, 4) and geom.channels == 1 and geom.spacing is None
    np.testing.assert_array_equal(arr[0], grey)
    rgb = np.stack([grey, grey + 1, grey + 2], -1)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    arr, geom = read_image(tmp_path / "c.png")
    assert arr.shape == (3, 3, 4) and geom.channels == 3 and arr[2, 0, 0] == 2
    Image.fromarray(grey > 5).save(tmp_path / "b.png")  # mode "1"
    assert read_image(tmp_path / "b.png")[0].max() == 255
    assert read_image(tmp_path / "c.png", header_only=True)[0] is None


def test_nifti_and_nrrd_report_the_same_lps_geometry(tmp_path):
    vol = np.random.default_rng(0).integers(0, 9, (5, 6, 7)).astype(np.int16)
    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    affine[:3, 3] = (10.0, -20.0, 30.0)
    nib.save(nib.Nifti1Image(vol, affine), str(tmp_path / "v.nii.gz"))
    img = sitk.GetImageFromArray(vol.transpose(2, 1, 0))  # sitk arrays are (Z, Y, X)
    img.SetSpacing((0.5, 0.7, 2.0))
    img.SetOrigin((-10.0, 20.0, 30.0))  # RAS (10, -20, 30) in LPS
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    sitk.WriteImage(img, str(tmp_path / "v.nrrd"))
    (a, ga), (b, gb) = read_image(tmp_path / "v.nii.gz"), read_image(tmp_path / "v.nrrd")
    np.testing.assert_array_equal(a, b)
    assert a.shape == (1, 5, 6, 7) and ga.shape == gb.shape == (5, 6, 7)
    for name in ("spacing", "origin", "direction"):
        np.testing.assert_allclose(getattr(ga, name), getattr(gb, name), atol=1e-6)
    _, gh = read_image(tmp_path / "v.nrrd", header_only=True)
    assert gh.shape == (5, 6, 7) and gh.channels == 1


def test_4d_nifti_channels_last_becomes_channels_first(tmp_path):
    vol = np.stack([np.full((3, 4, 5), c, np.float32) for c in range(4)], -1)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / "m.nii.gz"))
    arr, geom = read_image(tmp_path / "m.nii.gz")
    assert arr.shape == (4, 3, 4, 5) and geom.channels == 4 and geom.shape == (3, 4, 5)
    assert [float(arr[c].mean()) for c in range(4)] == [0.0, 1.0, 2.0, 3.0]


def test_dicom_series_folder(tmp_path):
    vol = np.arange(4 * 5 * 3, dtype=np.int16).reshape(3, 5, 4)  # (Z, Y, X)
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((0.8, 0.8, 2.5))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(3):
        s = img[:, :, z]
        s.SetMetaData("0020|0032", f"0\\0\\{2.5 * z}")
        s.SetMetaData("0020|0013", str(z + 1))
        s.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")
        s.SetMetaData("0020|000d", "1.2.826.0.1.3680043.2.1125.2")
        s.SetMetaData("0008|0060", "MR")
        writer.SetFileName(str(tmp_path / f"{z}.dcm"))
        writer.Execute(s)
    arr, geom = read_image(tmp_path)
    assert arr.shape == (1, 4, 5, 3) and geom.shape == (4, 5, 3)
    np.testing.assert_array_equal(arr[0], vol.transpose(2, 1, 0))
    assert read_image(tmp_path, header_only=True)[1].shape == (4, 5, 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="folder holds no DICOM series"):
        read_image(tmp_path / "empty")


def test_grey_and_mask_helpers():
    plane = np.arange(16, dtype=np.uint8).reshape(4, 4)
    grey, identical = to_grey(np.stack([plane] * 3))
    assert identical and np.array_equal(grey, plane)
    colour = np.stack([plane, plane * 0, plane * 0])
    grey, identical = to_grey(colour)
    assert not identical and grey.dtype == np.uint8 and grey[3, 3] == round(0.299 * 15)
    mask = np.array([[[0, 100, 200, 255]]], np.uint8)
    assert binary_mask(mask).tolist() == [[0, 0, 1, 1]]
    assert binary_mask(np.array([[[0, 1]]], np.uint8)).tolist() == [[0, 1]]
    assert [strip_suffix(n) for n in ("a.nii.gz", "b.PNG", "c.seg.nrrd", "d.txt")] == ["a", "b", "c", "d.txt"]


def test_writes_are_atomic_and_keep_the_reference_affine(tmp_path):
    ref = np.diag([0.5, 0.5, 3.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), ref), str(tmp_path / "ref.nii.gz"))
    for name in ("out.nii.gz", "out.nii"):
        save_nifti_like(np.ones((4, 4, 2), np.uint8), tmp_path / "ref.nii.gz", tmp_path / "sub" / name)
        loaded = nib.load(str(tmp_path / "sub" / name))
        np.testing.assert_allclose(loaded.affine, ref)
    assert (tmp_path / "sub" / "out.nii").read_bytes()[:2] != b"\x1f\x8b"  # .nii is not gzipped
    save_png(np.zeros((3, 3), np.uint8), tmp_path / "p" / "m.png")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["out.nii", "out.nii.gz"]  # no temp files left
    assert [p.name for p in (tmp_path / "p").iterdir()] == ["m.png"]
