"""DICOM at the low level: recognise a file, read its header only, read a list of instances as one image.

Which files make a series, which series is read and what geometry is refused is the inference API's
policy (:mod:`scripts.inference.dicom`); the prepare adapters take GDCM's first series of a folder.
"""

from __future__ import annotations

import os
from pathlib import Path

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` carries the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom_header(path: str | os.PathLike):
    """The header of a DICOM file (pixel data deferred, not loaded), or None for a non-DICOM file or a DICOMDIR."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, defer_size=1024)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, AttributeError, TypeError):
        return None
    if getattr(ds, "file_meta", None) is not None and ds.file_meta.get("MediaStorageSOPClassUID") == DICOMDIR_SOP_CLASS:
        return None
    return ds


def has_pixel_data(ds) -> bool:
    """Whether a DICOM header describes an image (pixel data, rows and columns)."""
    return "PixelData" in ds and "Rows" in ds and "Columns" in ds


def gdcm_series_files(folder: str | os.PathLike) -> list[str]:
    """The files of GDCM's first series in ``folder`` in its slice order (empty when there is none)."""
    import SimpleITK as sitk

    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(Path(folder))))


def read_series(files: list[str]):
    """The SimpleITK image of DICOM instances read as one volume in the order given.

    Raises:
        RuntimeError: from ITK when the pixel data cannot be read.
    """
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    return reader.Execute()
