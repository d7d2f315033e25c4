"""Helpers of the web demo (``app.py``) that are not inference: uploads, overlays, text, examples.

Everything the model sees is prepared by :class:`scripts.inference.Predictor`, which also unpacks an
uploaded zip of a DICOM series; this module only checks an upload's type and draws what the
Predictor returned. Raster images
``(C, H, W)`` are drawn as they are; a volume ``(C, X, Y, Z)`` is first put in the display
orientation of a radiologist's viewer by :func:`display_arrays` (the prediction's
:class:`~scripts.inference.orientation.DisplayView`, the one a 2D model sees: axial rows A->P,
columns R->L, so heads stand upright), then drawn one slice at a time along its last axis.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scripts.atomic import atomic_path

if TYPE_CHECKING:  # the page reads results through scripts.inference.result (its import loads the whole API)
    from scripts.inference.result import Result

#: file endings the demo accepts (a DICOM series comes as a zip of its files)
SUPPORTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".nii", ".nii.gz", ".nrrd", ".dcm", ".zip")
#: RGB per segment value 1, 2, ...: red first (the tumor), then distinct hues
PALETTE = ((255, 48, 48), (48, 200, 255), (255, 210, 0), (80, 230, 80), (220, 80, 255))
CONTOUR_RGB = (255, 255, 0)
#: uncertainty heat map: colour from LOW_RGB (value 0) to HIGH_RGB (value 1); values below SHOW_FROM not drawn
LOW_RGB, HIGH_RGB, SHOW_FROM = (255, 230, 0), (255, 0, 0), 0.05


class UploadError(ValueError):
    """An upload the demo cannot use; the message names the file and the problem."""


def supported(name: str) -> bool:
    """Whether a file name has one of :data:`SUPPORTED_SUFFIXES` (case-insensitive)."""
    return name.lower().endswith(SUPPORTED_SUFFIXES)


def check_upload(path: str | os.PathLike) -> Path:
    """The uploaded file, to hand to the Predictor as it is, after the demo's own checks.

    A zip of a DICOM series is unpacked by the Predictor's reader (:mod:`scripts.inference.archive`,
    the same code and safety limits as the command line), not here.

    Raises:
        UploadError: the file is missing, empty, or of a type the demo does not take.
    """
    path = Path(path)
    if not path.is_file():
        raise UploadError(f"{path.name}: file not found")
    if not supported(path.name):
        raise UploadError(f"{path.name}: unsupported file type; upload PNG/JPG, NIfTI (.nii/.nii.gz), "
                          "NRRD, a DICOM file or a zip of a DICOM series")
    if path.stat().st_size == 0:
        raise UploadError(f"{path.name}: the file is empty")
    return path


def plain_error(message: str, upload: str | os.PathLike) -> str:
    """An error message without the server's upload folder: the user knows the file by its name
    (a member of an uploaded zip reads ``study.zip/series/IM1.dcm``)."""
    return message.replace(str(Path(upload).parent) + os.sep, "")


def display_arrays(image: np.ndarray, label: np.ndarray, view: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """A prediction's image and label in display orientation, slices last, for the drawing functions.

    Args:
        image: ``(C, H, W)`` or ``(C, X, Y[, Z])``, as the Predictor read it (``Prediction.image``).
        label: ``(H, W)`` or ``(X, Y[, Z])`` on the same grid (``Prediction.label``).
        view: ``Prediction.view`` (a ``DisplayView``); None for PNG/JPG images, returned as they are.

    Returns:
        ``(C, rows, cols, N)`` and ``(rows, cols, N)`` for a volume; ``(C, rows, cols)`` and
        ``(rows, cols)`` for a 2D grid (a 2D NIfTI/NRRD) or a raster image.

    Raises:
        ValueError: the image and label grids differ.
    """
    if image.shape[1:] != label.shape:
        raise ValueError(f"image grid {image.shape[1:]} differs from label grid {label.shape}")
    if view is None:
        return image, label
    flat = label.ndim == 2
    img_shown = np.moveaxis(view.to_slices(image[..., None] if flat else image), 1, -1)  # (C, rows, cols, N)
    return (img_shown[..., 0] if flat else img_shown), display_map(label, view)


def display_map(values: np.ndarray, view: Any = None) -> np.ndarray:
    """A voxel map on the label's grid (the label itself, ``Prediction.uncertainty``) in display
    orientation, slices last: ``(rows, cols, N)`` for a volume, ``(rows, cols)`` for a 2D grid; as it
    is without a view (PNG/JPG)."""
    if view is None:
        return values
    flat = values.ndim == 2
    shown = np.moveaxis(view.to_slices((values[..., None] if flat else values)[None])[0], 0, -1)  # (rows, cols, N)
    return shown[..., 0] if flat else shown


def num_slices(label: np.ndarray) -> int:
    """How many slices the viewer offers: 1 for a 2D ``(H, W)`` map, ``Z`` for ``(X, Y, Z)``."""
    return 1 if label.ndim == 2 else int(label.shape[-1])


def best_slice(label: np.ndarray) -> int:
    """The slice with the most tumor (the middle one when there is none); 0 for 2D maps."""
    if label.ndim == 2:
        return 0
    area = (label > 0).reshape(-1, label.shape[-1]).sum(axis=0)  # (X*Y, Z) -> per-slice count (Z,)
    return int(area.argmax()) if area.any() else label.shape[-1] // 2


def slice_view(image: np.ndarray, label: np.ndarray, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One 2D view of a prediction: image ``(C, rows, cols)`` and label ``(rows, cols)``.

    Args:
        image: ``(C, H, W)`` or ``(C, rows, cols, N)`` (:func:`display_arrays`).
        label: ``(H, W)`` or ``(rows, cols, N)``.
        index: slice along the last axis (ignored for 2D).

    Raises:
        ValueError: the image and label grids differ, or ``index`` is outside ``0..Z-1``.
    """
    if image.shape[1:] != label.shape:
        raise ValueError(f"image grid {image.shape[1:]} differs from label grid {label.shape}")
    if label.ndim == 2:
        return image, label
    if not 0 <= index < label.shape[-1]:
        raise ValueError(f"slice {index} is outside 0..{label.shape[-1] - 1}")
    return image[..., index], label[..., index]  # (C, rows, cols, N) -> (C, rows, cols)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Display an image ``(C, H, W)`` as RGB uint8 ``(H, W, 3)``, windowed to 0.5..99.5 percentiles.

    Three or four channels are shown as colour, anything else by its first channel in grey.
    """
    planes = image[:3] if image.shape[0] in (3, 4) else image[:1]
    lo, hi = np.percentile(planes, [0.5, 99.5])
    scaled = np.zeros(planes.shape, np.float32) if hi <= lo else np.clip((planes - lo) / (hi - lo), 0, 1)
    rgb = np.moveaxis((scaled * 255).astype(np.uint8), 0, -1)  # (c, H, W) -> (H, W, c)
    return np.repeat(rgb, 3, axis=-1) if rgb.shape[-1] == 1 else rgb


def render_overlay(image: np.ndarray, label: np.ndarray, index: int = 0, opacity: float = 0.4,
                   min_size: int = 384) -> np.ndarray:
    """The image with each segment filled at ``opacity`` and outlined, as RGB uint8 ``(rows, cols, 3)``.

    The label map is drawn on the image's own grid (original resolution). Small images are enlarged
    by an integer nearest-neighbour factor to at least ``min_size`` pixels so the outline stays thin;
    every output pixel still belongs to exactly one input pixel.

    Args:
        image: ``(C, H, W)`` or ``(C, rows, cols, N)`` float (:func:`display_arrays` of a prediction).
        label: ``(H, W)`` or ``(rows, cols, N)`` uint8, 0 = background.
        index: slice along the last axis for volumes.
        opacity: fill opacity 0..1 (the outline is always drawn).

    Raises:
        ValueError: see :func:`slice_view`; ``opacity`` outside 0..1.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be within 0..1, got {opacity}")
    img2d, lab2d = slice_view(image, label, index)
    rgb, factor = _enlarged_rgb(img2d, lab2d.shape, min_size)
    lab = np.kron(lab2d, np.ones((factor, factor), lab2d.dtype))
    for value in np.unique(lab[lab > 0]):
        color = np.array(PALETTE[(int(value) - 1) % len(PALETTE)], np.float32)
        rgb[lab == value] = (1 - opacity) * rgb[lab == value] + opacity * color
    rgb[_outline(lab)] = CONTOUR_RGB
    return rgb.round().astype(np.uint8)


def render_uncertainty(image: np.ndarray, values: np.ndarray, index: int = 0, min_size: int = 384) -> np.ndarray:
    """The image with a voxel-wise uncertainty map (0..1) laid over it as heat, RGB uint8 ``(rows, cols, 3)``.

    A pixel's colour runs from :data:`LOW_RGB` to :data:`HIGH_RGB` with its value, and so does its opacity
    (0 -> clear, 1 -> opaque); values below :data:`SHOW_FROM` leave the image as it is. Same grid,
    slicing and enlargement as :func:`render_overlay`.

    Raises:
        ValueError: see :func:`slice_view`.
    """
    img2d, u2d = slice_view(image, values, index)
    rgb, factor = _enlarged_rgb(img2d, u2d.shape, min_size)
    u = np.kron(np.clip(u2d.astype(np.float32), 0, 1), np.ones((factor, factor), np.float32))[..., None]  # (r, c, 1)
    heat = (1 - u) * np.array(LOW_RGB, np.float32) + u * np.array(HIGH_RGB, np.float32)
    alpha = np.where(u >= SHOW_FROM, u, 0.0)
    return ((1 - alpha) * rgb + alpha * heat).round().astype(np.uint8)


def _enlarged_rgb(img2d: np.ndarray, shape: tuple[int, ...], min_size: int) -> tuple[np.ndarray, int]:
    """The slice as float32 RGB enlarged by the integer factor that brings ``shape``'s shortest side to at
    least ``min_size`` (nearest neighbour), and that factor."""
    factor = max(1, -(-min_size // max(1, min(shape))))  # ceil(min_size / shortest side)
    return np.kron(to_rgb(img2d), np.ones((factor, factor, 1), np.uint8)).astype(np.float32), factor


def _outline(lab: np.ndarray) -> np.ndarray:
    """Pixels of a segment with a 4-neighbour of another value: a one-pixel inner contour."""
    edge = np.zeros(lab.shape, bool)
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    return edge & (lab > 0)


def probabilities(result: Result) -> dict[str, float]:
    """``{class name: probability}`` of a result, for ``gr.Label``."""
    return dict(result.diagnosis.probabilities)


def summary_markdown(result: Result) -> str:
    """What a person reads beside the image: diagnosis, tumor size, model, device and warnings.

    Args:
        result: a study's result as the contract reads it (:func:`scripts.inference.result.read_result`
            of the ``<name>_result.json`` the Predictor wrote). A segment's size is what the result holds:
            its volume in mL and voxels for a volume, its pixels for a 2D image (which has no volume).
    """
    diag = result.diagnosis
    lines = [f"**Diagnosis: {diag.label}** ({100 * diag.probability:.1f} %)", ""]
    for seg in result.segmentation.segments:
        if seg.volume_ml is not None:
            lines.append(f"- {seg.name}: volume {seg.volume_ml:.2f} mL ({seg.voxels} voxels)")
        else:
            lines.append(f"- {seg.name}: area {seg.voxels} pixels")
    u = result.segmentation.uncertainty
    if u is not None:
        lines.append(f"- segmentation uncertainty (flip TTA): {u:.2f} of 1")
    elif result.tta is False:  # tta absent (None): a result older than the measurement, nothing to say
        lines.append("- segmentation uncertainty: not measured (flip TTA off)")
    model, times = result.model, result.timings_s or {}
    model_text = f"{model.name} {model.version}" if model is not None else "?"
    lines += ["", f"Model {model_text} on {result.device or '?'}, "
              f"{sum(times.values()):.2f} s (read, infer, write)"]
    lines += [f"- ⚠ {w}" for w in result.warnings or ()]
    return "\n".join(lines)


def write_examples(folder: str | os.PathLike, seed: int = 0, size: int = 128) -> list[Path]:
    """Example inputs from the built-in synthetic data: a ``size``² PNG per class and a NIfTI volume.

    Written once (atomically); files already present are reused, so a restart costs nothing.
    """
    from scripts import synthetic  # imported here: drawing and unpacking do not need scipy

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spacing = (1.5, 1.5, 5.0)  # a 19 cm field of view at 128 px, thick axial slices

    def slice_png(k: int):
        return lambda p: _save_png(p, synthetic.make_slice(np.random.default_rng([seed, k]), k, size)[0])

    def volume_nifti(k: int):
        return lambda p: _save_nifti(p, synthetic.make_volume(seed, k, (size, size, 24), spacing)[0], spacing)

    # rendering costs seconds: makers run only for files not yet on disk
    makers = {f"example_{name}.png": slice_png(k) for k, name in enumerate(synthetic.CLASSES)}
    makers["example_glioma_volume.nii.gz"] = volume_nifti(synthetic.CLASSES.index("glioma"))
    return [_write_atomic(folder / name, make) for name, make in makers.items()]


def prune_runs(workdir: str | os.PathLike, max_age_s: float = 3600.0) -> int:
    """Delete per-run folders in ``workdir`` older than ``max_age_s`` (their files were served); returns the count."""
    removed = 0
    for run in Path(workdir).iterdir():
        if run.is_dir() and time.time() - run.stat().st_mtime > max_age_s:
            shutil.rmtree(run, ignore_errors=True)
            removed += 1
    return removed


def _write_atomic(path: Path, write) -> Path:
    if path.is_file():
        return path
    with atomic_path(path, suffix="".join(path.suffixes)) as tmp:  # the writers pick the format by suffix
        write(str(tmp))
    return path


def _save_png(path: str, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(path, format="PNG")


def _save_nifti(path: str, volume: np.ndarray, spacing: tuple[float, float, float]) -> None:
    import nibabel as nib

    from scripts.synthetic import volume_affine  # i -> Left, j -> Posterior: viewers show the head upright

    nib.save(nib.Nifti1Image(volume.astype(np.float32), volume_affine(spacing)), path)
