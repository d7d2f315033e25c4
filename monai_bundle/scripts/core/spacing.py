"""The 3D target-spacing rule (nnU-Net's), shared by the dataset plan and the canonical grid.

Torch-free and import-light, so that :mod:`scripts.core.plan` (which ``python -m scripts.prepare``
loads without torch) and :mod:`scripts.core.canonical` (which resamples with torch) both build on
it without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence

#: max / min target spacing above which the coarse axis takes its 10th-percentile spacing (nnU-Net)
ANISOTROPY_RATIO = 3.0


def decide_target_spacing(spacing_median: Sequence[float], spacing_p10: Sequence[float]) -> list[float]:
    """nnU-Net's target spacing (mm): the median spacing per axis; when the result is anisotropic
    (max / min > :data:`ANISOTROPY_RATIO`), the coarse axis takes its 10th-percentile spacing instead,
    but not finer than the coarsest other axis.

    Raises:
        ValueError: the two lists differ in length or hold a non-positive spacing.
    """
    med = [float(s) for s in spacing_median]
    p10 = [float(s) for s in spacing_p10]
    if len(med) != len(p10) or not med or min(med + p10) <= 0:
        raise ValueError(f"need positive spacings of equal length, got {med} and {p10}")
    target = list(med)
    if max(target) / min(target) > ANISOTROPY_RATIO:
        axis = target.index(max(target))
        others = [s for i, s in enumerate(target) if i != axis]
        target[axis] = max(p10[axis], max(others))
    return [round(s, 4) for s in target]


def coarse_axis(target_spacing: Sequence[float]) -> int:
    """The out-of-plane axis: the coarsest spacing when anisotropic, else the last (z) axis."""
    spacing = [float(s) for s in target_spacing]
    return spacing.index(max(spacing)) if max(spacing) / min(spacing) > ANISOTROPY_RATIO else len(spacing) - 1
