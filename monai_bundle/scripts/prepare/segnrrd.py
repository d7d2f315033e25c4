"""A 3D Slicer ``.seg.nrrd`` as a label map on its image's grid (for reviewed segmentations).

Slicer saves a segmentation as NRRD with one or more *layers* (a 4D file, list axis first, when
segments overlap) and per segment ``Segment<N>_Name``, ``Segment<N>_LabelValue`` (its value in its
layer) and ``Segment<N>_Layer``. The saved extent may be cropped to the segments (its ``space
origin`` then lies inside the image), and it is always a volume: a 2D image is one slice.

:func:`label_map_for_image` pastes every segment into a label map of the image's own size, with
the value of the segment of that name in the datalist's ``segments`` (case-insensitive). Geometry
is compared in LPS (ITK's and Slicer's file convention): the segmentation must lie on the image's
voxel grid (same axes and spacing, an integer offset). A PNG/JPG image is the grid ITK and Slicer
give it: origin 0, spacing 1, identity axes, columns along the first axis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scripts.prepare.imageio import read_image

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


class SegNrrdError(ValueError):
    """A ``.seg.nrrd`` cannot be turned into a label map of its image; the message names the file."""


def _image_grid(image: str | Path) -> tuple[tuple[int, int, int], np.ndarray, np.ndarray, bool]:
    """``(shape (i, j, k), 3x3 index->LPS matrix, LPS origin, raster)`` of an image file or DICOM folder."""
    _, geom = read_image(image, header_only=True)
    if geom.spacing is None:  # PNG/JPG: (H, W) rows first; ITK's first index runs along a row
        h, w = geom.shape
        return (w, h, 1), np.eye(3), np.zeros(3), True
    shape = tuple(int(s) for s in geom.shape) + (1,) * (3 - len(geom.shape))
    n = len(geom.spacing)
    matrix = np.eye(3)
    matrix[:n, :n] = np.asarray(geom.direction, float).reshape(n, n) * np.asarray(geom.spacing, float)[None, :]
    origin = np.zeros(3)
    origin[:n] = geom.origin
    return shape[:3], matrix, origin, False


def _read(path: Path) -> tuple[np.ndarray, dict]:
    import nrrd

    try:
        data, header = nrrd.read(str(path), index_order="F")
    except Exception as e:  # pynrrd raises its own NRRDError, ValueError, OSError for a bad file
        raise SegNrrdError(f"{path}: cannot read the segmentation ({type(e).__name__}: {e})") from e
    return data, header


def _grid(path: Path, data: np.ndarray, header: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(layers (L, i, j, k), index->LPS matrix, LPS origin)`` of a read ``.seg.nrrd``."""
    directions = header.get("space directions")
    origin = header.get("space origin")
    if directions is None or origin is None:
        raise SegNrrdError(f"{path}: no 'space directions' / 'space origin': not a 3D Slicer segmentation")
    rows = [np.asarray(d, float) for d in directions]
    spatial = [r for r in rows if r.ndim == 1 and r.size == 3 and np.all(np.isfinite(r))]
    if len(spatial) != 3:
        raise SegNrrdError(f"{path}: expected 3 spatial axes, found {len(spatial)}")
    layers = data[None] if data.ndim == 3 else data  # 4D: the list (layer) axis comes first
    if layers.ndim != 4:
        raise SegNrrdError(f"{path}: a segmentation has 3 or 4 dimensions, this one {data.ndim}")
    matrix, origin = np.stack(spatial, axis=1), np.asarray(origin, float)
    space = str(header.get("space", "left-posterior-superior")).lower()
    if space in ("right-anterior-superior", "ras"):
        matrix, origin = _RAS_TO_LPS @ matrix, _RAS_TO_LPS @ origin
    return layers, matrix, origin


def _segments(path: Path, header: dict, segments: list[str]) -> list[tuple[int, int, int]]:
    """``(layer, label value in the file, value in the datalist)`` per segment of the file."""
    index = {name.lower(): i for i, name in enumerate(segments)}
    found, n = [], 0
    while f"Segment{n}_Name" in header:
        name = str(header[f"Segment{n}_Name"])
        if name.lower() not in index or index[name.lower()] == 0:
            raise SegNrrdError(f"{path}: segment {name!r} is none of the datalist's segments {segments[1:]}; "
                               "rename it in Slicer's Segment Editor or remove it")
        layer = int(header.get(f"Segment{n}_Layer", 0))
        found.append((layer, int(header.get(f"Segment{n}_LabelValue", 1)), index[name.lower()]))
        n += 1
    if not found:
        raise SegNrrdError(f"{path}: no 'Segment0_Name' in the header: not a 3D Slicer segmentation")
    return found


def label_map_for_image(path: str | Path, image: str | Path, segments: list[str]) -> tuple[np.ndarray, bool]:
    """The segmentation as a uint8 label map on the image's grid.

    Args:
        path: the ``.seg.nrrd``.
        image: its image (file or DICOM folder).
        segments: the datalist's segment names, background first.

    Returns:
        ``(label map, raster)``: ``(H, W)`` rows first for a PNG/JPG image, else ``(X, Y, Z)`` in the
        image's index order; ``raster`` says which.

    Raises:
        SegNrrdError: unreadable, a segment name not in ``segments``, or not on the image's grid.
    """
    path = Path(path)
    data, header = _read(path)
    layers, matrix, origin = _grid(path, data, header)
    found = _segments(path, header, segments)
    try:
        shape, ref_matrix, ref_origin, raster = _image_grid(image)
    except (OSError, ValueError, RuntimeError) as e:
        raise SegNrrdError(f"{image}: cannot read the image of {path.name} ({e})") from e
    scale = float(np.abs(ref_matrix).max())
    if not np.allclose(matrix, ref_matrix, atol=1e-3 * scale):
        raise SegNrrdError(f"{path}: not on the voxel grid of its image {image} (axes and spacing "
                           f"{np.round(matrix, 4).tolist()} vs {np.round(ref_matrix, 4).tolist()})")
    offset_f = np.linalg.solve(ref_matrix, origin - ref_origin)
    offset = np.round(offset_f).astype(int)
    if np.abs(offset_f - offset).max() > 0.01:
        raise SegNrrdError(f"{path}: its origin lies between the voxels of its image {image} (offset {offset_f})")
    label = np.zeros(shape, np.uint8)
    lo = np.maximum(offset, 0)
    hi = np.minimum(offset + np.asarray(layers.shape[1:]), shape)
    if np.any(hi <= lo):
        raise SegNrrdError(f"{path}: lies outside its image {image}")
    dst = tuple(slice(a, b) for a, b in zip(lo, hi))
    src = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, offset))
    for layer, value, target in found:
        if layer >= layers.shape[0]:
            raise SegNrrdError(f"{path}: a segment is in layer {layer}, the file has {layers.shape[0]}")
        label[dst][layers[layer][src] == value] = target
    return (label[:, :, 0].T.copy(), True) if raster else (label, False)
