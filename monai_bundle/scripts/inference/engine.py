"""The network-facing half of inference: slice-wise 2D, sliding-window 3D, diagnosis, device.

Rules (the Predictor's docstring points here):

- **2D model.** Each slice ``(C, h, w)`` is resized to the card's ``spatial_size`` (bilinear, the
  training resize), the segmentation logits are resized back to ``(h, w)`` (bilinear on logits)
  and only then arg-maxed to uint8, batch by batch: nothing float at full resolution outlives its
  batch. A volume is cut along its acquisition axis (:func:`slice_axis`) and each slice is shown to
  the network in the display orientation of a radiologist's viewer, as PNG/JPG exports show it
  (:mod:`.orientation`: axial rows A->P, columns R->L, ...); the label map goes back to the
  volume's own voxels by the exact inverse (permute/flip only, no resampling).
- **3D model.** :class:`scripts.core.sliding_window.MultiTaskSlidingWindowInferer` (windows of the card's
  ``spatial_size``, Gaussian blending) stitches the segmentation on the CPU while windows run
  batched on the device, so device memory is bounded by one window batch. A model whose card
  records a ``target_spacing`` (:func:`segment_canonical`) sees the study as training saw its
  volumes: cropped to the foreground box and resampled onto the canonical grid (orientation, voxel
  size: :mod:`scripts.core.canonical`); the logits come back onto the study's own voxels by resampling
  and are arg-maxed there. Cards without one (older models) see the volume in file index order.
- **Diagnosis.** One rule for slices and windows, the one validation uses:
  :func:`scripts.core.sliding_window.aggregate_class_logits` -- class logits averaged with weight
  ``1 + predicted tumor voxels`` of the slice/window. Slices that show tumor dominate; with no
  tumor anywhere every slice counts equally, so ``no_tumor`` comes out only when no slice shows
  tumor with enough weight. Disagreements between the two heads become result warnings.
- **Uncertainty.** With flip TTA the network also reports the two passes' tumour probabilities
  (:data:`scripts.core.sliding_window.FLIP_DISAGREEMENT`); given a :class:`.uncertainty.FlipUncertainty`, each
  path brings them onto the input's voxels the way it brings the logits (bilinear resize, stitching,
  resampling) and counts them there. The label map and the diagnosis do not depend on it.
- **Device.** ``auto`` is CUDA when present; there the network runs under bf16 autocast (``amp``). On
  a CPU it runs under bf16 autocast only with ``cpu_bf16``: the Predictor sets it for a model that
  trained so (its card's ``cpu_bf16``) on a CPU that computes bf16 in hardware, so inference runs
  the network as validation and the temperature fit did. A CUDA out-of-memory error re-runs the
  study on the CPU and says so in the warnings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch
from torch.nn import functional as F

from scripts.core.canonical import Grid, canonical_grid, label_on_grid, resample
from scripts.inference.orientation import DisplayView
from scripts.inference.uncertainty import FlipUncertainty
from scripts.core.sliding_window import (FLIP_DISAGREEMENT, MultiTaskSlidingWindowInferer, aggregate_class_logits, forward,
                                         label_map)
from scripts.core.tasks import Task

Progress = Callable[[float], None]  # fraction done 0..1 of the network part
T = TypeVar("T")
RESIZE_MODE = "bilinear"  # must match the training resize of 2D images


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> ``cuda:0`` when CUDA is available, else ``cpu``; other values as torch reads them.

    Raises:
        ValueError: CUDA asked for but not available.
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here (use auto or cpu)")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda:0")
    return dev


def with_cpu_fallback(run: Callable[[torch.device], T], device: torch.device) -> tuple[T, torch.device, list[str]]:
    """``run(device)``; after a CUDA out-of-memory error, ``run(cpu)`` with a warning.

    Returns:
        (run's result, the device it ran on, warnings)
    """
    try:
        return run(device), device, []
    except torch.OutOfMemoryError:
        if device.type != "cuda":
            raise
        torch.cuda.empty_cache()
        cpu = torch.device("cpu")
        return run(cpu), cpu, [f"out of GPU memory on {device}: this study was run on the CPU instead"]


def slice_axis(spacing: Sequence[float], shape: Sequence[int], axis: int | None = None) -> int:
    """The spatial axis a 2D model cuts a volume along.

    ``axis`` when given; else an axis of size 1 (a single slice); else the axis with the largest
    spacing (the acquisition axis of a stack of thick slices), the last one on ties (Z).

    Raises:
        ValueError: ``axis`` is not a spatial axis of the volume.
    """
    if axis is not None:
        if not 0 <= axis < len(shape):
            raise ValueError(f"axis must be in 0..{len(shape) - 1} for a {len(shape)}D volume, got {axis}")
        return axis
    singles = [a for a, n in enumerate(shape) if n == 1]
    if singles:
        return singles[-1]
    spacing = np.round(np.asarray(spacing, dtype=float), 4)
    return int(len(spacing) - 1 - np.argmax(spacing[::-1]))


def _autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA with ``amp`` (CPU bf16 is :func:`scripts.core.sliding_window.forward`'s)."""
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


def _nchw(batch: np.ndarray) -> torch.Tensor:
    """``(b, C, h, w)`` as a tensor with PyTorch's default strides, copied only when not contiguous.

    A C = 1 slice view is contiguous for NumPy whatever its channel stride; PyTorch would read a
    channel stride of 1 as channels-last and run the network in that layout (other kernels, other
    last bits). Flattening a contiguous array is a view, and viewing it back sets the default strides.
    """
    flat = np.ascontiguousarray(batch).reshape(-1)  # (b * C * h * w,)
    return torch.from_numpy(flat).view(batch.shape)


def segment_slices(network: torch.nn.Module, image: np.ndarray, view: DisplayView | None, spatial_size: Sequence[int],
                   device: torch.device, batch_size: int = 16, amp: bool = True,
                   progress: Progress | None = None, uncertainty: FlipUncertainty | None = None,
                   cpu_bf16: bool = False) -> tuple[np.ndarray, torch.Tensor]:
    """Run a 2D model over one image or every slice of a volume.

    Args:
        image: ``(C, h, w)`` (``view`` None) or ``(C, X, Y, Z)`` normalised float32.
        view: how a volume is cut into display-oriented slices ``(C, N, rows, cols)``
            (:func:`scripts.inference.orientation.display_view`); None for a single 2D image,
            which the network sees as it is.
        spatial_size: the model's 2D input size.
        uncertainty: filled from a FlipTTA network's disagreement (its map, when kept, has the label's shape).
        amp, cpu_bf16: bf16 autocast on CUDA (:func:`_autocast`) / on the CPU (:func:`scripts.core.sliding_window.forward`,
            which also hands a 2D network channels-last inputs); outputs are read as float32.

    Returns:
        label ``(h, w)`` or ``(X, Y, Z)`` uint8 (on the input's voxels, in the input's memory order),
        and study class logits ``(K,)`` (aggregated).
    """
    stack = image[:, None] if view is None else view.to_slices(image)  # (C, N, h, w), a view
    n, (h, w) = stack.shape[1], stack.shape[2:]
    # the label map is written through the same view, so it needs no transpose back; for a volume
    # stored slice after slice (a NIfTI's axial slices) both views are contiguous and nothing is copied
    def slices(voxels: np.ndarray) -> np.ndarray:  # (N, h, w) views of a map on the input's voxels
        return voxels[None] if view is None else view.to_slices(voxels[None])[0]

    label = np.empty_like(image[0], dtype=np.uint8)  # (h, w) or (X, Y, Z), the input's memory order
    label_slices = slices(label)
    logits, tumor = [], []
    size = tuple(int(s) for s in spatial_size)
    map_slices = None
    if uncertainty is not None and uncertainty.map is not None:  # written through the label's view
        map_slices = slices(uncertainty.map)
    with torch.inference_mode():
        for start in range(0, n, batch_size):
            x = _nchw(stack[:, start:start + batch_size].swapaxes(0, 1)).to(device)  # (b, C, h, w)
            if (h, w) != size:
                x = F.interpolate(x, size=size, mode=RESIZE_MODE, align_corners=False)
            with _autocast(device, amp):
                out = forward(network, x, cpu_bf16=cpu_bf16)
            seg = out[Task.SEG].float()
            if (h, w) != size:
                seg = F.interpolate(seg, size=(h, w), mode="bilinear", align_corners=False)
            lab = label_map(seg)  # (b, h, w) uint8
            label_slices[start:start + lab.shape[0]] = lab.cpu().numpy()
            if uncertainty is not None and FLIP_DISAGREEMENT in out:
                flip = out[FLIP_DISAGREEMENT].float()  # (b, 2, *size)
                if (h, w) != size:
                    flip = F.interpolate(flip, size=(h, w), mode="bilinear", align_corners=False)
                disagreement = uncertainty.add(flip)  # (b, h, w)
                if map_slices is not None:
                    map_slices[start:start + lab.shape[0]] = disagreement.cpu().numpy()
            logits.append(out[Task.CLS].float().cpu())
            tumor.append(torch.count_nonzero(lab, dim=(1, 2)).cpu())  # (b,) tumor pixels
            del x, out, seg, lab
            if progress is not None:
                progress(min(start + batch_size, n) / n)
    return label, aggregate_class_logits(torch.cat(logits), torch.cat(tumor))


class _WindowRunner:
    """The network as the sliding-window inferer sees it: CPU windows in, CPU float outputs out.

    Moving each window batch to the device here (not the whole volume) keeps device memory at one
    window batch; the stitched segmentation stays on the CPU.
    """

    def __init__(self, network: torch.nn.Module, device: torch.device, amp: bool, total: int,
                 progress: Progress | None, cpu_bf16: bool = False) -> None:
        self.network, self.device, self.amp, self.total, self.progress = network, device, amp, max(total, 1), progress
        self.cpu_bf16 = cpu_bf16
        self.done = 0

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with _autocast(self.device, self.amp):
            out = forward(self.network, x.to(self.device), cpu_bf16=self.cpu_bf16)
        self.done += x.shape[0]
        if self.progress is not None:
            self.progress(min(self.done / self.total, 1.0))
        cpu = {Task.SEG.value: out[Task.SEG].float().cpu(), Task.CLS.value: out[Task.CLS].float().cpu()}
        if FLIP_DISAGREEMENT in out:
            cpu[FLIP_DISAGREEMENT] = out[FLIP_DISAGREEMENT].float().cpu()
        return cpu


def count_windows(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Windows MONAI's sliding window visits over ``shape`` (for progress only)."""
    total = 1
    for n, r in zip(shape, roi):
        step = max(int(r * (1 - overlap)), 1)
        total *= 1 if n <= r else math.ceil((n - r) / step) + 1
    return total


def segment_volume(network: torch.nn.Module, image: np.ndarray, inferer: MultiTaskSlidingWindowInferer,
                   device: torch.device, amp: bool = True, progress: Progress | None = None,
                   uncertainty: FlipUncertainty | None = None, cpu_bf16: bool = False) -> tuple[np.ndarray, torch.Tensor]:
    """Run a 3D model by sliding window.

    Args:
        image: ``(C, X, Y, Z)`` normalised float32.
        uncertainty: filled from a FlipTTA network's stitched disagreement (map shape ``(X, Y, Z)``).

    Returns:
        label ``(X, Y, Z)`` uint8 and study class logits ``(K,)``.
    """
    runner = _WindowRunner(network, device, amp, count_windows(image.shape[1:], inferer.roi_size, inferer.overlap), progress,
                           cpu_bf16)
    with torch.inference_mode():
        out = inferer(torch.from_numpy(image)[None], runner)  # {"seg": (1, S, X, Y, Z) on CPU, "cls": (1, K)}
        label = label_map(out[Task.SEG])[0].numpy()
        if uncertainty is not None and FLIP_DISAGREEMENT in out:
            _keep(uncertainty, uncertainty.add(out[FLIP_DISAGREEMENT]))
    return label, out[Task.CLS][0]


def _keep(uncertainty: FlipUncertainty, disagreement: torch.Tensor) -> None:
    """Store a whole-study ``(1, *spatial)`` disagreement as the map, when the map is kept."""
    if uncertainty.map is not None:
        uncertainty.map[...] = disagreement[0].numpy()


def segment_canonical(network: torch.nn.Module, image: np.ndarray, affine: np.ndarray,
                      box: tuple[Sequence[int], Sequence[int]] | None, target_spacing: Sequence[float], orientation: str,
                      inferer: MultiTaskSlidingWindowInferer, device: torch.device, amp: bool = True,
                      progress: Progress | None = None, uncertainty: FlipUncertainty | None = None,
                      cpu_bf16: bool = False) -> tuple[np.ndarray, torch.Tensor]:
    """Run a 3D model on the canonical grid of a study and map its segmentation back onto the study.

    Args:
        image: ``(C, X, Y, Z)`` normalised float32 on the study's grid.
        affine: the study's RAS affine (:func:`scripts.core.canonical.affine_from_itk`).
        box: ``(start, end)`` foreground box (:func:`scripts.core.canonical.foreground_box`), or None for the whole volume.
        target_spacing, orientation: the model card's (what training resampled to).
        uncertainty: filled from a FlipTTA network's disagreement, resampled linearly onto the study
            (0 outside the box; map shape ``(X, Y, Z)``).

    Returns:
        label ``(X, Y, Z)`` uint8 on the study's voxels (background outside the box) and study class logits ``(K,)``.
    """
    study = Grid(tuple(image.shape[1:]), np.asarray(affine, float))
    start, end = box if box is not None else ([0] * 3, list(study.shape))
    region = study.shifted(start, [e - s for s, e in zip(start, end)])
    crop = image[(slice(None), *(slice(s, e) for s, e in zip(start, end)))]
    grid = canonical_grid(region.affine, region.shape, target_spacing, orientation)
    x = resample(crop, region.affine, grid, "linear")
    runner = _WindowRunner(network, device, amp, count_windows(grid.shape, inferer.roi_size, inferer.overlap), progress,
                           cpu_bf16)
    with torch.inference_mode():
        out = inferer(x[None], runner)  # {"seg": (1, S, *grid.shape) on CPU, "cls": (1, K)}
        del x
        label = label_on_grid(out[Task.SEG][0], grid, study)
        if uncertainty is not None and FLIP_DISAGREEMENT in out:
            flip = resample(out[FLIP_DISAGREEMENT][0], grid.affine, study, "linear", fill=0.0)  # (2, X, Y, Z)
            _keep(uncertainty, uncertainty.add(flip[None]))
    return label, out[Task.CLS][0]


def diagnosis(logits: torch.Tensor, classes: Sequence[str], temperature: float | None = None) -> dict:
    """The result's ``diagnosis`` entry from study logits ``(K,)``.

    ``temperature`` (the model card's, fitted on the validation split) scales the logits before the
    softmax: the label is unchanged, the probabilities are calibrated (``"calibrated": true``).
    """
    t = float(temperature) if temperature else 1.0
    probs = torch.softmax(logits.float() / t, dim=0)
    index = int(probs.argmax())
    return {"label": classes[index], "index": index,
            "probabilities": {c: round(float(p), 4) for c, p in zip(classes, probs)},
            "calibrated": bool(temperature)}


def consistency_warnings(diag: dict, tumor_voxels: int, no_tumor_class: str | None) -> list[str]:
    """Warnings when the two heads disagree (the result shows both; a reader should look)."""
    if no_tumor_class is None or no_tumor_class not in diag["probabilities"]:
        return []
    if diag["label"] == no_tumor_class and tumor_voxels > 0:
        return [f"the diagnosis is {no_tumor_class} but the segmentation marks {tumor_voxels} tumor voxels: review"]
    if diag["label"] != no_tumor_class and tumor_voxels == 0:
        return [f"the diagnosis is {diag['label']} but the segmentation is empty: review"]
    return []
