"""Where a patient's 2D slices go: plane, position through the tumour (or anywhere), framing, pixels.

:func:`render_slice` turns one patient and one plane into an 8-bit image and a 0/1 mask at the
output size: the slice is acquired at a random matrix (224-320 pixels over a 200-250 mm field of
view, slightly oblique, the head off centre), blurred, made noisy, then resampled to the output
size as BRISC's images were; the mask is resampled from the same grid (bilinear, cut at 0.5).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from scripts.datasets.brain_atlas import SELLA, Atlas
from scripts.datasets.brain_render import (HEAD_CENTRE, BrainPatient, acquire, plane_points, render, slice_normal,
                                           to_patient)
from scripts.datasets.common import to_uint8

#: share of no-tumour slices placed like a pituitary study (through the sella): the location alone
#: must not give the diagnosis away
NO_TUMOR_SELLA_SHARE = 0.25
#: template-space range of random slice positions of no-tumour patients, per plane (along its normal)
_RANDOM_RANGE = {"ax": (2, -45.0, 72.0), "co": (1, -95.0, 55.0), "sa": (0, -62.0, 62.0)}
#: how far a tumour slice may sit from the tumour's centre, in half-widths: readers and annotators
#: pick the slices that show the tumour best (version 1: 0.55, many slices grazed the tumour's edge)
SLICE_SHIFT = 0.35
_MIN_MASK_PIXELS = 12  # a tumour slice shows at least this much tumour at the acquisition matrix


def _small_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A random rotation of at most about ``max_deg`` degrees (axis-angle, Rodrigues)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    a = math.radians(rng.uniform(0, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return (np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k).astype(np.float32)


def _slice_target(rng: np.random.Generator, p: BrainPatient, plane: str) -> tuple[np.ndarray, float]:
    """(a patient point the slice passes through, how far it may move along the normal in mm)."""
    if p.lesion is not None:
        half = p.lesion.radius * float(np.mean(p.lesion.axes))
        return to_patient(p, p.lesion.centre), half
    if rng.random() < NO_TUMOR_SELLA_SHARE:
        return to_patient(p, SELLA + rng.uniform(-3, 3, 3).astype(np.float32)), 4.0
    axis, lo, hi = _RANDOM_RANGE[plane]
    q = HEAD_CENTRE.copy()
    q[axis] = rng.uniform(lo, hi)
    return to_patient(p, q), 0.0


def render_slice(rng: np.random.Generator, p: BrainPatient, atlas: Atlas, plane: str,
                 size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """One slice of ``p`` in ``plane``: ``(image uint8 (size, size), mask uint8 0/1, info)``.

    Through the tumour when there is one (its mask is never empty), anywhere in the head otherwise.
    ``info`` holds the acquisition details (matrix, field of view, tumour pixels).
    """
    target, half = _slice_target(rng, p, plane)
    tilt = _small_rotation(rng, 7.0)
    normal = slice_normal(plane, tilt)
    n = int(rng.integers(112, 161)) * 2
    fov = float(rng.uniform(200.0, 250.0))
    frame = to_patient(p, HEAD_CENTRE) + rng.uniform(-12, 12, 3).astype(np.float32)
    shift = float(rng.uniform(-SLICE_SHIFT, SLICE_SHIFT)) * half
    for attempt in range(4):
        offset = float(np.dot(target - frame, normal)) + shift * (0.5 ** attempt if attempt < 3 else 0.0)
        points = plane_points(frame + normal * offset, plane, fov, n, tilt)
        image, mask = render(p, atlas, points)
        if p.lesion is None or mask.sum() >= _MIN_MASK_PIXELS:
            break
    image = acquire(p, image, fov / n, rng)
    big = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))
    soft = np.asarray(Image.fromarray(mask.astype(np.float32)).resize((size, size), Image.BILINEAR))
    info = {"matrix": n, "fov_mm": round(fov, 1), "tumor_pixels": int((soft > 0.5).sum())}
    return to_uint8(big), (soft > 0.5).astype(np.uint8), info
