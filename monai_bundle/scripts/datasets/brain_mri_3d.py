"""3D brain MRI volumes in the MSD layout: ``python -m scripts.datasets brain-mri-3d --out DIR``.

The same patients as the 2D set (:mod:`scripts.datasets.brain_render`), rendered on whole 3D grids
and written as the Medical Segmentation Decathlon publishes a task, plus the class table
``python -m scripts.prepare msd DIR --out P --classes-csv DIR/classes.csv`` needs::

    dataset.json              modality {"0": "T1c"}, labels {"0": "background", "1": "tumor"}, training list
    imagesTr/brain_NNN.nii.gz int16 volume        labelsTr/brain_NNN.nii.gz uint8 0/1, same affine
    classes.csv               case,class   (glioma / meningioma / no_tumor / pituitary)
    volumes.csv               orientation, spacing, shape and tumour size per case (for analysis)

Volumes are stored in mixed orientations (RAS, LPS, left-handed LAS, an oblique rotation) and
mixed spacings (isotropic ``base`` mm, or ``0.9 base`` in plane with ``3 base`` thick slices, whose
slice profile is integrated), each with the affine that puts the anatomy where it physically is:
resampled to a common grid, two storings of one patient agree. ``base`` defaults to 2 mm (a head
of about 90 x 115 x 100 voxels), small enough to train on 2 CPU cores; ``--base-mm 1`` gives 1 mm and
0.9 x 0.9 x 3 mm.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from scripts.datasets.brain_atlas import load_atlas
from scripts.datasets.brain_render import HEAD_CENTRE, acquire, draw_patient, render, to_patient
from scripts.datasets.common import (DatasetError, Progress, build_atomically, default_workers, run_jobs,
                                     save_nifti)

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]
#: stored axis directions (columns of the affine's rotation, RAS world)
ORIENTATIONS = {"RAS": np.eye(3), "LPS": np.diag([-1.0, -1.0, 1.0]), "LAS": np.diag([-1.0, 1.0, 1.0])}
OBLIQUE_DEG = (14.0, -9.0, 6.0)  # rotations about x, y, z of the oblique storing
SPACINGS = {"iso": (1.0, 1.0, 1.0), "thick": (0.9, 0.9, 3.0)}  # times the base spacing
#: the physical box (mm, patient x, y, z) a volume covers, centred on the head
EXTENT_MM = (180.0, 226.0, 196.0)
GENERATOR_VERSION = 2  # 2: larger tumours
DEFAULTS = {"n": 24, "base_mm": 2.0}


def orientation_matrix(name: str) -> np.ndarray:
    """Unit axis directions (3x3, columns) of a stored orientation: RAS, LPS, LAS or oblique.

    Raises:
        ValueError: an unknown name.
    """
    if name in ORIENTATIONS:
        return ORIENTATIONS[name].copy()
    if name != "oblique":
        raise ValueError(f"orientation must be one of {[*ORIENTATIONS, 'oblique']}, got {name!r}")
    out = np.eye(3)
    for axis, deg in enumerate(OBLIQUE_DEG):
        c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = r @ out
    return out


def volume_grid(centre: np.ndarray, orientation: str,
                spacing: tuple[float, float, float]) -> tuple[tuple[int, ...], np.ndarray]:
    """``(shape, affine)`` of a grid covering :data:`EXTENT_MM` around ``centre`` (patient mm)."""
    direction = orientation_matrix(orientation)
    spacing = np.asarray(spacing, float)
    shape = tuple(int(math.ceil(e / s)) for e, s in zip(EXTENT_MM, spacing))
    linear = direction * spacing  # column k: the world step of index k
    origin = np.asarray(centre, float) - linear @ ((np.asarray(shape) - 1) / 2)
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = linear, origin
    return shape, affine


def render_volume(seed: tuple[int, ...], label: int, orientation: str, spacing: tuple[float, float, float],
                  scanner: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """One patient stored on one grid: ``(image float32 0..1, mask uint8, affine, info)``.

    The patient is a function of ``seed`` and ``label`` only: the same patient rendered with another
    orientation or spacing has the same anatomy in the world. Thick slices average sub-slices
    (slice profile); ``scanner=False`` leaves out blur, noise and windowing (for comparisons).
    """
    atlas = load_atlas()
    rng = np.random.default_rng(seed)
    patient = draw_patient(rng, label, atlas, t1c=True)
    centre = to_patient(patient, HEAD_CENTRE + np.float32([0, 6, -8]))
    shape, affine = volume_grid(centre, orientation, spacing)
    sub = max(1, int(round(spacing[2] / min(spacing[:2]))))  # sub-slices through a thick slice
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), -1)
    image = np.zeros(shape, np.float32)
    mask = np.zeros(shape, np.float32)
    for s in range(sub):
        shifted = ijk + np.float32([0, 0, (s + 0.5) / sub - 0.5])
        points = shifted @ affine[:3, :3].T.astype(np.float32) + affine[:3, 3].astype(np.float32)
        im, m = render(patient, atlas, points)
        image += im / sub
        mask += m / np.float32(sub)
    if scanner:
        image = acquire(patient, image, tuple(spacing), np.random.default_rng([*seed, 99]))
    info = {"tumor_radius_mm": round(patient.lesion.radius, 1) if patient.lesion else 0.0}
    return image, (mask >= 0.5).astype(np.uint8), affine, info


def _job(args: tuple[Path, str, tuple[int, ...], int, str, str, float]) -> int:
    root, case, seed, label, orientation, kind, base = args
    spacing = tuple(base * f for f in SPACINGS[kind])
    image, mask, affine, info = render_volume(seed, label, orientation, spacing)
    save_nifti(root / "imagesTr" / f"{case}.nii.gz", np.round(image * 1000).astype(np.int16), affine)
    save_nifti(root / "labelsTr" / f"{case}.nii.gz", mask, affine)
    row = {"case": case, "class": CLASSES[label], "orientation": orientation,
           "spacing_mm": "x".join(f"{s:g}" for s in spacing),
           "shape": "x".join(map(str, image.shape)), **info}
    (root / ".rows" / f"{case}.json").write_text(json.dumps(row))
    return 1


def plan(root: Path, seed: int, n: int, base_mm: float) -> list[tuple]:
    """The cases: balanced classes, orientations cycling through all four, spacings mixed."""
    rng = np.random.default_rng([seed, 303])
    labels = rng.permutation(np.arange(n) % len(CLASSES))
    names = [*ORIENTATIONS, "oblique"]
    orientations = rng.permutation(np.arange(n) % len(names))
    kinds = rng.permutation(np.arange(n) % 2)
    return [(root, f"brain_{i + 1:03d}", (seed, 3, i), int(labels[i]), names[orientations[i]],
             list(SPACINGS)[kinds[i]], base_mm) for i in range(n)]


def _write_tables(root: Path, params: dict[str, Any]) -> None:
    rows = [json.loads(f.read_text()) for f in sorted((root / ".rows").iterdir())]
    for f in (root / ".rows").iterdir():
        f.unlink()
    (root / ".rows").rmdir()
    training = [{"image": f"./imagesTr/{r['case']}.nii.gz", "label": f"./labelsTr/{r['case']}.nii.gz"} for r in rows]
    dataset = {"name": "SyntheticBrainMRI3D", "description": "synthetic brain MRI (T1c) on the MNI152 anatomy",
               "tensorImageSize": "3D", "modality": {"0": "T1c"}, "labels": {"0": "background", "1": "tumor"},
               "numTraining": len(rows), "numTest": 0, "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n", encoding="utf-8")
    for name, fields in (("classes.csv", ["case", "class"]), ("volumes.csv", list(rows[0]))):
        with open(root / name, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    (root / "generator.json").write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")


def generate(out: str | Path, seed: int = 0, n: int = DEFAULTS["n"], base_mm: float = DEFAULTS["base_mm"],
             workers: int | None = None, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Generate ``n`` volumes into ``out`` (atomically); returns the parameters and the time taken.

    Raises:
        DatasetError: ``n`` below 4, ``base_mm`` outside 0.8..4, or ``out`` in the way.
    """
    if n < 4 or not 0.8 <= base_mm <= 4.0:
        raise DatasetError(f"need n >= 4 and 0.8 <= base_mm <= 4, got n={n}, base_mm={base_mm}")
    params = {"generator": "brain-mri-3d", "version": GENERATOR_VERSION, "seed": seed, "n": n, "base_mm": base_mm,
              "layout": "MSD"}

    def build(root: Path) -> dict[str, Any]:
        for sub in ("imagesTr", "labelsTr", ".rows"):
            (root / sub).mkdir()
        bar = Progress("brain-mri-3d", n, "volumes", progress)
        run_jobs(_job, plan(root, seed, n, base_mm), default_workers() if workers is None else workers, bar,
                 initializer=load_atlas)
        _write_tables(root, params)
        return params | {"seconds": round(bar.seconds, 1)}

    return build_atomically(out, build, overwrite)
