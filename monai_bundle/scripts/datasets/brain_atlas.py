"""Real brain anatomy for the brain MRI generators: nilearn's packaged MNI152 templates, offline.

The pinned ``nilearn`` wheel ships the ICBM 2009a symmetric T1 template and its white matter
probability map at 1 mm (what ``load_mni152_template`` and ``load_mni152_wm_template`` return;
nothing is downloaded). The T1 template is skull-stripped, so
:func:`load_atlas` adds what the generators need around it, once per process:

* ``env``: the signed distance (mm, positive outside) to the brain *envelope*, the brain mask closed
  over its sulci; CSF, dura, skull and scalp are shells of this distance (per-patient thicknesses);
* sites where lesions grow: deep white matter (gliomas), the dural surface with its outward normal
  (meningiomas), the midline falx, and the sella turcica (pituitary, :data:`SELLA`).

All coordinates are MNI millimetres (x right, y anterior, z superior); points are ``(..., 3)``.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

TEMPLATE_FILES = {"t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                  "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}
#: centre of the pituitary gland in the sella turcica, below the hypothalamus and optic chiasm
SELLA = np.array([0.0, -2.0, -31.0], np.float32)
#: voxel size (mm) of the envelope distance grid, and the box (mm) it covers: the whole head and neck
ENV_STEP = 2.0
ENV_BOX = ((-110.0, 110.0), (-150.0, 124.0), (-170.0, 120.0))
#: radius (mm) of the closing that turns the folded brain mask into its smooth envelope
CLOSING_MM = 8.0
BRAIN_THRESHOLD = 0.12  # template T1 (0..1) above which a point is brain tissue


@dataclass(frozen=True)
class Atlas:
    """The template maps and lesion sites; see the module docstring."""

    t1: np.ndarray  # (X, Y, Z) uint8 0..255, 0 outside the brain (the packaged file's values)
    wm: np.ndarray  # (X, Y, Z) uint8 white matter probability 0..255
    origin: np.ndarray  # (3,) mm of voxel (0, 0, 0); 1 mm voxels, axes along x, y, z
    env: np.ndarray  # signed distance to the envelope on the ENV_STEP grid
    env_origin: np.ndarray
    wm_sites: np.ndarray  # (N, 3) deep hemispheric white matter
    wm_depth: np.ndarray  # (N,) their depth below the envelope (mm)
    dura_sites: np.ndarray  # (M, 3) on the envelope surface
    dura_normals: np.ndarray  # (M, 3) unit, outward
    falx_sites: np.ndarray  # (K, 3) on the midline plane, above the corpus callosum

    def brain(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Template T1 and white matter (float32 0..1) at points ``q`` ``(..., 3)``; trilinear, 0 outside."""
        idx = _indices(q, self.origin, 1.0)
        return tuple(ndimage.map_coordinates(a, idx, output=np.float32, order=1, mode="constant", cval=0.0,
                                             prefilter=False).reshape(q.shape[:-1]) / np.float32(255)
                     for a in (self.t1, self.wm))

    def envelope(self, q: np.ndarray) -> np.ndarray:
        """Signed distance (mm) from the brain envelope at ``q``: negative inside, positive outside."""
        idx = _indices(q, self.env_origin, ENV_STEP)
        out = ndimage.map_coordinates(self.env, idx, order=1, mode="nearest", prefilter=False)
        return out.reshape(q.shape[:-1])


def _indices(q: np.ndarray, origin: np.ndarray, step: float) -> np.ndarray:
    """``(3, N)`` fractional voxel indices of points ``q`` ``(..., 3)`` on a grid."""
    return ((q.reshape(-1, 3) - origin) / step).T.astype(np.float32)


@lru_cache(maxsize=1)
def load_atlas() -> Atlas:
    """The atlas, built on first use (a few seconds) and kept for the life of the process."""
    (t1, affine), (wm, wm_affine) = _read_template("t1"), _read_template("wm")
    if not np.allclose(affine, wm_affine) or not np.allclose(affine[:3, :3], np.eye(3)):
        raise RuntimeError(f"unexpected MNI152 template affines {affine.tolist()}, {wm_affine.tolist()}: "
                           "expected equal, 1 mm, axis-aligned")
    origin = affine[:3, 3].astype(np.float32)
    env, env_origin = _envelope_distance(t1 > BRAIN_THRESHOLD * 255, origin)
    atlas = Atlas(t1, wm, origin, env, env_origin, *_empty_sites())
    return _with_sites(atlas)


def template_file(kind: str) -> Path:
    """The packaged template file of ``kind`` (``t1``, ``wm``) inside the installed nilearn.

    Found without importing nilearn (which imports scikit-learn: seconds per worker process);
    ``nilearn.datasets.load_mni152_template(resolution=1)`` reads the same file (scaled to 0..1).

    Raises:
        RuntimeError: nilearn is not installed or does not ship the file.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nilearn is not installed: it ships the MNI152 templates (pip install -r requirements.txt)")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / TEMPLATE_FILES[kind]
    if not path.is_file():
        raise RuntimeError(f"{path}: the MNI152 template is missing from the installed nilearn")
    return path


def _read_template(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(map as uint8 0..255, affine) of a packaged template (stored as uint8 with maximum 255)."""
    import nibabel as nib

    image = nib.load(template_file(kind))
    data = np.asarray(image.dataobj)
    if data.dtype != np.uint8:
        data = np.round(data.astype(np.float32) / max(float(data.max()), 1e-6) * 255).astype(np.uint8)
    return data, np.asarray(image.affine, float)


def _empty_sites() -> tuple[np.ndarray, ...]:
    z = np.zeros((0, 3), np.float32)
    return z, np.zeros(0, np.float32), z, z, z


def _envelope_distance(brain: np.ndarray, origin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance to the closed brain mask, on the coarse grid of :data:`ENV_BOX`."""
    lo = np.array([b[0] for b in ENV_BOX], np.float32)
    shape = tuple(int(round((b[1] - b[0]) / ENV_STEP)) + 1 for b in ENV_BOX)
    axes = [lo[i] + ENV_STEP * np.arange(shape[i]) - origin[i] for i in range(3)]
    idx = np.meshgrid(*axes, indexing="ij")
    coarse = ndimage.map_coordinates(brain.astype(np.float32), idx, order=1, mode="constant") > 0.5
    r = CLOSING_MM / ENV_STEP
    dilated = ndimage.distance_transform_edt(~coarse) <= r
    closed = ndimage.distance_transform_edt(dilated) > r
    closed = ndimage.binary_fill_holes(closed)
    sd = ndimage.distance_transform_edt(~closed) - ndimage.distance_transform_edt(closed)
    sd = ndimage.gaussian_filter(sd * ENV_STEP, 1.0)  # smooth the voxel staircase
    return sd.astype(np.float32), lo


def _with_sites(atlas: Atlas) -> Atlas:
    """Fill in the lesion sites from the maps (deterministic)."""
    grid = np.stack(np.meshgrid(*[np.arange(0, n, 2) for n in atlas.wm.shape], indexing="ij"), -1)
    q = grid.reshape(-1, 3).astype(np.float32) + atlas.origin
    wm = atlas.wm[tuple(grid.reshape(-1, 3).T)] / 255.0
    depth = -atlas.envelope(q)
    keep = (wm > 0.75) & (q[:, 2] > -22) & (np.abs(q[:, 0]) > 6) & (depth > 10)
    env = atlas.env
    shape = env.shape
    cells = np.argwhere(np.abs(env) < 1.0)
    surface = cells.astype(np.float32) * ENV_STEP + atlas.env_origin
    grad = np.stack(np.gradient(env), -1)[tuple(cells.T)]
    normals = grad / np.maximum(np.linalg.norm(grad, axis=1, keepdims=True), 1e-6)
    inside_box = (cells > 2).all(1) & (cells < np.array(shape) - 3).all(1) & (surface[:, 2] > -60)
    ys, zs = np.meshgrid(np.arange(-80.0, 46.0, 2.0), np.arange(28.0, 80.0, 2.0), indexing="ij")
    falx = np.stack([np.zeros_like(ys), ys, zs], -1).reshape(-1, 3).astype(np.float32)
    falx = falx[atlas.envelope(falx) < -6]
    return Atlas(atlas.t1, atlas.wm, atlas.origin, env, atlas.env_origin, q[keep],
                 depth[keep].astype(np.float32), surface[inside_box], normals[inside_box].astype(np.float32), falx)
