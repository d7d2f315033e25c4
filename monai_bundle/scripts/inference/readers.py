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

A zip of a DICOM series is unpacked safely and read as a folder (:mod:`scripts.inference.archive`);
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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from scripts.inference.errors import InputError

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
ZIP_SUFFIXES = (".zip",)
#: fewer voxels than this along either of the two largest axes is not a study (a 2x2x2 "volume")
MIN_IMAGE_SIZE = 8
#: a grid axis further than this from the nearest patient axis makes the volume oblique (reported)
OBLIQUE_WARN_DEG = 1.0


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
        path: the file or folder given (a :class:`~scripts.inference.dicomweb.DicomWebUrl` for a URL).
        name: stem for the output files (``<name>_seg.nii.gz`` ...).
        image: ``(C, *spatial)`` float32 in the axis convention of the module docstring.
        geometry: placement of the spatial grid.
        raster: True for PNG/JPG-like images (``(C, H, W)``, no physical spacing).
        dicom: header-only pydicom datasets of the source instances in slice order (DICOM input
            only; DICOM SEG needs them), else None.
        multiframe: the DICOM input is one multi-frame (enhanced) instance.
        four_d: the file was 4D (X, Y, Z, T); its T volumes are the channels of ``image``.
        warnings: things the user should know about the input (series chosen, ...).
        workdir: the temporary folder a zip was unpacked into; removed when the study is.
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
    workdir: Any = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])


def study_name(path: Path) -> str:
    """Output stem: the file name without its image suffix(es), or the folder name."""
    name = path.name
    for suffix in sorted(RASTER_SUFFIXES + VOLUME_SUFFIXES + DICOM_SUFFIXES + ZIP_SUFFIXES + (".gz",), key=len,
                         reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return name


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
    if lower.endswith(ZIP_SUFFIXES):
        from scripts.inference.archive import read_zip

        return read_zip(path, series_uid)
    from scripts.inference.dicom import is_dicom_file, read_dicom_file

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


#: the PIL format each raster suffix promises
RASTER_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}


def read_raster(path: Path) -> Study:
    """A PNG/JPG/BMP/TIFF as ``(C, H, W)`` float32 (grey: C=1, RGB: 3), read by its content.

    Palette and CMYK images become RGB, 1-bit images grey 0/255, an alpha channel is dropped (it is
    not image data; training drops it too), 16-bit grey keeps its range; each such conversion, and
    a file whose content is not what its suffix says, adds a line to ``Study.warnings``.

    Raises:
        InputError: the file cannot be decoded (corrupt or truncated).
    """
    from PIL import Image, UnidentifiedImageError

    warnings: list[str] = []
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not later
            expected = RASTER_FORMATS.get(path.suffix.lower())
            if im.format and expected and im.format != expected:
                warnings.append(f"{path.name}: the file is a {im.format} image despite its {path.suffix} suffix; "
                                "it was read by its content")
            im, note = _plain_mode(im)
            if note:
                warnings.append(f"{path.name}: {note}")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"{path}: cannot decode the image (corrupt or truncated file?): {e}") from e
    # PIL decodes to (H, W) or (H, W, C); multi-page TIFFs give their first page
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)  # -> (C, H, W)
    return Study(path, study_name(path), arr.astype(np.float32), Geometry.identity(2), raster=True, warnings=warnings)


def _plain_mode(im):
    """``(image, note)``: ``im`` as grey or RGB (16-bit grey kept), and what was done (None: nothing)."""
    mode = im.mode
    if mode == "P" and "transparency" in im.info:
        mode = "PA"
    if mode in ("P", "PA"):
        return im.convert("RGBA" if mode == "PA" else "RGB").convert("RGB"), "palette (indexed-colour) image, converted to RGB" + (
            " and its transparency dropped" if mode == "PA" else "")
    if mode == "CMYK":
        return im.convert("RGB"), "CMYK image, converted to RGB"
    if mode == "1":
        return im.convert("L"), "1-bit (black and white) image, read as grey 0/255"
    if mode in ("RGBA", "RGBa", "LA", "La"):
        return im.convert("RGB" if mode.startswith("RGB") else "L"), (
            f"{mode} image: the alpha (transparency) channel is not image data and was dropped")
    if mode == "YCbCr":
        return im.convert("RGB"), None
    if mode.startswith("I;16") or mode in ("I", "F"):
        bits = 16 if mode.startswith("I;16") else 32
        return im, f"{bits}-bit grey image ({mode}), read at its full range (not reduced to 8 bits)"
    return im, None


def sitk_to_channels_first(image: sitk.Image) -> np.ndarray:
    """A SimpleITK image as ``(C, X, Y[, Z])`` float32.

    Vector pixels (RGB NRRD) become channels; a 4th axis (4D NIfTI: X, Y, Z, T) becomes channels.
    """
    arr = sitk.GetArrayFromImage(image)  # (k, j, i) or (T, k, j, i), vector pixels last
    if image.GetNumberOfComponentsPerPixel() > 1:
        return np.ascontiguousarray(arr.T, dtype=np.float32)  # (k, j, i, comp) -> (comp, i, j, k)
    if image.GetDimension() == 4:
        arr = np.transpose(arr, (0, 3, 2, 1))  # (T, k, j, i) -> (T, i, j, k), each volume in file order
    else:
        arr = arr.T[None]  # (k, j, i) -> (1, i, j, k), in file order
    return arr.astype(np.float32, copy=False)


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

    _check_nifti_voxel_size(path)
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
    return Study(path, study_name(path), arr, Geometry.of(reader, min(dim, 3)), four_d=dim == 4)


def _check_nifti_voxel_size(path: Path) -> None:
    """Refuse a NIfTI whose header gives a zero voxel size with no sform to take the geometry from.

    Both nibabel and ITK replace such a size by 1 mm without a word; the spacing (and every volume
    in mL) would then be made up. The raw header is read before any fix; an unreadable one is left
    to the normal reading, which reports it.

    Raises:
        InputError: names the file and the header's pixdim.
    """
    import nibabel as nib

    try:
        with nib.openers.ImageOpener(path) as f:
            head = f.read(4)
        size = int.from_bytes(head, "little") if int.from_bytes(head, "little") in (348, 540) else int.from_bytes(head, "big")
        header_class = nib.Nifti2Header if size == 540 else nib.Nifti1Header
        with nib.openers.ImageOpener(path) as f:
            header = header_class.from_fileobj(f, check=False)
        ndim = int(header["dim"][0])
        pixdim = np.asarray(header["pixdim"][1: 1 + min(max(ndim, 1), 3)], dtype=np.float64)
        qform, sform = int(header["qform_code"]), int(header["sform_code"])
    except Exception:  # noqa: BLE001 - not readable as NIfTI: the reader below says why
        return
    if sform == 0 and not (np.isfinite(pixdim).all() and (pixdim != 0).all()):
        source = "no qform or sform" if qform == 0 else "no sform"
        raise InputError(f"{path}: the header gives a zero voxel size (pixdim {pixdim.tolist()}) and {source} to take "
                         "it from; refusing rather than guessing 1 mm: fix the NIfTI header")


def _first_line(error: BaseException) -> str:
    """ITK errors are many lines long; the last non-empty one says what went wrong."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return lines[-1] if lines else type(error).__name__
