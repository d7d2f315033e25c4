"""Training reads through the image layer: a MONAI ``ImageReader`` backed by :func:`scripts.imageio.load_image`.

``LoadImaged(..., reader=LayerReader())`` gives what MONAI's own readers gave before (checked by
``Testing/bundle/test_layer_reader.py``): raster images as ``PILReader(reverse_indexing=False)``
decoded them (rows first, PIL's array, no affine), NIfTI as ``NibabelReader`` (nibabel's voxels and
RAS affine), NRRD as ``NrrdReader`` (RAS affine from the LPS geometry); ``LoadImage`` then casts to
float32 as before. Files the layer does not read as one file (DICOM, NumPy) are left to MONAI's readers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from monai.data.image_reader import ImageReader, _copy_compatible_dict, _stack_images
from monai.utils import ensure_tuple

from scripts.imageio.reader import LoadedImage, load_image
from scripts.imageio.suffixes import RASTER_SUFFIXES, VOLUME_SUFFIXES


class LayerReader(ImageReader):
    """MONAI image reader of raster images and volume files through the bundle's image layer.

    A list of files is read as the channels of one image, in list order (their sizes and affines must
    agree), stacked by MONAI's own helpers.
    """

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        return all(str(f).lower().endswith(RASTER_SUFFIXES + VOLUME_SUFFIXES) for f in ensure_tuple(filename))

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs) -> LoadedImage | list[LoadedImage]:
        if not self.verify_suffix(data):  # LoadImage then tries MONAI's readers (DICOM folders, NumPy files)
            raise ValueError(f"{data}: not a file type the image layer reads")
        images = [load_image(f, raster_conversion="none") for f in ensure_tuple(data)]
        return images if len(images) > 1 else images[0]

    def get_data(self, img: LoadedImage | list[LoadedImage]) -> tuple[np.ndarray, dict]:
        """The array in the layout MONAI's reader of the file type gives (channels where the file keeps
        them, ``original_channel_dim`` saying where), so that ``LoadImage`` makes the same tensor, and
        the meta data the chain uses (``affine``, ``spatial_shape``); several files are stacked as MONAI stacks them."""
        arrays: list[np.ndarray] = []
        meta: dict = {}
        for image in ensure_tuple(img):
            arr, axis = image.array, image.channel_axis
            header = {"spatial_shape": np.asarray(image.header.shape)}
            if image.affine is not None:
                header.update(affine=image.affine.copy(), original_affine=image.affine.copy(), space="RAS")
            if axis is None:
                arrays.append(arr[0])
                header["original_channel_dim"] = float("nan")  # MONAI's "no_channel"
            else:
                arrays.append(np.moveaxis(arr, 0, -1) if axis == -1 else arr)
                header["original_channel_dim"] = axis
            _copy_compatible_dict(header, meta)
        return _stack_images(arrays, meta), meta
