"""Breast ultrasound image formation: beams, speckle, gain, log compression, scan conversion, annotation.

:func:`form_beam_image` turns the tissue maps of :mod:`scripts.datasets.ultrasound_scene` into a
B-mode image on the beam grid: amplitude ``sqrt(E)`` times the transmission left after attenuation
along the beam, times a time-gain-compensation curve that never quite matches the attenuation,
times fully developed speckle (the envelope of Gaussian-filtered complex noise: Rayleigh amplitude,
grain set by the axial and lateral resolution, the lateral one widening away from the focus), plus
an electronic noise floor, then log-compressed over a 45-65 dB dynamic range. :func:`scan_convert`
puts it on the display (a rectangle for a linear probe, a fan for a curved one). :func:`annotate`
draws the loose polygon an annotator would have clicked around the true lesion.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from scripts.datasets.common import PlaneWaves
from scripts.datasets.ultrasound_scene import Breast, Lesion, Probe, paint_lesion, tissue_maps


def _speckle(rng: np.random.Generator, shape: tuple[int, int], sigma_r: float, sigma_u: tuple[float, float],
             near_weight: np.ndarray, looks: int) -> np.ndarray:
    """Speckle amplitude with unit mean power: Rayleigh for one look, narrower when ``looks`` are compounded.

    The lateral grain is ``sigma_u[0]`` pixels at the focus and ``sigma_u[1]`` far from it.
    """
    power = np.zeros(shape, np.float32)
    norm = np.sqrt(near_weight ** 2 + (1 - near_weight) ** 2)
    for _ in range(looks):
        noise = rng.standard_normal((2,) + shape, dtype=np.float32)
        axial = ndimage.gaussian_filter1d(noise, sigma_r, axis=1, mode="wrap")  # (re, im), filtered along depth
        fields = []
        for su in sigma_u:
            field = ndimage.gaussian_filter1d(axial, su, axis=2, mode="wrap")
            fields.append(field / math.sqrt(float(np.mean(field * field)) * 2 + 1e-12))
        mixed = (near_weight * fields[0] + (1 - near_weight) * fields[1]) / norm
        power += mixed[0] ** 2 + mixed[1] ** 2
    return np.sqrt(power / looks).astype(np.float32)


def form_beam_image(rng: np.random.Generator, probe: Probe, breast: Breast, lesions: list[Lesion], n_r: int,
                    n_u: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The B-mode image (float32 0..1, rows = depth) on an ``n_r`` x ``n_u`` beam grid, and each lesion's mask."""
    dr, du = probe.depth / n_r, probe.width / n_u
    r = ((np.arange(n_r, dtype=np.float32) + 0.5) * dr)[:, None] * np.ones((1, n_u), np.float32)
    u = ((np.arange(n_u, dtype=np.float32) + 0.5 - n_u / 2) * du)[None, :] * np.ones((n_r, 1), np.float32)
    x, z = probe.physical(r, u)
    echo, alpha = tissue_maps(breast, r, x, z)
    masks = []
    for les in lesions:
        echo, alpha, mask = paint_lesion(echo, alpha, les, x, z, rng)
        masks.append(mask)
    transmission = np.exp(-np.cumsum(alpha, axis=0) * dr)
    focus = rng.uniform(0.3, 0.7) * probe.depth
    near = np.exp(-(((r - focus) / (0.35 * probe.depth)) ** 2))
    speckle = _speckle(rng, (n_r, n_u), rng.uniform(0.07, 0.14) / dr,
                       (rng.uniform(0.15, 0.3) / du, rng.uniform(0.3, 0.5) / du), near, int(rng.integers(1, 4)))
    tgc = PlaneWaves.draw(rng, 3, (15.0, 60.0), dims=1)(r[..., None]) * rng.uniform(0.5, 2.5)
    gain_db = rng.uniform(-0.35, 0.15) * r + tgc - 6 * (np.abs(u) / (probe.width / 2)) ** 4  # TGC mismatch, edges
    envelope = np.sqrt(echo) * transmission * 10 ** (gain_db / 20) * speckle
    floor = np.abs(rng.standard_normal((n_r, n_u)) + 1j * rng.standard_normal((n_r, n_u))) * 10 ** (rng.uniform(-4, -3))
    db = ndimage.gaussian_filter(20 * np.log10(envelope + floor + 1e-9), rng.uniform(0.3, 1.0))  # scanner smoothing
    dynamic = rng.uniform(30.0, 48.0)  # dB from black to white after the scanner's post-processing
    middle = float(np.median(db))
    return np.clip(rng.uniform(0.3, 0.5) + (db - middle) / dynamic, 0, 1).astype(np.float32), masks


def scan_convert(beam: np.ndarray, probe: Probe, px_mm: float, shape: tuple[int, int],
                 top_left: tuple[int, int], order: int = 1) -> np.ndarray:
    """Put a beam-grid image onto a display canvas of ``shape`` (0 outside the field of view).

    The centre of the probe face sits at ``top_left`` + half the field of view's width; pixels are
    ``px_mm`` square. ``order`` 1 for images, 1 then a 0.5 cut for masks.
    """
    n_r, n_u = beam.shape
    if probe.radius <= 0 and (n_r, n_u) == (round(probe.depth / px_mm), round(probe.width / px_mm)):
        out = np.zeros(shape, np.float32)  # linear probe, beam grid at display pixels: paste it
        out[top_left[0]:top_left[0] + n_r, top_left[1]:top_left[1] + n_u] = beam
        return out
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    height, width = probe_extent(probe)
    x = (cols + 0.5 - top_left[1]) * px_mm - width / 2
    z = (rows + 0.5 - top_left[0]) * px_mm + (probe.depth - height)  # a fan's skin arc rises above z = 0
    r, u = probe.beam(x, z)
    ri = r / probe.depth * n_r - 0.5
    ui = (u / probe.width + 0.5) * n_u - 0.5
    inside = (r >= 0) & (r <= probe.depth) & (np.abs(u) <= probe.width / 2)
    out = ndimage.map_coordinates(beam.astype(np.float32), [ri, ui], order=order, mode="nearest")
    return np.where(inside, out, 0).astype(np.float32)


def probe_extent(probe: Probe) -> tuple[float, float]:
    """(height, width) in mm of the field of view's bounding box on the display."""
    if probe.radius <= 0:
        return probe.depth, probe.width
    theta = probe.width / 2 / probe.radius
    rho = probe.radius + probe.depth
    return rho - probe.radius * math.cos(theta), 2 * rho * math.sin(theta)


def annotate(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A loose annotator outline of ``mask``: a smoothed polygon a few pixels off the true edge (uint8 0/1)."""
    if not mask.any():
        return mask.astype(np.uint8)
    centre = np.argwhere(mask).mean(0)
    n = int(rng.integers(12, 32))
    if rng.random() < 0.3:  # clicks at uneven angles
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    else:
        angles = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 0.3)
    limit = max(mask.shape)
    steps = np.arange(0, limit, 0.5)
    radii = []
    for a in angles:
        rr = np.clip(np.round(centre[0] + steps * np.sin(a)).astype(int), 0, mask.shape[0] - 1)
        cc = np.clip(np.round(centre[1] + steps * np.cos(a)).astype(int), 0, mask.shape[1] - 1)
        hits = np.flatnonzero(mask[rr, cc])
        radii.append(steps[hits[-1]] if hits.size else 0.0)
    radii = np.asarray(radii)
    size = max(2.0, float(np.sqrt(mask.sum())))
    radii = radii + rng.uniform(-0.06, 0.12) * size + rng.normal(0, 0.03 * size, n)
    radii = np.convolve(np.r_[radii[-1], radii, radii[0]], [0.25, 0.5, 0.25], mode="valid")  # a steady hand
    poly = [(float(centre[1] + max(rad, 1.0) * np.cos(a)), float(centre[0] + max(rad, 1.0) * np.sin(a)))
            for a, rad in zip(angles, radii)]
    canvas = Image.new("L", (mask.shape[1], mask.shape[0]), 0)
    ImageDraw.Draw(canvas).polygon(poly, fill=1)
    return np.asarray(canvas, np.uint8)


def overlays(image: np.ndarray, rng: np.random.Generator, top_left: tuple[int, int], fov_px: tuple[int, int],
             px_mm: float) -> np.ndarray:
    """Scanner overlays outside the lesion area: a depth scale of dots and a few lines of 'text'."""
    out = image.copy()
    if rng.random() < 0.7:
        col = min(out.shape[1] - 3, top_left[1] + fov_px[1] + int(rng.integers(3, 12)))
        step = (5.0 if rng.random() < 0.5 else 10.0) / px_mm
        for k in range(int(fov_px[0] / step) + 1):
            row = int(top_left[0] + k * step)
            if row < out.shape[0] - 2:
                out[row:row + 2, col:col + 2] = 0.9
    if rng.random() < 0.6 and top_left[0] > 14:
        for line in range(int(rng.integers(1, 3))):
            row = 3 + 9 * line
            start = int(rng.integers(4, max(5, out.shape[1] // 3)))
            for k in range(int(rng.integers(4, 14))):
                if rng.random() < 0.85 and row + 6 < top_left[0]:
                    c = start + 6 * k
                    out[row:row + 6, c:c + 4] = np.where(rng.random((6, 4)) < 0.55, 0.85, out[row:row + 6, c:c + 4])
    return out
