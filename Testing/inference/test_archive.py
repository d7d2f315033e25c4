"""A zip of a DICOM series: the one shared reader (``scripts.inference.archive``) with its safety rules, and
the CLI reading a zip as a study (DICOM SEG included: the unpacked headers live as long as the study)."""

from __future__ import annotations

import gc
import json
import stat
import zipfile
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk

from infer_helpers import mni_volume, write_dicom_series
from scripts.infer import main
from scripts.inference.archive import extract_zip
from scripts.inference.errors import InputError
from scripts.inference.readers import read_study


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _zip_folder(folder: Path, path: Path, prefix: str = "") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, prefix + f.relative_to(folder).as_posix())
    return path


@pytest.fixture(scope="module")
def series_zip(tmp_path_factory) -> tuple[Path, Path]:
    """A real brain (MNI152) as a DICOM series, and the same series zipped under ``study/series/``."""
    base = tmp_path_factory.mktemp("zipped")
    write_dicom_series(mni_volume(6), base / "series")
    return base / "series", _zip_folder(base / "series", base / "study.zip", prefix="study/series/")


def test_zip_reads_like_the_folder_and_is_named_after_the_zip(series_zip) -> None:
    folder, zipped = series_zip
    study, plain = read_study(zipped), read_study(folder)
    np.testing.assert_array_equal(study.image, plain.image)
    assert study.geometry == plain.geometry and study.path == zipped and study.name == "study"
    assert study.warnings == [f"study.zip: the series lies in sub-folder {Path('study/series')}; it was read from there"]
    unpacked = Path(study.workdir.name)
    assert unpacked.is_dir() and all(Path(ds.filename).is_relative_to(unpacked) for ds in study.dicom)
    del study
    gc.collect()
    assert not unpacked.exists()  # the temporary folder goes with the study


def test_cli_reads_a_zip_into_nifti_and_dicom_seg(series_zip, bundle2d, tmp_path, capsys) -> None:
    folder, zipped = series_zip
    assert main([str(zipped), "--out", str(tmp_path / "nii"), "--bundle", str(bundle2d), "--device", "cpu"]) == 0
    label = sitk.ReadImage(str(tmp_path / "nii" / "study_seg.nii.gz"))
    assert label.GetSize() == read_study(folder).spatial_shape
    result = json.loads((tmp_path / "nii" / "study_result.json").read_text())
    assert result["input"] == str(zipped) and result["segmentation"]["format"] == "nifti"
    code = main([str(zipped), "--out", str(tmp_path / "seg"), "--bundle", str(bundle2d), "--format", "dicom-seg"])
    assert code == 0, capsys.readouterr().err
    seg = hd.seg.segread(tmp_path / "seg" / "study_seg.dcm")
    uids = [ds.SOPInstanceUID for ds in read_study(folder).dicom]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    np.testing.assert_array_equal(frames, sitk.GetArrayFromImage(label))


def test_zip_without_a_series_names_the_zip_not_the_temporary_folder(tmp_path) -> None:
    z = _zip(tmp_path / "notes.zip", {"docs/readme.txt": b"no images here"})
    with pytest.raises(InputError) as info:
        read_study(z)
    assert str(info.value).startswith(f"{z}: no DICOM image series found") and "mtunet-zip-" not in str(info.value)


def test_files_of_a_zip_are_extracted(tmp_path: Path) -> None:
    z = _zip(tmp_path / "series.zip", {"study/ser1/1.dcm": b"a", "study/ser1/2.dcm": b"bb", "__MACOSX/._1.dcm": b"m"})
    files = extract_zip(z, tmp_path / "dest")
    assert sorted(p.relative_to(tmp_path / "dest").as_posix() for p in files) == ["study/ser1/1.dcm", "study/ser1/2.dcm"]
    assert (tmp_path / "dest" / "study" / "ser1" / "2.dcm").read_bytes() == b"bb"


def test_not_a_zip(tmp_path: Path) -> None:
    f = tmp_path / "fake.zip"
    f.write_bytes(b"this is not a zip archive")
    with pytest.raises(InputError, match=r"fake\.zip: not a readable zip file"):
        read_study(f)


def test_empty_zip(tmp_path: Path) -> None:
    z = _zip(tmp_path / "empty.zip", {"folder/": b"", "__MACOSX/._x": b"m"})
    with pytest.raises(InputError, match=r"empty\.zip: the zip holds no files"):
        read_study(z)


@pytest.mark.parametrize("member", ["../evil.dcm", "a/../../evil.dcm", "/etc/evil.dcm", "C:/evil.dcm", "..\\evil.dcm"])
def test_path_traversal_is_refused_and_nothing_written(tmp_path: Path, member: str) -> None:
    z = _zip(tmp_path / "bad.zip", {"ok.dcm": b"a", member: b"evil"})
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(InputError, match=r"bad\.zip: unsafe path in zip"):
        extract_zip(z, dest)
    assert not any(dest.iterdir()) and not (tmp_path / "evil.dcm").exists()


def test_symlink_is_refused(tmp_path: Path) -> None:
    z = tmp_path / "link.zip"
    info = zipfile.ZipInfo("series/1.dcm")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(z, "w") as f:
        f.writestr(info, "/etc/passwd")
    with pytest.raises(InputError, match=r"link\.zip: the zip holds a symbolic link"):
        read_study(z)


def test_too_many_files(tmp_path: Path) -> None:
    z = _zip(tmp_path / "many.zip", {f"{i}.dcm": b"a" for i in range(4)})
    with pytest.raises(InputError, match=r"many\.zip: the zip holds 4 files, more than the limit of 3"):
        extract_zip(z, tmp_path / "dest", max_files=3)


def test_zip_bomb_is_refused_on_its_headers(tmp_path: Path) -> None:
    z = _zip(tmp_path / "bomb.zip", {"1.dcm": bytes(1 << 20)})
    assert z.stat().st_size < 10_000  # 1 MiB of zeros compresses to ~1 kB
    with pytest.raises(InputError, match=r"bomb\.zip: the zip unpacks to 1048576 bytes, more than the limit"):
        extract_zip(z, tmp_path / "dest", max_bytes=1 << 19)
    assert not (tmp_path / "dest").exists()


def test_corrupt_member(tmp_path: Path) -> None:
    z = tmp_path / "crc.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as f:
        f.writestr("1.dcm", b"A" * 100)
    data = bytearray(z.read_bytes())
    data[data.index(b"A" * 100) + 50] = ord("B")  # flip one stored byte: the CRC no longer matches
    z.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"crc\.zip: corrupt zip member '1\.dcm'"):
        read_study(z)


def test_member_that_cannot_be_written(tmp_path: Path) -> None:
    z = _zip(tmp_path / "clash.zip", {"a": b"file", "a/b.dcm": b"under a file"})
    with pytest.raises(InputError, match=r"clash\.zip: cannot extract 'a/b\.dcm'"):
        read_study(z)
