"""Outputs: atomic OutputSet, output-folder checks, NIfTI / .seg.nrrd geometry, DICOM SEG round trip (the overlay PNG:
``test_overlay.py``)."""

from __future__ import annotations

import highdicom as hd
import nrrd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from infer_helpers import CT_SERIES, oblique_direction
from scripts.inference.dicom_seg import write_dicom_seg
from scripts.inference.errors import InputError
from scripts.inference.readers import Geometry, read_study
from scripts.inference.writers import (
    OutputSet,
    check_output_dir,
    write_nifti,
    write_seg_nrrd,
)

GEOMETRY = Geometry((0.8, 0.9, 2.5), (-10.0, 20.0, 30.0), tuple(oblique_direction().ravel()))


def _label(shape=(12, 10, 6)) -> np.ndarray:
    label = np.zeros(shape, np.uint8)
    label[2:7, 3:8, 1:4] = 1
    label[8:10, 1:3, 4] = 2
    return label


def test_output_set_commits_all_or_nothing(tmp_path):
    with OutputSet(tmp_path / "out") as out:
        out.temp("a.txt").write_text("a")
        out.temp("b.txt").write_text("b")
        assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".tmp-")) == []
        done = out.commit()
    assert sorted(done) == ["a.txt", "b.txt"] and (tmp_path / "out" / "b.txt").read_text() == "b"
    with pytest.raises(RuntimeError, match="boom"):
        with OutputSet(tmp_path / "out") as out:
            out.temp("c.txt").write_text("c")
            raise RuntimeError("boom")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.txt", "b.txt"]


def test_check_output_dir_accepts_a_new_folder_without_creating_it(tmp_path):
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert list(tmp_path.iterdir()) == []


def test_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(InputError, match=r"taken: output folder cannot be created: .*taken is a file"):
        check_output_dir(tmp_path / "taken")
    with pytest.raises(InputError, match=r"taken/sub: output folder cannot be created"):
        check_output_dir(tmp_path / "taken" / "sub")


def test_output_dir_not_writable(tmp_path, monkeypatch):
    import scripts.inference.writers as writers

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(writers.tempfile, "mkstemp", refuse)
    with pytest.raises(InputError, match=r"ro: output folder is not writable \(Permission denied\)"):
        check_output_dir(tmp_path / "ro")


def test_nifti_keeps_geometry(tmp_path):
    label = _label()
    write_nifti(label, GEOMETRY, False, tmp_path / "l.nii.gz")
    back = sitk.ReadImage(str(tmp_path / "l.nii.gz"))
    assert back.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back).T, label)
    np.testing.assert_allclose(back.GetSpacing(), GEOMETRY.spacing, atol=1e-6)
    np.testing.assert_allclose(back.GetOrigin(), GEOMETRY.origin, atol=1e-4)
    np.testing.assert_allclose(back.GetDirection(), GEOMETRY.direction, atol=1e-5)


def test_nifti_of_a_raster_label_is_width_by_height(tmp_path):
    label = np.zeros((5, 8), np.uint8)
    label[1, 6] = 1  # row 1, column 6
    write_nifti(label, Geometry.identity(2), True, tmp_path / "r.nii.gz")
    back = sitk.ReadImage(str(tmp_path / "r.nii.gz"))
    assert back.GetSize() == (8, 5) and back[6, 1] == 1


def test_seg_nrrd_has_geometry_and_segment_metadata(tmp_path):
    label = _label()
    write_seg_nrrd(label, GEOMETRY, False, ["background", "tumor", "edema"], tmp_path / "s.seg.nrrd")
    data, header = nrrd.read(str(tmp_path / "s.seg.nrrd"))
    np.testing.assert_array_equal(data, label)
    assert header["space"] == "left-posterior-superior"
    expected = np.reshape(GEOMETRY.direction, (3, 3)) * np.asarray(GEOMETRY.spacing)[None, :]
    np.testing.assert_allclose(header["space directions"], expected.T, atol=1e-6)
    assert header["Segment0_Name"] == "tumor" and header["Segment0_LabelValue"] == "1"
    assert "SCT^108369006^Neoplasm" in header["Segment0_Tags"]
    assert header["Segment1_Name"] == "edema" and "SCT^79654002^Edema" in header["Segment1_Tags"]
    back = sitk.ReadImage(str(tmp_path / "s.seg.nrrd"))  # ITK agrees on the grid
    np.testing.assert_allclose(back.GetOrigin(), GEOMETRY.origin, atol=1e-5)
    np.testing.assert_allclose(back.GetDirection(), GEOMETRY.direction, atol=1e-5)


def test_seg_nrrd_of_a_2d_label_is_one_slice(tmp_path):
    write_seg_nrrd(np.ones((4, 6), np.uint8), Geometry.identity(2), True, ["background", "tumor"], tmp_path / "p.seg.nrrd")
    data, header = nrrd.read(str(tmp_path / "p.seg.nrrd"))
    assert data.shape == (6, 4, 1) and header["Segment0_Extent"] == "0 5 0 3 0 0"


def test_dicom_seg_reads_back_equal_with_highdicom_and_pydicom(tmp_path):
    study = read_study(CT_SERIES)
    label = np.zeros(study.spatial_shape, np.uint8)
    label[3:9, 5:12, 1:4] = 1
    write_dicom_seg(label, study.dicom, ["background", "tumor"], "Tiny", "0.0.1", tmp_path / "s.dcm", CT_SERIES)
    seg = hd.seg.segread(tmp_path / "s.dcm")
    uids = [ds.SOPInstanceUID for ds in study.dicom]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True,
                                               ignore_spatial_locations=True)
    np.testing.assert_array_equal(frames, label.transpose(2, 1, 0))  # (Z, rows, cols)
    raw = pydicom.dcmread(tmp_path / "s.dcm")
    assert raw.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and raw.Modality == "SEG"
    assert raw.ReferencedSeriesSequence[0].SeriesInstanceUID == study.dicom[0].SeriesInstanceUID
    segment = raw.SegmentSequence[0]
    assert segment.SegmentLabel == "tumor"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodingSchemeDesignator == "SCT"


def test_dicom_seg_of_an_empty_label_is_valid(tmp_path):
    study = read_study(CT_SERIES)
    empty = np.zeros(study.spatial_shape, np.uint8)
    write_dicom_seg(empty, study.dicom, ["background", "tumor"], "Tiny", "0.0.1", tmp_path / "e.dcm", CT_SERIES)
    assert int(pydicom.dcmread(tmp_path / "e.dcm").NumberOfFrames) == 5


def test_dicom_seg_size_mismatch_refused(tmp_path):
    study = read_study(CT_SERIES)
    with pytest.raises(InputError, match=r"CT5N: label map \(16, 16, 4\) does not match the 5 source DICOM instances"):
        write_dicom_seg(np.zeros((16, 16, 4), np.uint8), study.dicom, ["background", "tumor"], "T", "0", tmp_path / "x.dcm",
                        CT_SERIES)
