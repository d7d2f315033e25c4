"""Brain tumours for the brain MRI generators: where they grow, their shape, mass effect and look.

A :class:`Lesion` lives in template space (MNI mm, :mod:`scripts.datasets.brain_atlas`):

* glioma: intra-axial, centred in deep hemispheric white matter, irregular outline that reaches
  further into white matter (infiltration), high grade (an enhancing rim of uneven thickness round
  a necrotic core) or low grade (hypointense, ill-defined edge), with white-matter oedema around it;
* meningioma: extra-axial on the dura (convexity, falx, skull base, near the sella, posterior
  fossa), a smooth or lobulated dome with a broad base, mostly homogeneous, sometimes cystic or
  calcified, often a dural tail and a CSF cleft, sometimes oedema;
* pituitary adenoma: in the sella; microadenomas (2.5-5 mm, less enhancing than the gland) or
  macroadenomas (6-20 mm) growing up out of the sella, sometimes cystic or haemorrhagic.

Sizes, brightness and even sites overlap between the kinds, so no single cue gives the diagnosis.
Every tumour displaces the brain around it (:func:`displace`); the mask is the tumour itself, never
the oedema or the dural tail.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scripts.datasets.brain_anatomy import Contrast, Shells
from scripts.datasets.brain_atlas import SELLA, Atlas
from scripts.datasets.common import NoiseField, PlaneWaves, log_uniform, smoothstep

GLIOMA, MENINGIOMA, NO_TUMOR, PITUITARY = range(4)  # the BRISC class order

#: radius ranges (mm, log-uniform). Tumours in labelled clinical sets are the ones large enough to
#: be imaged and outlined: gliomas mostly 2-7 cm across, meningiomas 1.5-6 cm, macroadenomas 1.4-4 cm
#: (version 1 drew 6-32 / 6-30 / 6-20 mm: a median tumour 0.4-0.9 % of the image, smaller than
#: BRISC's, so a set too hard to steer a recipe by)
GLIOMA_RADIUS_MM = (10.0, 35.0)
MENINGIOMA_RADIUS_MM = (8.0, 30.0)
MACROADENOMA_RADIUS_MM = (7.0, 20.0)
#: share of pituitary adenomas that are microadenomas (2.5-5 mm, inside the gland)
MICROADENOMA_SHARE = 0.15


@dataclass
class Lesion:
    """One tumour; intensities are absolute (the patient's :class:`Contrast` is already applied)."""

    kind: int
    centre: np.ndarray  # (3,) mm
    radius: float  # mm
    frame: np.ndarray  # (3, 3) rows: the ellipsoid's axes (unit)
    axes: np.ndarray  # (3,) relative semi-axes
    outline: PlaneWaves  # on offsets in radii: lobulation / irregularity
    outline_amp: float
    texture: NoiseField  # in mm: internal heterogeneity
    level: float  # intensity of the solid (enhancing) tissue
    heterogeneity: float
    push: float  # mass-effect radius (mm)
    core: float = 0.0  # necrotic / cystic core as a fraction of the radius (0: none)
    core_level: float = 0.0
    blur_edge: float = 0.0  # width of an ill-defined margin (in radii)
    wm_follow: float = 0.0  # how much further the outline reaches into white matter
    oedema: float = 0.0  # extent beyond the tumour, in radii
    oedema_level: float = 0.0
    tail: float = 0.0  # dural tail length (mm)
    tail_level: float = 0.0
    normal: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))  # outward, meningioma base
    falx: bool = False
    cleft: bool = False
    calcified: bool = False


def draw_lesion(rng: np.random.Generator, kind: int, atlas: Atlas, contrast: Contrast) -> Lesion:
    """A random tumour of ``kind`` (:data:`GLIOMA`, :data:`MENINGIOMA` or :data:`PITUITARY`).

    Raises:
        ValueError: ``kind`` is not a tumour class.
    """
    if kind == GLIOMA:
        return _glioma(rng, atlas, contrast)
    if kind == MENINGIOMA:
        return _meningioma(rng, atlas, contrast)
    if kind == PITUITARY:
        return _pituitary(rng, contrast)
    raise ValueError(f"no tumour model for class index {kind!r}")


def _frame(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def _base(rng: np.random.Generator, kind: int, centre: np.ndarray, radius: float, amp: float,
          axes: np.ndarray) -> dict:
    """Fields every lesion has: position, shape, texture."""
    return {"kind": kind, "centre": np.asarray(centre, np.float32), "radius": radius, "frame": _frame(rng),
            "axes": np.asarray(axes, np.float32), "outline": PlaneWaves.draw(rng, 8, (0.9, 2.2)),
            "outline_amp": amp, "texture": NoiseField.draw(rng, rng.uniform(2.0, 5.0))}


def _glioma(rng: np.random.Generator, atlas: Atlas, c: Contrast) -> Lesion:
    radius = log_uniform(rng, *GLIOMA_RADIUS_MM)
    deep = atlas.wm_depth >= min(0.75 * radius, 32.0)
    sites = atlas.wm_sites[deep] if deep.any() else atlas.wm_sites[[int(np.argmax(atlas.wm_depth))]]
    centre = sites[rng.integers(len(sites))] + rng.uniform(-1, 1, 3)
    high_grade = rng.random() < 0.55
    base = _base(rng, GLIOMA, centre, radius, rng.uniform(0.1, 0.3), rng.uniform(0.75, 1.25, 3))
    oedema = rng.uniform(0.3, 1.6) if high_grade else rng.uniform(0.0, 0.5)
    oedema_level = c.wm * rng.uniform(0.6, 0.8)
    if high_grade:
        level = (c.wm + rng.uniform(0.1, 0.35)) if c.t1c else c.gm * rng.uniform(0.8, 1.0)
        necrotic = rng.random() < 0.85
        return Lesion(**base, level=level, heterogeneity=rng.uniform(0.08, 0.25), push=radius * rng.uniform(0.4, 0.8),
                      core=rng.uniform(0.35, 0.8) if necrotic else 0.0, core_level=c.csf * rng.uniform(1.0, 2.5),
                      blur_edge=rng.uniform(0.0, 0.12), wm_follow=rng.uniform(0.1, 0.4), oedema=oedema,
                      oedema_level=oedema_level)
    patchy = c.t1c and rng.random() < 0.3  # some low-grade gliomas enhance in patches
    level = c.gm * rng.uniform(0.6, 0.9) if not patchy else c.wm * rng.uniform(0.9, 1.25)
    return Lesion(**base, level=level, heterogeneity=rng.uniform(0.05, 0.2) + 0.15 * patchy,
                  push=radius * rng.uniform(0.2, 0.6), blur_edge=rng.uniform(0.1, 0.3), wm_follow=rng.uniform(0.2, 0.5),
                  oedema=oedema, oedema_level=oedema_level)


def _meningioma_site(rng: np.random.Generator, atlas: Atlas, radius: float) -> tuple[np.ndarray, np.ndarray, bool]:
    """(centre, outward normal, on the falx) of a meningioma: convexity, falx, skull base, sella, posterior fossa."""
    site = rng.choice(["convexity", "falx", "base", "sella", "posterior"], p=[0.5, 0.2, 0.17, 0.06, 0.07])
    if site == "falx":
        side = rng.choice([-1.0, 1.0])
        point = atlas.falx_sites[rng.integers(len(atlas.falx_sites))]
        return point + np.float32([side * rng.uniform(0.1, 0.7) * radius, 0, 0]), np.float32([-side, 0, 0]), True
    if site == "sella":  # tuberculum sellae / planum sphenoidale / parasellar: the pituitary's neighbourhood
        centre = SELLA + np.float32([rng.uniform(-9, 9), rng.uniform(4, 14), rng.uniform(4, 10)])
        return centre.astype(np.float32), np.float32([0, 0, -1]), False
    pts, normals = atlas.dura_sites, atlas.dura_normals
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
    pick = {"convexity": z > -5, "base": (z < -8) & (z > -45) & (y > -35),
            "posterior": (y < -55) & (z < -10)}[site]
    i = rng.choice(np.flatnonzero(pick))
    depth = rng.uniform(0.1, 0.6) * radius  # the dome's centre lies inside the dura: a broad flat base
    return pts[i] - normals[i] * depth, normals[i], False


def _meningioma(rng: np.random.Generator, atlas: Atlas, c: Contrast) -> Lesion:
    radius = log_uniform(rng, *MENINGIOMA_RADIUS_MM)
    centre, normal, falx = _meningioma_site(rng, atlas, radius)
    base = _base(rng, MENINGIOMA, centre, radius, rng.uniform(0.02, 0.14), rng.uniform(0.85, 1.15, 3))
    level = rng.uniform(0.68, 1.0) if c.t1c else c.gm * rng.uniform(0.85, 1.08)
    cystic = rng.random() < 0.12
    return Lesion(**base, level=level, heterogeneity=rng.uniform(0.02, 0.12), push=radius * rng.uniform(0.6, 1.0),
                  core=rng.uniform(0.3, 0.6) if cystic else 0.0, core_level=c.csf * rng.uniform(1.0, 3.0),
                  oedema=rng.uniform(0.2, 1.0) if rng.random() < 0.3 else 0.0,
                  oedema_level=c.wm * rng.uniform(0.65, 0.85),
                  tail=rng.uniform(6, 20) if c.t1c and rng.random() < 0.6 else 0.0, tail_level=level * 0.9,
                  normal=np.asarray(normal, np.float32), falx=falx, cleft=rng.random() < 0.5,
                  calcified=rng.random() < 0.1)


def _pituitary(rng: np.random.Generator, c: Contrast) -> Lesion:
    if rng.random() < MICROADENOMA_SHARE:  # microadenoma inside the gland, less enhancing than the gland around it
        radius = rng.uniform(2.5, 5.0)
        side = rng.choice([-1, 1])
        centre = SELLA + np.float32([side * rng.uniform(0.5, 3.0), rng.uniform(-1, 1), rng.uniform(-1, 1)])
        base = _base(rng, PITUITARY, centre, radius, rng.uniform(0.02, 0.08), rng.uniform(0.85, 1.15, 3))
        return Lesion(**base, level=c.gland * rng.uniform(0.45, 0.8), heterogeneity=rng.uniform(0.02, 0.1),
                      push=radius * 0.3)
    radius = log_uniform(rng, *MACROADENOMA_RADIUS_MM)
    centre = SELLA + np.float32([rng.uniform(-2, 2), rng.uniform(-2, 2), 0.45 * radius])  # up out of the sella
    axes = [rng.uniform(0.8, 1.1), rng.uniform(0.8, 1.1), rng.uniform(1.0, 1.5)]
    base = _base(rng, PITUITARY, centre, radius, rng.uniform(0.03, 0.12), axes)
    base["frame"] = np.eye(3, dtype=np.float32)  # the long axis stays vertical (suprasellar extension)
    level = c.gland * rng.uniform(0.6, 1.0) if c.t1c else c.gm * rng.uniform(0.85, 1.05)
    cystic = rng.random() < 0.25  # cystic (dark) or haemorrhagic (bright on T1) parts
    core_level = c.csf * 2 if rng.random() < 0.6 else rng.uniform(0.7, 0.95)
    return Lesion(**base, level=level, heterogeneity=rng.uniform(0.04, 0.2), push=radius * rng.uniform(0.5, 0.9),
                  core=rng.uniform(0.3, 0.6) if cystic else 0.0, core_level=core_level)


def displace(q: np.ndarray, lesion: Lesion | None) -> np.ndarray:
    """Where the brain tissue shown at ``q`` came from: pushed radially out of a sphere of ``lesion.push``.

    Volume-preserving for a spherical mass: a point at distance ``r`` came from ``(r^3 - P^3)^(1/3)``.
    """
    if lesion is None or lesion.push <= 0:
        return q
    off = q - lesion.centre
    r = np.sqrt((off * off).sum(-1, keepdims=True)) + 1e-6
    r0 = np.cbrt(np.maximum(r ** 3 - lesion.push ** 3, 0.0))
    return (lesion.centre + off * (r0 / r)).astype(np.float32)


def distance(q: np.ndarray, lesion: Lesion, wm: np.ndarray) -> np.ndarray:
    """Normalised distance to the tumour outline: below 1 inside (``wm``: white matter at the displaced points)."""
    u = ((q - lesion.centre) @ lesion.frame.T) / (lesion.radius * lesion.axes)
    d = np.sqrt((u * u).sum(-1)) + lesion.outline_amp * lesion.outline(u)
    return (d - lesion.wm_follow * (wm - 0.5)).astype(np.float32)


def reach(lesion: Lesion) -> float:
    """Distance (mm) from the centre beyond which the lesion changes nothing: outline, oedema, tail."""
    spread = 1 + 4 * lesion.outline_amp + lesion.wm_follow + lesion.blur_edge + lesion.oedema + 0.15
    return float(lesion.radius * lesion.axes.max() * spread + lesion.tail + 2.0)


def paint(image: np.ndarray, q: np.ndarray, sd: np.ndarray, wm: np.ndarray, brain: np.ndarray, lesion: Lesion,
          shells: Shells, c: Contrast) -> tuple[np.ndarray, np.ndarray]:
    """The image with ``lesion`` drawn in, and its mask (bool); only points within :func:`reach` are computed."""
    near = (((q - lesion.centre) ** 2).sum(-1) < reach(lesion) ** 2)
    mask = np.zeros(image.shape, bool)
    if not near.any():
        return image, mask
    image = image.copy()
    image[near], mask[near] = _paint_near(image[near], q[near], sd[near], wm[near], brain[near], lesion, shells, c)
    return image, mask


def _paint_near(image: np.ndarray, q: np.ndarray, sd: np.ndarray, wm: np.ndarray, brain: np.ndarray, lesion: Lesion,
                shells: Shells, c: Contrast) -> tuple[np.ndarray, np.ndarray]:
    d = distance(q, lesion, wm)
    het = lesion.texture(q)
    solid = lesion.level * (1 + lesion.heterogeneity * het)
    if lesion.core > 0:
        core = d < lesion.core * (1 + 0.15 * lesion.outline(q / lesion.radius))
        solid = np.where(core, lesion.core_level * (1 + 0.2 * het), solid)
    if lesion.calcified:
        solid = np.where(lesion.texture(q * 2.3) > 1.4, np.float32(c.bone * 2), solid)
    if lesion.oedema > 0:
        w = smoothstep(1 + lesion.oedema - d, 0, 0.3) * smoothstep(wm, 0.25, 0.6) * brain
        image = image + w * (lesion.oedema_level * (1 + 0.05 * het) - image)
    if lesion.kind == GLIOMA:
        mask = (d < 1) & (sd < -1)
    elif lesion.kind == MENINGIOMA:
        mask = (d < 1) & (sd < shells.csf + 0.3)
        image = _meningioma_surroundings(image, q, d, sd, brain, lesion, shells, c)
    else:
        mask = d < 1
    weight = 1 - smoothstep(d, 1 - lesion.blur_edge, 1 + lesion.blur_edge) if lesion.blur_edge > 0 else mask
    weight = np.where(mask | (lesion.blur_edge > 0) & (sd < -1), weight, 0).astype(np.float32)
    return image + weight * (solid - image), mask


def _meningioma_surroundings(image: np.ndarray, q: np.ndarray, d: np.ndarray, sd: np.ndarray, brain: np.ndarray,
                             lesion: Lesion, shells: Shells, c: Contrast) -> np.ndarray:
    """CSF cleft between tumour and brain, and the enhancing dural tail along the dura."""
    if lesion.cleft:
        image = np.where((d >= 1) & (d < 1.1) & (brain > 0.5), np.float32(c.csf * 1.3), image)
    if lesion.tail > 0:
        r = np.sqrt(((q - lesion.centre) ** 2).sum(-1))
        taper = 1 - np.clip((r - lesion.radius) / lesion.tail, 0, 1)
        if lesion.falx:
            on_dura = np.abs(q[..., 0]) < 1.6 * taper
        else:
            on_dura = (sd > shells.csf - 1.8 * taper) & (sd < shells.csf + 0.3)
        image = np.where(on_dura & (taper > 0) & (d >= 1), np.float32(lesion.tail_level), image)
    return image
