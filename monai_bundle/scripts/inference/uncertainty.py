"""Segmentation uncertainty from flip test-time-augmentation disagreement.

With TTA on, :class:`scripts.core.sliding_window.FlipTTA` runs the network on the image and on its mirror
image and reports, per voxel, the tumour probability ``p = 1 - P(background)`` of both passes
(the mirrored one flipped back). From it:

- the **uncertainty map** (voxel-wise, 0..1): ``|p - p_mirror|``, how much the two passes disagree
  about the voxel. It is resized / resampled onto the input's grid as the logits are;
- the study's **segmentation uncertainty** (``result["segmentation"]["uncertainty"]``, 0..1)::

      u_seg = mean of |p - p_mirror| over the voxels that either pass calls tumour (max(p, p_mirror) >= 0.5)

  0 when the passes agree everywhere (an empty lesion region included: both see no tumour), 1 when
  every voxel one pass calls certain tumour the other calls certain background. Averaging over the
  lesion region (not the whole image) keeps a small uncertain lesion from vanishing in a large scan.

Without TTA there is no second opinion: the result says ``"uncertainty": null`` (not 0), and the
worklist treats it as absent.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

LESION_LEVEL = 0.5  # a pass calls a voxel tumour when its tumour probability reaches this


class FlipUncertainty:
    """Accumulates the study's segmentation uncertainty, batch by batch, and optionally its map.

    Args:
        shape: spatial shape of the map on the input's grid (only used when ``keep_map``).
        keep_map: keep the voxel-wise map (float32, ``shape``); off, only two running sums are kept.
    """

    def __init__(self, shape: Sequence[int] = (), keep_map: bool = False) -> None:
        self.map = np.zeros(tuple(shape), np.float32) if keep_map else None
        self.total = 0.0
        self.voxels = 0

    def add(self, flip: torch.Tensor) -> torch.Tensor:
        """Count a batch ``(b, 2, *spatial)`` of FlipTTA's ``(disagreement, max probability)`` on the input grid.

        Returns:
            the disagreement ``(b, *spatial)`` float32 (for the map).

        Raises:
            ValueError: ``flip`` does not have two channels.
        """
        if flip.ndim < 3 or flip.shape[1] != 2:
            raise ValueError(f"flip disagreement must be (b, 2, *spatial), got {tuple(flip.shape)}")
        disagreement, top = flip[:, 0].float(), flip[:, 1]
        region = top >= LESION_LEVEL
        self.total += float(disagreement[region].double().sum())
        self.voxels += int(region.sum())
        return disagreement

    @property
    def score(self) -> float:
        """``u_seg`` of the module docstring, rounded to 4 decimals (0 for an empty lesion region)."""
        return round(min(1.0, self.total / self.voxels), 4) if self.voxels else 0.0
