"""One orientation and one voxel size for every 3D study: the canonical grid, and the way back.

3D training and the Predictor both bring a volume onto its **canonical grid** before the network
sees it, with the functions of this module (one definition, so the two cannot drift apart):

1. intensity normalisation on the study's own voxels (``scripts.core.transforms.normalize``), then
2. :func:`resample` onto :func:`canonical_grid`: axes in the given ``orientation`` (nibabel
   axis codes, default ``"RAS"``: index 0 grows towards patient Right, 1 towards Anterior, 2
   towards Superior), voxels of ``target_spacing`` mm along those axes, covering the study's
   field of view (a box centred on it; an oblique study's box holds its rotated field of view, with
   zeros around it). Images are interpolated linearly, masks by nearest neighbour.
Before 2., both crop the volume to :func:`foreground_box` (the anatomy, found on the stored
intensities; the crop follows the normalisation, which sees the whole volume), so the canonical
grid covers the head or body and not the air around it: training caches only that, validation and
the Predictor slide their windows only over that.

The Predictor maps the segmentation back onto the study's own grid (size, spacing, origin,
direction exactly as read) with :func:`label_on_grid`: the class logits are resampled (linearly)
from the canonical box onto every input voxel and only then arg-maxed to uint8; voxels outside the
box are background.

Resampling is exact where it can be: a study whose grid differs from the canonical one only by
axis permutations, flips and whole-voxel shifts at the same spacing (RAS / LPS / LAS storage) is
re-indexed, not interpolated; other axis-aligned grids are interpolated one axis at a time; only
oblique grids go through ``grid_sample``, in slabs (bounded memory).

Affines follow nibabel / MONAI: a ``4 x 4`` matrix from voxel index ``(i, j, k, 1)`` to RAS
millimetres. :func:`affine_from_itk` builds one from ITK's LPS spacing / origin / direction.

Training takes ``target_spacing`` from the dataset plan (``scripts.core.plan``: nnU-Net's rule on the
fingerprint of the training split, coarsened where the device's patch would hold less than a quarter of
the median volume, :func:`scripts.core.plan.decide_lowres_spacing`). :func:`median_target_spacing` applies
nnU-Net's median rule to the file headers of a split alone (no image is read), for runs and tools
without a plan.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from scripts.core.spacing import decide_target_spacing
from scripts.imageio.geometry import nearest_axes

#: the canonical axis codes of 3D models (nibabel convention: letters the axes grow towards)
ORIENTATION = "RAS"
#: a voxel is foreground when a channel exceeds this fraction of its 0.5..99.5 percentile range
FOREGROUND_LEVEL = 0.05
#: the percentiles of that range (those of the percentile intensity normalisation)
PERCENTILES = (0.5, 99.5)
#: connected foreground parts smaller than this fraction of the largest one are not anatomy
MIN_PART = 0.1
#: voxels kept around the foreground box on each side
FOREGROUND_MARGIN = 2
_RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])
_EXACT_TOL = 1e-3  # voxels: a mapping this close to whole-voxel re-indexing is re-indexing
_SLAB_VOXELS = 1 << 21  # output voxels per grid_sample slab (oblique grids)
_BAND_ROWS = 32  # output positions per block of a one-axis interpolation


@dataclass(frozen=True)
class Grid:
    """A 3D voxel grid in physical space: ``shape`` and a ``4 x 4`` affine (voxel index -> RAS mm)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    def shifted(self, start: Sequence[int], shape: Sequence[int]) -> Grid:
        """The sub-grid of ``shape`` voxels starting at voxel ``start`` (a crop of this grid)."""
        affine = self.affine.copy()
        affine[:3, 3] = self.affine[:3, :3] @ np.asarray(start, float) + self.affine[:3, 3]
        return Grid(tuple(int(s) for s in shape), affine)


def affine_from_itk(spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float] | np.ndarray) -> np.ndarray:
    """The RAS affine of a grid given in ITK's LPS terms (``direction`` 9 values row-major or 3 x 3)."""
    d = np.asarray(direction, float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _RAS_FROM_LPS @ d @ np.diag(np.asarray(spacing, float))
    affine[:3, 3] = _RAS_FROM_LPS @ np.asarray(origin, float)
    return affine


def orientation_matrix(orientation: str = ORIENTATION) -> np.ndarray:
    """``3 x 3`` signed permutation: column ``a`` is the RAS unit vector array axis ``a`` grows along.

    Raises:
        ValueError: not three letters naming each of the L/R, P/A, I/S axes once.
    """
    letters = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
    codes = str(orientation).upper()
    if len(codes) != 3 or any(c not in letters for c in codes) or len({letters[c][0] for c in codes}) != 3:
        raise ValueError(f"orientation must be 3 axis codes naming L/R, P/A and I/S once each (e.g. 'RAS'), "
                         f"got {orientation!r}")
    m = np.zeros((3, 3))
    for axis, c in enumerate(codes):
        world, sign = letters[c]
        m[world, axis] = sign
    return m


def check_target_spacing(target_spacing: Sequence[float]) -> tuple[float, float, float]:
    """``target_spacing`` as three positive floats (mm).

    Raises:
        ValueError: not three finite positive numbers.
    """
    try:
        values = tuple(float(s) for s in target_spacing)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"target_spacing must be 3 positive sizes in mm, got {target_spacing!r}")
    return values  # type: ignore[return-value]


def canonical_grid(affine: np.ndarray, shape: Sequence[int], target_spacing: Sequence[float],
                   orientation: str = ORIENTATION) -> Grid:
    """The canonical grid of a study: ``orientation`` axes, ``target_spacing`` voxels, the study's field of view.

    The field of view is the box of the study's voxel corners in the canonical axes; the grid has
    ``round(extent / spacing)`` voxels per axis (at least 1), centred on that box. A study already
    in ``orientation`` at ``target_spacing`` gets its own grid back, voxel for voxel.

    Args:
        affine: the study's ``4 x 4`` RAS affine.
        shape: its spatial shape ``(X, Y, Z)``.
    """
    spacing = np.asarray(check_target_spacing(target_spacing))
    axes = orientation_matrix(orientation)
    affine = np.asarray(affine, float)
    corners = np.stack(np.meshgrid(*[(-0.5, int(n) - 0.5) for n in shape], indexing="ij")).reshape(3, -1)
    world = affine[:3, :3] @ corners + affine[:3, 3:4]
    along = axes.T @ world  # coordinates along the canonical axes (mm)
    low, high = along.min(axis=1), along.max(axis=1)
    size = np.maximum(1, np.round((high - low) / spacing - 1e-6)).astype(int)
    first = (low + high) / 2 - (size - 1) / 2 * spacing  # centre of the first voxel, along the axes
    out = np.eye(4)
    out[:3, :3] = axes @ np.diag(spacing)
    out[:3, 3] = axes @ first
    return Grid(tuple(int(s) for s in size), out)


def canonical_spacing(affine: np.ndarray, orientation: str = ORIENTATION) -> tuple[float, float, float]:
    """A study's voxel size along the canonical axes: each axis takes the spacing of the array axis nearest to it."""
    affine = np.asarray(affine, float)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    physical, _ = nearest_axes((affine[:3, :3] / spacing).ravel())  # RAS and LPS share their axes, not signs
    world_of_axis = np.argmax(np.abs(orientation_matrix(orientation)), axis=0)
    return tuple(float(spacing[physical.index(int(w))]) for w in world_of_axis)


def target_spacing_from_spacings(spacings: Sequence[Sequence[float]]) -> list[float]:
    """nnU-Net's target spacing of a set of studies: the median per axis; for anisotropic data the coarse axis is finer.

    The rule is the dataset plan's (:func:`scripts.core.spacing.decide_target_spacing`): when the median's
    largest axis exceeds 3 times its smallest, that axis (the out-of-plane one) takes the 10th
    percentile of its spacings instead, but never less than the other axes' largest. Rounded to 1e-4 mm.

    Args:
        spacings: one ``(3,)`` spacing per study, along the canonical axes (:func:`canonical_spacing`).

    Raises:
        ValueError: no spacings, or not three positive values each.
    """
    s = np.asarray(spacings, float)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] != 3 or not (np.isfinite(s).all() and (s > 0).all()):
        raise ValueError(f"need one positive 3-value spacing per study, got shape {s.shape}")
    return decide_target_spacing(np.median(s, axis=0).tolist(), np.percentile(s, 10, axis=0).tolist())


def median_target_spacing(samples: Sequence[dict[str, Any]], orientation: str = ORIENTATION,
                          key: str = "image") -> list[float]:
    """The target spacing of a training split: :func:`target_spacing_from_spacings` of its studies' headers.

    Reads only file headers (the first file of a multi-file sample), so it is quick where the plan's
    fingerprint reads every volume: for a benchmark, or to pass as ``--target_spacing`` to a run.

    Raises:
        ValueError: no samples, or a file whose header cannot be read (names it).
    """
    from scripts.imageio import read_header

    spacings = []
    for sample in samples:
        path = sample[key][0] if isinstance(sample[key], (list, tuple)) else sample[key]
        try:
            geom = read_header(os.fspath(path))
        except (OSError, ValueError, RuntimeError) as e:
            raise ValueError(f"{path}: cannot read its header for the target spacing: {e}") from e
        if geom.spacing is None or len(geom.spacing) < 3:
            raise ValueError(f"{path}: not a 3D volume; a 3D model needs volumes")
        d = np.asarray(geom.direction, float)[:3, :3]
        spacings.append(canonical_spacing(affine_from_itk(geom.spacing[:3], geom.origin[:3], d), orientation))
    if not spacings:
        raise ValueError("no training samples to compute the target spacing from")
    return target_spacing_from_spacings(spacings)


# ------------------------------------------------------------------ resampling


def _mapping(src_affine: np.ndarray, dst: Grid) -> np.ndarray:
    """``4 x 4``: destination voxel index -> source voxel index."""
    return np.linalg.inv(np.asarray(src_affine, float)) @ np.asarray(dst.affine, float)


def _axis_aligned(m: np.ndarray) -> list[int] | None:
    """For each destination axis the source axis it reads along, when the mapping has no rotation; else None."""
    a = np.abs(m[:3, :3])
    nonzero = a > 1e-6 * a.max()
    if (nonzero.sum(axis=0) == 1).all() and (nonzero.sum(axis=1) == 1).all():
        return [int(np.argmax(nonzero[:, d])) for d in range(3)]
    return None


def _along_axis(x: torch.Tensor, axis: int, q: np.ndarray, mode: str) -> torch.Tensor:
    """Sample contiguous ``x`` along ``axis`` at source positions ``q`` (clamped to the edge voxels).

    Whole-voxel positions re-index (a view for a shift, ``flip`` for a reversal); linear
    interpolation is a product with the ``(len(q), n)`` matrix of the two weights per position,
    applied without moving any axis.
    """
    n = x.shape[axis]
    qc = np.clip(q, 0.0, n - 1.0)
    nearest = np.rint(qc).astype(np.int64)
    if mode == "nearest" or np.abs(qc - nearest).max(initial=0.0) < _EXACT_TOL:
        steps = np.diff(nearest)
        if len(nearest) and (steps == 1).all():
            return x.narrow(axis, int(nearest[0]), len(nearest))
        if len(nearest) and (steps == -1).all():
            return x.narrow(axis, int(nearest[-1]), len(nearest)).flip(axis)
        return x.index_select(axis, torch.from_numpy(nearest))
    low = np.floor(qc).astype(np.int64)
    high = np.minimum(low + 1, n - 1)
    w = np.zeros((len(q), n), dtype=np.float32)
    rows = np.arange(len(q))
    np.add.at(w, (rows, low), (1 - (qc - low)).astype(np.float32))
    np.add.at(w, (rows, high), (qc - low).astype(np.float32))
    weights = torch.from_numpy(w)
    lead, trail = math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1:])
    flat = x.reshape(lead, n, trail)
    out = torch.empty((lead, len(q), trail), dtype=x.dtype)
    # the matrix is a band (two weights per row): products of row blocks with the source rows they
    # read, not of the whole matrix
    for first in range(0, len(q), _BAND_ROWS):
        last = min(first + _BAND_ROWS, len(q))
        lo = int(min(low[first:last].min(), high[first:last].min()))
        hi = int(max(low[first:last].max(), high[first:last].max())) + 1
        band = weights[first:last, lo:hi]
        if trail == 1:  # the last axis: one matrix product, not many matrix-vector ones
            out[:, first:last, 0] = flat[:, lo:hi, 0] @ band.T
        else:
            torch.matmul(band, flat[:, lo:hi], out=out[:, first:last])
    return out.reshape(*x.shape[:axis], len(q), *x.shape[axis + 1:])


def _outside(q: np.ndarray, n: int) -> np.ndarray:
    """Positions outside the source voxels' extent (half a voxel beyond the edge centres)."""
    return (q < -0.5 - _EXACT_TOL) | (q > n - 0.5 + _EXACT_TOL)


def resample(array: np.ndarray | torch.Tensor, src_affine: np.ndarray, dst: Grid, mode: str = "linear",
             fill: float = 0.0) -> torch.Tensor:
    """Resample ``(C, X, Y, Z)`` from its grid (``src_affine``) onto ``dst``; float32 (``linear``) or its dtype (``nearest``).

    Destination voxels outside the source's field of view get ``fill``; within half a voxel of its
    edge they take the edge voxel. See the module docstring for the exact / axis-aligned / oblique paths.

    Raises:
        ValueError: ``mode`` not ``linear`` / ``nearest``, or ``array`` not ``(C, X, Y, Z)``.
    """
    if mode not in ("linear", "nearest"):
        raise ValueError(f"mode must be 'linear' or 'nearest', got {mode!r}")
    x = torch.as_tensor(array)
    if x.ndim != 4:
        raise ValueError(f"need a (C, X, Y, Z) array, got shape {tuple(x.shape)}")
    if mode == "linear":
        x = x.float()
    m = _mapping(src_affine, dst)
    src_shape = x.shape[1:]
    perm = _axis_aligned(m)
    if perm is not None:
        out = x.permute(0, *(p + 1 for p in perm)).contiguous()
        positions = {d: m[p, d] * np.arange(dst.shape[d]) + m[p, 3] for d, p in enumerate(perm)}
        outside = [_outside(positions[d], src_shape[p]) for d, p in enumerate(perm)]
        # shrinking axes first: the later products run on less data
        for d in sorted(positions, key=lambda d: dst.shape[d] / src_shape[perm[d]]):
            out = _along_axis(out.contiguous(), d + 1, positions[d], mode)
        shares = out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
        out = out.clone(memory_format=torch.contiguous_format) if shares else out.contiguous()
        for d, mask in enumerate(outside):
            if mask.any():
                out.index_fill_(d + 1, torch.from_numpy(np.nonzero(mask)[0]), fill)
        return out
    return _resample_oblique(x, m, dst.shape, mode, fill)


def _source_positions(m: np.ndarray, first: int, shape: Sequence[int]) -> torch.Tensor:
    """``(d0, d1, d2, 3)`` float32 source voxel positions of destination voxels ``first:first+d0, :, :``."""
    axes = [torch.arange(first, first + shape[0], dtype=torch.float64)] + \
           [torch.arange(n, dtype=torch.float64) for n in shape[1:]]
    mt = torch.from_numpy(m)
    pos = mt[:3, 3].clone().reshape(1, 1, 1, 3).float()
    for d, a in enumerate(axes):
        view = [1, 1, 1, 3]
        view[d] = len(a)
        pos = pos + (a[:, None] * mt[:3, d][None, :]).reshape(view).float()
    return pos


def _resample_oblique(x: torch.Tensor, m: np.ndarray, dst_shape: Sequence[int], mode: str, fill: float) -> torch.Tensor:
    src_shape = torch.tensor(x.shape[1:], dtype=torch.float32)
    out = torch.empty((x.shape[0], *dst_shape), dtype=x.dtype)
    slab = max(1, _SLAB_VOXELS // max(1, dst_shape[1] * dst_shape[2]))
    source = x[None] if mode == "linear" else x[None].float()
    for start in range(0, dst_shape[0], slab):
        rows = min(slab, dst_shape[0] - start)
        q = _source_positions(m, start, (rows, *dst_shape[1:]))  # (rows, Y, Z, 3) in source voxels (i, j, k)
        outside = ((q < -0.5 - _EXACT_TOL) | (q > src_shape - 0.5 + _EXACT_TOL)).any(-1)
        grid = (2 * q / (src_shape - 1).clamp_min(1) - 1).flip(-1)  # grid_sample wants (k, j, i) in -1..1
        sampled = F.grid_sample(source, grid[None], mode="bilinear" if mode == "linear" else "nearest",
                                padding_mode="border", align_corners=True)[0]
        sampled[:, outside] = fill
        out[:, start:start + rows] = sampled.to(out.dtype)
    return out


def label_on_grid(logits: torch.Tensor, src: Grid, dst: Grid) -> np.ndarray:
    """Segment labels on ``dst`` from class logits ``(S, *src.shape)`` on ``src``: resample, then arg-max.

    The logits are interpolated linearly onto every ``dst`` voxel and arg-maxed there (first maximum
    wins, as :func:`scripts.core.sliding_window.label_map`); ``dst`` voxels outside ``src`` are background (0).
    Two segments: only their difference is resampled (the arg-max of a linear interpolation of two
    channels is the sign of the interpolated difference).

    Returns:
        ``dst.shape`` uint8.
    """
    from scripts.core.sliding_window import label_map

    logits = logits.float()
    if logits.shape[0] == 2:
        margin = resample(logits[1:2] - logits[0:1], src.affine, dst, "linear", fill=-1.0)
        return (margin[0] > 0).to(torch.uint8).numpy()
    # several segments: outside the box every channel is 0 except the background's
    values = resample(logits, src.affine, dst, "linear", fill=float("nan"))
    inside = ~torch.isnan(values[0])
    label = label_map(values.nan_to_num(0.0)[None])[0]
    label[~inside] = 0
    return label.numpy()


# ------------------------------------------------------------------ foreground


def foreground_box(image: torch.Tensor | np.ndarray) -> tuple[list[int], list[int]]:
    """``(start, end)`` voxel box of the anatomy in a stored ``(C, X, Y, Z)`` volume (before normalisation).

    Foreground: voxels above :data:`FOREGROUND_LEVEL` of their channel's 0.5..99.5 percentile range
    (the range percentile normalisation maps to 0..1) in any channel -- air and the dark noise around
    a head are not. It is found on a copy averaged over 2 x 2 x 2 voxels (8 times faster, and single
    noisy voxels rarely pass), keeping the connected parts of at least :data:`MIN_PART` of the
    largest one (bright specks and ghosts in the air are no anatomy). The box (MONAI's ``generate_spatial_bounding_box``,
    the one ``CropForeground`` uses) gets :data:`FOREGROUND_MARGIN` voxels on each side, within the
    volume. A volume without foreground keeps its whole extent.
    """
    from monai.transforms.utils import generate_spatial_bounding_box

    x = image.detach().cpu() if isinstance(image, torch.Tensor) else torch.from_numpy(np.asarray(image))
    shape = list(x.shape[1:])
    pooled = F.avg_pool3d(x.float()[None], 2, 2, ceil_mode=True, count_include_pad=False)[0].numpy()
    mask = np.zeros(pooled.shape[1:], dtype=bool)
    for channel in pooled:
        low, high = np.percentile(channel, PERCENTILES)
        if high > low:
            mask |= channel > low + FOREGROUND_LEVEL * (high - low)
    if not mask.any():
        return [0] * len(shape), shape
    parts, count = ndimage.label(mask)
    if count > 1:  # the anatomy, not stray bright specks: parts of at least 10 % of the largest part
        sizes = np.bincount(parts.ravel())[1:]
        mask = np.isin(parts, 1 + np.nonzero(sizes >= MIN_PART * sizes.max())[0])
    start, end = generate_spatial_bounding_box(mask[None], select_fn=lambda m: m, margin=0, allow_smaller=True)
    return ([int(max(0, 2 * int(s) - FOREGROUND_MARGIN)) for s in start],
            [int(min(n, 2 * int(e) + FOREGROUND_MARGIN)) for e, n in zip(end, shape)])


# ------------------------------------------------------------------ model card


def card_settings(card: dict[str, Any]) -> dict[str, Any] | None:
    """The canonical-grid settings a 3D model card records, or None (2D, or a 3D model of the stored grid).

    Returns:
        ``{"target_spacing": [3 mm], "orientation": codes, "crop_foreground": bool}``: what training did,
        so inference does it too (``crop_foreground`` is False when the card does not say).

    Raises:
        ValueError: a recorded spacing or orientation that cannot be used.
    """
    if int(card["network"]["spatial_dims"]) != 3 or card.get("target_spacing") is None:
        return None
    orientation = card.get("orientation") or ORIENTATION
    orientation_matrix(orientation)
    return {"target_spacing": list(check_target_spacing(card["target_spacing"])), "orientation": str(orientation),
            "crop_foreground": bool(card.get("crop_foreground", False))}
