"""Display orientation: how a 2D model sees the slices of a volume, and the way back.

2D models are trained on PNG/JPG exports (BRISC 2025, BUSI, the synthetic slices) that show a
slice as a radiologist's viewer does. A volume ``(C, X, Y, Z)`` is stored in file index order
(i, j, k) with an ITK direction matrix in LPS, so its raw slices ``[:, :, :, k]`` are that picture
transposed, and for RAS-stored NIfTI also flipped. This module finds, from the direction matrix
alone, the permutation and flips (no resampling) that give the viewer's picture:

==========  ================  ==============================  ===============================
plane       slice axis        rows (top to bottom)            columns (left to right)
==========  ================  ==============================  ===============================
axial       S                 anterior -> posterior (A->P)    patient right -> left (R->L)
coronal     P                 superior -> inferior (S->I)     patient right -> left (R->L)
sagittal    L                 superior -> inferior (S->I)     anterior -> posterior (A->P)
==========  ================  ==============================  ===============================

Slices are ordered along the increasing LPS coordinate of the slice axis (axial: inferior first).
Each array axis is assigned the physical axis it is closest to (oblique volumes: the nearest one;
the assignment maximises the summed ``|cos|`` so two array axes never share a physical axis).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scripts.imageio.geometry import nearest_axes

#: physical LPS axes: 0 = L (x), 1 = P (y), 2 = S (z)
LEFT, POSTERIOR, SUPERIOR = range(3)
PLANES = {SUPERIOR: "axial", POSTERIOR: "coronal", LEFT: "sagittal"}
#: slice physical axis -> ((row physical axis, rows run along +axis?), (column axis, columns along +axis?))
_DISPLAY = {
    SUPERIOR: ((POSTERIOR, True), (LEFT, True)),  # rows A->P, cols R->L
    POSTERIOR: ((SUPERIOR, False), (LEFT, True)),  # rows S->I, cols R->L
    LEFT: ((SUPERIOR, False), (POSTERIOR, True)),  # rows S->I, cols A->P
}


@dataclass(frozen=True)
class Reorientation:
    """Permute + flip an array ``(C, X, Y, Z)`` between file order and canonical order (only views, no copies).

    Attributes:
        axes: array spatial axis for each output axis, in output order.
        flips: whether each output axis runs against the array axis it comes from.
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    def forward(self, array: np.ndarray) -> np.ndarray:
        """``(C, X, Y, Z)`` -> ``(C, A0, A1, A2)`` (``Ai`` = array axis ``axes[i]``, reversed where flipped)."""
        out = np.transpose(array, (0, *(a + 1 for a in self.axes)))
        return out[(slice(None), *(slice(None, None, -1) if f else slice(None) for f in self.flips))]

    def inverse(self, array: np.ndarray) -> np.ndarray:
        """Exact inverse of :meth:`forward`: ``(C, A0, A1, A2)`` -> ``(C, X, Y, Z)``."""
        unflipped = array[(slice(None), *(slice(None, None, -1) if f else slice(None) for f in self.flips))]
        return np.transpose(unflipped, (0, *(int(i) + 1 for i in np.argsort(self.axes))))


def to_lps(direction: Sequence[float] | np.ndarray) -> Reorientation:
    """The reorientation from file order to canonical LPS order (i -> Left, j -> Posterior, k -> Superior).

    Raises:
        ValueError: see :func:`scripts.imageio.geometry.direction_matrix`.
    """
    physical, signs = nearest_axes(direction)
    axes = tuple(physical.index(p) for p in range(3))
    return Reorientation(axes, tuple(signs[a] < 0 for a in axes))


@dataclass(frozen=True)
class DisplayView:
    """Slices of a volume as a viewer shows them (module docstring); exact inverse on the way back.

    Attributes:
        plane: ``"axial" | "coronal" | "sagittal"`` (the physical axis nearest the slice axis).
        slice_axis: array spatial axis (0..2) the slices are cut along.
        order: (slice, row, column) array axes and flips, as a :class:`Reorientation`.
    """

    plane: str
    slice_axis: int
    order: Reorientation

    def to_slices(self, volume: np.ndarray) -> np.ndarray:
        """``(C, X, Y, Z)`` -> ``(C, N, rows, cols)``, a view (make it contiguous before use on a device)."""
        return self.order.forward(volume)

    def from_slices(self, label: np.ndarray) -> np.ndarray:
        """``(N, rows, cols)`` -> ``(X, Y, Z)`` contiguous, on the voxels the slices came from."""
        return np.ascontiguousarray(self.order.inverse(label[None])[0])


def display_view(direction: Sequence[float] | np.ndarray, slice_axis: int) -> DisplayView:
    """The viewer's display of slices along array axis ``slice_axis`` of a grid with this direction.

    Args:
        direction: ITK direction (LPS), 9 values row-major (or a 3x3 array); 4 values for a 2D grid
            (then ``slice_axis`` must be 2, the embedded S axis).
        slice_axis: 0..2, e.g. from :func:`scripts.inference.engine.slice_axis`.

    Raises:
        ValueError: ``slice_axis`` not in 0..2, or a bad direction (:func:`scripts.imageio.geometry.direction_matrix`).
    """
    if slice_axis not in (0, 1, 2):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis!r}")
    physical, signs = nearest_axes(direction)
    slice_phys = physical[slice_axis]
    (row_phys, row_up), (col_phys, col_up) = _DISPLAY[slice_phys]
    row_axis, col_axis = physical.index(row_phys), physical.index(col_phys)
    flips = (signs[slice_axis] < 0, (signs[row_axis] > 0) != row_up, (signs[col_axis] > 0) != col_up)
    return DisplayView(PLANES[slice_phys], slice_axis, Reorientation((slice_axis, row_axis, col_axis), flips))
