"""One synthetic brain MRI patient: a random deformation of the template, a contrast, a tumour, a scanner.

A :class:`BrainPatient` maps *patient* points (world RAS mm: x right, y anterior, z superior) to the
template by a random affine (head size 0.9-1.1 per axis, a tilt of a few degrees) plus a smooth
elastic displacement, so every patient has a differently shaped head and brain. :func:`render`
gives the noise-free image and tumour mask at any set of patient points: a 2D slice in any plane
(:func:`plane_points`) or a 3D grid of any orientation, and they agree because both sample one
continuous patient. :func:`acquire` then adds what the scanner does: blur, Rician noise, a bias
field (already in :func:`render`, a function of position), windowing and a contrast curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from scripts.datasets.brain_anatomy import Contrast, Shells, head_outside_brain
from scripts.datasets.brain_atlas import Atlas
from scripts.datasets.brain_lesions import NO_TUMOR, Lesion, displace, draw_lesion, paint
from scripts.datasets.common import PlaneWaves, on_coarse_grid, smoothstep

#: in-plane directions (rows, columns) of the radiological display of each plane, in world RAS:
#: axial: anterior at the top, patient right on the image's left; coronal and sagittal: superior at
#: the top; sagittal: anterior on the left
PLANES = {"ax": ((0.0, -1.0, 0.0), (-1.0, 0.0, 0.0)), "co": ((0.0, 0.0, -1.0), (-1.0, 0.0, 0.0)),
          "sa": ((0.0, 0.0, -1.0), (0.0, -1.0, 0.0))}
#: the head's middle (template mm), around which the field of view is centred
HEAD_CENTRE = np.array([0.0, -12.0, 2.0], np.float32)


@dataclass
class BrainPatient:
    """Everything random about one patient (see :func:`draw_patient`)."""

    label: int
    contrast: Contrast
    shells: Shells
    lesion: Lesion | None
    matrix: np.ndarray  # (3, 3) patient -> template, linear part
    offset: np.ndarray  # (3,)
    warp: list[PlaneWaves]  # x, y, z components of the elastic displacement
    warp_mm: float
    bias: PlaneWaves
    bias_amp: float
    tissue_texture: PlaneWaves
    noise: float  # Rician sigma relative to the white level
    blur_mm: float
    gamma: float
    white: float  # window: the white level as a multiple of the image's 99.7th percentile
    noise_seed: int


def _rotation(rng: np.random.Generator, max_deg: tuple[float, float, float]) -> np.ndarray:
    angles = [math.radians(rng.uniform(-m, m)) for m in max_deg]
    out = np.eye(3)
    for axis, a in enumerate(angles):
        c, s = math.cos(a), math.sin(a)
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = out @ r
    return out


def draw_patient(rng: np.random.Generator, label: int, atlas: Atlas, t1c: bool | None = None) -> BrainPatient:
    """A random patient of class ``label`` (0 glioma, 1 meningioma, 2 no tumour, 3 pituitary).

    Args:
        t1c: contrast-enhanced T1 look; ``None`` draws it (75 % T1c, 25 % plain T1, as in BRISC).

    Raises:
        ValueError: ``label`` is not a class index.
    """
    if label not in range(4):
        raise ValueError(f"label must be a class index 0..3, got {label!r}")
    t1c = bool(rng.random() < 0.75) if t1c is None else t1c
    contrast = Contrast.draw(rng, t1c)
    scale = rng.uniform(0.9, 1.1, 3) * rng.uniform(0.95, 1.05)
    matrix = (_rotation(rng, (8.0, 5.0, 5.0)) / scale).astype(np.float32)  # patient -> template
    lesion = None if label == NO_TUMOR else draw_lesion(rng, label, atlas, contrast)
    return BrainPatient(label=label, contrast=contrast, shells=Shells.draw(rng), lesion=lesion, matrix=matrix,
                        offset=rng.uniform(-3, 3, 3).astype(np.float32),
                        warp=[PlaneWaves.draw(rng, 4, (60.0, 160.0)) for _ in range(3)], warp_mm=rng.uniform(1.5, 5.0),
                        bias=PlaneWaves.draw(rng, 3, (150.0, 400.0)), bias_amp=rng.uniform(0.05, 0.25),
                        tissue_texture=PlaneWaves.draw(rng, 8, (3.0, 9.0)), noise=rng.uniform(0.01, 0.05),
                        blur_mm=rng.uniform(0.3, 1.0), gamma=rng.uniform(0.8, 1.25), white=rng.uniform(0.9, 1.15),
                        noise_seed=int(rng.integers(2**31)))


def coarse_step(points: np.ndarray, mm: float = 4.0) -> int:
    """Grid step (in points) of about ``mm`` millimetres, for fields smooth on that scale (1 for a point list)."""
    if points.ndim < 3:
        return 1
    spacing = float(np.linalg.norm(points[(1,) + (0,) * (points.ndim - 2)] - points[(0,) * (points.ndim - 1)]))
    return max(1, int(mm / max(spacing, 1e-3)))


def _warp(p: BrainPatient, points: np.ndarray) -> np.ndarray:
    return np.stack([w(points) for w in p.warp], -1) * np.float32(p.warp_mm)


def to_template(p: BrainPatient, points: np.ndarray) -> np.ndarray:
    """Template (MNI mm) points of patient points ``(..., 3)``."""
    points = points.astype(np.float32, copy=False)
    warp = on_coarse_grid(lambda pts: _warp(p, pts), points, coarse_step(points))
    return points @ p.matrix.T + p.offset + warp


def to_patient(p: BrainPatient, q: np.ndarray, iterations: int = 12) -> np.ndarray:
    """Patient points of template points ``q`` ``(..., 3)``: the inverse of :func:`to_template` (fixed point)."""
    inverse = np.linalg.inv(p.matrix).astype(np.float32)
    q = np.asarray(q, np.float32)
    x = (q - p.offset) @ inverse.T
    for _ in range(iterations):
        warp = _warp(p, x)
        x = (q - p.offset - warp) @ inverse.T
    return x


def render(p: BrainPatient, atlas: Atlas, points: np.ndarray, details: bool = False):
    """Noise-free intensities and the tumour mask at patient points ``(..., 3)``.

    Returns:
        ``(image float32, mask bool)`` of the points' shape; with ``details=True`` also a dict of the
        template points ``q``, envelope distance ``sd``, brain weight and white matter there.
    """
    q = to_template(p, points)
    sd = atlas.envelope(q)
    c = p.contrast
    image = head_outside_brain(q, sd, p.shells, c, coarse_step(points))
    t1, wm = np.zeros(image.shape, np.float32), np.zeros(image.shape, np.float32)
    inside = sd < p.shells.csf  # the brain can only be here: sample the template only there
    t1[inside], wm[inside] = atlas.brain(displace(q[inside], p.lesion))
    brain = smoothstep(t1, 0.06, 0.18)
    tissue = c.brain(t1[inside]) * (1 + 0.025 * p.tissue_texture(q[inside]))
    image[inside] += brain[inside] * (tissue - image[inside])
    image = _choroid_plexus(image, q, t1, brain, c)
    mask = np.zeros(image.shape, bool)
    if p.lesion is not None:
        image, mask = paint(image, q, sd, wm, brain, p.lesion, p.shells, c)
    image = image * (1 + p.bias_amp * on_coarse_grid(p.bias, points, coarse_step(points, 8.0)))
    if details:
        return image, mask, {"q": q, "sd": sd, "brain": brain, "wm": wm}
    return image, mask


def _choroid_plexus(image: np.ndarray, q: np.ndarray, t1: np.ndarray, brain: np.ndarray, c: Contrast) -> np.ndarray:
    """Choroid plexus in the ventricles' atria: bright with gadolinium, grey without."""
    x, y, z = np.abs(q[..., 0]), q[..., 1], q[..., 2]
    near = ((x - 27) / 6) ** 2 + ((y + 38) / 9) ** 2 + ((z - 14) / 6) ** 2 < 1
    plexus = near & (t1 < 0.45) & (brain > 0.5)
    return np.where(plexus, np.float32(c.venous * 0.95 if c.t1c else c.gm * 0.9), image)


def plane_points(centre: np.ndarray, plane: str, fov_mm: float, n: int, tilt: np.ndarray) -> np.ndarray:
    """Patient points ``(n, n, 3)`` of a square slice in ``plane`` (``ax``, ``co``, ``sa``) through ``centre``.

    ``tilt`` (3x3 rotation) turns the slice slightly (oblique slices, head not aligned). Rows and
    columns follow :data:`PLANES` (radiological display).
    """
    rows, cols = (tilt @ np.asarray(v, np.float32) for v in PLANES[plane])
    step = fov_mm / n
    t = (np.arange(n, dtype=np.float32) - (n - 1) / 2) * step
    return (centre + t[:, None, None] * rows + t[None, :, None] * cols).astype(np.float32)


def slice_normal(plane: str, tilt: np.ndarray) -> np.ndarray:
    """The unit normal of a slice plane (rows x columns)."""
    rows, cols = (tilt @ np.asarray(v, np.float32) for v in PLANES[plane])
    n = np.cross(rows, cols)
    return (n / np.linalg.norm(n)).astype(np.float32)


def acquire(p: BrainPatient, image: np.ndarray, pixel_mm: float | tuple[float, ...],
            rng: np.random.Generator) -> np.ndarray:
    """Scanner effects on a rendered grid: blur, Rician noise, windowing, contrast curve; float32 0..1."""
    spacing = np.broadcast_to(np.asarray(pixel_mm, np.float32), (image.ndim,))
    image = ndimage.gaussian_filter(image, sigma=[p.blur_mm / s for s in spacing], mode="nearest")
    white = float(np.percentile(image, 99.7)) * p.white + 1e-6
    image = image / white
    noise = rng.standard_normal(size=(2,) + image.shape, dtype=np.float32) * np.float32(p.noise)
    image = np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2)  # magnitude images: Rician noise
    return (np.clip(image, 0, 1) ** p.gamma).astype(np.float32)
