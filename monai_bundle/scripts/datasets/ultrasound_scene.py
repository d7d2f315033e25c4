"""What a breast ultrasound image shows: probe geometry, tissue layers, lesions (BUSI-like classes).

Units are mm. A :class:`Probe` samples the body on a *beam grid*: depth ``r`` below the skin along
each beam and lateral position ``u`` across the aperture (arc length at the skin for a curved
probe); :meth:`Probe.physical` maps it to body coordinates ``x`` (lateral), ``z`` (depth under the
probe's centre). Tissue is described by two maps on the beam grid: echogenicity ``E`` (mean
backscatter, about 0..1) and attenuation ``alpha`` (per mm; the image former accumulates it along
each beam, so a lesion that absorbs casts a shadow and a cyst that absorbs less brightens the
tissue behind it).

Layers from the skin down: skin (bright line), subcutaneous fat in lobules separated by bright
Cooper's ligaments, the fibroglandular layer (echogenic, with fat islands and ducts), retromammary
fat, the pectoral muscle (striated) and, in deep views, ribs (bright surface, full shadow) and the
pleura. Lesions: :func:`draw_lesion`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from scripts.datasets.common import NoiseField, PlaneWaves, log_uniform, smoothstep

NORMAL, BENIGN, MALIGNANT = range(3)  # the BUSI class order of scripts.prepare.busi


@dataclass
class Probe:
    """A linear (``radius == 0``) or curved probe's field of view: ``depth`` x ``width`` mm."""

    depth: float
    width: float
    radius: float = 0.0

    def physical(self, r: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Body coordinates (x lateral, z depth below the centre of the probe face) of beam points."""
        if self.radius <= 0:
            return u, r
        theta = u / self.radius
        rho = self.radius + r
        return rho * np.sin(theta), rho * np.cos(theta) - self.radius

    def beam(self, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Beam coordinates ``(r, u)`` of body points (the inverse of :meth:`physical`)."""
        if self.radius <= 0:
            return z, x
        rho = np.hypot(x, z + self.radius)
        return rho - self.radius, self.radius * np.arctan2(x, z + self.radius)


@dataclass
class Breast:
    """One patient's layers (depths in mm below the skin) and textures."""

    skin: float
    fat: float  # bottom of the subcutaneous fat
    gland: float  # bottom of the fibroglandular layer
    retro: float  # bottom of the retromammary fat
    muscle: float  # bottom of the pectoral muscle
    undulation: PlaneWaves  # 1D, lateral: layer boundaries are wavy
    lobules: NoiseField  # fat lobules; Cooper's ligaments run along its zero level
    islands: NoiseField  # fat islands and ducts in the gland
    grain: NoiseField  # fine tissue texture
    fibres: tuple[np.ndarray, PlaneWaves]  # wave vector (per mm) and wobble of the muscle striations
    stretch: float  # lateral elongation of tissue structures (planes run parallel to the skin)
    echo: dict[str, float]
    ribs: list[tuple[float, float]] = field(default_factory=list)  # (lateral centre, half width)


def draw_breast(rng: np.random.Generator, probe: Probe) -> Breast:
    """Random layer thicknesses, textures and echo levels; ribs only when the view is deep enough."""
    skin = rng.uniform(1.2, 2.5)
    fat = skin + rng.uniform(2.0, 14.0)
    gland = fat + rng.uniform(4.0, 22.0)
    retro = gland + rng.uniform(0.5, 5.0)
    muscle = retro + rng.uniform(4.0, 11.0)
    echo = {"skin": rng.uniform(1.0, 2.0), "fat": rng.uniform(0.06, 0.18), "ligament": rng.uniform(0.8, 2.0),
            "gland": rng.uniform(0.4, 1.0), "muscle": rng.uniform(0.1, 0.25), "fibre": rng.uniform(0.4, 0.9),
            "ligament_shadow": rng.uniform(0.0, 1.2) if rng.random() < 0.6 else 0.0}  # per mm of ligament
    ribs = []
    if muscle + 4 < probe.depth and rng.random() < 0.6:
        start = rng.uniform(-probe.width / 2 - 10, -probe.width / 4)
        while start < probe.width / 2 + 10:
            half = rng.uniform(5.0, 9.0)
            ribs.append((start + half, half))
            start += 2 * half + rng.uniform(10.0, 18.0)
    return Breast(skin, fat, gland, retro, muscle, PlaneWaves.draw(rng, 4, (15.0, 60.0), dims=1),
                  NoiseField.draw(rng, rng.uniform(2.0, 4.0), cells=48, dims=2),
                  NoiseField.draw(rng, rng.uniform(1.0, 2.5), cells=64, dims=2),
                  NoiseField.draw(rng, rng.uniform(0.4, 0.9), cells=64, dims=2),
                  _striations(rng), rng.uniform(1.5, 3.0), echo, ribs)


def _striations(rng: np.random.Generator) -> tuple[np.ndarray, PlaneWaves]:
    """(wave vector, wobble) of the muscle's fibres: lines nearly parallel to the skin, gently wavy."""
    tilt = rng.uniform(-0.35, 0.35)
    k = np.array([math.sin(tilt), math.cos(tilt)], np.float32) * np.float32(2 * np.pi / rng.uniform(1.2, 2.5))
    return k, PlaneWaves.draw(rng, 2, (15.0, 40.0), dims=2)


def _blend(below: np.ndarray, above: np.ndarray, s: np.ndarray, boundary: np.ndarray | float,
           width: float = 0.8) -> np.ndarray:
    """``above`` where ``s`` is under ``boundary``, ``below`` beyond it, a soft edge ``width`` mm wide."""
    w = smoothstep(s - boundary, -width / 2, width / 2)
    return above + w * (below - above)


def tissue_maps(b: Breast, r: np.ndarray, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Echogenicity and attenuation (per mm) of the breast at beam depth ``r`` and body point ``(x, z)``."""
    e = b.echo
    wave = b.undulation(x[..., None])
    s = r + 1.5 * wave  # wavy depth: layer boundaries undulate laterally
    pts = np.stack([x / b.stretch, z], -1)  # structures elongated along the skin
    lob, islands, grain = b.lobules(pts), b.islands(pts), b.grain(pts)
    fat = e["fat"] * np.exp(0.25 * grain)
    ligament = 1 - smoothstep(np.abs(lob), 0.03, 0.08)
    fat = fat + (e["ligament"] - fat) * ligament  # Cooper's ligaments
    gland = e["gland"] * np.exp(0.35 * grain + 0.3 * lob)
    gland = gland + (e["fat"] - gland) * smoothstep(islands, 0.8, 1.2)  # fat islands and ducts
    k, wobble = b.fibres
    fibres = smoothstep(np.cos(np.stack([x, z], -1) @ k + 2.5 * wobble(pts)), 0.8, 0.97)  # muscle striations,
    fibres = fibres * smoothstep(islands, -0.6, 0.2)  # broken into short segments
    muscle = e["muscle"] * np.exp(0.2 * grain) + fibres * (e["fibre"] - e["muscle"])
    echo = _blend(fat, np.float32(e["skin"]), s, b.skin, 0.5)
    echo = _blend(gland, echo, s, b.fat + 2.5 * lob)
    echo = _blend(fat * 0.9, echo, s, b.gland + 3 * wave)
    echo = _blend(muscle, echo, s, b.retro)
    echo = _blend(muscle * 0.7, echo, s, b.muscle)
    for depth in (b.retro, b.muscle):  # the fasciae: thin bright lines
        echo = echo + (e["ligament"] - echo) * (1 - smoothstep(np.abs(s - depth), 0.2, 0.5))
    in_fat = smoothstep(s, b.skin, b.skin + 0.5) * (1 - smoothstep(s - b.fat - 2.5 * lob, -0.4, 0.4))
    alpha = (0.004 + e["ligament_shadow"] * ligament * in_fat).astype(np.float32)  # ligaments cast thin shadows
    for centre, half in b.ribs:  # rib: bright curved surface, nothing behind it
        top = b.muscle + 2.0 + 2.5 * ((x - centre) / half) ** 2
        on = np.abs(x - centre) < half
        echo = np.where(on & (s > top) & (s < top + 0.8), np.float32(3.0), echo)
        alpha = np.where(on & (s > top + 0.4) & (s < top + 1.5), np.float32(1.5), alpha)
    pleura = b.muscle + 9.0
    lung = ~_under_rib(b, x)
    echo = np.where(lung & (np.abs(s - pleura) < 0.5), np.float32(0.9), echo)
    echo = np.where(lung & (s > pleura + 0.5), np.float32(0.1) + 0.5 * (np.mod(s - pleura, 6.0) < 0.6), echo)
    return echo.astype(np.float32), alpha


def _under_rib(b: Breast, x: np.ndarray) -> np.ndarray:
    out = np.zeros(x.shape, bool)
    for centre, half in b.ribs:
        out |= np.abs(x - centre) < half
    return out


@dataclass
class Lesion:
    """A breast lesion in body coordinates; ``outline`` modulates the radius by angle."""

    kind: str  # "cyst", "benign", "malignant", "lobule" (a normal fat lobule, not a lesion)
    centre: tuple[float, float]
    half_width: float
    half_height: float
    tilt: float  # radians
    harmonics: np.ndarray  # (k, 3): order, amplitude, phase of the radius' Fourier terms
    spikes: np.ndarray  # (m, 3): angle, length (radii), angular width
    echo: float
    heterogeneity: float
    texture: NoiseField
    attenuation: float  # per mm inside: > 0 shadows, < 0 enhances what is behind
    halo: float = 0.0  # echogenic halo thickness (mm)
    calcifications: int = 0
    edge_shadow: float = 0.0


def _harmonics(rng: np.random.Generator, orders: tuple[int, int], amp: float, n: int) -> np.ndarray:
    k = rng.integers(orders[0], orders[1] + 1, size=n)
    return np.stack([k, rng.uniform(0.3, 1.0, n) * amp / max(1.0, math.sqrt(n)), rng.uniform(0, 2 * np.pi, n)], 1)


def draw_lesion(rng: np.random.Generator, kind: str, b: Breast, probe: Probe) -> Lesion:
    """A lesion of ``kind`` placed in the fibroglandular layer (or the fat) within the view.

    ``cyst`` and ``benign``: oval, wider than tall, circumscribed (some lobulated), hypo- or anechoic,
    often posterior enhancement. ``malignant``: irregular, spiculated or microlobulated, often taller
    than wide, heterogeneous, posterior shadowing, echogenic halo, microcalcifications; about one in
    five is round and circumscribed. ``lobule``: a dark oval fat lobule (a confounder in normals).
    """
    width = log_uniform(rng, 3.0, 13.0) if kind != "lobule" else rng.uniform(3.0, 8.0)
    width = min(width, probe.width * 0.3, probe.depth * 0.35)
    round_malignant = kind == "malignant" and rng.random() < 0.2
    if kind == "malignant" and not round_malignant:
        aspect = rng.uniform(0.75, 1.5)  # height / width: often taller than wide
        harmonics = _harmonics(rng, (3, 12), rng.uniform(0.05, 0.2), 6)
        spikes = np.stack([rng.uniform(0, 2 * np.pi, 10), rng.uniform(0.05, 0.3, 10), rng.uniform(0.03, 0.08, 10)], 1)
        spikes = spikes[: rng.integers(0, 11)]
    else:
        aspect = rng.uniform(0.45, 0.85) if not round_malignant else rng.uniform(0.75, 1.0)
        lobulated = kind == "benign" and rng.random() < 0.3
        harmonics = _harmonics(rng, (2, 4) if lobulated else (2, 3), rng.uniform(0.08, 0.18) if lobulated else 0.04, 3)
        spikes = np.zeros((0, 3))
    half_h = min(width * aspect, probe.depth * 0.3)
    if kind == "lobule":
        half_h = min(half_h, max(0.8, (b.fat - b.skin) / 2))
        depth = rng.uniform(b.skin + half_h, max(b.skin + half_h, b.fat - half_h) + 0.5)
    else:
        depth = rng.uniform(max(b.fat - 2, half_h + 2), max(b.gland + 2, half_h + 3))
    depth = min(depth, probe.depth - half_h - 3)
    limit = max(0.0, probe.width / 2 - 1.15 * width)  # the whole lesion in view, where it fits
    x = float(np.clip(rng.uniform(-0.3, 0.3) * probe.width, -limit, limit))
    # hypoechoic is relative to fat (BI-RADS): a lesion is darker than the fat around it, by how much varies
    echo = b.echo["fat"] * {"cyst": rng.uniform(0.01, 0.06), "benign": rng.uniform(0.12, 0.7),
                            "malignant": rng.uniform(0.06, 0.55), "lobule": rng.uniform(0.6, 1.0)}[kind]
    attenuation = {"cyst": -rng.uniform(0.03, 0.08), "benign": rng.uniform(-0.05, 0.02),
                   "malignant": rng.uniform(0.0, 0.1) if not round_malignant else rng.uniform(-0.04, 0.02),
                   "lobule": 0.0}[kind]
    malignant = kind == "malignant" and not round_malignant
    return Lesion(kind, (x, depth), width, half_h, rng.uniform(-0.3, 0.3), harmonics, spikes, echo,
                  rng.uniform(0.3, 0.8) if kind == "malignant" else rng.uniform(0.05, 0.35) * (kind != "cyst"),
                  NoiseField.draw(rng, rng.uniform(0.6, 2.0), cells=32, dims=2), attenuation,
                  halo=rng.uniform(0.6, 2.5) if malignant and rng.random() < 0.5 else 0.0,
                  calcifications=int(rng.integers(3, 15)) if kind == "malignant" and rng.random() < 0.3 else 0,
                  edge_shadow=rng.uniform(0.05, 0.2) if kind in ("cyst", "benign") and rng.random() < 0.5 else 0.0)


def lesion_distance(les: Lesion, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(normalised distance, below 1 inside; angle) of body points from the lesion."""
    c, s = math.cos(les.tilt), math.sin(les.tilt)
    dx, dz = x - les.centre[0], z - les.centre[1]
    u, v = (c * dx + s * dz) / les.half_width, (-s * dx + c * dz) / les.half_height
    phi = np.arctan2(v, u)
    radius = np.ones_like(phi)
    for k, amp, phase in les.harmonics:
        radius += amp * np.cos(k * phi + phase)
    for angle, length, width in les.spikes:
        delta = np.angle(np.exp(1j * (phi - angle)))
        radius += length * np.exp(-((delta / width) ** 2))
    return (np.hypot(u, v) / radius).astype(np.float32), phi


def _window(les: Lesion, x: np.ndarray, z: np.ndarray) -> tuple[slice, slice]:
    """Index window of the beam grid that can hold the lesion, its halo and its edges."""
    spikes = float(les.spikes[:, 1].max()) if len(les.spikes) else 0.0
    reach = max(les.half_width, les.half_height) * (1.3 + np.abs(les.harmonics[:, 1]).sum() + spikes) + les.halo + 1.0
    near = (np.abs(x - les.centre[0]) < reach) & (np.abs(z - les.centre[1]) < reach)
    rows, cols = np.flatnonzero(near.any(1)), np.flatnonzero(near.any(0))
    if not rows.size:
        return slice(0, 0), slice(0, 0)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def paint_lesion(echo: np.ndarray, alpha: np.ndarray, les: Lesion, x: np.ndarray, z: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``les`` into the echogenicity and attenuation maps (in place); returns them and the lesion mask."""
    mask = np.zeros(echo.shape, bool)
    win = _window(les, x, z)
    e, a, x, z = echo[win], alpha[win], x[win], z[win]
    d, phi = lesion_distance(les, x, z)
    inside = d < 1
    tex = les.texture(np.stack([x, z], -1))
    value = les.echo * np.clip(1 + les.heterogeneity * tex, 0.05, None)
    soft = 0.07 if les.kind in ("cyst", "benign", "lobule") else 0.15  # malignant margins are indistinct
    e = e + (1 - smoothstep(d, 1 - soft, 1 + soft / 2)) * (value - e)
    if les.halo > 0:  # echogenic halo: a thick, ill-defined bright rim
        thick = les.halo / les.half_width * (1 + 0.4 * tex)
        ring = smoothstep(d, 0.95, 1.05) * (1 - smoothstep(d, 1 + 0.5 * thick, 1 + thick))
        e = e + ring * (np.maximum(e, np.float32(0.9)) - e)
    for _ in range(les.calcifications):
        cx = les.centre[0] + rng.uniform(-0.6, 0.6) * les.half_width
        cz = les.centre[1] + rng.uniform(-0.6, 0.6) * les.half_height
        e = np.where(np.hypot(x - cx, z - cz) < rng.uniform(0.15, 0.35), np.float32(3.0), e)
    a = np.where(inside, a + np.float32(les.attenuation), a)
    if les.edge_shadow > 0:  # refraction at the lateral edges: thin shadows straight down
        lateral = (d > 0.95) & (d < 1.08) & (np.abs(np.cos(phi)) > 0.9)
        a = np.where(lateral, a + np.float32(les.edge_shadow), a)
    echo[win], alpha[win], mask[win] = e, a, inside
    return echo, alpha, mask
