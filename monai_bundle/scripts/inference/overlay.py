"""The one overlay renderer: a label map (or an uncertainty map) drawn over its image, as RGB pixels.

It draws the CLI's ``<name>_overlay.png`` (:func:`key_slices_picture`, saved by
:func:`scripts.inference.writers.write_overlay`), the web demo's picture (:func:`render_overlay`,
:func:`render_uncertainty`) and so the web tests' screenshots. Each segment is filled and outlined in
its colour from the terminology table (:func:`scripts.inference.terminology.segment_term`, the colour
the result JSON, the ``.seg.nrrd`` and the Slicer segment carry): :func:`segment_colors` of a model
card's segment names, :func:`result_colors` of a result's segments.

Raster images ``(C, H, W)`` are drawn as they are; a volume ``(C, X, Y, Z)`` is first put in the display
orientation of a radiologist's viewer by :func:`display_arrays` (the prediction's
:class:`~scripts.inference.orientation.DisplayView`, the one a 2D model sees: axial rows A->P,
columns R->L, so heads stand upright), then drawn one slice at a time along its last axis.
NumPy only: drawing needs neither the network nor SciPy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from scripts.inference.terminology import rgb_color, segment_term

Color = tuple[int, int, int]
#: key slices of a volume in the CLI's overlay PNG, and their fill opacity there
KEY_SLICES, PNG_OPACITY = 3, 0.35
#: uncertainty heat map: colour from LOW_RGB (value 0) to HIGH_RGB (value 1); values below SHOW_FROM not drawn
LOW_RGB, HIGH_RGB, SHOW_FROM = (255, 230, 0), (255, 0, 0), 0.05
_GAP = 4  # black pixels between the key slices of the overlay PNG


# ---------------------------------------------------------------- colours (the terminology table's)

def segment_colors(names: Iterable[str]) -> dict[int, Color]:
    """``{label value: colour}`` of a model card's ``segments`` (index 0, the background, is not drawn)."""
    return {value: segment_term(name, value).color for value, name in enumerate(names) if value}


def result_colors(segments: Iterable[Any]) -> dict[int, Color]:
    """``{label value: colour}`` of a result's segments: typed :class:`~scripts.inference.result.Segment`
    objects or the result JSON's dicts. A segment without a ``color`` (a result written before the
    Predictor wrote one) gets the terminology table's colour of its name."""
    out = {}
    for s in segments:
        name, value, color = (s["name"], s["value"], s.get("color")) if isinstance(s, Mapping) else (s.name, s.value, s.color)
        out[int(value)] = rgb_color(color) if color else segment_term(name, int(value)).color
    return out


def _color(colors: Mapping[int, Color], value: int) -> np.ndarray:
    """A label value's colour; a value the model card does not name gets the table's colour of an unknown segment."""
    rgb = colors.get(value) or segment_term("", value).color
    return np.asarray(rgb, np.float32)


# ---------------------------------------------------------------- display orientation and slices

def display_arrays(image: np.ndarray, label: np.ndarray, view: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """A prediction's image and label in display orientation, slices last, for the drawing functions.

    Args:
        image: ``(C, H, W)`` or ``(C, X, Y[, Z])``, as the Predictor read it (``Prediction.image``).
        label: ``(H, W)`` or ``(X, Y[, Z])`` on the same grid (``Prediction.label``).
        view: ``Prediction.view`` (a ``DisplayView``); None for PNG/JPG images, returned as they are.

    Returns:
        ``(C, rows, cols, N)`` and ``(rows, cols, N)`` for a volume; ``(C, rows, cols)`` and
        ``(rows, cols)`` for a 2D grid (a 2D NIfTI/NRRD) or a raster image.

    Raises:
        ValueError: the image and label grids differ.
    """
    if image.shape[1:] != label.shape:
        raise ValueError(f"image grid {image.shape[1:]} differs from label grid {label.shape}")
    if view is None:
        return image, label
    flat = label.ndim == 2
    img_shown = np.moveaxis(view.to_slices(image[..., None] if flat else image), 1, -1)  # (C, rows, cols, N)
    return (img_shown[..., 0] if flat else img_shown), display_map(label, view)


def display_map(values: np.ndarray, view: Any = None) -> np.ndarray:
    """A voxel map on the label's grid (the label itself, ``Prediction.uncertainty``) in display
    orientation, slices last: ``(rows, cols, N)`` for a volume, ``(rows, cols)`` for a 2D grid; as it
    is without a view (PNG/JPG)."""
    if view is None:
        return values
    flat = values.ndim == 2
    shown = np.moveaxis(view.to_slices((values[..., None] if flat else values)[None])[0], 0, -1)  # (rows, cols, N)
    return shown[..., 0] if flat else shown


def num_slices(label: np.ndarray) -> int:
    """How many slices a viewer offers: 1 for a 2D ``(H, W)`` map, ``N`` for ``(rows, cols, N)``."""
    return 1 if label.ndim == 2 else int(label.shape[-1])


def key_slices(label: np.ndarray, count: int = KEY_SLICES) -> list[int]:
    """Indices along the last axis of the ``count`` slices with the largest tumour area, in order.

    With no tumour anywhere, the middle slice.
    """
    areas = (label > 0).reshape(-1, label.shape[-1]).sum(axis=0)  # (rows*cols, N) -> per-slice count (N,)
    ranked = [int(i) for i in np.argsort(-areas, kind="stable")[:count] if areas[i] > 0]
    return sorted(ranked) if ranked else [label.shape[-1] // 2]


def best_slice(label: np.ndarray) -> int:
    """The slice with the most tumour (the middle one when there is none); 0 for 2D maps."""
    return 0 if label.ndim == 2 else key_slices(label, 1)[0]


def slice_view(image: np.ndarray, label: np.ndarray, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One 2D view: image ``(C, rows, cols)`` and label ``(rows, cols)``.

    Args:
        image: ``(C, H, W)`` or ``(C, rows, cols, N)`` (:func:`display_arrays`).
        label: ``(H, W)`` or ``(rows, cols, N)``.
        index: slice along the last axis (ignored for 2D).

    Raises:
        ValueError: the image and label grids differ, or ``index`` is outside ``0..N-1``.
    """
    if image.shape[1:] != label.shape:
        raise ValueError(f"image grid {image.shape[1:]} differs from label grid {label.shape}")
    if label.ndim == 2:
        return image, label
    if not 0 <= index < label.shape[-1]:
        raise ValueError(f"slice {index} is outside 0..{label.shape[-1] - 1}")
    return image[..., index], label[..., index]  # (C, rows, cols, N) -> (C, rows, cols)


# ---------------------------------------------------------------- drawing

def to_rgb(image: np.ndarray) -> np.ndarray:
    """Display an image ``(C, H, W)`` as RGB uint8 ``(H, W, 3)``, windowed to 0.5..99.5 percentiles.

    Three or four channels are shown as colour (the first three), anything else by its first channel in grey.
    """
    planes = image[:3] if image.shape[0] in (3, 4) else image[:1]
    lo, hi = np.percentile(planes, [0.5, 99.5])
    scaled = np.zeros(planes.shape, np.float32) if hi <= lo else np.clip((planes - lo) / (hi - lo), 0, 1)
    rgb = np.moveaxis((scaled * 255).astype(np.uint8), 0, -1)  # (c, H, W) -> (H, W, c)
    return np.repeat(rgb, 3, axis=-1) if rgb.shape[-1] == 1 else rgb


def outline(label: np.ndarray) -> np.ndarray:
    """Pixels of a segment with a 4-neighbour of another value or on the picture's edge: a one-pixel
    inner contour, closed also where a segment touches the border."""
    padded = np.pad(label, 1)
    inner = padded[1:-1, 1:-1]
    edge = ((inner != padded[:-2, 1:-1]) | (inner != padded[2:, 1:-1])
            | (inner != padded[1:-1, :-2]) | (inner != padded[1:-1, 2:]))
    return edge & (label > 0)


def paint(rgb: np.ndarray, label: np.ndarray, colors: Mapping[int, Color], opacity: float) -> np.ndarray:
    """Fill each segment of ``label`` ``(H, W)`` over ``rgb`` ``(H, W, 3)`` at ``opacity`` and outline it
    solid, both in the segment's colour; RGB uint8 ``(H, W, 3)``.

    Raises:
        ValueError: ``opacity`` outside 0..1, or the grids differ.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be within 0..1, got {opacity}")
    if rgb.shape[:2] != label.shape:
        raise ValueError(f"image grid {rgb.shape[:2]} differs from label grid {label.shape}")
    out = rgb.astype(np.float32)
    edge = outline(label)
    for value in np.unique(label[label > 0]):
        color = _color(colors, int(value))
        mask = label == value
        out[mask] = (1 - opacity) * out[mask] + opacity * color
        out[mask & edge] = color
    return out.round().astype(np.uint8)


def render_overlay(image: np.ndarray, label: np.ndarray, index: int = 0, opacity: float = 0.4, *,
                   colors: Mapping[int, Color], min_size: int = 384) -> np.ndarray:
    """One slice with each segment filled at ``opacity`` and outlined in its colour, RGB uint8 ``(rows, cols, 3)``.

    The label map is drawn on the image's own grid (original resolution). Small images are enlarged
    by an integer nearest-neighbour factor to at least ``min_size`` pixels so the outline stays thin;
    every output pixel still belongs to exactly one input pixel.

    Args:
        image: ``(C, H, W)`` or ``(C, rows, cols, N)`` float (:func:`display_arrays` of a prediction).
        label: ``(H, W)`` or ``(rows, cols, N)`` uint8, 0 = background.
        index: slice along the last axis for volumes.
        opacity: fill opacity 0..1 (the outline is always drawn).
        colors: ``{label value: RGB}``, :func:`result_colors` or :func:`segment_colors`.

    Raises:
        ValueError: see :func:`slice_view`; ``opacity`` outside 0..1.
    """
    img2d, lab2d = slice_view(image, label, index)
    rgb, factor = _enlarged_rgb(img2d, lab2d.shape, min_size)
    return paint(rgb, np.kron(lab2d, np.ones((factor, factor), lab2d.dtype)), colors, opacity)


def render_uncertainty(image: np.ndarray, values: np.ndarray, index: int = 0, min_size: int = 384) -> np.ndarray:
    """The image with a voxel-wise uncertainty map (0..1) laid over it as heat, RGB uint8 ``(rows, cols, 3)``.

    A pixel's colour runs from :data:`LOW_RGB` to :data:`HIGH_RGB` with its value, and so does its opacity
    (0 -> clear, 1 -> opaque); values below :data:`SHOW_FROM` leave the image as it is. Same grid,
    slicing and enlargement as :func:`render_overlay`.

    Raises:
        ValueError: see :func:`slice_view`.
    """
    img2d, u2d = slice_view(image, values, index)
    rgb, factor = _enlarged_rgb(img2d, u2d.shape, min_size)
    u = np.kron(np.clip(u2d.astype(np.float32), 0, 1), np.ones((factor, factor), np.float32))[..., None]  # (r, c, 1)
    heat = (1 - u) * np.array(LOW_RGB, np.float32) + u * np.array(HIGH_RGB, np.float32)
    alpha = np.where(u >= SHOW_FROM, u, 0.0)
    return ((1 - alpha) * rgb + alpha * heat).round().astype(np.uint8)


def key_slices_picture(image: np.ndarray, label: np.ndarray, colors: Mapping[int, Color], view: Any = None,
                       opacity: float = PNG_OPACITY) -> np.ndarray:
    """The CLI's overlay: the :data:`KEY_SLICES` slices with the most tumour side by side (a 2D image: itself)
    at the image's own resolution, in display orientation, RGB uint8 ``(rows, width, 3)``.

    Args:
        image, label, view: a prediction's ``image``, ``label`` and ``view`` (:func:`display_arrays`).
        colors: ``{label value: RGB}`` (:func:`segment_colors` of the model card's segments).
    """
    shown, lab = display_arrays(image, label, view)
    indices = [0] if lab.ndim == 2 else key_slices(lab)
    tiles = [paint(to_rgb(img), lab2d, colors, opacity) for img, lab2d in (slice_view(shown, lab, i) for i in indices)]
    gap = np.zeros((tiles[0].shape[0], _GAP, 3), np.uint8)
    return np.concatenate([part for tile in tiles for part in (tile, gap)][:-1], axis=1)


def _enlarged_rgb(img2d: np.ndarray, shape: tuple[int, ...], min_size: int) -> tuple[np.ndarray, int]:
    """The slice as float32 RGB enlarged by the integer factor that brings ``shape``'s shortest side to at
    least ``min_size`` (nearest neighbour), and that factor."""
    factor = max(1, -(-min_size // max(1, min(shape))))  # ceil(min_size / shortest side)
    return np.kron(to_rgb(img2d), np.ones((factor, factor, 1), np.uint8)).astype(np.float32), factor
