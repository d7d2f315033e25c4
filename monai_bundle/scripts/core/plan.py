"""The experiment plan: training settings decided from the data (nnU-Net style).

``load_or_create_plan(datalist_file)`` returns the plan of a datalist: it reads ``plan.json`` beside
the datalist, or -- the first time, or when the datalist changed since -- measures the training
split (:func:`scripts.core.fingerprint.fingerprint`, MONAI's Auto3DSeg analyzers) and decides:

* ``spatial_size`` -- 2D: the input size (:func:`decide_input_size_2d`); 3D: the patch size
  (:func:`decide_patch_size_3d`) after resampling to ``target_spacing`` (:func:`decide_target_spacing`,
  coarsened by :func:`decide_lowres_spacing` where the device's patch would hold too little of a volume)
  in ``orientation`` ``"RAS"``;
* ``normalization`` (:func:`decide_normalization`), ``stem_stride`` (:data:`STEM_STRIDE`),
  ``network_channels`` (:func:`decide_network_channels`), ``batch_size`` / ``val_batch_size`` (:func:`decide_batch_size`),
  ``augmentation`` (:func:`decide_augmentation`), ``mirror_axes`` / ``rot90`` (:func:`decide_mirroring`), ``no_tumor_class`` (:func:`decide_no_tumor_class`),
  ``max_epochs`` (:func:`decide_max_epochs`), ``time_budget_min`` (:data:`TIME_BUDGET_MIN`: a wall-clock
  ceiling on CPU, none on a GPU).

Each decision is a small pure function of fingerprint numbers, with its constants at module level.
Device-dependent decisions (widths, batch size, 3D patch budget and spacing) take the device type; a plan made
for another device type is re-decided from its stored fingerprint without measuring again. Every
value can still be overridden on the command line: the configs only default to the plan
(``"spatial_size": "$@plan['spatial_size']"``). This module imports neither torch nor MONAI at import
time, so ``python -m scripts.prepare`` stays light; measuring does.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scripts.core.atomic import write_json_atomic
from scripts.core.spacing import ANISOTROPY_RATIO, coarse_axis, decide_target_spacing

logger = logging.getLogger(__name__)

#: bump when a decision rule or the fingerprint changes: older plans are recomputed
PLAN_VERSION = 11  # 6: 3D max_epochs from steps (decide_max_epochs); 7: 2D too; 8: mirror_axes, rot90; 9: cpu_bf16;
#                     10: CPU time ceiling 60 min (was 20); 11: 3D target spacing coarsened to the patch (lowres)
PLAN_FILE = "plan.json"

# --- 2D input size -------------------------------------------------------------------------------
#: the 5th-percentile lesion must still be this many pixels wide at the input size
MIN_LESION_PX = 8
#: input sizes are multiples of this (the U-Net halves the size 4 times without remainder)
SIZE_MULTIPLE = 16
#: 2D input sizes stay within this range (never above the images' own size unless below the minimum)
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 96, 256
#: the largest 2D input side per device type. On CPU a 2D epoch costs about the input's pixels, and
#: under a time budget the epochs matter more than the pixels: on the generated brain set (960 training
#: images) 96^2 learnt as much per epoch as 128^2 at half the cost per epoch, so twice the epochs fit;
#: at equal compute 128^2 x 34 epochs tested below 96^2 x 60 (Dice 0.38 vs 0.45, balanced accuracy
#: 0.55 vs 0.61) and missed as many small pituitary adenomas
MAX_INPUT_SIZE_DEVICE = {"cpu": 96, "cuda": MAX_INPUT_SIZE}
#: the input keeps the images' aspect ratio only when the median long / short side exceeds this
ASPECT_TOLERANCE = 1.25

# --- 3D spacing and patch --------------------------------------------------------------------------
#: a resampled axis shorter than this (voxels) is a thin stack: its patch side is a multiple of 8
THIN_STACK = 64
THIN_MULTIPLE = 8
#: the most voxels a 3D training patch may hold, per device type
PATCH_VOXELS = {"cpu": 64 * 64 * 32, "cuda": 128 * 128 * 128}
#: a 3D patch must hold at least this share of the median volume's voxels at the target spacing; where the
#: device's patch budget leaves it less, the target spacing coarsens until it holds that share (nnU-Net's
#: rule and threshold for its 3d_lowres configuration, whose spacing grows by LOWRES_STEP per round: the
#: axes finer than half the coarsest first, then all). On CPU the generated 1 mm set (1 mm and 0.9 x 0.9 x 3
#: mm studies, median spacing 1 mm: 180 x 226 x 196 voxels) would otherwise train on 48^3 patches holding a
#: 72nd of the volume; at 2.65 mm they hold a quarter, as on the 2 mm set (Testing/benchmarks/README.md,
#: session 18)
LOWRES_COVERAGE = 0.25
LOWRES_STEP = 1.03

# --- network ---------------------------------------------------------------------------------------
#: the bottleneck (deepest level) is MIN_BOTTLENECK..2*MIN_BOTTLENECK-1 pixels on the patch's shortest axis
MIN_BOTTLENECK = 4
MIN_LEVELS, MAX_LEVELS = 2, 7
#: the U-Net's first convolution stride per (spatial_dims, device type) (``MultiTaskUNet(stem_stride=)``).
#: 3D on CPU: 2, so no convolution runs on the full-resolution patch. Those two convolutions and the
#: decoder's last two made the width-16 network 4.5x slower per training step than with the stem
#: (48^3 patches, batch 2, one thread: 1.88 s against 0.41 s) and 7x slower than MONAI's UNet baseline.
STEM_STRIDE = {(2, "cpu"): 1, (2, "cuda"): 1, (3, "cpu"): 2, (3, "cuda"): 1}
#: width of the first level per (spatial_dims, device type); doubled per level up to MAX_WIDTH (3D on CPU:
#: 16 with the strided stem still costs half a step of the full-resolution width-8 network)
BASE_WIDTH = {(2, "cpu"): 8, (2, "cuda"): 32, (3, "cpu"): 16, (3, "cuda"): 32}
#: the first width on a CPU that computes bf16 in hardware (plan ``cpu_bf16``), where it differs: in 2D the
#: width-16 network under bf16 autocast costs about what the width-8 one did in float32 (a step of 16 x 96^2:
#: 110 against 105 ms, two threads) and, on the generated brain set (seed 0, 20 CPU minutes), did better than
#: spending the same speed-up on more epochs of the width-8 network (Testing/benchmarks/README.md, session 15)
BF16_BASE_WIDTH = {(2, "cpu"): 16}
MAX_WIDTH = {2: 512, 3: 320}

# --- batch size ------------------------------------------------------------------------------------
#: CPU: pixels (2D) / voxels (3D) per batch; the defaults' 16 x 96^2 and 2 x 64x64x32
CPU_BATCH_PIXELS = {2: 16 * 96 * 96, 3: 2 * 64 * 64 * 32}
#: CUDA: share of the GPU's memory the activations may take, and bytes per (feature x pixel) of the
#: U-Net (two conv + norm + ReLU per level, encoder and decoder, forward and backward, fp32)
CUDA_MEMORY_SHARE, BYTES_PER_FEATURE_PIXEL = 0.5, 48
MIN_BATCH = {2: 4, 3: 2}
MAX_BATCH = {(2, "cpu"): 32, (2, "cuda"): 64, (3, "cpu"): 8, (3, "cuda"): 8}
#: one batch holds at most this share of the training cases (nnU-Net's 5 %), but at least MIN_BATCH[dims]
MAX_BATCH_SHARE = 0.05

# --- epochs and time budget -------------------------------------------------------------------------
#: at least this many training epochs per spatial dims (a huge training set gets these, and the time
#: budget may end the run first)
MAX_EPOCHS = {2: 60, 3: 30}
#: optimiser steps to train for, per spatial dims: the plan's epochs are ``ceil(steps / steps per epoch)``.
#: 2D: 7200 steps are 120 epochs of the generated brain set (960 images, batch 16) and 240 of the
#: ultrasound set (468 images): 16-18 minutes on 2 cores with hardware bf16, 45-47 minutes on 2 cores
#: without it; a fixed 60 epochs (plan v6) ended such runs with the model still improving. 3D: 2500
#: steps; a fixed 30 epochs of a dozen steps stopped a CPU run after about 3.5 minutes. On a GPU these
#: are minutes. The measurements behind both: Testing/benchmarks/README.md (sessions 10, 11 and 17).
TRAIN_STEPS = {2: 7200, 3: 2500}
#: at most this many epochs (a handful of training cases makes one-step epochs)
MAX_EPOCHS_CAP = 1000
#: the default training time budget (wall minutes) per device type: a safety ceiling, so that a CPU run with
#: the defaults cannot go on for hours; None: epochs only. The epochs (TRAIN_STEPS), not the machine's
#: speed, decide what a default run learns: a ceiling that binds makes the model depend on the hardware.
#: At 20 minutes (plans v2-v9) 2 cores with hardware bf16 ran the generated brain set's 120 epochs in 17
#: minutes, while 2 slower cores without it (23 s an epoch) stopped after 51: lesion Dice 0.544 and
#: balanced accuracy 0.678, against 0.662 / 0.758 when the same cores finish the plan in 46 minutes (seed
#: 0, Testing/benchmarks/README.md, session 17). A user's --time_budget_min still sets any budget (the
#: learning-rate schedule follows it).
TIME_BUDGET_MIN = {"cpu": 60.0, "cuda": None}

# --- augmentation, tumor-free class ------------------------------------------------------------------
#: training-set sizes below which augmentation is "strong", then "medium"; "light" above
AUGMENTATION_STEPS = ((200, "strong"), (2000, "medium"))
#: the left-right axis of a training sample: a 2D raster image is ``(rows, columns)`` in display
#: orientation (columns run across the patient), a 3D volume ``(X, Y, Z)`` in RAS
LEFT_RIGHT_AXIS = {2: 1, 3: 0}
#: a class whose analysed masks are empty at least this often is the tumor-free class
TUMOR_FREE_SHARE = 0.95

#: what the built-in synthetic demo keeps whatever the rules say, so that its published figures hold
#: on every device (applied only to a datalist written by ``scripts.datasets.synthetic``: it has a
#: ``"synthetic"`` key); recorded under the plan's ``"pinned"``
SYNTHETIC_DEMO_PINS: dict[int, dict[str, Any]] = {
    2: {"spatial_size": [96, 96], "network_channels": [8, 16, 32, 64, 128], "batch_size": 16,
        "val_batch_size": 16, "normalization": {"mode": "percentile"}, "augmentation": "medium", "max_epochs": 30,
        "mirror_axes": [0, 1], "rot90": True, "cpu_bf16": False},
    3: {"spatial_size": [64, 64, 32], "network_channels": [16, 32, 64, 128], "batch_size": 2,
        "val_batch_size": 1, "normalization": {"mode": "percentile"}, "max_epochs": 30,
        "mirror_axes": [0, 1, 2], "rot90": True, "cpu_bf16": False},
}

def round_up(value: float, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= ``value`` (at least ``multiple``)."""
    return max(multiple, int(math.ceil(value / multiple - 1e-9)) * multiple)


def decide_input_size_2d(image_size: Sequence[float], lesion_width_p05: float | None,
                         max_size: int = MAX_INPUT_SIZE) -> list[int]:
    """The 2D input size ``[H, W]`` from the median image size and the 5th-percentile lesion width.

    The short side is the smallest multiple of :data:`SIZE_MULTIPLE` at which a lesion of width
    ``lesion_width_p05`` (pixels at the images' own size) still spans :data:`MIN_LESION_PX` pixels,
    clamped to ``[MIN_INPUT_SIZE, min(MAX_INPUT_SIZE, the images' short side rounded up)]`` (no
    up-sampling beyond the data, but never below the minimum); no lesion measured: the images' own
    short side, clamped the same way. The input is square unless the median long / short side
    exceeds :data:`ASPECT_TOLERANCE`; then the long side keeps the ratio (a multiple of 16, at most
    ``MAX_INPUT_SIZE``). ``max_size`` lowers the ceiling of both sides (the device's
    :data:`MAX_INPUT_SIZE_DEVICE`).

    Raises:
        ValueError: ``image_size`` is not two positive numbers.
    """
    if len(image_size) != 2 or min(image_size) <= 0:
        raise ValueError(f"image_size must be two positive sizes (H, W), got {list(image_size)}")
    h, w = (float(s) for s in image_size)
    short, long_ = min(h, w), max(h, w)
    top = max(MIN_INPUT_SIZE, min(MAX_INPUT_SIZE, int(max_size)))
    ceiling = max(MIN_INPUT_SIZE, min(top, round_up(short, SIZE_MULTIPLE)))
    need = short if not lesion_width_p05 or lesion_width_p05 <= 0 else MIN_LESION_PX * short / float(lesion_width_p05)
    side = min(ceiling, max(MIN_INPUT_SIZE, round_up(need, SIZE_MULTIPLE)))
    ratio = long_ / short
    other = side if ratio <= ASPECT_TOLERANCE else min(top, max(side, round(side * ratio / SIZE_MULTIPLE) * SIZE_MULTIPLE))
    return [side, other] if h <= w else [other, side]


def decide_patch_size_3d(median_shape: Sequence[float], target_spacing: Sequence[float], device_type: str = "cpu") -> list[int]:
    """The 3D training patch from the median shape after resampling to ``target_spacing``.

    Each side is rounded up to a multiple of 16 -- of :data:`THIN_MULTIPLE` (8) on the out-of-plane
    axis (:func:`coarse_axis`) of a thin stack (shorter than :data:`THIN_STACK`) -- then, while the
    patch holds more than ``PATCH_VOXELS[device_type]`` voxels, the side largest relative to its
    multiple shrinks by one multiple.

    Raises:
        ValueError: not three positive sizes, or an unknown device type.
    """
    if len(median_shape) != 3 or min(median_shape) <= 0:
        raise ValueError(f"median_shape must be three positive sizes, got {list(median_shape)}")
    if device_type not in PATCH_VOXELS:
        raise ValueError(f"device_type must be one of {sorted(PATCH_VOXELS)}, got {device_type!r}")
    z = coarse_axis(target_spacing)
    multiples = [THIN_MULTIPLE if i == z and median_shape[i] < THIN_STACK else SIZE_MULTIPLE for i in range(3)]
    patch = [round_up(s, m) for s, m in zip(median_shape, multiples)]
    while math.prod(patch) > PATCH_VOXELS[device_type]:
        shrinkable = [i for i in range(3) if patch[i] > multiples[i]]
        if not shrinkable:
            break
        i = max(shrinkable, key=lambda a: (patch[a] / multiples[a], patch[a]))
        patch[i] -= multiples[i]
    return patch


def decide_lowres_spacing(target_spacing: Sequence[float], size_mm: Sequence[float],
                          device_type: str = "cpu") -> list[float]:
    """The training spacing: ``target_spacing``, coarsened until the device's patch covers enough of a volume.

    While the patch (:func:`decide_patch_size_3d`) of the median volume (``size_mm``, resampled to the
    spacing) holds less than :data:`LOWRES_COVERAGE` of its voxels, the spacing grows by
    :data:`LOWRES_STEP`: only the axes finer than half the coarsest one while there are such, else all
    (nnU-Net's 3d_lowres rule). Rounded to 1e-4 mm; ``target_spacing`` itself when the patch already
    covers enough.

    Raises:
        ValueError: not three positive spacings and sizes, or an unknown device type.
    """
    spacing = [float(v) for v in target_spacing]
    size = [float(v) for v in size_mm]
    if len(spacing) != 3 or len(size) != 3 or min(spacing + size) <= 0:
        raise ValueError(f"need three positive spacings and sizes (mm), got {list(target_spacing)} and {list(size_mm)}")
    for _ in range(200):  # 1.03^200 = 370x: far beyond any volume
        shape = [mm / sp for mm, sp in zip(size, spacing)]
        if math.prod(decide_patch_size_3d(shape, spacing, device_type)) >= LOWRES_COVERAGE * math.prod(shape):
            break
        fine = [max(spacing) / sp > 2.0 for sp in spacing]
        spacing = [sp * LOWRES_STEP if f or not any(fine) else sp for sp, f in zip(spacing, fine)]
    return [round(sp, 4) for sp in spacing]


def decide_cpu_bf16(dims: int, device_type: str, bf16_native: bool) -> bool:
    """Whether the network trains under CPU bf16 autocast: 2D on a CPU with hardware bf16.

    3D stays float32: on the generated 3D set (seed 0, 20 CPU minutes) bf16 ran the plan's 209 epochs in
    17.7 minutes (5.0 s an epoch against 7.4) but scored lesion Dice 0.234 and accuracy 0.429 against
    float32's 0.283 / 0.536 (168 epochs); ``--cpu_bf16 true`` chooses it (benchmarks README, session 15).
    """
    return device_type == "cpu" and bool(bf16_native) and int(dims) == 2


def decide_levels(spatial_size: Sequence[int]) -> int:
    """U-Net levels so that the bottleneck is 4..7 pixels on the shortest side (clamped to 2..7)."""
    shortest = max(1, min(int(s) for s in spatial_size))
    levels = 1 + int(math.floor(math.log2(max(1.0, shortest / MIN_BOTTLENECK))))
    return max(MIN_LEVELS, min(MAX_LEVELS, levels))


def decide_network_channels(spatial_size: Sequence[int], device_type: str = "cpu", stem_stride: int = 1,
                            cpu_bf16: bool = False) -> list[int]:
    """Encoder widths: :func:`decide_levels` levels of the encoder's first level size (``spatial_size /
    stem_stride``), ``BASE_WIDTH[(dims, device)]`` (``BF16_BASE_WIDTH`` where given, for a plan with
    ``cpu_bf16``) doubled per level, at most ``MAX_WIDTH[dims]``.

    Raises:
        ValueError: ``spatial_size`` not 2 or 3 sizes, or an unknown device type.
    """
    dims = len(spatial_size)
    if (dims, device_type) not in BASE_WIDTH:
        raise ValueError(f"need 2 or 3 sizes and device type cpu/cuda, got {list(spatial_size)}, {device_type!r}")
    base = BASE_WIDTH[(dims, device_type)]
    if cpu_bf16:
        base = BF16_BASE_WIDTH.get((dims, device_type), base)
    first_level = [max(1, int(s) // stem_stride) for s in spatial_size]
    return [min(base * 2**i, MAX_WIDTH[dims]) for i in range(decide_levels(first_level))]


def decide_batch_size(spatial_size: Sequence[int], network_channels: Sequence[int], n_training: int,
                      device_type: str = "cpu", memory_gb: float | None = None) -> int:
    """Training batch size for the device.

    CPU: as many samples as fit ``CPU_BATCH_PIXELS[dims]`` pixels (the defaults' 16 x 96^2 in 2D,
    2 x 64x64x32 in 3D). CUDA: :data:`CUDA_MEMORY_SHARE` of the GPU's memory divided by the
    activation estimate ``BYTES_PER_FEATURE_PIXEL x sum over levels (width x pixels at that level)``.
    Then at most ``MAX_BATCH[(dims, device)]`` and :data:`MAX_BATCH_SHARE` of the training cases,
    at least ``MIN_BATCH[dims]`` (4 in 2D, where BatchNorm needs a few samples; 2 in 3D).

    Raises:
        ValueError: an unknown device type, or CUDA without ``memory_gb``.
    """
    dims = len(spatial_size)
    if (dims, device_type) not in MAX_BATCH:
        raise ValueError(f"need 2 or 3 sizes and device type cpu/cuda, got {list(spatial_size)}, {device_type!r}")
    pixels = math.prod(int(s) for s in spatial_size)
    if device_type == "cpu":
        fit = CPU_BATCH_PIXELS[dims] // pixels
    else:
        if not memory_gb or memory_gb <= 0:
            raise ValueError("a CUDA batch size needs the GPU's memory (memory_gb)")
        per_sample = BYTES_PER_FEATURE_PIXEL * sum(w * pixels / (2**dims) ** i for i, w in enumerate(network_channels))
        fit = int(CUDA_MEMORY_SHARE * memory_gb * 2**30 // per_sample)
    low = MIN_BATCH[dims]
    cap = max(low, int(MAX_BATCH_SHARE * n_training))
    return int(max(low, min(fit, MAX_BATCH[(dims, device_type)], cap)))


def steps_per_epoch(n_training: int, batch_size: int) -> int:
    """Optimiser steps in one epoch: a last, shorter batch is a step too."""
    return math.ceil(n_training / batch_size)


def decide_max_epochs(dims: int, n_training: int, batch_size: int) -> int:
    """Training epochs: enough for :data:`TRAIN_STEPS` ``[dims]`` optimiser steps of ``batch_size``
    cases (``ceil(n_training / batch_size)`` steps per epoch), within ``MAX_EPOCHS[dims]..MAX_EPOCHS_CAP``.

    Raises:
        ValueError: ``dims`` not 2/3, or fewer than one training case or batch sample.
    """
    if dims not in MAX_EPOCHS or n_training < 1 or batch_size < 1:
        raise ValueError(f"need dims 2/3 and at least one training case and batch sample, got {dims}, {n_training}, {batch_size}")
    wanted = math.ceil(TRAIN_STEPS[dims] / steps_per_epoch(n_training, batch_size))
    return int(min(MAX_EPOCHS_CAP, max(MAX_EPOCHS[dims], wanted)))


def decide_normalization(modality: str, foreground: Mapping[str, Any] | None,
                         global_: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The intensity normalisation (a spec for :func:`scripts.core.transforms.normalize`).

    CT: ``"ct"`` -- clip each channel to the dataset's foreground (under the masks) 0.5 / 99.5
    percentiles, then subtract the foreground mean and divide by its pooled standard deviation
    (nnU-Net's CT scheme; without any lesion measured, the whole-image statistics stand in).
    Everything else (MR, ultrasound, photographs, unknown): ``"percentile"``, each image's own
    0.5..99.5 percentile range to 0..1 -- for MR the long-standing default: it copes with 8-bit
    exports and uncalibrated scanners alike, and the augmentations' intensity ranges are set for
    0..1 images (``"zscore"`` is there to choose by hand).
    """
    if modality != "CT":
        return {"mode": "percentile"}
    stats = foreground or global_
    if not stats:
        return {"mode": "percentile"}
    return {"mode": "ct", "lower": list(stats["p00_5"]), "upper": list(stats["p99_5"]), "mean": list(stats["mean"]),
            "std": [max(float(s), 1e-6) for s in stats["std"]]}


def decide_augmentation(n_training: int) -> str:
    """``"strong"`` below 200 training cases, ``"medium"`` below 2000, else ``"light"``
    (:data:`scripts.core.transforms.AUGMENT_STRENGTHS` maps each onto the augmentation knobs)."""
    for limit, name in AUGMENTATION_STEPS:
        if n_training < limit:
            return name
    return "light"


def decide_mirroring(dims: int, raster_fraction: float | None = 1.0) -> tuple[list[int], bool]:
    """``(mirror_axes, rot90)``: the axes training flips may mirror, and whether it may turn the image
    plane by 90 degrees.

    2D: the left-right axis only, no quarter turns. A 2D image has an "up" (display orientation:
    superior or anterior at the top of an MR slice, the skin at the top of an ultrasound frame with the
    beam going down), and where a lesion lies, or which way its acoustic shadow falls, is part of the
    diagnosis; the flip test-time augmentation mirrors the same axis. On the generated ultrasound set
    this raised balanced accuracy on each of 3 seeds (mean 0.746 -> 0.783); on the brain set it was
    within the seed spread (0.747 -> 0.742) (benchmarks README, *Session 13*). 3D volumes are trained
    in RAS, so the same holds: X (left-right) only, no quarter turns in the axial plane (the generated
    3D set, seed 0, 56 test volumes: lesion Dice 0.174 -> 0.283, accuracy 0.357 -> 0.536). 2D slices
    stored as volume files (NIfTI, NRRD, DICOM: ``raster_fraction`` below 1, or unknown) are read in
    voxel axes, not display rows and columns, so they keep the former every-axis rule.
    """
    if dims == 3:
        return [LEFT_RIGHT_AXIS[3]], False
    if raster_fraction is not None and raster_fraction >= 1.0:
        return [LEFT_RIGHT_AXIS[2]], False
    return list(range(dims)), True


def decide_no_tumor_class(empty_mask: Mapping[str, Mapping[str, Any]], classes: Sequence[str]) -> str | None:
    """The one class whose analysed masks are empty at least :data:`TUMOR_FREE_SHARE` of the time
    (None when no class, or more than one, is)."""
    free = [c for c in classes if c in empty_mask and empty_mask[c]["labelled"] > 0
            and empty_mask[c]["fraction"] >= TUMOR_FREE_SHARE]
    return free[0] if len(free) == 1 else None


def _median_resampled_shape(fp: Mapping[str, Any], target_spacing: Sequence[float]) -> list[float]:
    size_mm = fp["size_mm"]["median"]
    return [round(float(mm) / float(t), 2) for mm, t in zip(size_mm, target_spacing)]


def decide(fp: Mapping[str, Any], device_type: str = "cpu", memory_gb: float | None = None,
           bf16_native: bool = False) -> dict[str, Any]:
    """Every decision of the plan from a fingerprint, with one line of reasoning each (``"why"``).

    ``bf16_native``: the CPU computes bfloat16 in hardware
    (:func:`scripts.core.sliding_window.cpu_bf16_native`); a CPU plan then trains under bf16 autocast
    (``cpu_bf16``).

    Raises:
        ValueError: an unknown device type, or a fingerprint missing what a decision needs.
    """
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"device_type must be 'cpu' or 'cuda', got {device_type!r}")
    dims, n = int(fp["spatial_dims"]), int(fp["n_training"])
    width = (fp.get("lesions") or {}).get("width_px") or {}
    why: dict[str, str] = {}
    out: dict[str, Any] = {"orientation": None, "target_spacing": None}
    if dims == 2:
        size = fp["image_size"]["median"]
        top = MAX_INPUT_SIZE_DEVICE[device_type]
        out["spatial_size"] = decide_input_size_2d(size, width.get("p05"), top)
        wanted = decide_input_size_2d(size, width.get("p05"))
        why["spatial_size"] = (f"median image {size}, 5th-percentile lesion {width.get('p05')} px wide: smallest "
                               f"multiple of {SIZE_MULTIPLE} keeping it >= {MIN_LESION_PX} px, within "
                               f"[{MIN_INPUT_SIZE}, {top}] on {device_type}"
                               + (f" (the lesions alone would ask for {wanted}; a GPU plan gets it)" if wanted != out["spatial_size"] else ""))
    else:
        full = decide_target_spacing(fp["spacing"]["median"], fp["spacing"]["p10"])
        target = decide_lowres_spacing(full, fp["size_mm"]["median"], device_type)
        shape = _median_resampled_shape(fp, target)
        out.update(orientation="RAS", target_spacing=target, median_resampled_shape=shape,
                   spatial_size=decide_patch_size_3d(shape, target, device_type))
        why["orientation"] = "volumes are measured and trained turned to RAS (MONAI Orientationd)"
        why["target_spacing"] = (f"median spacing {fp['spacing']['median']} mm"
                                 + (" (anisotropic: coarse axis at its 10th percentile)"
                                    if max(fp["spacing"]["median"]) / min(fp["spacing"]["median"]) > ANISOTROPY_RATIO else "")
                                 + (f"; at {full} mm a {device_type} patch would hold less than "
                                    f"{LOWRES_COVERAGE:.0%} of the median volume: coarsened (nnU-Net's 3d_lowres rule)"
                                    if target != full else ""))
        why["spatial_size"] = (f"median shape at the target spacing {shape}, sides multiples of {SIZE_MULTIPLE} "
                               f"({THIN_MULTIPLE} out of plane for thin stacks), at most {PATCH_VOXELS[device_type]} "
                               f"voxels on {device_type}")
    out["stem_stride"] = STEM_STRIDE[(dims, device_type)]
    why["stem_stride"] = (f"{dims}D on {device_type}: " + ("the first convolution strided, none at full resolution"
                                                           if out["stem_stride"] == 2 else "every level at its own resolution"))
    out["cpu_bf16"] = decide_cpu_bf16(dims, device_type, bf16_native)
    why["cpu_bf16"] = ("CUDA: the engines' amp (bf16 autocast) decides" if device_type == "cuda"
                       else "this CPU computes bf16 in hardware: the network trains under bf16 autocast, "
                            "about 1.6x faster per step, spent on width" if out["cpu_bf16"]
                       else "3D: float32 (bf16 lost on the generated 3D set; --cpu_bf16 true chooses it)"
                       if bf16_native and dims == 3
                       else "this CPU has no hardware bf16 (emulated bf16 is slower): float32")
    out["network_channels"] = decide_network_channels(out["spatial_size"], device_type, out["stem_stride"],
                                                      out["cpu_bf16"])
    why["network_channels"] = (f"{len(out['network_channels'])} levels: bottleneck "
                               f"{min(out['spatial_size']) // (out['stem_stride'] * 2 ** (len(out['network_channels']) - 1))} px; "
                               f"first width {out['network_channels'][0]} on {device_type}"
                               + (" with hardware bf16" if out["cpu_bf16"] else ""))
    out["batch_size"] = decide_batch_size(out["spatial_size"], out["network_channels"], n, device_type, memory_gb)
    out["val_batch_size"] = out["batch_size"] if dims == 2 else 1
    why["batch_size"] = (f"{device_type}" + (f" with {memory_gb:.0f} GB" if memory_gb else "")
                         + f", {n} training cases")
    fg = (fp.get("intensity") or {}).get("foreground")
    out["normalization"] = decide_normalization(fp["modality"], fg, (fp.get("intensity") or {}).get("global"))
    why["normalization"] = f"modality {fp['modality']} ({fp['modality_reason']})"
    out["max_epochs"] = decide_max_epochs(dims, n, out["batch_size"])
    rule = (f"{out['max_epochs']} epochs of {steps_per_epoch(n, out['batch_size'])} steps: about "
            f"{TRAIN_STEPS[dims]} steps for {dims}D, within {MAX_EPOCHS[dims]}..{MAX_EPOCHS_CAP} epochs")
    why["max_epochs"] = rule + (", or fewer when the time budget ends the run first" if TIME_BUDGET_MIN[device_type] else "")
    out["time_budget_min"] = TIME_BUDGET_MIN[device_type]
    why["time_budget_min"] = (f"a ceiling of {TIME_BUDGET_MIN[device_type]:g} min on {device_type}: the schedule fits "
                              "whichever of budget and max_epochs ends first" if TIME_BUDGET_MIN[device_type]
                              else f"no time ceiling on {device_type}: max_epochs decides")
    out["augmentation"] = decide_augmentation(n)
    why["augmentation"] = f"{n} training cases"
    raster = fp.get("raster_fraction")
    out["mirror_axes"], out["rot90"] = decide_mirroring(dims, raster)
    if dims == 3:
        why["mirror_axes"] = "3D volumes in RAS: mirrored left-right only (X), as flip TTA"
        why["rot90"] = "3D: never turned by 90 degrees in the axial plane (anterior stays anterior)"
    elif not out["rot90"]:
        why["mirror_axes"] = ("2D images (PNG/JPEG/...) keep their display orientation: mirrored left-right only (the "
                              "columns), as flip TTA")
        why["rot90"] = "2D: never turned by 90 degrees (an image's up stays up)"
    else:
        why["mirror_axes"] = f"2D slices in volume files (raster share {raster}): voxel axes, mirrored on every axis"
        why["rot90"] = "2D slices in volume files: turned by 90 degrees in the image plane"
    out["no_tumor_class"] = decide_no_tumor_class(fp.get("empty_mask") or {}, fp["classes"])
    why["no_tumor_class"] = f"share of empty masks per class {({k: v['fraction'] for k, v in (fp.get('empty_mask') or {}).items()})}"
    out["why"] = why
    return out


def resolve_device(device: Any = "auto") -> tuple[str, float | None]:
    """``(device type, GPU memory in GB or None)`` of ``"auto" | "cpu" | "cuda[:N]"`` or a torch.device."""
    name = str(device)
    if name == "cpu":
        return "cpu", None
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not name.startswith("cuda"):
        return "cpu", None
    if not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    dev = torch.device(name)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    return "cuda", round(torch.cuda.get_device_properties(index).total_memory / 2**30, 1)


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, hex: the datalist's content hash, and the weights' in the result JSON and
    the model card (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_plan(fp: Mapping[str, Any], datalist_file: str | os.PathLike, device_type: str = "cpu",
              memory_gb: float | None = None, pins: Mapping[str, Any] | None = None,
              bf16_native: bool = False) -> dict[str, Any]:
    """The plan dict: version, the datalist and its hash, the decisions (pins applied) and the fingerprint."""
    decisions = decide(fp, device_type, memory_gb, bf16_native)
    pins = dict(pins or {})
    for key, value in pins.items():  # the rule's own answer stays in "why" so that a difference shows
        rule = decisions.get(key)
        decisions["why"][key] = (decisions["why"].get(key, "") + ("; " if key in decisions["why"] else "")
                                 + ("the built-in demo pins the same" if rule == value
                                    else f"the rule gives {json.dumps(rule)}, pinned for the built-in demo"))
        decisions[key] = value
    why = decisions.pop("why")
    return {
        "version": PLAN_VERSION,
        "datalist": str(Path(datalist_file).resolve()),
        "datalist_sha256": file_sha256(datalist_file),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_type,
        "device_memory_gb": memory_gb,
        "spatial_dims": int(fp["spatial_dims"]),
        **decisions,
        "pinned": sorted(pins),
        "why": why,
        "fingerprint": dict(fp),
    }


def synthetic_pins(raw_datalist: Mapping[str, Any]) -> dict[str, Any]:
    """The demo pins of a datalist written by :mod:`scripts.datasets.synthetic` (it has a ``"synthetic"`` key), else {}."""
    if "synthetic" not in raw_datalist:
        return {}
    return json.loads(json.dumps(SYNTHETIC_DEMO_PINS.get(int(raw_datalist.get("spatial_dims", 2)), {})))


@contextmanager
def _plan_lock(folder: Path):
    """Serialise planners of one folder (DDP ranks start together); no lock where the folder is read-only."""
    try:
        import fcntl

        handle = open(folder / ".plan.lock", "w")
    except (ImportError, OSError):
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def read_plan(path: str | os.PathLike) -> dict[str, Any] | None:
    """A plan file's content, or None when it is missing or not a JSON object."""
    try:
        plan = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return plan if isinstance(plan, dict) else None


def load_or_create_plan(datalist_file: str | os.PathLike, device: Any = "auto", plan_file: str | os.PathLike | None = None,
                        max_cases: int | None = None, workers: int | None = None, recompute: bool = False) -> dict[str, Any]:
    """The plan of a datalist: ``plan.json`` beside it when current, else measured, decided and written.

    A plan is current when its ``version`` is :data:`PLAN_VERSION` and its ``datalist_sha256`` is the
    datalist file's; a plan made for another datalist content is recomputed with a warning. A current
    plan made for another device type, or on a CPU with(out) hardware bf16 where this one has none (has
    it), is re-decided from its fingerprint (no new measurement). The
    file is written atomically; where the folder is read-only the plan is used without being saved.

    Args:
        datalist_file: the datalist JSON.
        device: ``"auto" | "cpu" | "cuda[:N]"`` or a torch.device: what batch size and widths are for.
        plan_file: where the plan lives (default ``plan.json`` beside the datalist).
        max_cases: analyse at most this many training cases (default :data:`scripts.core.fingerprint.MAX_CASES`).
        workers: DataLoader workers of the analysis (None: up to 2).
        recompute: measure again even if the plan is current.

    Raises:
        scripts.core.datalist.DatalistError: the datalist cannot be read.
        ValueError: a training file cannot be read (names it).
    """
    from scripts.core.datalist import load_datalist

    datalist_file = Path(datalist_file).expanduser().resolve()
    datalist = load_datalist(datalist_file)  # checks the structure; raises DatalistError listing problems
    path = Path(plan_file) if plan_file is not None else datalist_file.parent / PLAN_FILE
    device_type, memory_gb = resolve_device(device)
    from scripts.core.sliding_window import cpu_bf16_native

    bf16_native = device_type == "cpu" and cpu_bf16_native()
    with _plan_lock(path.parent):
        sha = file_sha256(datalist_file)
        old = None if recompute else read_plan(path)
        if old is not None and old.get("version") == PLAN_VERSION and old.get("datalist_sha256") == sha:
            pinned = old.get("pinned", [])
            bf16 = old.get("cpu_bf16") if "cpu_bf16" in pinned else decide_cpu_bf16(old["spatial_dims"], device_type, bf16_native)
            if (old.get("device") == device_type and old.get("device_memory_gb") == memory_gb
                    and bool(old.get("cpu_bf16")) == bool(bf16)):
                return old
            logger.info("%s: plan made for %s%s, re-deciding for %s%s", path, old.get("device"),
                        " (bf16)" if old.get("cpu_bf16") else "", device_type, " (bf16)" if bf16_native else "")
            plan = make_plan(old["fingerprint"], datalist_file, device_type, memory_gb,
                             {k: old[k] for k in pinned if k in old}, bf16_native)
        else:
            if old is not None:
                reason = ("the datalist changed since" if old.get("datalist_sha256") != sha
                          else f"plan version {old.get('version')} is not {PLAN_VERSION}")
                warnings.warn(f"{path}: stale plan ({reason}); recomputing it", stacklevel=2)
                logger.warning("%s: stale plan (%s); recomputing it", path, reason)
            from scripts.core.fingerprint import MAX_CASES, fingerprint

            fp = fingerprint(datalist, MAX_CASES if max_cases is None else max_cases, workers)
            raw = json.loads(datalist_file.read_text(encoding="utf-8"))
            plan = make_plan(fp, datalist_file, device_type, memory_gb, synthetic_pins(raw), bf16_native)
        plan = json.loads(json.dumps(plan))  # the same plain values whether just made or read back
        try:
            write_json_atomic(path, plan)
        except OSError as e:
            warnings.warn(f"{path}: cannot write the plan ({e}); using it without saving", stacklevel=2)
    return plan


def network_channels_for(plan: Mapping[str, Any], spatial_size: Sequence[int], stem_stride: int | None = None) -> list[int]:
    """The plan's widths, or -- when ``spatial_size`` or ``stem_stride`` was overridden --
    :func:`decide_network_channels` for them on the plan's device (so that the bottleneck stays 4..7 pixels)."""
    planned_stem = int(plan.get("stem_stride", 1))
    stem = planned_stem if stem_stride is None else int(stem_stride)
    if [int(s) for s in spatial_size] == [int(s) for s in plan["spatial_size"]] and stem == planned_stem:
        return list(plan["network_channels"])
    return decide_network_channels(spatial_size, plan.get("device", "cpu"), stem, bool(plan.get("cpu_bf16")))


def card_plan(plan: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The plan as a model card keeps it: everything but MONAI's raw summaries (``fingerprint.monai``)."""
    if plan is None:
        return None
    out = json.loads(json.dumps(plan))
    (out.get("fingerprint") or {}).pop("monai", None)
    return out
