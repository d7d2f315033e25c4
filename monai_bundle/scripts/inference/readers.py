"""Geometry-preserving image reading: one :class:`Study` whatever the file type.

Axis conventions (``docs/contracts.md``):

- Raster images (PNG/JPG/BMP/TIFF) are ``(C, H, W)``, rows first (PIL order), spacing 1 mm.
- Volumes (NIfTI, NRRD, MHA, DICOM) are ``(C, X, Y[, Z])``: voxel index order i, j, k of the file,
  i.e. SimpleITK's array reversed. Spacing, origin and direction are kept in ITK's LPS
  convention exactly as SimpleITK reports them, so a label map written back with them lies on the
  input's grid. A 4D file (X, Y, Z, T) becomes ``(T, X, Y, Z)``: its 4th axis is read as channels
  (MSD multi-sequence MRI); whether that count fits the model is checked by the Predictor.

Every failure is an :class:`~scripts.inference.errors.InputError` naming the file and the problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from scripts.inference.errors import InputError

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")


@dataclass(frozen=True)
class Geometry:
    """Physical placement of a ``d``-dimensional grid (ITK convention, LPS, millimetres).

    ``direction`` is the ``d x d`` direction matrix flattened row-major, as SimpleITK holds it.
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def identity(cls, ndim: int) -> Geometry:
        """1 mm spacing at the origin, axis-aligned (raster images)."""
        return cls((1.0,) * ndim, (0.0,) * ndim, tuple(np.eye(ndim).ravel().tolist()))

    @classmethod
    def of(cls, image: sitk.Image, ndim: int | None = None) -> Geometry:
        """The geometry of a SimpleITK image, its first ``ndim`` axes only (a 4D file's space)."""
        d = image.GetDimension() if ndim is None else ndim
        full = np.asarray(image.GetDirection()).reshape(image.GetDimension(), image.GetDimension())
        return cls(tuple(image.GetSpacing()[:d]), tuple(image.GetOrigin()[:d]), tuple(full[:d, :d].ravel().tolist()))

    def apply(self, image: sitk.Image) -> sitk.Image:
        """Set this geometry on ``image`` (same dimension) and return it."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in millilitres (mm^3 / 1000)."""
        return float(np.prod(self.spacing)) / 1000.0


@dataclass
class Study:
    """One input study as read.

    Attributes:
        path: the file or folder given.
        name: stem for the output files (``<name>_seg.nii.gz`` ...).
        image: ``(C, *spatial)`` float32 in the axis convention of the module docstring.
        geometry: placement of the spatial grid.
        raster: True for PNG/JPG-like images (``(C, H, W)``, no physical spacing).
        dicom: header-only pydicom datasets of the source instances in slice order (DICOM input
            only; DICOM SEG needs them), else None.
        multiframe: the DICOM input is one multi-frame (enhanced) instance.
        four_d: the file was 4D (X, Y, Z, T); its T volumes are the channels of ``image``.
        warnings: things the user should know about the input (series chosen, ...).
    """

    path: Path
    name: str
    image: np.ndarray
    geometry: Geometry
    raster: bool = False
    dicom: list | None = None
    multiframe: bool = False
    four_d: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])


def study_name(path: Path) -> str:
    """Output stem: the file name without its image suffix(es), or the folder name."""
    name = path.name
    for suffix in sorted(RASTER_SUFFIXES + VOLUME_SUFFIXES + DICOM_SUFFIXES + (".gz",), key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


def read_study(path: str | Path, series_uid: str | None = None) -> Study:
    """Read a PNG/JPG, NIfTI, NRRD/MHA, a DICOM file or a DICOM series folder.

    Args:
        path: file or folder.
        series_uid: for a DICOM folder holding several series, the SeriesInstanceUID to read.

    Returns:
        The :class:`Study`.

    Raises:
        InputError: missing path, unsupported type, unreadable / truncated file, a DICOM folder
            without a usable image series (see :mod:`scripts.inference.dicom`).
    """
    path = Path(path)
    if path.is_dir():
        from scripts.inference.dicom import read_dicom_folder

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
    from scripts.inference.dicom import is_dicom_file, read_dicom_file

    if lower.endswith(DICOM_SUFFIXES) or is_dicom_file(path):
        return read_dicom_file(path)
    raise InputError(f"{path}: unsupported file type; give PNG/JPG, NIfTI, NRRD/MHA, DICOM or a DICOM series folder")


def read_raster(path: Path) -> Study:
    """A PNG/JPG/BMP/TIFF as ``(C, H, W)`` float32 (grey: C=1, RGB: 3, RGBA: 4).

    Raises:
        InputError: the file cannot be decoded (corrupt or truncated).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not later
            if im.mode in ("P", "PA", "LA", "CMYK", "YCbCr", "1"):
                im = im.convert("RGBA" if "A" in im.mode else "RGB" if im.mode != "1" else "L")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: cannot decode the image (corrupt or truncated file?): {e}") from e
    # PIL decodes to (H, W) or (H, W, C); multi-page TIFFs give their first page
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)  # -> (C, H, W)
    return Study(path, study_name(path), arr.astype(np.float32), Geometry.identity(2), raster=True)


def sitk_to_channels_first(image: sitk.Image) -> np.ndarray:
    """A SimpleITK image as ``(C, X, Y[, Z])`` float32.

    Vector pixels (RGB NRRD) become channels; a 4th axis (4D NIfTI: X, Y, Z, T) becomes channels.
    """
    arr = sitk.GetArrayFromImage(image)  # (k, j, i) or (T, k, j, i), vector pixels last
    if image.GetNumberOfComponentsPerPixel() > 1:
        return np.ascontiguousarray(arr.T, dtype=np.float32)  # (k, j, i, comp) -> (comp, i, j, k)
    if image.GetDimension() == 4:
        arr = np.transpose(arr, (0, 3, 2, 1))  # (T, k, j, i) -> (T, i, j, k)
        return np.ascontiguousarray(arr, dtype=np.float32)
    return np.ascontiguousarray(arr.T, dtype=np.float32)[None]  # (k, j, i) -> (1, i, j, k)


def read_volume(path: Path) -> Study:
    """A NIfTI / NRRD / MHA file; geometry as SimpleITK reads it (LPS).

    Raises:
        InputError: unreadable or truncated file, or more than 4 dimensions.
    """
    if path.name.lower().endswith((".nii", ".nii.gz")):
        return _read_nifti(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise InputError(f"{path}: cannot read the image (corrupt or truncated file?): {_first_line(e)}") from e
    dim = image.GetDimension()
    if dim not in (2, 3, 4):
        raise InputError(f"{path}: {dim}D images are not supported (2D, 3D or 4D channels-last only)")
    return Study(path, study_name(path), sitk_to_channels_first(image), Geometry.of(image, min(dim, 3)), four_d=dim == 4)


def _read_nifti(path: Path) -> Study:
    """NIfTI: geometry from ITK's header reader, voxels from nibabel.

    ITK fills a truncated NIfTI with zeros without a word; nibabel refuses it. Both index voxels
    (i, j, k[, t]) the same way, so the nibabel array is already in this module's order.
    """
    import nibabel as nib

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        data = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    except (RuntimeError, OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as e:
        raise InputError(f"{path}: cannot read the image (corrupt or truncated file?): {_first_line(e)}") from e
    size, dim = reader.GetSize(), reader.GetDimension()
    if dim not in (2, 3, 4) or data.size != int(np.prod(size)):
        raise InputError(f"{path}: {data.ndim}D images are not supported (2D, 3D or 4D channels-last only)")
    data = data.reshape(size, order="F")  # ITK may drop or keep trailing 1-sized axes; match its grid
    arr = np.moveaxis(data, -1, 0) if dim == 4 else data[None]  # -> (C, X, Y[, Z])
    return Study(path, study_name(path), np.ascontiguousarray(arr), Geometry.of(reader, min(dim, 3)), four_d=dim == 4)


def _first_line(error: BaseException) -> str:
    """ITK errors are many lines long; the last non-empty one says what went wrong."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return lines[-1] if lines else type(error).__name__
