"""The one ``Geometry`` (physical placement of a grid, ITK's LPS convention), the header of an image file, and
the nearest physical axis of each array axis (:func:`nearest_axes`, for the display orientation and the canonical grid)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: LPS <- RAS (and back): flip the first two world axes
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Geometry:
    """Physical placement of a ``d``-dimensional grid (ITK convention, LPS, millimetres).

    ``direction`` is the direction matrix flattened row-major, as SimpleITK holds it.
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def identity(cls, ndim: int) -> Geometry:
        """1 mm spacing at the origin, axis-aligned (raster images)."""
        return cls((1.0,) * ndim, (0.0,) * ndim, tuple(np.eye(ndim).ravel().tolist()))

    @classmethod
    def of(cls, image, ndim: int | None = None) -> Geometry:
        """The geometry of a SimpleITK image (or an ``ImageFileReader`` after ``ReadImageInformation``),
        its first ``ndim`` axes only (a 4D file's space)."""
        d = image.GetDimension() if ndim is None else ndim
        full = np.asarray(image.GetDirection()).reshape(image.GetDimension(), image.GetDimension())
        return cls(tuple(image.GetSpacing()[:d]), tuple(image.GetOrigin()[:d]), tuple(full[:d, :d].ravel().tolist()))

    @classmethod
    def from_ras_affine(cls, affine: np.ndarray, ndim: int = 3) -> Geometry:
        """The LPS geometry of a RAS ``4 x 4`` voxel-to-world affine (nibabel's); ``ndim`` spacings are
        kept (a 2D NIfTI keeps its in-plane two), the origin and direction stay 3D."""
        affine = np.asarray(affine, dtype=float)
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        direction = RAS_TO_LPS @ (affine[:3, :3] / np.where(spacing == 0, 1, spacing))
        return cls(tuple(spacing[:ndim].tolist()), tuple((RAS_TO_LPS @ affine[:3, 3]).tolist()),
                   tuple(direction.ravel().tolist()))

    def apply(self, image):
        """Set this geometry on a SimpleITK ``image`` (same dimension) and return it."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    @property
    def matrix(self) -> np.ndarray:
        """The direction as a square matrix (columns: the grid axes in LPS)."""
        d = int(round(len(self.direction) ** 0.5))
        return np.asarray(self.direction, dtype=float).reshape(d, d)

    def ras_affine(self) -> np.ndarray:
        """The ``(d + 1) x (d + 1)`` RAS voxel-to-world affine (MONAI's and nibabel's convention)."""
        d = len(self.spacing)
        lps = np.eye(d + 1)
        lps[:d, :d] = self.matrix[:d, :d] * np.asarray(self.spacing, dtype=float)
        lps[:d, d] = self.origin[:d]
        return np.diag([-1.0, -1.0] + [1.0] * (d - 1)) @ lps

    @property
    def voxel_ml(self) -> float:
        """Volume of one voxel in millilitres (mm^3 / 1000)."""
        return float(np.prod(self.spacing)) / 1000.0


@dataclass
class ImageHeader:
    """What an image file's header says: spatial ``shape``, ``channels``, and for volumes their :class:`Geometry`.

    Raster images have ``geometry`` None (no physical placement); ``spacing`` / ``origin`` /
    ``direction`` are then None too, else numpy arrays (``direction`` as a square matrix).
    """

    shape: tuple[int, ...]
    channels: int
    geometry: Geometry | None = None

    @property
    def spacing(self) -> np.ndarray | None:
        return None if self.geometry is None else np.asarray(self.geometry.spacing, dtype=float)

    @property
    def origin(self) -> np.ndarray | None:
        return None if self.geometry is None else np.asarray(self.geometry.origin, dtype=float)

    @property
    def direction(self) -> np.ndarray | None:
        return None if self.geometry is None else self.geometry.matrix


def direction_matrix(direction: Sequence[float] | np.ndarray) -> np.ndarray:
    """A ``3 x 3`` direction matrix (columns = array axes i, j, k in LPS) from ITK's flat row-major form.

    A 2D grid's ``2 x 2`` matrix (4 values) is embedded as an axial plane: its third axis is S.

    Raises:
        ValueError: not 4 or 9 finite values, or a degenerate (singular) matrix.
    """
    d = np.asarray(direction, dtype=float)
    if d.size == 4:
        d = np.block([[d.reshape(2, 2), np.zeros((2, 1))], [np.zeros((1, 2)), np.ones((1, 1))]])
    if d.size != 9 or not np.isfinite(d).all():
        raise ValueError(f"direction must hold 4 or 9 finite values (2x2 or 3x3, row-major), got {d.size}")
    d = d.reshape(3, 3)
    if abs(np.linalg.det(d)) < 1e-6:
        raise ValueError(f"direction matrix is singular (its axes are not independent): {d.ravel().tolist()}")
    return d


def nearest_axes(direction: Sequence[float] | np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """For each array axis i, j, k: its nearest physical LPS axis and the sign along it.

    Returns:
        ``(physical, signs)``: ``physical[a]`` in 0..2 (L, P, S), all different; ``signs[a]`` +1 when
        array index ``a`` grows towards +L/+P/+S, else -1.

    Raises:
        ValueError: see :func:`direction_matrix`.
    """
    d = direction_matrix(direction)
    # permutation p: array axis a -> physical axis p[a], scored by |cos| of the angle between them
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(d[p[a], a]) for a in range(3)))
    signs = tuple(1 if d[best[a], a] > 0 else -1 for a in range(3))
    return tuple(best), signs
