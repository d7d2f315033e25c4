"""Volumes as ``(C, X, Y[, Z])`` arrays in the file's voxel index order (i, j, k), with their geometry.

- NIfTI (:func:`read_nifti`): voxels and the RAS affine from nibabel, as MONAI's ``NibabelReader``
  reads them; the geometry is that affine in LPS. A 4D file ``(X, Y, Z, T)`` (MSD) is channels-last
  on disk and comes back channels-first; a 5D one with an empty 4th axis ``(X, Y, Z, 1, C)`` too.
- NRRD / MHA / MHD / NHDR (and DICOM, :mod:`scripts.imageio.dicom`): SimpleITK, through
  :func:`sitk_to_channels_first`; vector pixels (RGB NRRD) and a 4th axis become channels.

Arrays keep the reader's dtype and memory order (i fastest for the files' own order); callers that
need C order or float32 make their copy. Errors are the libraries' (``OSError``, ``ValueError``,
``RuntimeError`` from ITK, ``EOFError``, nibabel's ``ImageFileError``): callers word them with the
file's name (:func:`itk_message` shortens ITK's).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from scripts.imageio.geometry import Geometry, ImageHeader


def load_nifti(path: str | os.PathLike):
    """The nibabel image of a NIfTI file (voxels not read yet: ``img.dataobj``)."""
    import nibabel as nib

    return nib.load(os.fspath(path))


def read_nifti(path: str | os.PathLike, header_only: bool = False) -> tuple[np.ndarray | None, ImageHeader, np.ndarray]:
    """A NIfTI file as (``(C, X, Y[, Z])`` array in its stored dtype, or None; header; RAS ``4 x 4`` affine)."""
    img = load_nifti(path)
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 5 and shape[3] == 1:  # (X, Y, Z, 1, C): NIfTI's time axis left empty
        shape = shape[:3] + shape[4:]
    spatial, channels = (shape[:3], shape[3]) if len(shape) == 4 else (shape, 1)
    affine = np.array(img.affine, dtype=float, copy=True)
    header = ImageHeader(spatial, channels, Geometry.from_ras_affine(affine, len(spatial)))
    if header_only:
        return None, header, affine
    arr = np.asanyarray(img.dataobj).reshape(shape)
    arr = np.moveaxis(arr, -1, 0) if len(shape) == 4 else arr[None]  # channels-last -> (C, X, Y, Z)
    return arr, header, affine


def read_nifti_header(path: str | os.PathLike):
    """The raw NIfTI-1 or NIfTI-2 header as stored, before nibabel or ITK fix anything in it (``check=False``)."""
    import nibabel as nib

    with nib.openers.ImageOpener(os.fspath(path)) as f:
        head = f.read(4)
    size = int.from_bytes(head, "little") if int.from_bytes(head, "little") in (348, 540) else int.from_bytes(head, "big")
    header_class = nib.Nifti2Header if size == 540 else nib.Nifti1Header
    with nib.openers.ImageOpener(os.fspath(path)) as f:
        return header_class.from_fileobj(f, check=False)


def sitk_info(path: str | os.PathLike):
    """A SimpleITK ``ImageFileReader`` that has read the file's header only (size, geometry, components)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(os.fspath(path))
    reader.ReadImageInformation()
    return reader


def sitk_header(image) -> ImageHeader:
    """The header of a SimpleITK image or header reader: a 4th axis counts as channels, like vector pixels."""
    import SimpleITK as sitk

    size, dim = tuple(int(s) for s in image.GetSize()), image.GetDimension()
    comps = image.GetNumberOfComponentsPerPixel() if isinstance(image, sitk.Image) else image.GetNumberOfComponents()
    if dim == 4:
        return ImageHeader(size[:3], size[3] * int(comps), Geometry.of(image, 3))
    return ImageHeader(size, int(comps), Geometry.of(image))


def sitk_to_channels_first(image, dtype=None) -> np.ndarray:
    """A SimpleITK image as ``(C, X, Y[, Z])`` (``dtype``, else the image's own).

    Vector pixels (RGB NRRD) become channels; a 4th axis (4D NIfTI: X, Y, Z, T) becomes channels.
    Each channel keeps the file's memory order (i fastest); vector images come back C-contiguous.
    """
    import SimpleITK as sitk

    arr = sitk.GetArrayFromImage(image)  # (k, j, i) or (T, k, j, i), vector pixels last
    if image.GetNumberOfComponentsPerPixel() > 1:
        return np.ascontiguousarray(arr.T, dtype=dtype)  # (k, j, i, comp) -> (comp, i, j, k)
    if image.GetDimension() == 4:
        arr = np.transpose(arr, (0, 3, 2, 1))  # (T, k, j, i) -> (T, i, j, k), each volume in file order
    else:
        arr = arr.T[None]  # (k, j, i) -> (1, i, j, k), in file order
    return arr if dtype is None else arr.astype(dtype, copy=False)


def read_sitk(path: str | os.PathLike, header_only: bool = False) -> tuple[np.ndarray | None, ImageHeader, object]:
    """An NRRD / MHA / MHD file (anything SimpleITK reads) or a DICOM series folder (GDCM's first series).

    Returns:
        (``(C, X, Y[, Z])`` array in the file's dtype, or None; header; the SimpleITK image, or the
        header reader when ``header_only``).
    """
    import SimpleITK as sitk

    from scripts.imageio.dicom import gdcm_series_files, read_series

    path = Path(path)
    if path.is_dir():
        files = gdcm_series_files(path)
        if not files:
            raise ValueError("folder holds no DICOM series")
        image = read_series(files)
    elif header_only:
        image = sitk_info(path)
    else:
        image = sitk.ReadImage(str(path))
    header = sitk_header(image)
    if header_only:
        return None, header, image
    return sitk_to_channels_first(image), header, image


def itk_message(error: BaseException) -> str:
    """ITK errors are many lines long; the last non-empty one says what went wrong."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return lines[-1] if lines else type(error).__name__
