"""DICOM input: find the image series in a folder, choose one, check its geometry, read it.

Rules (also in the CLI's help):

- **Which files.** Every file under the folder (sub-folders included) that pydicom can parse;
  other files and DICOMDIR index files are ignored. Image instances are those with pixel data.
- **Several series.** ``series_uid`` picks one. Without it the series with the most image
  instances is read, localizers (ImageType ``LOCALIZER``) only when nothing else exists; ties go
  to the lower SeriesNumber, then the lower UID. The choice and the other series (UID and
  instance count) are reported in the result's ``warnings``.
- **Geometry, refused rather than guessed** (a label map on a wrong grid puts the tumor in the
  wrong place and its volume in mL would be wrong):
  slices whose ImageOrientationPatient differ (not parallel); positions not stacked along the
  slice normal (gantry tilt / sheared stack); two slices at one position (several acquisitions
  or time points in one series); gaps between neighbouring slices that differ from the median
  gap by more than ``max(0.01 mm, 1 %)`` (a missing slice, uneven spacing); slices of different
  size or pixel spacing. Slices are sorted along the normal, lowest first, as ITK does.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from scripts.inference.errors import InputError
from scripts.inference.readers import Geometry, Study, _first_line, sitk_to_channels_first, study_name

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
#: relative and absolute tolerances on slice gaps and on orientation cosines
GAP_REL_TOL, GAP_ABS_TOL_MM, ORIENT_TOL = 0.01, 0.01, 1e-4


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` carries the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _header(path: Path) -> pydicom.Dataset | None:
    """The header of a DICOM file (pixel data deferred, not loaded), or None for a non-DICOM file."""
    try:
        ds = pydicom.dcmread(path, defer_size=1024)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, AttributeError, TypeError):
        return None
    if getattr(ds, "file_meta", None) is not None and ds.file_meta.get("MediaStorageSOPClassUID") == DICOMDIR_SOP_CLASS:
        return None
    return ds


def _is_image(ds: pydicom.Dataset) -> bool:
    return "PixelData" in ds and "Rows" in ds and "Columns" in ds


def find_series(folder: Path) -> dict[str, list[tuple[Path, pydicom.Dataset]]]:
    """Image instances under ``folder`` grouped by SeriesInstanceUID."""
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ds = _header(path)
        if ds is not None and _is_image(ds):
            series[str(ds.get("SeriesInstanceUID", "unknown"))].append((path, ds))
    return dict(series)


def _is_localizer(instances: list[tuple[Path, pydicom.Dataset]]) -> bool:
    return all("LOCALIZER" in [str(v).upper() for v in (ds.get("ImageType") or [])] for _, ds in instances)


def choose_series(folder: Path, series: dict[str, list], series_uid: str | None) -> tuple[str, list[str]]:
    """The UID to read by the module's rule, and the warnings that report the choice.

    Raises:
        InputError: no image series, or ``series_uid`` not among them (lists those found).
    """
    if not series:
        raise InputError(f"{folder}: no DICOM image series found (no file with pixel data)")
    listing = ", ".join(f"{uid} ({len(v)} instances)" for uid, v in sorted(series.items()))
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(f"{folder}: no series with SeriesInstanceUID {series_uid}; found {listing}")
        return series_uid, []
    if len(series) == 1:
        return next(iter(series)), []

    def rank(uid: str) -> tuple:
        inst = series[uid]
        number = inst[0][1].get("SeriesNumber")
        return (_is_localizer(inst), -len(inst), int(number) if number not in (None, "") else 1 << 30, uid)

    chosen = min(series, key=rank)
    return chosen, [f"{folder.name}: {len(series)} image series found ({listing}); read {chosen}, "
                    "the one with the most instances; pass a series UID to choose another"]


def sort_and_check(folder: Path, instances: list[tuple[Path, pydicom.Dataset]]) -> list[tuple[Path, pydicom.Dataset]]:
    """Sort a series' instances along the slice normal and refuse geometry that cannot be one grid.

    Raises:
        InputError: the module's geometry rules, naming the folder and the problem.
    """
    if len(instances) == 1:
        return instances
    sizes = {(int(ds.Rows), int(ds.Columns), tuple(float(v) for v in ds.get("PixelSpacing", [1, 1]))) for _, ds in instances}
    if len(sizes) > 1:
        raise InputError(f"{folder}: slices differ in size or pixel spacing {sorted(sizes)}; not one volume")
    try:
        orients = np.array([[float(v) for v in ds.ImageOrientationPatient] for _, ds in instances])
        positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in instances])
    except (AttributeError, ValueError, TypeError) as e:
        raise InputError(f"{folder}: slices lack a usable ImagePositionPatient / ImageOrientationPatient") from e
    if np.abs(orients - orients[0]).max() > ORIENT_TOL:
        raise InputError(f"{folder}: slices are not parallel (ImageOrientationPatient differs between instances)")
    normal = np.cross(orients[0, :3], orients[0, 3:])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    gaps = np.diff(along)
    if gaps.min() < GAP_ABS_TOL_MM:
        raise InputError(f"{folder}: two or more slices share a position (several acquisitions or time points "
                         "in one series?); pass the UID of a series with one volume")
    median = float(np.median(gaps))
    worst = float(np.abs(gaps - median).max())
    if worst > max(GAP_ABS_TOL_MM, GAP_REL_TOL * median):
        raise InputError(f"{folder}: slices are unevenly spaced (gaps {gaps.min():.3f}..{gaps.max():.3f} mm, "
                         f"median {median:.3f} mm); refusing rather than resampling")
    offsets = positions - positions[0]
    drift = np.linalg.norm(offsets - np.outer(offsets @ normal, normal), axis=1).max()
    if drift > max(GAP_ABS_TOL_MM, GAP_REL_TOL * median):
        raise InputError(f"{folder}: slice positions are not stacked along the slice normal "
                         f"(in-plane drift {drift:.3f} mm: gantry tilt or sheared stack)")
    return [instances[i] for i in order]


def read_dicom_folder(folder: Path, series_uid: str | None = None) -> Study:
    """Read one image series of a folder (see the module docstring for the rules).

    Raises:
        InputError: no image series, unknown ``series_uid``, refused geometry, unreadable pixels.
    """
    series = find_series(folder)
    uid, warnings = choose_series(folder, series, series_uid)
    instances = sort_and_check(folder, series[uid])
    files = [str(p) for p, _ in instances]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
        arr = sitk_to_channels_first(image)
    except RuntimeError as e:
        raise InputError(f"{folder}: cannot read the pixel data of series {uid} (corrupt or truncated file?): "
                         f"{_first_line(e)}") from e
    if len(files) > 1 and (image.GetDimension() != 3 or image.GetSize()[2] != len(files)):
        raise InputError(f"{folder}: series {uid} holds multi-frame instances; give one of them as a file")
    study = Study(folder, study_name(folder), arr, Geometry.of(image), dicom=[ds for _, ds in instances])
    study.warnings.extend(warnings)
    return study


def read_dicom_file(path: Path) -> Study:
    """One DICOM instance (a single slice or an enhanced multi-frame volume).

    Raises:
        InputError: not DICOM, no pixel data, or unreadable pixel data.
    """
    ds = _header(path)
    if ds is None:
        raise InputError(f"{path}: not a readable DICOM file")
    if not _is_image(ds):
        raise InputError(f"{path}: DICOM file without image pixel data (SOP class {ds.get('SOPClassUID', '?')})")
    try:
        image = sitk.ReadImage(str(path))
        arr = sitk_to_channels_first(image)
    except RuntimeError as e:
        raise InputError(f"{path}: cannot read the pixel data (corrupt or truncated file?): {_first_line(e)}") from e
    if image.GetDimension() == 2:  # some single frames read as 2D: keep a 1-slice 3D grid like GDCM's series read
        image = sitk.JoinSeries(image)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return Study(path, study_name(path), arr if arr.ndim == 4 else arr[..., None], Geometry.of(image),
                 dicom=[ds], multiframe=frames > 1)
