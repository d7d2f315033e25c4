"""The file suffixes the image layer reads, defined once, and the file-name helpers built on them."""

from __future__ import annotations

import os

#: 2D images read with PIL, ``(C, H, W)`` rows first
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: NIfTI volumes (nibabel reads their voxels)
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: every volume file read as one file (NIfTI, then what SimpleITK reads)
VOLUME_SUFFIXES = NIFTI_SUFFIXES + (".nrrd", ".nhdr", ".mha", ".mhd")
#: single DICOM instances (DICOM files are also recognised by their preamble, whatever their name)
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
#: a zip of a DICOM series
ZIP_SUFFIXES = (".zip",)
#: every suffix of an image input the layer knows
KNOWN_SUFFIXES = RASTER_SUFFIXES + VOLUME_SUFFIXES + DICOM_SUFFIXES + ZIP_SUFFIXES
#: the PIL format each raster suffix promises
RASTER_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF"}


def is_raster(path: str | os.PathLike) -> bool:
    """True for PNG / JPG / BMP / TIFF files (2D images read with PIL)."""
    return str(path).lower().endswith(RASTER_SUFFIXES)


def is_nifti(path: str | os.PathLike) -> bool:
    """True for ``.nii`` / ``.nii.gz`` files."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def strip_image_suffix(name: str, extra: tuple[str, ...] = ()) -> str:
    """``name`` without the longest of :data:`KNOWN_SUFFIXES` + ``extra`` it ends with (any case).

    ``a.nii.gz`` -> ``a``, ``b.PNG`` -> ``b``; a name with none of them comes back as it is, and a
    name that is only a suffix (``.png``) comes back empty.
    """
    low = name.lower()
    for suffix in sorted(KNOWN_SUFFIXES + extra, key=len, reverse=True):
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name
