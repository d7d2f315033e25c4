"""What the skull-stripped template lacks: CSF, skull, scalp, face, sella and neck, and the MR contrast.

Everything is a function of template points ``q`` (MNI mm, ``(..., 3)``) and the signed distance
``sd`` to the brain envelope (:mod:`scripts.datasets.brain_atlas`):

* shells of ``sd`` with per-patient thicknesses: CSF and dura, the skull (dark inner and outer
  tables around bright diploe), the scalp (fat under the skin);
* ellipsoid structures below the brain: eyes in orbital fat, paranasal sinuses (air with mucosa),
  the sphenoid body and clivus, the sella turcica (a normal pituitary gland on its stalk, enhancing
  cavernous sinuses with carotid flow voids, the suprasellar cistern), the spinal canal and
  vertebrae, all inside soft tissue of the face and neck;
* :class:`Contrast`: one patient's tissue intensities, T1-like or T1c-like (gadolinium: mucosa,
  venous sinuses, choroid plexus, pituitary gland and most tumours brighten).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scripts.datasets.brain_atlas import SELLA
from scripts.datasets.common import PlaneWaves, on_coarse_grid, smoothstep

# tissue codes of the ellipsoid structures
AIR, FAT, MUSCLE, MARROW, BONE, VITREOUS, CSF, GLAND, VENOUS, FLOW_VOID, MUCOSA, CORD = range(12)
_S = SELLA.tolist()
#: (tissue, centre mm, semi-axes mm, mirrored), painted in this order (later wins); a mirrored
#: structure is listed once with a positive x and exists on both sides
STRUCTURES: list[tuple[int, tuple[float, float, float], tuple[float, float, float], bool]] = [
    (FAT, (30.0, 42.0, -38.0), (16.0, 21.0, 14.0), True),  # orbital fat, behind the eye
    (MUSCLE, (31.0, 61.0, -38.0), (12.6, 12.6, 12.6), True),  # sclera
    (MUSCLE, (20.0, 34.0, -38.0), (3.0, 14.0, 3.0), True),  # optic nerve
    (VITREOUS, (31.0, 61.0, -38.0), (11.5, 11.5, 11.5), True),  # eye
    (MUCOSA, (26.0, 48.0, -64.0), (15.0, 19.0, 17.0), True),  # maxillary sinus lining ...
    (AIR, (26.0, 48.0, -64.0), (12.0, 16.0, 14.0), True),  # ... and its air
    (MUCOSA, (0.0, 62.0, -62.0), (11.0, 30.0, 22.0), False),  # nasal cavity
    (AIR, (0.0, 62.0, -62.0), (6.0, 26.0, 18.0), False),
    (MUCOSA, (9.0, 46.0, -36.0), (7.0, 16.0, 9.0), True),  # ethmoid cells
    (AIR, (9.0, 46.0, -36.0), (5.0, 14.0, 7.0), True),
    (MARROW, (0.0, -14.0, -52.0), (11.0, 11.0, 24.0), False),  # clivus and sphenoid body
    (MARROW, (0.0, 4.0, -42.0), (17.0, 16.0, 11.0), False),
    (MUCOSA, (0.0, 12.0, -45.0), (13.0, 11.0, 9.0), False),  # sphenoid sinus
    (AIR, (0.0, 12.0, -45.0), (11.0, 9.0, 7.0), False),
    (CSF, (0.0, -1.0, -23.0), (13.0, 12.0, 6.0), False),  # suprasellar cistern
    (VENOUS, (10.5, _S[1], _S[2]), (5.0, 8.0, 6.0), True),  # cavernous sinus ...
    (FLOW_VOID, (11.5, _S[1], _S[2] + 1.0), (2.2, 2.2, 2.2), True),  # ... with the carotid
    (GLAND, (0.0, _S[1] + 0.5, -24.0), (1.4, 1.4, 6.0), False),  # pituitary stalk
    (GLAND, tuple(_S), (6.0, 5.0, 3.8), False),  # normal pituitary gland
]
_STRUCTURES_TOP = max(c[2] + a[2] for _, c, a, _ in STRUCTURES)
#: soft tissue of the face (anterior, below the brain) and the neck, as ellipsoids
FACE = ((0.0, 42.0, -58.0), (64.0, 58.0, 56.0))
NECK = ((0.0, -22.0, -125.0), (54.0, 60.0, 80.0))


@dataclass
class Contrast:
    """One patient's tissue intensities (about 0..1 before windowing)."""

    t1c: bool
    csf: float
    gm: float
    wm: float
    fat: float
    muscle: float
    marrow: float
    bone: float
    mucosa: float
    venous: float
    gland: float
    vitreous: float

    @classmethod
    def draw(cls, rng: np.random.Generator, t1c: bool) -> Contrast:
        """Random intensities of one scanner / protocol; gadolinium brightens mucosa, veins, gland."""
        wm = rng.uniform(0.55, 0.68)
        return cls(t1c=t1c, csf=rng.uniform(0.06, 0.17), gm=wm - rng.uniform(0.1, 0.2), wm=wm,
                   fat=rng.uniform(0.8, 0.98), muscle=rng.uniform(0.28, 0.4), marrow=rng.uniform(0.45, 0.72),
                   bone=rng.uniform(0.02, 0.07), mucosa=rng.uniform(0.6, 0.85) if t1c else rng.uniform(0.3, 0.42),
                   venous=rng.uniform(0.7, 0.95) if t1c else rng.uniform(0.15, 0.35),
                   gland=rng.uniform(0.7, 0.92) if t1c else rng.uniform(0.42, 0.55), vitreous=rng.uniform(0.05, 0.14))

    def brain(self, t1: np.ndarray) -> np.ndarray:
        """Brain intensity from the template T1 (CSF ~0.3, GM ~0.65, WM ~0.87 in the template)."""
        return np.interp(t1, [0.0, 0.3, 0.65, 0.87, 1.0],
                         [self.csf, self.csf * 1.1, self.gm, self.wm, self.wm * 1.04]).astype(np.float32)

    def tissue(self, code: np.ndarray) -> np.ndarray:
        """Intensity of structure codes (see the module constants)."""
        table = np.array([0.0, self.fat, self.muscle, self.marrow, self.bone, self.vitreous, self.csf, self.gland,
                          self.venous, 0.03, self.mucosa, self.gm * 0.95], np.float32)
        return table[code]


@dataclass
class Shells:
    """One patient's layer thicknesses (mm) around the brain envelope and soft-tissue texture."""

    csf: float
    bone: float
    scalp: float
    texture: PlaneWaves
    fascia: PlaneWaves

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Shells:
        """Random thicknesses: CSF 1.5-4.5 mm (atrophy widens it), skull 5-9 mm, scalp 4-9 mm."""
        return cls(rng.uniform(1.5, 4.5), rng.uniform(5.0, 9.0), rng.uniform(4.0, 9.0),
                   PlaneWaves.draw(rng, 8, (12.0, 40.0)), PlaneWaves.draw(rng, 6, (25.0, 60.0)))


def head_outside_brain(q: np.ndarray, sd: np.ndarray, shells: Shells, c: Contrast, step: int = 1) -> np.ndarray:
    """Intensity of everything but the brain at points ``q`` (``sd``: envelope distance there).

    ``step``: ``q`` is a grid whose smooth textures may be evaluated every ``step`` points (see
    :func:`scripts.datasets.common.on_coarse_grid`).
    """
    tex = on_coarse_grid(shells.texture, q, step)
    soft = _soft_tissue(q, sd, shells, c, tex, on_coarse_grid(shells.fascia, q, step))
    out = np.where(sd < shells.csf, np.float32(c.csf), soft)
    skull = (sd >= shells.csf) & (sd < shells.csf + shells.bone)
    depth = (sd - shells.csf) / shells.bone  # 0 at the inner table, 1 at the outer
    diploe = smoothstep(depth, 0.15, 0.35) * (1 - smoothstep(depth, 0.65, 0.85))
    bone = c.bone + diploe * (c.marrow * (0.85 + 0.15 * tex) - c.bone)
    out = np.where(skull, bone, out)
    out = _venous_sinuses(q, sd, shells, c, out)
    code = structure_codes(q)
    return np.where(code >= 0, c.tissue(np.maximum(code, 0)) * (1 + 0.04 * tex), out).astype(np.float32)


def _soft_tissue(q: np.ndarray, sd: np.ndarray, shells: Shells, c: Contrast, tex: np.ndarray,
                 fascia: np.ndarray) -> np.ndarray:
    """Scalp over the skull, fat and muscle of the face and neck, skin on the surface; 0 (air) outside."""
    scalp_in = shells.csf + shells.bone
    head_depth = scalp_in + shells.scalp - sd  # mm below the scalp surface (positive inside the head)
    for centre, axes in (FACE, NECK):
        rho = np.sqrt((((q - np.asarray(centre, np.float32)) / np.asarray(axes, np.float32)) ** 2).sum(-1))
        head_depth = np.maximum(head_depth, (1 - rho) * min(axes))
    galea = (sd > scalp_in) & (sd < scalp_in + 1.2)
    planes = np.abs(fascia) < 0.12  # thin fat planes between the muscles of the face and neck
    muscle = ~planes & (head_depth > 7) & (sd > scalp_in + 3)
    soft = np.where(muscle, c.muscle * (1 + 0.06 * tex), c.fat * (0.92 + 0.08 * tex))
    soft = np.where(galea, np.float32(c.muscle), soft)
    soft = np.where(head_depth < 1.5, np.float32(c.muscle * 1.2), soft)  # skin
    return np.where(head_depth > 0, soft, np.float32(0.0)).astype(np.float32)


def _venous_sinuses(q: np.ndarray, sd: np.ndarray, shells: Shells, c: Contrast, out: np.ndarray) -> np.ndarray:
    """Superior sagittal and transverse sinuses in the dura (bright with gadolinium)."""
    dura = (sd > -1.5) & (sd < shells.csf + 1.0)
    sagittal = dura & (np.abs(q[..., 0]) < 3.5 + 0.15 * (sd + 1.5)) & (q[..., 2] > -10)
    transverse = dura & (q[..., 1] < -70) & (np.abs(q[..., 2] + 12 + 0.1 * np.abs(q[..., 0])) < 3.0)
    return np.where(sagittal | transverse, np.float32(c.venous), out)


def structure_codes(q: np.ndarray) -> np.ndarray:
    """Tissue code of the last :data:`STRUCTURES` ellipsoid (or the spine) holding each point, -1 for none."""
    code = np.full(q.shape[:-1], -1, np.int8)
    low = q[..., 2] < _STRUCTURES_TOP  # every structure lies below the brain's base: test only there
    if not low.any():
        return code
    sub = q[low]
    part = np.full(sub.shape[0], -1, np.int8)
    x_abs = np.abs(sub[:, 0])
    for tissue, (cx, cy, cz), (ax, ay, az), mirrored in STRUCTURES:
        x = x_abs if mirrored else sub[:, 0]
        inside = ((x - cx) / ax) ** 2 + ((sub[:, 1] - cy) / ay) ** 2 + ((sub[:, 2] - cz) / az) ** 2 < 1
        part[inside] = tissue
    code[low] = _spine(sub, part)
    return code


def _spine(q: np.ndarray, code: np.ndarray) -> np.ndarray:
    """Cervical vertebral bodies (marrow, dark discs), the canal (CSF) and the cord, below the brainstem."""
    x, y, z = q[..., 0], q[..., 1], q[..., 2]
    low = z < -66
    body = low & (z < -92) & ((x / 15) ** 2 + ((y + 18) / 11) ** 2 < 1)
    disc = body & (np.mod(z + 92, 17) < 4)
    canal = (z < -60) & ((x / 8) ** 2 + ((y + 41) / 8) ** 2 < 1)
    cord = canal & ((x / 5) ** 2 + ((y + 41) / 4.5) ** 2 < 1)
    code[body] = MARROW
    code[disc] = MUSCLE
    code[canal] = CSF
    code[cord] = CORD
    return code
