"""The image layer: every image the bundle reads is read here.

One low-level package under the Study-level reader of the inference API (:mod:`scripts.inference.readers`,
with its checks and warnings), the prepare adapters and validate (:mod:`scripts.prepare.imageio`),
the datalist's header checks, the canonical grid's spacings and training (``LoadImaged`` with
:class:`scripts.imageio.monai_reader.LayerReader`). It imports nothing of the bundle above it.

- :mod:`~scripts.imageio.suffixes`: the suffix tables, defined once, and the file-name helpers;
- :mod:`~scripts.imageio.geometry`: the one :class:`Geometry` (LPS), :class:`ImageHeader` and each array
  axis's nearest physical axis (``nearest_axes``);
- :mod:`~scripts.imageio.channels`: the channel rule (grey <-> RGB, luminance);
- :mod:`~scripts.imageio.raster`, :mod:`~scripts.imageio.volume`, :mod:`~scripts.imageio.dicom`:
  PNG/JPG/BMP/TIFF, NIfTI and SimpleITK volumes, DICOM headers and series, header-only reading;
- :mod:`~scripts.imageio.archive`: zips unpacked with their safety limits;
- :mod:`~scripts.imageio.reader`: :func:`load_image`, one entry for any image file;
- :mod:`~scripts.imageio.errors`: :class:`InputError`, the error that names the file.

Axis conventions (``docs/contracts.md``): raster images ``(C, H, W)`` rows first; volumes
``(C, X, Y[, Z])`` in the file's voxel index order; geometry in ITK's LPS convention. The MONAI
reader is not imported here (it needs MONAI): ``from scripts.imageio.monai_reader import LayerReader``.
"""

from scripts.imageio.archive import MAX_ZIP_BYTES, MAX_ZIP_FILES, extract_zip
from scripts.imageio.channels import LUMA, channels_compatible, luminance, match_channels, to_grey
from scripts.imageio.dicom import gdcm_series_files, has_pixel_data, is_dicom_file, read_dicom_header, read_series
from scripts.imageio.errors import InputError
from scripts.imageio.geometry import Geometry, ImageHeader
from scripts.imageio.raster import plain_mode, read_raster
from scripts.imageio.reader import LoadedImage, load_image, read_header
from scripts.imageio.suffixes import (
    DICOM_SUFFIXES,
    KNOWN_SUFFIXES,
    NIFTI_SUFFIXES,
    RASTER_FORMATS,
    RASTER_SUFFIXES,
    VOLUME_SUFFIXES,
    ZIP_SUFFIXES,
    is_nifti,
    is_raster,
    strip_image_suffix,
)
from scripts.imageio.volume import (
    itk_message,
    load_nifti,
    read_nifti,
    read_nifti_header,
    read_sitk,
    sitk_header,
    sitk_info,
    sitk_to_channels_first,
)

__all__ = ["DICOM_SUFFIXES", "KNOWN_SUFFIXES", "LUMA", "MAX_ZIP_BYTES", "MAX_ZIP_FILES", "NIFTI_SUFFIXES",
           "RASTER_FORMATS", "RASTER_SUFFIXES", "VOLUME_SUFFIXES", "ZIP_SUFFIXES", "Geometry", "ImageHeader",
           "InputError", "LoadedImage", "channels_compatible", "extract_zip", "gdcm_series_files", "has_pixel_data",
           "is_dicom_file", "is_nifti", "is_raster", "itk_message", "load_image", "load_nifti", "luminance",
           "match_channels", "plain_mode", "read_dicom_header", "read_header", "read_nifti", "read_nifti_header",
           "read_raster", "read_series", "read_sitk", "sitk_header", "sitk_info", "sitk_to_channels_first",
           "strip_image_suffix", "to_grey"]
