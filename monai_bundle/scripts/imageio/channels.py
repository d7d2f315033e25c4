"""The channel rule, defined once: which channel counts a model's input count accepts, and how.

Grey images stored as RGB (or RGBA) are common (ultrasound and MRI exports): a 1-channel model takes
3 or 4 channels as their luminance ``0.299 R + 0.587 G + 0.114 B`` (alpha ignored); a 3-channel model
takes a grey image repeated and drops an alpha channel. Any other mismatch is refused.
"""

from __future__ import annotations

import numpy as np

#: ITU-R BT.601 luma weights of R, G, B
LUMA = (0.299, 0.587, 0.114)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """The luminance plane ``(*spatial)`` of a ``(C >= 3, *spatial)`` image (channels past 3 ignored).

    float32 channels give float32 throughout (what the model is fed: :func:`match_channels`);
    integer channels give float64 (numpy promotes them), which :func:`to_grey` rounds back.
    """
    return LUMA[0] * rgb[0].astype(np.float32) + LUMA[1] * rgb[1] + LUMA[2] * rgb[2]


def channels_compatible(have: int, want: int) -> bool:
    """Whether an image of ``have`` channels can feed a model (or datalist) of ``want`` by :func:`match_channels`."""
    return have == want or (want == 1 and have in (3, 4)) or (want == 3 and have in (1, 4))


def match_channels(image: np.ndarray, in_channels: int, source: str = "image") -> np.ndarray:
    """Make a ``(C, *spatial)`` image have the model's channel count.

    RGB/RGBA -> grey by luminance when the model takes 1 channel (ultrasound and MRI exports are
    often grey stored as RGB); grey -> RGB by repetition when the model takes 3.

    Raises:
        ValueError: the counts cannot be reconciled; names ``source`` and both counts.
    """
    c = image.shape[0]
    if c == in_channels:
        return image
    if not channels_compatible(c, in_channels):
        raise ValueError(f"{source}: has {c} channel(s) but the model expects {in_channels}")
    if in_channels == 1:
        return luminance(image[:3].astype(np.float32))[None]
    if c == 1:
        return np.repeat(image, 3, axis=0)
    return image[:3]


def to_grey(arr: np.ndarray) -> tuple[np.ndarray, bool]:
    """A ``(C, H, W)`` raster as one grey plane ``(H, W)``.

    Returns:
        (grey plane in the input dtype, True when the channels were identical, i.e. grey stored as
        RGB; otherwise the plane is the :func:`luminance`, rounded for integer input).
    """
    if arr.shape[0] == 1:
        return arr[0], True
    rgb = arr[:3]
    if np.array_equal(rgb[0], rgb[1]) and np.array_equal(rgb[0], rgb[2]):
        return rgb[0], True
    lum = luminance(rgb)
    return np.round(lum).astype(arr.dtype) if np.issubdtype(arr.dtype, np.integer) else lum, False
