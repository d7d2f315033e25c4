"""Image reading and atomic writing for the prepare adapters and validate, on the image layer.

Reading is :mod:`scripts.imageio`'s (suffixes, readers, headers, the channel rule ``to_grey``),
imported here under the names the adapters use; this module adds the prepare conventions (arrays
C-contiguous in the file's dtype, 1-bit rasters as grey 0/255, ``.seg.nrrd`` stripped from names)
and the writers. Axis conventions follow the bundle's (``docs/contracts.md``): raster images are
``(C, H, W)`` rows first; volumes are ``(C, X, Y, Z)`` in file index order. Volume geometry is
reported in LPS (ITK's convention) whichever library read the file, so a NIfTI image and an NRRD
mask compare.
"""

from __future__ import annotations

import io
import os

import numpy as np

from scripts.core.atomic import atomic_path, write_bytes_atomic
from scripts.imageio import (
    NIFTI_SUFFIXES,
    RASTER_SUFFIXES,
    ImageHeader,
    is_nifti,
    is_raster,
    load_image,
    strip_image_suffix,
    to_grey,
)

__all__ = ["NIFTI_SUFFIXES", "RASTER_SUFFIXES", "binary_mask", "is_nifti", "is_raster", "read_image", "save_nifti_like",
           "save_png", "strip_suffix", "to_grey"]


def strip_suffix(name: str) -> str:
    """File name without its image suffix (``a.nii.gz`` -> ``a``, ``b.png`` -> ``b``, ``c.seg.nrrd`` -> ``c``)."""
    return strip_image_suffix(name, (".seg.nrrd",))


def read_image(path: str | os.PathLike, header_only: bool = False) -> tuple[np.ndarray | None, ImageHeader]:
    """Read a raster image, a NIfTI / NRRD / MHA volume or a DICOM series folder (:func:`scripts.imageio.load_image`).

    Args:
        path: the file (or DICOM series folder).
        header_only: return ``None`` for the array and read only what the geometry needs.

    Returns:
        (C-contiguous array ``(C, H, W)`` or ``(C, X, Y, Z)`` in the file's dtype, or None; its
        :class:`~scripts.imageio.geometry.ImageHeader`: shape, channels and, for volumes, LPS geometry).
        A 4D NIfTI is channels-last on disk (MSD) and comes back channels-first; a 1-bit raster is
        read as grey 0/255.

    Raises:
        OSError / ValueError / RuntimeError from the underlying reader when the file is unreadable;
        callers turn them into messages naming the file.
    """
    image = load_image(path, header_only=header_only)
    return (None if header_only else np.ascontiguousarray(image.array)), image.header


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
