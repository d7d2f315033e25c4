"""Small, dependency-light image reading and atomic writing for the prepare adapters and validate.

Axis conventions follow the bundle's (``docs/contracts.md``): raster images are ``(C, H, W)``
rows first; volumes are ``(C, X, Y, Z)`` in file index order. Volume geometry is reported in LPS
(ITK's convention) whichever library read the file, so a NIfTI image and an NRRD mask compare.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scripts.atomic import atomic_path, write_bytes_atomic

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: LPS <- RAS: flip the first two world axes
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class Geometry:
    """Spatial shape plus, for volumes, spacing / origin / direction (LPS); None for raster images."""

    shape: tuple[int, ...]
    channels: int
    spacing: np.ndarray | None = None
    origin: np.ndarray | None = None
    direction: np.ndarray | None = None


def is_raster(path: str | os.PathLike) -> bool:
    """True for PNG / JPG / BMP / TIFF files (2D images read with PIL)."""
    return str(path).lower().endswith(RASTER_SUFFIXES)


def is_nifti(path: str | os.PathLike) -> bool:
    """True for ``.nii`` / ``.nii.gz`` files."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def strip_suffix(name: str) -> str:
    """File name without its image suffix (``a.nii.gz`` -> ``a``, ``b.png`` -> ``b``)."""
    low = name.lower()
    for suf in (".nii.gz", ".seg.nrrd") + RASTER_SUFFIXES + (".nii", ".nrrd", ".mha", ".mhd", ".dcm"):
        if low.endswith(suf):
            return name[: -len(suf)]
    return name


def read_image(path: str | os.PathLike, header_only: bool = False) -> tuple[np.ndarray | None, Geometry]:
    """Read a raster image, a NIfTI / NRRD / MHA volume or a DICOM series folder.

    Args:
        path: the file (or DICOM series folder).
        header_only: return ``None`` for the array and read only what the geometry needs.

    Returns:
        (array ``(C, H, W)`` or ``(C, X, Y, Z)`` in the file's dtype, or None; its :class:`Geometry`).
        A 4D NIfTI is channels-last on disk (MSD) and comes back channels-first.

    Raises:
        OSError / ValueError / RuntimeError from the underlying reader when the file is unreadable;
        callers turn them into messages naming the file.
    """
    path = Path(path)
    if is_raster(path):
        return _read_raster(path, header_only)
    if is_nifti(path):
        return _read_nifti(path, header_only)
    return _read_sitk(path, header_only)


def _read_raster(path: Path, header_only: bool) -> tuple[np.ndarray | None, Geometry]:
    from PIL import Image

    with Image.open(path) as img:
        n_channels = len(img.getbands())
        geom = Geometry(shape=(img.height, img.width), channels=n_channels)
        if header_only:
            return None, geom
        if img.mode == "1":
            img = img.convert("L")
        arr = np.asarray(img)
    arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)  # (H, W, C) -> (C, H, W)
    return np.ascontiguousarray(arr), geom


def _read_nifti(path: Path, header_only: bool) -> tuple[np.ndarray | None, Geometry]:
    import nibabel as nib

    img = nib.load(str(path))
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 5 and shape[3] == 1:  # (X, Y, Z, 1, C): NIfTI's time axis left empty
        shape = shape[:3] + shape[4:]
    spatial, channels = (shape[:3], shape[3]) if len(shape) == 4 else (shape, 1)
    affine = np.asarray(img.affine, dtype=float)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    direction = _RAS_TO_LPS @ (affine[:3, :3] / np.where(spacing == 0, 1, spacing))
    geom = Geometry(spatial, channels, spacing[: len(spatial)], _RAS_TO_LPS @ affine[:3, 3], direction)
    if header_only:
        return None, geom
    arr = np.asanyarray(img.dataobj).reshape(shape)
    arr = np.moveaxis(arr, -1, 0) if len(shape) == 4 else arr[None]  # channels-last -> (C, X, Y, Z)
    return np.ascontiguousarray(arr), geom


def _read_sitk(path: Path, header_only: bool) -> tuple[np.ndarray | None, Geometry]:
    import SimpleITK as sitk

    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        files = reader.GetGDCMSeriesFileNames(str(path))
        if not files:
            raise ValueError("folder holds no DICOM series")
        reader.SetFileNames(files)
        img = reader.Execute()
    elif header_only:
        info = sitk.ImageFileReader()
        info.SetFileName(str(path))
        info.ReadImageInformation()
        img = info
    else:
        img = sitk.ReadImage(str(path))
    dim = img.GetDimension()
    geom = Geometry(
        shape=tuple(int(s) for s in img.GetSize()),
        channels=int(
            img.GetNumberOfComponentsPerPixel() if isinstance(img, sitk.Image) else img.GetNumberOfComponents()
        ),
        spacing=np.asarray(img.GetSpacing(), float),
        origin=np.asarray(img.GetOrigin(), float),
        direction=np.asarray(img.GetDirection(), float).reshape(dim, dim),
    )
    if header_only:
        return None, geom
    arr = sitk.GetArrayFromImage(img)  # (Z, Y, X[, C]): reversed index order
    arr = arr[..., None] if geom.channels == 1 else arr
    arr = np.moveaxis(arr, -1, 0)  # (C, Z, Y, X)
    arr = np.transpose(arr, (0,) + tuple(range(arr.ndim - 1, 0, -1)))  # (C, X, Y, Z)
    return np.ascontiguousarray(arr), geom


def to_grey(arr: np.ndarray) -> tuple[np.ndarray, bool]:
    """A ``(C, H, W)`` raster as one grey plane ``(H, W)``.

    Returns:
        (grey plane in the input dtype, True when the channels were identical, i.e. grey stored as
        RGB; otherwise the plane is the luminance ``0.299 R + 0.587 G + 0.114 B``).
    """
    if arr.shape[0] == 1:
        return arr[0], True
    rgb = arr[:3]
    if np.array_equal(rgb[0], rgb[1]) and np.array_equal(rgb[0], rgb[2]):
        return rgb[0], True
    lum = 0.299 * rgb[0].astype(np.float32) + 0.587 * rgb[1] + 0.114 * rgb[2]
    return np.round(lum).astype(arr.dtype) if np.issubdtype(arr.dtype, np.integer) else lum, False


def binary_mask(arr: np.ndarray) -> np.ndarray:
    """A raster mask ``(C, H, W)`` stored as 0/255 (or 0/1) as a ``(H, W)`` uint8 0/1 plane.

    Any channel counts (a red outline mask is as valid as a grey one); 0/255 masks are cut at 128
    so that the grey rim some exporters anti-alias in does not grow the lesion.
    """
    plane = arr.max(axis=0)
    threshold = 127 if plane.max(initial=0) > 1 else 0
    return (plane > threshold).astype(np.uint8)


def save_png(plane: np.ndarray, path: str | os.PathLike) -> None:
    """Write a ``(H, W)`` uint8/uint16 plane as PNG, atomically."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(plane)).save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())


def save_nifti_like(array: np.ndarray, reference: str | os.PathLike, path: str | os.PathLike) -> None:
    """Write a ``(X, Y, Z)`` array as NIfTI with the affine of ``reference``, atomically."""
    import nibabel as nib

    ref = nib.load(str(reference))
    out = nib.Nifti1Image(np.asarray(array), ref.affine)
    out.set_qform(ref.affine, code=1)
    out.set_sform(ref.affine, code=1)
    suffix = ".nii.gz" if str(path).lower().endswith(".gz") else ".nii"  # nibabel compresses by suffix
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(out, tmp)
