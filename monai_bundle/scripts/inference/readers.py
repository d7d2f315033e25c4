"""Geometry-preserving image reading: one :class:`Study` whatever the file type.

Axis conventions (``docs/contracts.md``):

- Raster images (PNG/JPG/BMP/TIFF) are ``(C, H, W)``, rows first (PIL order), spacing 1 mm. They
  are read by their content, whatever their suffix says; palette, CMYK and 1-bit images become RGB
  or grey, an alpha channel is dropped, 16-bit grey keeps its full range (each is reported).
- Volumes (NIfTI, NRRD, MHA, DICOM) are ``(C, X, Y[, Z])``: voxel index order i, j, k of the file,
  i.e. SimpleITK's array reversed. Each channel keeps the file's memory order (i fastest, a
  Fortran-ordered array), so a 2D model's axial slices ``(k, j, i)`` are contiguous and no volume
  is transposed twice; code that needs C order makes its own copy. Spacing, origin and direction are kept in ITK's LPS
  convention exactly as SimpleITK reports them, so a label map written back with them lies on the
  input's grid. A 4D file (X, Y, Z, T) becomes ``(T, X, Y, Z)``: its 4th axis is read as channels
  (MSD multi-sequence MRI); whether that count fits the model is checked by the Predictor.

The files are read by the image layer (:mod:`scripts.imageio`: suffixes, geometry, raster and
volume readers); this module adds the checks and warnings of a study. A zip of a DICOM series is
unpacked safely and read as a folder (:mod:`scripts.inference.archive`);
a DICOMweb study or series URL is retrieved into a temporary folder and read as one
(:mod:`scripts.inference.dicomweb`).

Every failure is an :class:`~scripts.inference.errors.InputError` naming the file and the problem.
Refused besides unreadable files: a grid smaller than :data:`MIN_IMAGE_SIZE` voxels along either
in-plane axis (too small to be a study), a zero or non-finite voxel size (and a NIfTI whose header
gives a zero voxel size with no sform to take it from: ITK and nibabel would silently use 1 mm).
Accepted but reported in ``Study.warnings`` (each saying what was done): an oblique grid (kept as
it is: the label map is written on it), a volume one voxel thick (read as one slice), and the
raster conversions above.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import UnidentifiedImageError

from scripts.imageio import (
    DICOM_SUFFIXES,
    NIFTI_SUFFIXES,
    RASTER_FORMATS,
    RASTER_SUFFIXES,
    VOLUME_SUFFIXES,
    ZIP_SUFFIXES,
    Geometry,
    is_dicom_file,
    itk_message,
    load_nifti,
    read_nifti_header,
    sitk_info,
    sitk_to_channels_first,
)
from scripts.imageio import read_raster as read_raster_pixels
from scripts.inference.archive import read_zip
from scripts.inference.dicom import read_dicom_file, read_dicom_folder
from scripts.inference.errors import InputError
from scripts.inference.study import Study, study_name

__all__ = ["DICOM_SUFFIXES", "MIN_IMAGE_SIZE", "OBLIQUE_WARN_DEG", "RASTER_FORMATS", "RASTER_SUFFIXES",
           "VOLUME_SUFFIXES", "ZIP_SUFFIXES", "Geometry", "Study", "check_study", "read_raster", "read_study",
           "read_volume", "study_name"]

#: fewer voxels than this along either of the two largest axes is not a study (a 2x2x2 "volume")
MIN_IMAGE_SIZE = 8
#: a grid axis further than this from the nearest patient axis makes the volume oblique (reported)
OBLIQUE_WARN_DEG = 1.0


def read_study(path: str | Path, series_uid: str | None = None) -> Study:
    """Read a PNG/JPG, NIfTI, NRRD/MHA, a DICOM file, a DICOM series folder or a zip of one, or a
    DICOMweb study or series URL (:mod:`scripts.inference.dicomweb`).

    Args:
        path: file, folder or ``http(s)://`` URL.
        series_uid: for a DICOM folder (or zip) holding several series, the SeriesInstanceUID to read.

    Returns:
        The :class:`Study`.

    Raises:
        InputError: missing path, unsupported type, unreadable / truncated file, a DICOM folder
            without a usable image series (see :mod:`scripts.inference.dicom`), an unsafe zip
            (:mod:`scripts.inference.archive`), a grid too small or without a voxel size; a DICOMweb
            URL, server or study that cannot be used (names the URL and the HTTP status).
    """
    from scripts.inference.dicomweb import is_url, read_url

    if is_url(path):
        return check_study(read_url(str(path), series_uid))
    return check_study(_read(Path(path), series_uid))


def _read(path: Path, series_uid: str | None) -> Study:
    if path.is_dir():
        return read_dicom_folder(path, series_uid)
    if not path.is_file():
        raise InputError(f"{path}: no such file or folder")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    lower = path.name.lower()
    if lower.endswith(RASTER_SUFFIXES):
        return read_raster(path)
    if lower.endswith(VOLUME_SUFFIXES):
        return read_volume(path)
    if lower.endswith(ZIP_SUFFIXES):
        return read_zip(path, series_uid)
    if lower.endswith(DICOM_SUFFIXES) or is_dicom_file(path):
        return read_dicom_file(path)
    raise InputError(f"{path}: unsupported file type; give PNG/JPG, NIfTI, NRRD/MHA, DICOM, a DICOM series folder "
                     "or a zip of one")


def check_study(study: Study) -> Study:
    """Refuse a grid that cannot be a study; report an oblique or one-voxel-thick one (see the module docstring).

    Raises:
        InputError: fewer than :data:`MIN_IMAGE_SIZE` voxels along either of the two largest axes,
            or a zero / non-finite voxel size.
    """
    shape = study.spatial_shape
    in_plane = sorted(shape)[-2:]
    if min(in_plane) < MIN_IMAGE_SIZE:
        raise InputError(f"{study.path}: the image is {'x'.join(map(str, shape))} voxels, too small to be a study; "
                         f"at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels in the image plane are needed")
    spacing = np.asarray(study.geometry.spacing, dtype=np.float64)
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise InputError(f"{study.path}: the voxel size {tuple(spacing.tolist())} is zero or not a number; "
                         "the geometry (and every volume in mL) would be made up: fix the file's header")
    if study.raster:
        return study
    d = len(shape)
    direction = np.asarray(study.geometry.direction, dtype=np.float64).reshape(d, d)
    cosines = np.abs(direction).max(axis=0) / np.maximum(np.linalg.norm(direction, axis=0), 1e-12)
    tilt = float(np.degrees(np.arccos(np.clip(cosines.min(), -1.0, 1.0))))
    if tilt > OBLIQUE_WARN_DEG:
        study.warnings.append(f"{study.path.name}: oblique volume (its axes are up to {tilt:.1f} degrees from the "
                              "patient axes); the label map is written on the volume's own oblique grid, and a 2D "
                              "model sees its slices in the nearest standard orientation")
    if d == 3 and 1 in shape and study.dicom is None:
        study.warnings.append(f"{study.path.name}: the volume is one voxel thick ({'x'.join(map(str, shape))}); "
                              "it was read as a single slice")
    return study


def read_raster(path: Path) -> Study:
    """A PNG/JPG/BMP/TIFF as ``(C, H, W)`` float32 (grey: C=1, RGB: 3), read by its content.

    Palette and CMYK images become RGB, 1-bit images grey 0/255, an alpha channel is dropped (it is
    not image data; training drops it too), 16-bit grey keeps its range; each such conversion, and
    a file whose content is not what its suffix says, adds a line to ``Study.warnings``
    (:func:`scripts.imageio.raster.read_raster`, conversion ``"plain"``).

    Raises:
        InputError: the file cannot be decoded (corrupt or truncated).
    """
    try:
        arr, _, warnings = read_raster_pixels(path, "plain")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: cannot decode the image (corrupt or truncated file?): {e}") from e
    return Study(path, study_name(path), arr.astype(np.float32), Geometry.identity(2), raster=True, warnings=warnings)


def read_volume(path: Path) -> Study:
    """A NIfTI / NRRD / MHA file; geometry as SimpleITK reads it (LPS).

    Raises:
        InputError: unreadable or truncated file, or more than 4 dimensions.
    """
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        return _read_nifti(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(f"{path}: cannot read the image (corrupt or truncated file?): {itk_message(e)}") from e
    dim = image.GetDimension()
    if dim not in (2, 3, 4):
        raise InputError(f"{path}: {dim}D images are not supported (2D, 3D or 4D channels-last only)")
    return Study(path, study_name(path), sitk_to_channels_first(image, np.float32), Geometry.of(image, min(dim, 3)),
                 four_d=dim == 4)


def _read_nifti(path: Path) -> Study:
    """NIfTI: geometry from ITK's header reader, voxels from nibabel.

    ITK fills a truncated NIfTI with zeros without a word; nibabel refuses it. Both index voxels
    (i, j, k[, t]) the same way, so the nibabel array is already in this module's order.
    """
    import nibabel as nib

    _check_nifti_voxel_size(path)
    try:
        reader = sitk_info(path)
        data = np.asarray(load_nifti(path).dataobj, dtype=np.float32)
    except (RuntimeError, OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as e:
        raise InputError(f"{path}: cannot read the image (corrupt or truncated file?): {itk_message(e)}") from e
    size, dim = reader.GetSize(), reader.GetDimension()
    if dim not in (2, 3, 4) or data.size != int(np.prod(size)):
        raise InputError(f"{path}: {data.ndim}D images are not supported (2D, 3D or 4D channels-last only)")
    data = data.reshape(size, order="F")  # ITK may drop or keep trailing 1-sized axes; match its grid
    arr = np.moveaxis(data, -1, 0) if dim == 4 else data[None]  # -> (C, X, Y[, Z])
    return Study(path, study_name(path), arr, Geometry.of(reader, min(dim, 3)), four_d=dim == 4)


def _check_nifti_voxel_size(path: Path) -> None:
    """Refuse a NIfTI whose header gives a zero voxel size with no sform to take the geometry from.

    Both nibabel and ITK replace such a size by 1 mm without a word; the spacing (and every volume
    in mL) would then be made up. The raw header is read before any fix
    (:func:`scripts.imageio.volume.read_nifti_header`); an unreadable one is left to the normal
    reading, which reports it.

    Raises:
        InputError: names the file and the header's pixdim.
    """
    try:
        header = read_nifti_header(path)
        ndim = int(header["dim"][0])
        pixdim = np.asarray(header["pixdim"][1: 1 + min(max(ndim, 1), 3)], dtype=np.float64)
        qform, sform = int(header["qform_code"]), int(header["sform_code"])
    except Exception:  # noqa: BLE001 - not readable as NIfTI: the reader below says why
        return
    if sform == 0 and not (np.isfinite(pixdim).all() and (pixdim != 0).all()):
        source = "no qform or sform" if qform == 0 else "no sform"
        raise InputError(f"{path}: the header gives a zero voxel size (pixdim {pixdim.tolist()}) and {source} to take "
                         "it from; refusing rather than guessing 1 mm: fix the NIfTI header")
