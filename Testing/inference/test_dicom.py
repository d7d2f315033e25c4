"""DICOM input: real pydicom series, a real brain volume written as an oblique series, and every refusal."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest

from infer_helpers import CT_LOCALIZERS, CT_SERIES, CT_UNEVEN, NO_IMAGES, mni_volume, oblique_direction, write_dicom_series
from scripts.inference.dicom import choose_series, find_series, is_dicom_file, read_dicom_file
from scripts.inference.errors import InputError
from scripts.inference.readers import read_study


def test_real_ct_series_sorted_along_the_normal():
    study = read_study(CT_SERIES)
    assert study.image.shape == (1, 16, 16, 5)
    assert study.geometry.spacing == pytest.approx((0.488281, 0.488281, 2.5))
    # the files run top-down (z 8.76 .. -1.24); the grid starts at the lowest slice
    assert study.geometry.origin == pytest.approx((-72.199997, -143.0, -1.2375))
    z = [float(ds.ImagePositionPatient[2]) for ds in study.dicom]
    assert z == sorted(z) and len(study.dicom) == 5
    first = pydicom.dcmread(min(CT_SERIES.iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2])))
    expected = first.pixel_array * float(first.RescaleSlope) + float(first.RescaleIntercept)
    np.testing.assert_allclose(study.image[0, :, :, 0], expected.T)  # (X, Y) = (columns, rows)


def test_brain_volume_as_oblique_series_keeps_geometry(tmp_path):
    vol = mni_volume(12)
    direction = oblique_direction()
    write_dicom_series(vol, tmp_path / "series", spacing=(2.0, 2.0, 3.0), origin=(-90.0, -120.0, 10.0), direction=direction)
    study = read_study(tmp_path / "series")
    np.testing.assert_array_equal(study.image[0], np.round(vol))
    assert study.geometry.spacing == pytest.approx((2.0, 2.0, 3.0), abs=1e-5)
    assert study.geometry.origin == pytest.approx((-90.0, -120.0, 10.0), abs=1e-4)
    np.testing.assert_allclose(np.reshape(study.geometry.direction, (3, 3)), direction, atol=1e-6)
    assert len(study.warnings) == 1 and study.warnings[0].startswith("series: oblique volume")  # kept, not resampled


def test_several_series_most_instances_wins_and_is_reported(tmp_path):
    vol = mni_volume(6)
    small = write_dicom_series(vol[:, :, :3], tmp_path / "study" / "a")
    big = write_dicom_series(vol, tmp_path / "study" / "b")
    study = read_study(tmp_path / "study")
    assert study.image.shape[-1] == 6
    choice, where = study.warnings
    assert big in choice and small in choice and where == "study: the series lies in sub-folder b; it was read from there"
    chosen = read_study(tmp_path / "study", series_uid=small)
    assert chosen.image.shape[-1] == 3 and chosen.warnings == ["study: the series lies in sub-folder a; it was read from there"]


def test_localizers_lose_to_a_real_series(tmp_path):
    shutil.copytree(CT_LOCALIZERS, tmp_path / "study" / "loc")
    write_dicom_series(mni_volume(2), tmp_path / "study" / "axial")  # 2 instances, as many as the localizers
    series = find_series(tmp_path / "study")
    uid, _ = choose_series(tmp_path / "study", series, None)
    assert len(series[uid]) == 2 and "LOCALIZER" not in str(series[uid][0][1].get("ImageType", ""))


def test_unknown_series_uid_lists_the_series():
    with pytest.raises(InputError, match=r"CT5N: no series with SeriesInstanceUID 1\.2\.3; found .*\(5 instances\)"):
        read_study(CT_SERIES, series_uid="1.2.3")


def test_folder_without_image_series():
    with pytest.raises(InputError, match=r"TINY_ALPHA: no DICOM image series found"):
        read_study(NO_IMAGES)


def test_folder_of_non_dicom_files(tmp_path):
    (tmp_path / "readme.txt").write_text("not dicom")
    with pytest.raises(InputError, match=r"no DICOM image series found"):
        read_study(tmp_path)


def test_real_uneven_series_refused():
    with pytest.raises(InputError, match=r"CT2: slices are unevenly spaced \(gaps 1\.250\.\.202\.500 mm"):
        read_study(CT_UNEVEN)


def test_missing_slice_refused(tmp_path):
    vol = mni_volume(6)
    write_dicom_series(vol, tmp_path / "s")
    next(p for p in sorted((tmp_path / "s").iterdir()) if int(pydicom.dcmread(p).InstanceNumber) == 3).unlink()
    with pytest.raises(InputError, match=r"s: slices are unevenly spaced"):
        read_study(tmp_path / "s")


def test_real_non_parallel_slices_refused():
    with pytest.raises(InputError, match=r"CT2N: slices are not parallel"):
        read_study(CT_LOCALIZERS)


def test_duplicate_positions_refused(tmp_path):
    positions = [(0.0, 0.0, 0.0), (0.0, 0.0, 3.0), (0.0, 0.0, 3.0)]
    write_dicom_series(mni_volume(3), tmp_path / "dup", positions=positions)
    with pytest.raises(InputError, match=r"dup: two or more slices share a position"):
        read_study(tmp_path / "dup")


def test_gantry_tilt_refused(tmp_path):
    positions = [(0.0, 5.0 * k, 3.0 * k) for k in range(4)]  # each slice shifted in-plane as well
    write_dicom_series(mni_volume(4), tmp_path / "tilt", positions=positions)
    with pytest.raises(InputError, match=r"tilt: slice positions are not stacked along the slice normal"):
        read_study(tmp_path / "tilt")


def test_slices_of_different_size_refused(tmp_path):
    write_dicom_series(mni_volume(2), tmp_path / "mixed", series_uid="1.2.826.0.1.3680043.8.498.1")
    write_dicom_series(mni_volume(2)[:50], tmp_path / "mixed" / "b", series_uid="1.2.826.0.1.3680043.8.498.1")
    with pytest.raises(InputError, match=r"mixed: slices differ in size or pixel spacing"):
        read_study(tmp_path / "mixed")


def test_slices_without_position_refused(tmp_path):
    write_dicom_series(mni_volume(2), tmp_path / "nopos")
    for p in (tmp_path / "nopos").iterdir():
        ds = pydicom.dcmread(p)
        del ds.ImagePositionPatient
        ds.save_as(p)
    with pytest.raises(InputError, match=r"nopos: slices lack a usable ImagePositionPatient"):
        read_study(tmp_path / "nopos")


def test_truncated_slice_refused_naming_the_slice(tmp_path):
    write_dicom_series(mni_volume(3), tmp_path / "cut")
    victim = sorted((tmp_path / "cut").iterdir())[1]
    victim.write_bytes(victim.read_bytes()[:-2000])
    with pytest.raises(InputError, match=r"cut/IM0001\.dcm: cannot read the pixel data: the file ends 2000 bytes "
                                         r"before its pixel data does \(truncated file\)"):
        read_study(tmp_path / "cut")


def test_slice_with_half_its_pixel_data_refused_naming_the_slice(tmp_path):
    write_dicom_series(mni_volume(3), tmp_path / "half")
    victim = sorted((tmp_path / "half").iterdir())[2]
    ds = pydicom.dcmread(victim)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]  # a well-formed file whose pixel data is too short
    ds.save_as(victim)
    with pytest.raises(InputError, match=r"half/IM0002\.dcm: cannot read the pixel data: it holds 11584 bytes, but Rows x "
                                         r"Columns x SamplesPerPixel x BitsAllocated/8 x frames = 117 x 99 x 1 x 16/8 x 1 "
                                         r"needs 23166 \(truncated or corrupt slice\)"):
        read_study(tmp_path / "half")


def test_single_dicom_file_is_a_one_slice_volume():
    path = sorted(CT_SERIES.iterdir())[0]
    assert is_dicom_file(path)
    study = read_study(path)
    assert study.image.shape == (1, 16, 16, 1) and len(study.dicom) == 1 and not study.multiframe


def test_dicom_file_without_pixels_refused():
    path = sorted((NO_IMAGES / "PT000000" / "ST000000" / "SE000000").iterdir())[0]
    with pytest.raises(InputError, match=r"IM000000: DICOM file without image pixel data"):
        read_study(path)


def test_non_dicom_file_with_dicom_suffix_refused(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"\0" * 300)
    with pytest.raises(InputError, match=r"x\.dcm: not a readable DICOM file"):
        read_dicom_file(tmp_path / "x.dcm")


def test_truncated_dicom_file_refused(tmp_path):
    write_dicom_series(mni_volume(1), tmp_path / "one")
    path = next((tmp_path / "one").iterdir())
    path.write_bytes(path.read_bytes()[:-3000])
    with pytest.raises(InputError, match=r"IM0000\.dcm: cannot read the pixel data"):
        read_study(path)


def test_series_of_multi_frame_instances_refused(tmp_path):
    write_dicom_series(mni_volume(2), tmp_path / "mf", shuffle=False)
    for path in (tmp_path / "mf").iterdir():
        ds = pydicom.dcmread(path)
        ds.NumberOfFrames, ds.PixelData = 2, ds.PixelData * 2  # each instance now holds two frames
        ds.save_as(path)
    with pytest.raises(InputError, match=r"mf: series .* holds multi-frame instances; give one of them as a file"):
        read_study(tmp_path / "mf")
