"""Shared by the Slicer extension's tests (a module of its own: test folders are not packages here)."""

from __future__ import annotations

import numpy as np

#: geometry of the test volume: anisotropic spacing, non-zero origin, a rotated direction, so any
#: axis or sign mix-up between the worker's file and the segmentation shows up
SPACING = (0.8, 0.9, 3.0)
ORIGIN = (12.5, -30.0, 7.0)
DIRECTION = (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def blob_volume(shape_zyx: tuple[int, int, int] = (10, 24, 28), seed: int = 0) -> np.ndarray:
    """A noisy dark volume ``(Z, Y, X)`` with one bright ellipsoid (the "tumor")."""
    z, y, x = np.mgrid[: shape_zyx[0], : shape_zyx[1], : shape_zyx[2]]
    inside = ((x - 14) / 6.0) ** 2 + ((y - 10) / 5.0) ** 2 + ((z - 5) / 3.0) ** 2 < 1.0
    rng = np.random.default_rng(seed)
    return (np.where(inside, 200.0, 40.0) + rng.normal(0, 5, shape_zyx)).astype(np.float32)


def worker_segment(name: str, value: int, voxels: int = 10, volume_ml: float = 0.5):
    """A result segment as the current worker writes it: terminology and colour from the bundle's table."""
    from MultiTaskUNetLib.results import SegmentInfo
    from scripts.inference.terminology import hex_color, segment_term, slicer_terminology_tag

    term = segment_term(name, value)
    return SegmentInfo(name, value, voxels, volume_ml, slicer_terminology_tag(term), hex_color(term.color))


def worker_terms(pairs, anatomic_region=None) -> dict:
    """``{value: SegmentTerminology}`` the Lib makes of a current worker's result with segments ``(name, value)``."""
    from MultiTaskUNetLib.terminology import segment_terminologies

    return segment_terminologies([worker_segment(name, value) for name, value in pairs], anatomic_region)
