"""Image reading with geometry: PNG/JPG, NIfTI, NRRD, 4D, and every refusal of scripts.inference.readers."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from infer_helpers import mni_volume, oblique_direction
from scripts.inference.errors import InputError
from scripts.inference.readers import Geometry, read_study, study_name


def _sitk_image(arr_ijk: np.ndarray, spacing, origin, direction) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr_ijk.T))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(np.asarray(direction).ravel()))
    return image


def test_png_grey_is_rows_first(tmp_path):
    arr = np.zeros((20, 30), np.uint8)
    arr[2, 25] = 200  # row 2, column 25
    Image.fromarray(arr).save(tmp_path / "scan.png")
    study = read_study(tmp_path / "scan.png")
    assert study.raster and study.name == "scan"
    assert study.image.shape == (1, 20, 30) and study.image.dtype == np.float32
    assert study.image[0, 2, 25] == 200
    assert study.geometry == Geometry.identity(2)


def test_jpg_rgb_has_three_channels(tmp_path):
    rgb = np.zeros((16, 12, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=95)
    study = read_study(tmp_path / "photo.jpg")
    assert study.image.shape == (3, 16, 12)
    assert study.image[0].mean() > 200 and study.image[2].mean() < 50


def test_palette_png_is_converted(tmp_path):
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).convert("P").save(tmp_path / "p.png")
    assert read_study(tmp_path / "p.png").image.shape == (3, 8, 8)


def test_nifti_real_brain_keeps_voxels_and_geometry(tmp_path):
    vol = mni_volume(8)
    direction = oblique_direction()
    _sitk = _sitk_image(vol, (2.0, 2.0, 2.5), (-90.0, -126.0, -72.0), direction)
    sitk.WriteImage(_sitk, str(tmp_path / "brain.nii.gz"))
    study = read_study(tmp_path / "brain.nii.gz")
    assert study.name == "brain" and not study.raster and not study.four_d
    np.testing.assert_array_equal(study.image[0], vol)  # (X, Y, Z) = file index order
    assert study.image[0].flags.f_contiguous  # and the file's memory order: nothing transposed on reading
    np.testing.assert_allclose(study.geometry.spacing, (2.0, 2.0, 2.5), atol=1e-5)
    np.testing.assert_allclose(study.geometry.origin, (-90.0, -126.0, -72.0), atol=1e-4)
    np.testing.assert_allclose(np.reshape(study.geometry.direction, (3, 3)), direction, atol=1e-5)
    assert study.geometry.voxel_ml == pytest.approx(0.01, rel=1e-5)


def test_nrrd_vector_pixels_become_channels(tmp_path):
    arr = np.random.default_rng(0).random((3, 10, 9, 6)).astype(np.float32)  # (C, X, Y, Z)
    image = sitk.GetImageFromArray(np.ascontiguousarray(arr.T), isVector=True)  # (Z, Y, X, C)
    image.SetSpacing((0.5, 0.7, 2.0))
    sitk.WriteImage(image, str(tmp_path / "rgb.nrrd"))
    study = read_study(tmp_path / "rgb.nrrd")
    np.testing.assert_allclose(study.image, arr)
    assert study.geometry.spacing == pytest.approx((0.5, 0.7, 2.0))


def test_4d_nifti_volumes_become_channels(tmp_path):
    arr = np.random.default_rng(1).random((2, 10, 9, 4)).astype(np.float32)  # (T, X, Y, Z)
    image = sitk.JoinSeries([sitk.GetImageFromArray(np.ascontiguousarray(a.T)) for a in arr])
    image.SetSpacing((1.0, 1.5, 3.0, 1.0))
    sitk.WriteImage(image, str(tmp_path / "mri4d.nii.gz"))
    study = read_study(tmp_path / "mri4d.nii.gz")
    assert study.four_d and study.image.shape == (2, 10, 9, 4)
    np.testing.assert_allclose(study.image, arr, rtol=1e-6)
    assert study.geometry.spacing == pytest.approx((1.0, 1.5, 3.0))


@pytest.mark.parametrize("name, stem", [("a.nii.gz", "a"), ("b.seg.nrrd", "b.seg"), ("c.PNG", "c"), ("series", "series")])
def test_study_name(tmp_path, name, stem):
    assert study_name(tmp_path / name) == stem


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match=r"nope\.nii\.gz: no such file or folder"):
        read_study(tmp_path / "nope.nii.gz")


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.png: the file is empty"):
        read_study(tmp_path / "empty.png")


def test_unsupported_type(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match=r"notes\.txt: unsupported file type"):
        read_study(tmp_path / "notes.txt")


def test_truncated_png(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.png: cannot decode the image \(corrupt or truncated"):
        read_study(tmp_path / "cut.png")


def test_not_an_image_with_image_suffix(tmp_path):
    (tmp_path / "fake.jpg").write_bytes(b"this is not a jpeg at all")
    with pytest.raises(InputError, match=r"fake\.jpg: cannot decode the image"):
        read_study(tmp_path / "fake.jpg")


def test_truncated_nifti(tmp_path):
    image = _sitk_image(mni_volume(8), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    sitk.WriteImage(image, str(tmp_path / "full.nii"))
    raw = (tmp_path / "full.nii").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(gzip.compress(raw[: len(raw) // 3]))
    with pytest.raises(InputError, match=r"cut\.nii\.gz: cannot read the (image|voxel data)"):
        read_study(tmp_path / "cut.nii.gz")


def test_garbage_nifti(tmp_path):
    (tmp_path / "junk.nii").write_bytes(b"\x01" * 400)
    with pytest.raises(InputError, match=r"junk\.nii: cannot read the image"):
        read_study(tmp_path / "junk.nii")


def test_five_dimensional_image_refused(tmp_path):
    image = sitk.Image([2, 2, 2, 2, 2], sitk.sitkFloat32)
    sitk.WriteImage(image, str(tmp_path / "five.nii"))
    with pytest.raises(InputError, match=r"five\.nii: 5D images are not supported"):
        read_study(tmp_path / "five.nii")



def test_truncated_nrrd(tmp_path):
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((8, 20, 20)).astype(np.float32))
    sitk.WriteImage(image, str(tmp_path / "full.nrrd"), useCompression=True)
    data = (tmp_path / "full.nrrd").read_bytes()
    (tmp_path / "cut.nrrd").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.nrrd: cannot read the image \(corrupt or truncated file\?\)"):
        read_study(tmp_path / "cut.nrrd")


def test_five_dimensional_mha_refused(tmp_path):
    sitk.WriteImage(sitk.Image([2, 2, 2, 2, 2], sitk.sitkFloat32), str(tmp_path / "five.mha"))
    with pytest.raises(InputError, match=r"five\.mha: 5D images are not supported"):
        read_study(tmp_path / "five.mha")
