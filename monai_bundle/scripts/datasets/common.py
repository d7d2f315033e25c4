"""Plumbing shared by the realistic data set generators: output folders, workers, progress, fields, files.

* :func:`build_atomically`: a data set is built in a hidden temporary folder beside ``out`` and
  renamed to ``out`` only when complete, so a crash or Ctrl-C never leaves half a data set.
* :func:`run_jobs`: renders independent jobs (one patient / one image each) in worker processes.
  Every job carries its own seed, so the files do not depend on the number of workers.
* :class:`PlaneWaves`: a smooth random field evaluable at any point (2D or 3D, mm units), cheap
  enough for per-pixel deformations, bias fields and lesion outlines.
"""

from __future__ import annotations

import gzip
import io
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

T = TypeVar("T")


class DatasetError(ValueError):
    """The data set cannot be generated as asked (bad option, output folder in the way)."""


def build_atomically(out: str | os.PathLike, build: Callable[[Path], T], overwrite: bool = False) -> T:
    """Run ``build(tmp)`` on a fresh temporary folder beside ``out``, then rename it to ``out``.

    Args:
        out: the final folder; its parent is created.
        build: writes the whole data set into the folder it is given; its result is returned.
        overwrite: replace an existing non-empty ``out`` (only after the new set is complete).

    Raises:
        DatasetError: ``out`` exists, is not empty and ``overwrite`` is False; or is a file.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise DatasetError(f"{out}: exists and is not an empty folder (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        result = build(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a data set is meant to be shared
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


class Progress:
    """A one-line progress report on stderr (``name: 120/1500 images, 8 s``), rewritten in place."""

    def __init__(self, name: str, total: int, unit: str, enabled: bool = True) -> None:
        self.name, self.total, self.unit, self.enabled = name, total, unit, enabled
        self.done, self.start, self._last = 0, time.monotonic(), 0.0

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units; redraw at most 4 times a second (and at the end)."""
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.25 or self.done >= self.total):
            self._last = now
            end = "\n" if self.done >= self.total else ""
            print(f"\r{self.name}: {self.done}/{self.total} {self.unit}, {now - self.start:.0f} s",
                  end=end, file=sys.stderr, flush=True)

    @property
    def seconds(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.start


def run_jobs(job: Callable[[Any], int], items: Sequence[Any], workers: int, progress: Progress,
             initializer: Callable[[], Any] | None = None) -> None:
    """Run ``job(item)`` for every item, in ``workers`` forked processes (0 or 1: in this process).

    ``job`` returns how many units (images, volumes) it wrote, for the progress line. ``initializer``
    runs first in this process (e.g. loading a template), so forked workers share its result.
    """
    if initializer is not None:
        initializer()
    if workers <= 1 or len(items) <= 1:
        for item in items:
            progress.update(job(item))
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for n in pool.imap_unordered(job, items, chunksize=1):
            progress.update(n)


def default_workers() -> int:
    """Worker processes to use: the CPUs this process may run on, at most 2 (a shared machine)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(2, n))


@dataclass
class PlaneWaves:
    """A smooth random field ``sum_i cos(k_i . q + phase_i)`` scaled to unit variance.

    ``k`` has one row per wave and one column per coordinate (2 or 3); coordinates in mm (or any
    unit the wavelengths were drawn in).
    """

    k: np.ndarray
    phase: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int, wavelength: tuple[float, float], dims: int = 3) -> PlaneWaves:
        """``n`` waves of random direction with wavelengths uniform in ``wavelength`` (same unit as the points)."""
        direction = rng.normal(size=(n, dims))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        magnitude = 2 * np.pi / rng.uniform(*wavelength, size=(n, 1))
        return cls((direction * magnitude).astype(np.float32), rng.uniform(0, 2 * np.pi, size=n).astype(np.float32))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """The field at ``points`` ``(..., dims)``: float32 ``(...)``."""
        phase = points.astype(np.float32, copy=False) @ self.k.T + self.phase  # (..., n)
        return np.cos(phase).sum(axis=-1) * np.float32(math.sqrt(2.0 / len(self.phase)))


@dataclass
class NoiseField:
    """Smooth random noise (unit variance, blobby, no lattice pattern), periodic, evaluable at any point.

    A random grid of ``cells`` per side and ``spacing`` apart, Gaussian-smoothed, sampled trilinearly
    (bilinearly in 2D) with wrap-around: a natural texture for tumour heterogeneity and speckle-free tissue.
    """

    grid: np.ndarray
    spacing: float

    @classmethod
    def draw(cls, rng: np.random.Generator, spacing: float, cells: int = 24, dims: int = 3) -> NoiseField:
        """A field whose blobs are about ``spacing`` (point units) across."""
        from scipy.ndimage import gaussian_filter

        grid = gaussian_filter(rng.standard_normal((cells,) * dims), 1.0, mode="wrap")
        return cls((grid / (grid.std() + 1e-9)).astype(np.float32), float(spacing))

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """The field at ``points`` ``(..., dims)``: float32 ``(...)``."""
        from scipy.ndimage import map_coordinates

        idx = (points.reshape(-1, points.shape[-1]) / np.float32(self.spacing)).T
        out = map_coordinates(self.grid, idx, output=np.float32, order=1, mode="grid-wrap", prefilter=False)
        return out.reshape(points.shape[:-1])


def on_coarse_grid(field: Callable[[np.ndarray], np.ndarray], points: np.ndarray, step: int = 4) -> np.ndarray:
    """``field(points)`` for a field that is smooth over ``step`` grid cells, at a fraction of the cost.

    ``points`` ``(*grid, d)`` must vary smoothly with the grid index (a slice or volume of points);
    the field is evaluated at every ``step``-th point along each grid axis (the last point included)
    and linearly interpolated in between. A single point or a small grid is evaluated exactly.
    """
    grid = points.shape[:-1]
    if len(grid) < 2 or min(grid) < 3 * step:
        return field(points)
    knots = [np.unique(np.r_[np.arange(0, n, step), n - 1]) for n in grid]
    values = field(points[np.ix_(*knots)])
    for axis, (k, n) in enumerate(zip(knots, grid)):
        at = np.arange(n)
        i = np.clip(np.searchsorted(k, at, side="right") - 1, 0, len(k) - 2)
        w = ((at - k[i]) / (k[i + 1] - k[i])).astype(np.float32)
        shape = [1] * values.ndim  # w varies along ``axis`` only (values may carry trailing components)
        shape[axis] = n
        w = w.reshape(shape)
        values = np.take(values, i, axis) * (1 - w) + np.take(values, i + 1, axis) * w
    return values.astype(np.float32)


def smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """0 below ``lo``, 1 above ``hi``, a smooth cubic between (float32)."""
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    return t * t * (3 - 2 * t)


def log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """A size drawn uniformly on a log scale (small lesions as common as large ones per octave)."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A float image in 0..1 as uint8 0..255 (clipped, rounded)."""
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def save_grey_jpeg(path: Path, plane: np.ndarray, quality: int = 90, rgb: bool = True) -> None:
    """Write a uint8 ``(H, W)`` plane as JPEG; ``rgb=True`` stores it as 3 equal channels (BRISC style)."""
    image = Image.fromarray(plane)
    image = image.convert("RGB") if rgb else image
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    path.write_bytes(buf.getvalue())


def save_png(path: Path, plane: np.ndarray, rgb: bool = False) -> None:
    """Write a uint8 ``(H, W)`` plane as PNG (grey, or 3 equal channels with ``rgb=True``)."""
    image = Image.fromarray(plane)
    (image.convert("RGB") if rgb else image).save(path, format="PNG", compress_level=6)


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    """NIfTI (``.nii.gz``) with qform and sform set to ``affine``; fixed gzip time, so equal data give equal bytes."""
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm")
    path.write_bytes(gzip.compress(image.to_bytes(), compresslevel=6, mtime=0))


def class_counts(total: int, proportions: dict[str, float]) -> dict[str, int]:
    """Split ``total`` into integer counts by ``proportions`` (largest remainders get the rest)."""
    weights = np.asarray(list(proportions.values()), float)
    exact = weights / weights.sum() * total
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return dict(zip(proportions, counts.tolist()))


def chunks(total: int, rng: np.random.Generator, low: int, high: int) -> Iterable[int]:
    """Random group sizes in ``low..high`` summing to ``total`` (slices per patient)."""
    left = total
    while left > 0:
        n = min(left, int(rng.integers(low, high + 1)))
        left -= n
        yield n
