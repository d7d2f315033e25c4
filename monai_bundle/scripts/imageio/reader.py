"""One entry for any image file: raster, NIfTI, what SimpleITK reads, or a DICOM series folder.

:func:`load_image` is what every reader builds on (prepare and validate, the datalist's header
checks, the canonical grid's spacings, training's MONAI reader); the inference API's
:mod:`scripts.inference.readers` adds its checks and warnings on the same functions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scripts.imageio.geometry import ImageHeader
from scripts.imageio.raster import read_raster
from scripts.imageio.suffixes import is_nifti, is_raster
from scripts.imageio.volume import read_nifti, read_sitk


@dataclass
class LoadedImage:
    """An image as read: ``array`` ``(C, *spatial)`` in the file's dtype (None when only the header was
    read), its ``header``, for volumes the RAS voxel-to-world ``affine`` (None for raster images), and
    ``channel_axis``: where the file keeps its channels (-1: last, PIL's bands and NIfTI's 4th axis;
    0: first, ITK's vector pixels and 4th axis; None: the file has no channel axis)."""

    array: np.ndarray | None
    header: ImageHeader
    affine: np.ndarray | None
    channel_axis: int | None = None


def load_image(path: str | os.PathLike, header_only: bool = False, raster_conversion: str = "bits") -> LoadedImage:
    """Read a raster image, a NIfTI / NRRD / MHA volume or a DICOM series folder (GDCM's first series).

    Args:
        path: the file (or DICOM series folder).
        header_only: read only what the header needs (no pixels; a DICOM folder is still read whole).
        raster_conversion: how raster pixels are converted (:func:`scripts.imageio.raster.read_raster`).

    Raises:
        OSError / ValueError / RuntimeError / EOFError from the underlying reader when the file is
        unreadable; callers turn them into messages naming the file.
    """
    path = Path(path)
    if is_raster(path):
        arr, header, _ = read_raster(path, raster_conversion, header_only)
        return LoadedImage(arr, header, None, None if header.channels == 1 else -1)
    if is_nifti(path):
        arr, header, affine = read_nifti(path, header_only)
        return LoadedImage(arr, header, affine, -1 if header.channels > 1 else None)
    arr, header, image = read_sitk(path, header_only)
    return LoadedImage(arr, header, header.geometry.ras_affine(),
                       0 if image.GetDimension() == 4 or header.channels > 1 else None)


def read_header(path: str | os.PathLike) -> ImageHeader:
    """The header of an image file (see :func:`load_image`), no pixels read."""
    return load_image(path, header_only=True).header
