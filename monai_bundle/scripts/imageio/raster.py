"""Raster images (PNG / JPG / BMP / TIFF) as ``(C, H, W)`` arrays, rows first (PIL order).

One reader, three conversions of what PIL decodes (:func:`read_raster`):

- ``"none"``: PIL's array as it is (MONAI's ``PILReader``: 1-bit pixels are bools, palettes indices);
- ``"bits"``: the same, but a 1-bit image read as grey 0/255 (the prepare adapters and validate);
- ``"plain"``: grey or RGB whatever the mode (:func:`plain_mode`: palette and CMYK become RGB, an
  alpha channel is dropped, 16-bit grey keeps its range), each conversion reported, and a file whose
  content is not what its suffix promises reported too (the inference API).

Errors are the library's (``PIL.UnidentifiedImageError``, ``OSError``, ``SyntaxError``, ``ValueError``);
callers word them with the file's name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from scripts.imageio.geometry import ImageHeader
from scripts.imageio.suffixes import RASTER_FORMATS

CONVERSIONS = ("none", "bits", "plain")


def read_raster(path: str | os.PathLike, conversion: str = "bits",
                header_only: bool = False) -> tuple[np.ndarray | None, ImageHeader, list[str]]:
    """Read a raster image by its content.

    Args:
        path: the file.
        conversion: one of :data:`CONVERSIONS` (module docstring).
        header_only: return None for the array and decode no pixels.

    Returns:
        (``(C, H, W)`` array in the decoded dtype, or None; the header: ``(H, W)`` and the file's band
        count; the notes of what was converted, each starting with the file name ("plain" only)).
    """
    from PIL import Image

    if conversion not in CONVERSIONS:
        raise ValueError(f"unknown raster conversion {conversion!r}; use one of {CONVERSIONS}")
    path = Path(path)
    notes: list[str] = []
    with Image.open(path) as im:
        header = ImageHeader(shape=(im.height, im.width), channels=len(im.getbands()))
        if header_only:
            return None, header, notes
        if conversion == "plain":
            im.load()  # decode now: a truncated file fails here, not later
            expected = RASTER_FORMATS.get(path.suffix.lower())
            if im.format and expected and im.format != expected:
                notes.append(f"{path.name}: the file is a {im.format} image despite its {path.suffix} suffix; "
                             "it was read by its content")
            im, note = plain_mode(im)
            if note:
                notes.append(f"{path.name}: {note}")
        elif conversion == "bits" and im.mode == "1":
            im = im.convert("L")
        arr = np.asarray(im)
    # PIL decodes to (H, W) or (H, W, C); multi-page TIFFs give their first page
    return (arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)), header, notes


def plain_mode(im):
    """``(image, note)``: a PIL image as grey or RGB (16-bit grey kept), and what was done (None: nothing)."""
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
