"""A BRISC 2025-like brain MRI set on real anatomy: ``python -m scripts.datasets brain-mri --out DIR``.

Layout and names exactly as BRISC 2025 publishes them, so ``python -m scripts.prepare brisc DIR``
reads it through the same path as the real data::

    classification_task/{train,test}/{glioma,meningioma,no_tumor,pituitary}/<name>.jpg
    segmentation_task/{train,test}/images/<name>.jpg, masks/<name>.png   (tumour images only)
    <name> = brisc2025_<split>_<idx5>_<gl|me|pi|no>_<ax|co|sa>_t1

Images are 8-bit grey JPEGs (quality 90, stored RGB like BRISC's), masks 0/255 PNGs; no-tumour images
have no mask. Each patient (:mod:`scripts.datasets.brain_render`) gives 2-6 slices in random
planes, through the tumour when there is one; patients never straddle ``train`` and ``test``, and
indices are shuffled so nothing in a name tells which slices share a patient. Class shares follow
BRISC 2025 per split. ``generator.json`` records the parameters; ``slices.csv`` the patient, plane,
contrast and tumour size of every image. BRISC has no patient ids, so ``prepare brisc`` does not
read it; ``prepare brisc --groups-csv slices.csv`` does (its ``image`` and ``patient`` columns), to
draw validation by patient as a user who knows the patients would.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scripts.datasets.brain_atlas import load_atlas
from scripts.datasets.brain_render import draw_patient
from scripts.datasets.brain_slices import render_slice
from scripts.datasets.common import (DatasetError, Progress, build_atomically, chunks, class_counts, default_workers,
                                     run_jobs, save_grey_jpeg, save_png)

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]
CODES = {"glioma": "gl", "meningioma": "me", "no_tumor": "no", "pituitary": "pi"}
#: BRISC 2025 image counts per class (train; test is 254 / 306 / 140 / 300)
PROPORTIONS = {"train": {"glioma": 1147, "meningioma": 1329, "no_tumor": 1067, "pituitary": 1457},
               "test": {"glioma": 254, "meningioma": 306, "no_tumor": 140, "pituitary": 300}}
PLANE_SHARES = {"ax": 0.4, "co": 0.3, "sa": 0.3}
SLICES_PER_PATIENT = (2, 6)
GENERATOR_VERSION = 2  # 2: larger tumours, slices nearer their centre
DEFAULTS = {"n_train": 1200, "n_test": 300, "size": 512}


@dataclass
class PatientJob:
    """One patient to render: its class, seed and the names of its slices."""

    root: Path
    split: str
    label: int
    patient: str
    seed: tuple[int, ...]
    slices: list[tuple[str, str]]  # (file stem, plane)
    size: int


def image_name(split: str, index: int, class_name: str, plane: str) -> str:
    """The BRISC 2025 file stem of an image."""
    return f"brisc2025_{split}_{index:05d}_{CODES[class_name]}_{plane}_t1"


def plan(root: Path, seed: int, n_train: int, n_test: int, size: int) -> list[PatientJob]:
    """Every patient of both splits with the names of its slices (deterministic by ``seed``)."""
    jobs: list[PatientJob] = []
    for split_index, (split, total) in enumerate((("train", n_train), ("test", n_test))):
        rng = np.random.default_rng([seed, split_index, 101])
        patients = []
        for label, name in enumerate(CLASSES):
            n_images = class_counts(total, PROPORTIONS[split])[name]
            for k, n_slices in enumerate(chunks(n_images, rng, *SLICES_PER_PATIENT)):
                planes = rng.choice(list(PLANE_SHARES), size=n_slices, p=list(PLANE_SHARES.values()))
                patients.append((label, f"{split}-{name}-{k:04d}", (seed, split_index, label, k), list(planes)))
        indices = iter(rng.permutation(sum(len(p[3]) for p in patients)) + 1)
        for label, patient, pseed, planes in patients:
            slices = [(image_name(split, int(next(indices)), CLASSES[label], str(pl)), str(pl)) for pl in planes]
            jobs.append(PatientJob(root, split, label, patient, pseed, slices, size))
    return jobs


def render_patient(job: PatientJob) -> int:
    """Render and write one patient's slices; returns how many images it wrote."""
    atlas = load_atlas()
    rng = np.random.default_rng(job.seed)
    patient = draw_patient(rng, job.label, atlas)
    name = CLASSES[job.label]
    rows = []
    for stem, plane in job.slices:
        image, mask, info = render_slice(rng, patient, atlas, plane, job.size)
        cls_file = job.root / "classification_task" / job.split / name / f"{stem}.jpg"
        save_grey_jpeg(cls_file, image)
        if name != "no_tumor":
            seg = job.root / "segmentation_task" / job.split
            shutil.copyfile(cls_file, seg / "images" / f"{stem}.jpg")
            save_png(seg / "masks" / f"{stem}.png", mask * np.uint8(255))
        lesion = patient.lesion
        rows.append({"image": stem, "patient": job.patient, "class": name, "plane": plane,
                     "contrast": "T1c" if patient.contrast.t1c else "T1",
                     "tumor_radius_mm": round(lesion.radius, 1) if lesion else 0.0, **info})
    (job.root / ".rows" / f"{job.patient}.json").write_text(json.dumps(rows))
    return len(job.slices)


def _make_folders(root: Path) -> None:
    for split in ("train", "test"):
        for name in CLASSES:
            (root / "classification_task" / split / name).mkdir(parents=True)
        for sub in ("images", "masks"):
            (root / "segmentation_task" / split / sub).mkdir(parents=True)
    (root / ".rows").mkdir()


def _write_index(root: Path, params: dict[str, Any]) -> None:
    """``slices.csv`` (one row per image, sorted by name) and ``generator.json``; drops the scratch rows."""
    rows = sorted((r for f in sorted((root / ".rows").iterdir()) for r in json.loads(f.read_text())),
                  key=lambda r: r["image"])
    with open(root / "slices.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    shutil.rmtree(root / ".rows")
    (root / "generator.json").write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")


def generate(out: str | Path, seed: int = 0, n_train: int = DEFAULTS["n_train"], n_test: int = DEFAULTS["n_test"],
             size: int = DEFAULTS["size"], workers: int | None = None, overwrite: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Generate the set into ``out`` (atomically); returns the parameters and the time taken.

    Raises:
        DatasetError: bad counts or size, or ``out`` in the way (see :func:`build_atomically`).
    """
    if n_train < 4 or n_test < 0 or not 64 <= size <= 2048:
        raise DatasetError(f"need n_train >= 4, n_test >= 0 and 64 <= size <= 2048, got {n_train}, {n_test}, {size}")
    params = {"generator": "brain-mri", "version": GENERATOR_VERSION, "seed": seed, "n_train": n_train,
              "n_test": n_test, "size": size, "layout": "BRISC 2025"}

    def build(root: Path) -> dict[str, Any]:
        _make_folders(root)
        jobs = plan(root, seed, n_train, n_test, size)
        bar = Progress("brain-mri", n_train + n_test, "images", progress)
        run_jobs(render_patient, jobs, default_workers() if workers is None else workers, bar, initializer=load_atlas)
        _write_index(root, params | {"patients": len(jobs)})
        return params | {"patients": len(jobs), "seconds": round(bar.seconds, 1)}

    return build_atomically(out, build, overwrite)
