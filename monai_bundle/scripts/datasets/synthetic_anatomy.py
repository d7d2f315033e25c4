"""The synthetic head model behind ``scripts.datasets.synthetic``: random patients and their rendering.

A :class:`Patient` is drawn once and rendered at any set of points of its head frame, so the slices
of one patient and a 3D volume of it are consistent. Units: the in-plane field of view spans -1..1;
``x`` runs left to right, ``y`` top (anterior) to bottom, ``z`` along the head axis. Smooth random
fields are sums of a few random plane waves (cheap, evaluable at any point, identical in 2D and 3D).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

GLIOMA, MENINGIOMA, NO_TUMOR, PITUITARY = range(4)


@dataclass
class Waves:
    """A smooth random field ``sum_i cos(k_i . q + phase_i)``, scaled to unit variance."""

    k: np.ndarray  # (n, 3) wave vectors, radians per unit
    phase: np.ndarray  # (n,)

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int, freq: tuple[float, float]) -> Waves:
        direction = rng.normal(size=(n, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        magnitude = 2 * np.pi * rng.uniform(*freq, size=(n, 1))
        return cls(_f32(direction * magnitude), _f32(rng.uniform(0, 2 * np.pi, size=n)))

    def __call__(self, q: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
        out = np.zeros_like(q[0])
        for (kx, ky, kz), ph in zip(self.k, self.phase):
            out += np.cos(kx * q[0] + ky * q[1] + kz * q[2] + ph)
        return out * math.sqrt(2.0 / len(self.phase))


@dataclass
class Tumor:
    """One lesion in the head frame; ``label`` says which kind (see ``scripts.datasets.synthetic.CLASSES``)."""

    label: int
    centre: np.ndarray  # (3,)
    radius: float
    axes: np.ndarray  # (3,) relative semi-axes of the ellipsoid
    shape_amp: float  # boundary irregularity
    shape: Waves
    texture: Waves
    bright: float  # enhancing tissue intensity
    heterogeneity: float
    core: float  # necrotic core as a fraction of the radius (0: none)
    core_intensity: float


@dataclass
class Patient:
    """Everything random about one synthetic head (see :func:`draw_patient`)."""

    label: int
    shift: np.ndarray  # (2,) head centre in the image
    angle: float  # in-plane rotation, radians
    axes: np.ndarray  # (3,) outer (scalp) semi-axes A, B, C
    layers: np.ndarray  # (3,) scalp, bone, CSF thickness as fractions of the head radius
    tissue: dict[str, float]
    ventricles: np.ndarray  # (6,) x offset, y offset, half width, half length, angle, z half extent
    choroid: bool
    gyri: Waves
    texture: Waves
    bias: Waves
    gain: float
    gamma: float
    noise: float
    blur: float  # Gaussian sigma in head-frame units
    noise_seed: int
    tumor: Tumor | None = field(default=None)

    @property
    def tumor_z(self) -> float:
        """Height of the tumor centre (0 without a tumor): volumes are centred on it."""
        return float(self.tumor.centre[2]) if self.tumor is not None else 0.0

    def slice_levels(self, rng: np.random.Generator, n: int) -> list[float]:
        """``n`` axial heights, ascending; through the tumor's middle part when there is one.

        Without a tumor, half the slices come from anywhere in the head, skull caps included: a 2D
        model run slice by slice over a whole volume meets such slices and must leave them empty.
        """
        if self.tumor is None:
            anywhere = rng.random(n) < 0.5
            levels = np.where(anywhere, rng.uniform(-0.92, 0.92, size=n) * self.axes[2], rng.uniform(-0.25, 0.25, size=n))
            return sorted(levels.tolist())
        u = np.linspace(-0.45, 0.45, n) if n > 1 else np.zeros(1)
        u = u + rng.uniform(-0.05, 0.05, size=n)
        return (self.tumor.centre[2] + self.tumor.radius * self.tumor.axes[2] * u).tolist()


def draw_patient(rng: np.random.Generator, label: int) -> Patient:
    """A random head of class ``label`` (``scripts.datasets.synthetic.CLASSES`` index).

    Raises:
        ValueError: ``label`` is not one of the four class indices.
    """
    if label not in (GLIOMA, MENINGIOMA, NO_TUMOR, PITUITARY):
        raise ValueError(f"no head model for class index {label!r}")
    axes = _f32([rng.uniform(0.62, 0.74), rng.uniform(0.76, 0.86), rng.uniform(0.72, 0.85)])
    layers = _f32([rng.uniform(0.05, 0.08), rng.uniform(0.03, 0.05), rng.uniform(0.015, 0.03)])
    tissue = {"scalp": rng.uniform(0.72, 0.95), "bone": rng.uniform(0.04, 0.14), "csf": rng.uniform(0.08, 0.2),
              "gm": rng.uniform(0.36, 0.46), "wm": rng.uniform(0.52, 0.64), "sinus": rng.uniform(0.65, 0.9),
              "choroid": rng.uniform(0.6, 0.85)}
    tissue = {k: np.float32(v) for k, v in tissue.items()}
    ventricles = _f32([rng.uniform(0.06, 0.1), rng.uniform(-0.16, -0.04), rng.uniform(0.035, 0.06),
                       rng.uniform(0.14, 0.22), rng.uniform(0.15, 0.4), rng.uniform(0.3, 0.45)])
    patient = Patient(
        label=label, shift=_f32(rng.uniform(-0.06, 0.06, size=2)), angle=math.radians(rng.uniform(-20, 20)),
        axes=axes, layers=layers, tissue=tissue, ventricles=ventricles, choroid=bool(rng.random() < 0.6),
        gyri=Waves.draw(rng, 8, (4.5, 7.0)), texture=Waves.draw(rng, 6, (1.0, 2.5)),
        bias=Waves.draw(rng, 3, (0.2, 0.5)), gain=rng.uniform(0.85, 1.1), gamma=rng.uniform(0.8, 1.25),
        noise=rng.uniform(0.015, 0.04), blur=rng.uniform(0.008, 0.014), noise_seed=int(rng.integers(2**31)))
    if label != NO_TUMOR:
        patient.tumor = _draw_tumor(rng, patient, label)
    return patient


def _draw_tumor(rng: np.random.Generator, p: Patient, label: int) -> Tumor:
    """Place and shape a tumor of kind ``label`` inside ``p``'s head frame."""
    brain = p.axes * _brain_fraction(p)  # brain semi-axes
    cz = rng.uniform(-0.12, 0.12)
    # enhancing tumor is brighter than white matter (visible) but as bright as scalp fat and sinuses
    bright = min(0.97, p.tissue["wm"] + rng.uniform(0.15, 0.33))
    texture = Waves.draw(rng, 6, (4.0, 9.0))
    if label == GLIOMA:
        side = rng.choice([-1.0, 1.0])
        radius = rng.uniform(0.13, 0.22)
        centre = _f32([side * rng.uniform(0.3, 0.5) * brain[0], rng.uniform(-0.4, 0.4) * brain[1], cz])
        necrotic = rng.random() < 0.7
        return Tumor(label, centre, radius, _f32(rng.uniform(0.8, 1.2, size=3)), rng.uniform(0.12, 0.2),
                     Waves.draw(rng, 6, (0.6 / radius, 1.2 / radius)), texture, bright,
                     rng.uniform(0.12, 0.22), rng.uniform(0.35, 0.65) if necrotic else 0.0, rng.uniform(0.1, 0.3))
    if label == MENINGIOMA:
        radius = rng.uniform(0.13, 0.2)
        phi = rng.uniform(0, 2 * np.pi)
        squeeze = np.sqrt(max(0.0, 1 - (cz / brain[2]) ** 2))
        base = np.array([brain[0] * np.cos(phi), brain[1] * np.sin(phi)]) * squeeze  # on the brain surface
        # the centre lies just inside the brain, so the skull cuts a broad flat base off the sphere
        centre = _f32([*(base * (1 - 0.2 * radius / np.linalg.norm(base))), cz])
        return Tumor(label, centre, radius, _f32(np.ones(3)), 0.04, Waves.draw(rng, 4, (0.5 / radius, 1.0 / radius)),
                     texture, bright, 0.03, 0.0, 0.0)
    if label == PITUITARY:
        radius = rng.uniform(0.085, 0.13)
        centre = _f32([rng.uniform(-0.015, 0.015), rng.uniform(0.3, 0.42) * brain[1], cz])
        return Tumor(label, centre, radius, _f32([1.2, 0.9, 0.9]), 0.05,
                     Waves.draw(rng, 4, (0.5 / radius, 1.0 / radius)), texture, bright, 0.06, 0.0, 0.0)
    raise AssertionError(f"unreachable: draw_patient checked label {label}")


def _f32(values: object) -> np.ndarray:
    """float32 parameters keep every rendered array float32 (about 5x faster trigonometry)."""
    return np.asarray(values, dtype=np.float32)


def _brain_fraction(p: Patient) -> float:
    """The brain's outer radius as a fraction of the head's (inside scalp, bone and CSF)."""
    return float(1.0 - p.layers.sum())


def render(p: Patient, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free intensities and the tumor mask of ``p`` at image-frame points ``(x, y, z)``.

    Args:
        x, y, z: float32 arrays of one shape (any number of dimensions) in field-of-view units.

    Returns:
        ``image`` of the dtype of ``x`` (same shape, about 0..1) and ``mask`` uint8 of 0/1.
    """
    c, s = math.cos(p.angle), math.sin(p.angle)
    dx, dy = x - p.shift[0], y - p.shift[1]
    q = (c * dx + s * dy, -s * dx + c * dy, z)  # head frame: undo the head's shift and rotation
    rho = np.sqrt((q[0] / p.axes[0]) ** 2 + (q[1] / p.axes[1]) ** 2 + (q[2] / p.axes[2]) ** 2)
    r_scalp = 1 - p.layers[0]
    r_bone = r_scalp - p.layers[1]
    r_brain = _brain_fraction(p)
    t = p.tissue
    tex = p.texture(q)
    image = np.zeros_like(x)
    image = np.where(rho <= 1, t["scalp"] * (1 + 0.08 * tex), image)
    image = np.where(rho <= r_scalp, t["bone"], image)
    image = np.where(rho <= r_bone, t["csf"], image)
    brain = rho <= r_brain
    image = np.where(brain, _brain_tissue(p, q, rho / r_brain, tex), image)
    image = _add_sinuses(p, q, image, r_bone, r_brain)
    mask = np.zeros(x.shape, dtype=np.uint8)
    if p.tumor is not None:
        image, mask = _add_tumor(p, q, image, brain, rho, r_bone, r_brain, tex)
    return image * (1 + 0.1 * p.bias(q)), mask


def _brain_tissue(p: Patient, q: tuple, rb: np.ndarray, tex: np.ndarray) -> np.ndarray:
    """Folded grey/white matter, sulci, the midline fissure and the lateral ventricles."""
    t = p.tissue
    g = p.gyri(q)
    tissue = np.where(rb < 0.8 + 0.07 * g, t["wm"], t["gm"]) * (1 + 0.04 * tex)
    tissue = np.where((rb > 0.86) & (np.abs(g) < 0.18), t["csf"], tissue)  # sulci between gyri
    fissure = (np.abs(q[0]) < 0.012) & (np.abs(q[1]) > 0.5 * p.axes[1] * _brain_fraction(p))
    tissue = np.where(fissure, t["csf"], tissue)  # between the hemispheres, front and back
    vx, vy, vw, vl, va, vz = p.ventricles
    for side in (-1.0, 1.0):
        ca, sa = np.cos(side * va), np.sin(side * va)
        u, v = q[0] - side * vx, q[1] - vy
        u, v = ca * u + sa * v, -sa * u + ca * v  # each horn tilts away from the midline towards the front
        inside = (u / vw) ** 2 + (v / vl) ** 2 + (q[2] / vz) ** 2 < 1
        tissue = np.where(inside, t["csf"] * 0.9, tissue)
        if p.choroid:
            plexus = (u / (0.6 * vw)) ** 2 + ((v - 0.6 * vl) / (0.25 * vl)) ** 2 + (q[2] / (0.6 * vz)) ** 2 < 1
            tissue = np.where(plexus, t["choroid"], tissue)
    return tissue


def _add_sinuses(p: Patient, q: tuple, image: np.ndarray, r_bone: float, r_brain: float) -> np.ndarray:
    """Enhancing dural sinuses: bright spots where the midline meets the skull, front and back."""
    # between brain and bone, following the skull's cross-section at each height
    y_edge = p.axes[1] * (r_bone + r_brain) / 2 * np.sqrt(np.clip(1 - (q[2] / p.axes[2]) ** 2, 0, 1))
    for sign in (-1.0, 1.0):
        near = np.hypot(q[0] / 0.03, (q[1] - sign * y_edge) / 0.025) < 1
        image = np.where(near & (np.abs(q[2]) < 0.8 * p.axes[2]), p.tissue["sinus"], image)
    return image


def _add_tumor(p: Patient, q: tuple, image: np.ndarray, brain: np.ndarray, rho: np.ndarray, r_bone: float,
               r_brain: float, tex: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paint ``p.tumor`` over the anatomy; returns ``(image, mask)``."""
    tu = p.tumor
    rel = tuple((q[i] - tu.centre[i]) / (tu.radius * tu.axes[i]) for i in range(3))
    d = np.sqrt(rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2) + tu.shape_amp * tu.shape(rel)
    het = tu.texture(q)
    if tu.label == GLIOMA:
        side = np.sign(tu.centre[0])
        inside = (d < 1) & brain & (rho < 0.97 * r_brain) & (side * q[0] > 0.02)  # intra-axial, one hemisphere
        oedema = (d < 1.5) & brain & ~inside
        image = np.where(oedema, image * 0.82, image)
        lesion = np.where(d < tu.core, tu.core_intensity * (1 + 0.3 * het), tu.bright * (1 + tu.heterogeneity * het))
    elif tu.label == MENINGIOMA:
        inside = (d < 1) & (rho < r_bone)  # extra-axial: fills the space up to the bone, pushes the brain
        lesion = tu.bright * (1 + tu.heterogeneity * het)
    else:
        inside = d < 1
        lesion = tu.bright * (1 + tu.heterogeneity * het)
    return np.where(inside, lesion, image), inside.astype(np.uint8)
