"""DICOM input: find the image series in a folder, choose one, check its geometry, read it.

This module is the policy; the low-level reading (the preamble, header-only datasets, a list of
instances read as one SimpleITK image, channels first) is the image layer's (:mod:`scripts.imageio.dicom`,
:mod:`scripts.imageio.volume`).

Rules (also in the CLI's help):

- **Which files.** Every file under the folder (sub-folders included, links to folders followed)
  that pydicom can parse; other files and DICOMDIR index files are skipped and counted. Image
  instances are those with pixel data. Symbolic links that loop (a link to a folder above it,
  ``a -> b -> a``), lead nowhere or repeat a folder already read are skipped and counted.
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
- **Pixel data, checked per file before decoding**: an uncompressed PixelData shorter than
  Rows x Columns x SamplesPerPixel x BitsAllocated/8 x frames, or a file that ends before its pixel
  data does, is refused naming that slice's file (GDCM would read such a slice as zeros or garbage).
- **Reported, not refused** (``Study.warnings``, each saying what was done): files skipped (how
  many), links skipped, a series found in a sub-folder, a single-slice series, instance numbers
  out of slice order (the slices are sorted by position), JPEG 2000 pixel data, and a character set
  that is unknown or does not fit the text (pydicom then reads the text as Latin-1 or replaces
  characters).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.charset import python_encoding
from pydicom.dataelem import RawDataElement
from pydicom.datadict import dictionary_has_tag, dictionary_VR, keyword_for_tag
from pydicom.multival import MultiValue
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000TransferSyntaxes

from scripts.imageio import Geometry, itk_message, read_series, sitk_to_channels_first
from scripts.imageio.dicom import has_pixel_data, is_dicom_file, read_dicom_header
from scripts.inference.errors import InputError
from scripts.inference.study import Study, study_name

__all__ = ["FolderScan", "charset_problem", "check_pixel_data", "choose_series", "content_warnings", "find_series",
           "folder_warnings", "is_dicom_file", "read_dicom_file", "read_dicom_folder", "scan_folder", "sort_and_check",
           "walk_files"]

#: relative and absolute tolerances on slice gaps and on orientation cosines
GAP_REL_TOL, GAP_ABS_TOL_MM, ORIENT_TOL = 0.01, 0.01, 1e-4
PIXEL_DATA_TAG = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF  # encapsulated (compressed) pixel data: frame sizes are not known up front
JPEG2000_SYNTAXES = frozenset(JPEG2000TransferSyntaxes)
TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})


def walk_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """Files under ``folder``, links to folders followed, and the symbolic links skipped.

    A link is skipped when it points to a folder above it or already walked (a loop or a repeat), or
    when it cannot be resolved (``a -> b -> a``, or a target that does not exist).
    """
    files: list[Path] = []
    skipped: list[Path] = []
    seen = {os.path.realpath(folder)}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        here = os.path.realpath(dirpath)
        keep = []
        for name in sorted(dirnames):
            full = os.path.join(dirpath, name)
            target = os.path.realpath(full)
            if os.path.islink(full) and (target in seen or Path(here).is_relative_to(target)):  # a repeat or a loop
                skipped.append(Path(full))
                continue
            seen.add(target)
            keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            full = Path(dirpath, name)
            if full.is_file():
                files.append(full)
            elif full.is_symlink():  # a link loop between files, or a link to nothing
                skipped.append(full)
    return sorted(files), skipped


@dataclass
class FolderScan:
    """What a DICOM folder holds: image instances by SeriesInstanceUID, and what was skipped."""

    series: dict[str, list[tuple[Path, pydicom.Dataset]]]
    not_images: list[Path] = field(default_factory=list)  # not DICOM, DICOMDIR, or DICOM without pixel data
    links: list[Path] = field(default_factory=list)  # symbolic links skipped (loops, dangling, repeats)


def scan_folder(folder: Path) -> FolderScan:
    """Read the headers of every file under ``folder`` (see the module docstring)."""
    files, links = walk_files(folder)
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    not_images = []
    for path in files:
        ds = read_dicom_header(path)
        if ds is not None and has_pixel_data(ds):
            series[str(ds.get("SeriesInstanceUID", "unknown"))].append((path, ds))
        else:
            not_images.append(path)
    return FolderScan(dict(series), not_images, links)


def find_series(folder: Path) -> dict[str, list[tuple[Path, pydicom.Dataset]]]:
    """Image instances under ``folder`` grouped by SeriesInstanceUID."""
    return scan_folder(folder).series


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
    scan = scan_folder(folder)
    uid, warnings = choose_series(folder, scan.series, series_uid)
    instances = sort_and_check(folder, scan.series[uid])
    for path, ds in instances:
        check_pixel_data(path, ds)
    files = [str(p) for p, _ in instances]
    try:
        image = read_series(files)
        arr = sitk_to_channels_first(image, np.float32)
    except RuntimeError as e:
        raise InputError(f"{folder}: cannot read the pixel data of series {uid} (corrupt or truncated file?): "
                         f"{itk_message(e)}") from e
    if len(files) > 1 and (image.GetDimension() != 3 or image.GetSize()[2] != len(files)):
        raise InputError(f"{folder}: series {uid} holds multi-frame instances; give one of them as a file")
    study = Study(folder, study_name(folder), arr, Geometry.of(image), dicom=[ds for _, ds in instances])
    study.warnings.extend(warnings + folder_warnings(folder, scan, instances) + content_warnings(instances))
    return study


def _names(paths: list[Path], folder: Path, most: int = 3) -> str:
    shown = [str(p.relative_to(folder)) for p in paths[:most]]
    return ", ".join(shown) + (f" and {len(paths) - most} more" if len(paths) > most else "")


def folder_warnings(folder: Path, scan: FolderScan, instances: list[tuple[Path, pydicom.Dataset]]) -> list[str]:
    """What a user should know about how a folder was read: skipped files and links, sub-folders,
    a single slice, instance numbers out of slice order."""
    out = []
    if scan.not_images:
        out.append(f"{folder.name}: skipped {len(scan.not_images)} file(s) that are not DICOM images "
                   f"({_names(scan.not_images, folder)})")
    if scan.links:
        out.append(f"{folder.name}: skipped {len(scan.links)} symbolic link(s) that loop, lead nowhere or repeat a "
                   f"folder already read ({_names(scan.links, folder)})")
    subfolders = sorted({p.parent for p, _ in instances} - {folder})
    if subfolders:
        out.append(f"{folder.name}: the series lies in sub-folder {_names(subfolders, folder)}; it was read from there")
    if len(instances) == 1 and int(instances[0][1].get("NumberOfFrames", 1) or 1) == 1:
        out.append(f"{folder.name}: the series holds a single slice; it was read as a one-slice volume")
    numbers = [ds.get("InstanceNumber") for _, ds in instances]
    if len(numbers) > 2 and all(n not in (None, "") for n in numbers):
        steps = np.diff([int(n) for n in numbers])
        if not ((steps > 0).all() or (steps < 0).all()):
            shown = ", ".join(str(int(n)) for n in numbers[:6]) + (", ..." if len(numbers) > 6 else "")
            out.append(f"{folder.name}: the instance numbers do not follow the slice positions ({shown} from the "
                       "lowest slice up); the slices were sorted by their position along the slice normal")
    return out


def content_warnings(instances: list[tuple[Path, pydicom.Dataset]]) -> list[str]:
    """JPEG 2000 pixel data and character-set problems of a series' instances (one line each at most)."""
    out = []
    path, ds = instances[0]
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax in JPEG2000_SYNTAXES:
        lossy = str(ds.get("LossyImageCompression", "")) == "01"
        out.append(f"{path.name}: the pixel data is JPEG 2000 compressed ({syntax.name}); it was decoded"
                   + (" (compressed lossily: fine detail may be lost)" if lossy else ""))
    for path, ds in instances:
        problem = charset_problem(ds)
        if problem:
            out.append(f"{path.name}: {problem}")
            break
    return out


def charset_problem(ds: pydicom.Dataset) -> str | None:
    """What is wrong with a header's SpecificCharacterSet for its text, and how pydicom reads it; None if fine.

    Detected: a term pydicom does not know (the text is then read as Latin-1), and text bytes that
    are not valid in the declared set (ASCII when none is declared; pydicom reads such text as
    Latin-1, or with replacement characters for a declared multi-byte set). A wrong single-byte
    set cannot be told from the bytes and is not reported.
    """
    declared = ds.get("SpecificCharacterSet")
    values = declared if isinstance(declared, MultiValue | list | tuple) else [] if declared in (None, "") else [declared]
    terms = [str(t).strip() for t in values]
    unknown = [t for t in terms if t and t not in python_encoding]
    if unknown:
        return (f"unknown character set {', '.join(repr(t) for t in unknown)}; text attributes (patient name, "
                "descriptions) were read as Latin-1")
    if len(terms) > 1 or (terms and terms[0].startswith("ISO 2022")):
        return None  # code extensions switch sets within a value: left to pydicom
    codec = "ascii" if terms in ([], [""], ["ISO_IR 6"]) else python_encoding[terms[0]]
    for tag in list(ds.keys()):
        if tag.is_private:
            continue
        elem = ds.get_item(tag, keep_deferred=True)
        if not isinstance(elem, RawDataElement) or not isinstance(elem.value, bytes):
            continue
        vr = elem.VR
        if vr is None and dictionary_has_tag(tag):  # implicit VR files: the dictionary's
            vr = dictionary_VR(tag)
        if vr not in TEXT_VRS:
            continue
        try:
            elem.value.decode(codec)
        except (UnicodeDecodeError, LookupError):
            name = keyword_for_tag(tag) or str(tag)
            said = f"declared character set {terms[0]!r}" if terms else "default character set (ASCII: no SpecificCharacterSet)"
            how = "read as Latin-1" if codec == "ascii" else "read with replacement characters"
            return f"{name} is not valid text in the {said}; text attributes were {how}"
    return None


def check_pixel_data(path: Path, ds: pydicom.Dataset) -> None:
    """Refuse an instance whose uncompressed pixel data is shorter than its header says, or cut off by the file's end.

    Encapsulated (compressed) pixel data is left to the decoder. The header was read with the pixel
    data deferred, so this reads no pixels.

    Raises:
        InputError: names the file, the byte counts and the header values they come from.
    """
    elem = ds.get_item(PIXEL_DATA_TAG, keep_deferred=True)
    if elem is None:
        return
    if isinstance(elem, RawDataElement):
        length, tell = elem.length, elem.value_tell
        if getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) == DeflatedExplicitVRLittleEndian:
            tell = None  # positions in the inflated stream, not in the file
    else:
        length, tell = (len(elem.value) if elem.value is not None else None), None
    if length in (None, UNDEFINED_LENGTH):
        return
    try:
        from pydicom.pixels.utils import get_expected_length

        expected = int(get_expected_length(ds, unit="bytes"))
    except (AttributeError, KeyError, TypeError, ValueError):
        return  # attributes missing: the decoder reports it
    if length < expected:
        rows, cols = int(ds.Rows), int(ds.Columns)
        spp, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        raise InputError(f"{path}: cannot read the pixel data: it holds {length} bytes, but Rows x Columns x "
                         f"SamplesPerPixel x BitsAllocated/8 x frames = {rows} x {cols} x {spp} x {bits}/8 x {frames} "
                         f"needs {expected} (truncated or corrupt slice)")
    size = path.stat().st_size
    if tell is not None and tell + length > size:
        raise InputError(f"{path}: cannot read the pixel data: the file ends {tell + length - size} bytes before its "
                         "pixel data does (truncated file)")


def read_dicom_file(path: Path) -> Study:
    """One DICOM instance (a single slice or an enhanced multi-frame volume).

    Raises:
        InputError: not DICOM, no pixel data, or unreadable pixel data.
    """
    ds = read_dicom_header(path)
    if ds is None:
        raise InputError(f"{path}: not a readable DICOM file")
    if not has_pixel_data(ds):
        raise InputError(f"{path}: DICOM file without image pixel data (SOP class {ds.get('SOPClassUID', '?')})")
    check_pixel_data(path, ds)
    try:
        image = sitk.ReadImage(str(path))
        arr = sitk_to_channels_first(image, np.float32)
    except RuntimeError as e:
        raise InputError(f"{path}: cannot read the pixel data (corrupt or truncated file?): {itk_message(e)}") from e
    if image.GetDimension() == 2:  # some single frames read as 2D: keep a 1-slice 3D grid like GDCM's series read
        image = sitk.JoinSeries(image)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return Study(path, study_name(path), arr if arr.ndim == 4 else arr[..., None], Geometry.of(image),
                 dicom=[ds], multiframe=frames > 1, warnings=content_warnings([(path, ds)]))
