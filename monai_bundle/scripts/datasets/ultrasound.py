"""A BUSI-like breast ultrasound set: ``python -m scripts.datasets ultrasound --out DIR``.

Layout and names as BUSI publishes them, so ``python -m scripts.prepare busi DIR`` reads it like
the real data::

    Dataset_BUSI_with_GT/{benign,malignant,normal}/<class> (<n>).png        3-channel grey PNG
                                                   <class> (<n>)_mask.png   0/255, empty for normal
                                                   <class> (<n>)_mask_1.png a second lesion (a few)

Default 780 images in BUSI's proportions (437 benign, 210 malignant, 133 normal); ``--n`` scales
them. Images are 400-620 x 450-700 pixels (the size says nothing about the class), from a linear
(70 %) or curved probe (:mod:`scripts.datasets.ultrasound_scene`, :mod:`scripts.datasets.ultrasound_image`).
Masks are an annotator's loose polygon around the true lesion, not the lesion itself. Normal
images hold confounders (dark fat lobules, ribs with their shadows), and every class can have
them. ``generator.json`` records the parameters, ``images.csv`` the lesion kind, probe and sizes.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from scripts.datasets.common import (DatasetError, Progress, build_atomically, class_counts, default_workers, run_jobs,
                                     save_png, to_uint8)
from scripts.datasets.ultrasound_image import annotate, form_beam_image, overlays, probe_extent, scan_convert
from scripts.datasets.ultrasound_scene import Lesion, Probe, draw_breast, draw_lesion

CLASSES = ["normal", "benign", "malignant"]
PROPORTIONS = {"benign": 437, "malignant": 210, "normal": 133}
SECOND_LESION_SHARE = 0.05  # lesion images with a second lesion, outlined in ``_mask_1``
GENERATOR_VERSION = 1
DEFAULT_N = 780


def _lesions(rng: np.random.Generator, name: str, breast, probe: Probe) -> tuple[list[Lesion], int]:
    """(the lesions to draw, how many of them are annotated); annotated ones come first."""
    kinds = []
    if name == "benign":
        kinds = ["cyst" if rng.random() < 0.3 else "benign"]
    elif name == "malignant":
        kinds = ["malignant"]
    if kinds and rng.random() < SECOND_LESION_SHARE:
        kinds.append("cyst" if name == "benign" and rng.random() < 0.5 else kinds[0])
    annotated = [draw_lesion(rng, k, breast, probe) for k in kinds]
    if len(annotated) == 2:  # keep the two apart: the second on the other side of the view
        first, second = annotated
        side = -np.sign(first.centre[0]) or 1.0
        room = max(0.0, probe.width / 2 - 1.15 * second.half_width)
        second.centre = (side * min(rng.uniform(0.2, 0.35) * probe.width, room), second.centre[1])
    n_lobules = int(rng.integers(1, 4)) if name == "normal" else int(rng.integers(0, 3))
    confounders = [draw_lesion(rng, "lobule", breast, probe) for _ in range(n_lobules)]
    return annotated + confounders, len(annotated)


def _layout(rng: np.random.Generator) -> tuple[tuple[int, int], Probe, float, tuple[int, int]]:
    """(canvas shape, probe, mm per pixel, top-left of the field of view): the view fills the canvas but
    for margins (scanner text above, black sides), as in BUSI's cropped screenshots."""
    shape = (int(rng.integers(400, 621)), int(rng.integers(450, 701)))
    top, side, bottom = int(rng.integers(8, 50)), int(rng.integers(4, 50)), int(rng.integers(2, 20))
    depth = rng.uniform(25.0, 50.0)
    px_mm = depth / (shape[0] - top - bottom)
    span = (shape[1] - 2 * side) * px_mm  # mm across the canvas
    if rng.random() < 0.7:
        probe = Probe(depth, span * rng.uniform(0.8, 1.0))
    else:  # a curved probe: the fan's width at its deepest point fits the canvas
        radius = rng.uniform(40.0, 70.0)
        theta = min(0.6, math.asin(min(0.95, span / 2 / (radius + depth))))
        probe = Probe(depth, 2 * radius * theta * rng.uniform(0.85, 1.0), radius)
        px_mm = max(px_mm, probe_extent(probe)[0] / (shape[0] - top - bottom))
    height, width = probe_extent(probe)
    left = max(0, (shape[1] - int(width / px_mm)) // 2 + int(rng.integers(-side // 2, side // 2 + 1)))
    return shape, probe, px_mm, (top, left)


def render_image(seed: tuple[int, ...], name: str) -> tuple[np.ndarray, list[np.ndarray], dict[str, Any]]:
    """One image of class ``name``: (uint8 (H, W), annotated masks uint8 0/1, info)."""
    rng = np.random.default_rng(seed)
    shape, probe, px_mm, top_left = _layout(rng)
    breast = draw_breast(rng, probe)
    lesions, n_annotated = _lesions(rng, name, breast, probe)
    height, width = probe_extent(probe)
    fov = (int(height / px_mm), int(width / px_mm))
    n_r, n_u = round(probe.depth / px_mm), round(probe.width / px_mm)
    beam, beam_masks = form_beam_image(rng, probe, breast, lesions, n_r, n_u)
    image = scan_convert(beam, probe, px_mm, shape, top_left)
    image = overlays(image, rng, top_left, fov, px_mm)
    masks = [scan_convert(m.astype(np.float32), probe, px_mm, shape, top_left) > 0.5
             for m in beam_masks[:n_annotated]]
    view = scan_convert(np.ones((n_r, n_u), np.float32), probe, px_mm, shape, top_left) > 0.5
    outlines = [annotate(m, rng) & view for m in masks]  # nobody outlines beyond the image
    info = {"kinds": "+".join(les.kind for les in lesions[:n_annotated]) or "none",
            "probe": "curved" if probe.radius > 0 else "linear", "depth_mm": round(probe.depth, 1),
            "true_pixels": int(sum(m.sum() for m in masks)), "mask_pixels": int(sum(o.sum() for o in outlines))}
    return to_uint8(image), outlines, info


def _job(args: tuple[Path, str, int, tuple[int, ...]]) -> int:
    root, name, index, seed = args
    image, outlines, info = render_image(seed, name)
    folder = root / "Dataset_BUSI_with_GT" / name
    stem = f"{name} ({index})"
    save_png(folder / f"{stem}.png", image, rgb=True)
    if not outlines:
        save_png(folder / f"{stem}_mask.png", np.zeros(image.shape, np.uint8))
    for k, outline in enumerate(outlines):
        save_png(folder / f"{stem}_mask{'' if k == 0 else f'_{k}'}.png", outline * np.uint8(255))
    row = {"image": stem, "class": name, "height": image.shape[0], "width": image.shape[1], **info}
    (root / ".rows" / f"{stem}.json").write_text(json.dumps(row))
    return 1


def plan(root: Path, seed: int, n: int) -> list[tuple[Path, str, int, tuple[int, ...]]]:
    """Every image: class, number within its class (BUSI numbers from 1), seed."""
    counts = class_counts(n, PROPORTIONS)
    return [(root, name, k + 1, (seed, 7, CLASSES.index(name), k)) for name in PROPORTIONS for k in range(counts[name])]


def _write_index(root: Path, params: dict[str, Any]) -> None:
    rows = sorted((json.loads(f.read_text()) for f in (root / ".rows").iterdir()),
                  key=lambda r: (r["class"], r["image"]))
    for f in (root / ".rows").iterdir():
        f.unlink()
    (root / ".rows").rmdir()
    with open(root / "images.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (root / "generator.json").write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")


def generate(out: str | Path, seed: int = 0, n: int = DEFAULT_N, workers: int | None = None, overwrite: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Generate ``n`` images into ``out`` (atomically); returns the parameters and the time taken.

    Raises:
        DatasetError: ``n`` below 6, or ``out`` in the way.
    """
    if n < 6:
        raise DatasetError(f"need n >= 6 images (two per class), got {n}")
    params = {"generator": "ultrasound", "version": GENERATOR_VERSION, "seed": seed, "n": n, "layout": "BUSI"}

    def build(root: Path) -> dict[str, Any]:
        for name in CLASSES:
            (root / "Dataset_BUSI_with_GT" / name).mkdir(parents=True)
        (root / ".rows").mkdir()
        bar = Progress("ultrasound", n, "images", progress)
        run_jobs(_job, plan(root, seed, n), default_workers() if workers is None else workers, bar)
        _write_index(root, params | {"counts": class_counts(n, PROPORTIONS)})
        return params | {"seconds": round(bar.seconds, 1)}

    return build_atomically(out, build, overwrite)
