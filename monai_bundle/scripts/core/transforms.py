"""Pre-processing and augmentation: array functions plus thin dictionary wrappers.

The array functions here (``normalize`` with ``normalize_intensity`` / ``normalize_zscore`` /
``normalize_ct``, ``map_mask_values``) and the image layer's channel rule (``match_channels``,
:mod:`scripts.imageio.channels`) are the single definition of pre-processing shared by training
and by the inference API; the normalisation is chosen by the
experiment plan (``scripts.core.plan``) and kept in the model card.

``train_transforms`` / ``val_transforms`` turn a datalist entry (``{"image": path or [paths],
"label": path?, "class": int?, "group": str}``) into the sample dict of the contract: ``image``
float32 ``(C, *spatial)``, ``label`` uint8 ``(1, *spatial)``, ``class`` int64 (``-1`` when missing),
``has_seg`` / ``has_cls`` float32 0/1, plus ``image_source`` / ``label_source`` (file names, for
error messages). The deterministic part comes first (load, channels first, partial labels, channel
count, mask values, intensity normalisation, 2D resize, types), so ``CacheDataset`` caches it; the
random part (3D patch crop and the augmentations of the BUSI project) comes last. Both run under
``monai.data.set_track_meta(False)``: a 3D chain with a target spacing loads each volume's affine
with it (``image_only=False``), resamples onto the canonical grid (:mod:`scripts.core.canonical`) and
drops the metadata again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    Rand2DElasticd,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Resized,
    SpatialPadd,
)
from monai.transforms.traits import RandomizableTrait
from monai.utils import convert_to_dst_type

from scripts.core.canonical import ORIENTATION, Grid, canonical_grid, check_target_spacing, foreground_box, orientation_matrix, resample
from scripts.imageio import match_channels
from scripts.imageio.monai_reader import LayerReader
from scripts.core.tasks import MISSING_CLASS, Keys

LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5
IMAGE, LABEL, CLASS, GROUP, HAS_SEG, HAS_CLS = (k.value for k in Keys)
#: where the file name(s) of ``image`` / ``label`` are kept, so that errors can name the file
IMAGE_SOURCE, LABEL_SOURCE = f"{IMAGE}_source", f"{LABEL}_source"
#: how 2D images are resized to the model's ``spatial_size`` (masks: nearest); inference must agree
IMAGE_RESIZE_MODE = "bilinear"


def normalize_intensity(image: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Map each channel's 0.5..99.5 percentile range to 0..1 and clip.

    Works for any input range (uint8 PNG, int16 CT/MR, float NIfTI). A constant channel becomes 0.

    Args:
        image: ``(C, *spatial)`` array or tensor.

    Returns:
        float32 array/tensor of the same shape and type family.
    """
    is_tensor, arr = _as_float_array(image)
    out = np.empty_like(arr, dtype=np.float32)  # keeps the input's memory order
    for c in range(arr.shape[0]):
        # order "K": a view of a Fortran-ordered volume; the percentiles do not depend on the order
        lo, hi = np.percentile(arr[c].ravel(order="K"), [LOW_PERCENTILE, HIGH_PERCENTILE])
        scale = hi - lo
        if scale <= 0:
            out[c] = 0.0
        else:
            _scale_clip(arr[c], lo, scale, out[c])
    return torch.from_numpy(out) if is_tensor else out


def _scale_clip(src: np.ndarray, lo: np.float64, scale: np.float64, out: np.ndarray, chunk: int = 1 << 18) -> None:
    """``out[...] = clip((src - lo) / scale, 0, 1)`` with the float64 arithmetic NumPy gives a float32
    array and float64 percentiles (so the values are the same bits as the one-line form), slab by
    slab along the axis of largest stride: the float64 temporaries stay ``chunk`` values instead of
    two copies of a whole volume at twice its size.
    """
    if src.ndim == 0 or src.size == 0:
        out[...] = np.clip((src - lo) / scale, 0.0, 1.0)
        return
    axis = int(np.argmax(np.abs(src.strides)))
    step = max(1, chunk * src.shape[axis] // src.size)
    for start in range(0, src.shape[axis], step):
        part = (slice(None),) * axis + (slice(start, start + step),)
        buf = np.subtract(src[part], lo, dtype=np.float64)
        buf /= scale
        np.clip(buf, 0.0, 1.0, out=buf)
        out[part] = buf


#: intensity normalisations (:func:`normalize`): per-image percentiles, CT (dataset statistics), z-score
NORMALIZATION_MODES = ("percentile", "ct", "zscore")
_CT_KEYS = ("lower", "upper", "mean", "std")


def normalize_zscore(image: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Per channel: subtract the mean and divide by the standard deviation of the non-zero voxels;
    zero voxels (background outside the anatomy, e.g. skull-stripped MR) stay 0. A channel without
    non-zero voxels, or a constant one, becomes 0 where it is not zero already.

    Args:
        image: ``(C, *spatial)`` array or tensor.

    Returns:
        float32 array/tensor of the same shape and type family.
    """
    is_tensor, arr = _as_float_array(image)
    out = np.zeros_like(arr, dtype=np.float32)
    for c in range(arr.shape[0]):
        nonzero = arr[c] != 0
        values = arr[c][nonzero]
        if values.size == 0:
            continue
        std = float(values.std())
        out[c][nonzero] = (values - float(values.mean())) / std if std > 0 else 0.0
    return torch.from_numpy(out) if is_tensor else out


def normalize_ct(image: np.ndarray | torch.Tensor, lower: Sequence[float], upper: Sequence[float],
                 mean: Sequence[float], std: Sequence[float]) -> np.ndarray | torch.Tensor:
    """nnU-Net's CT scheme: per channel, clip to the dataset's ``[lower, upper]`` (foreground 0.5 and
    99.5 percentiles), then ``(x - mean) / std`` with the dataset's foreground mean and std.

    Args:
        image: ``(C, *spatial)`` array or tensor.
        lower, upper, mean, std: one value per channel (or one for all).

    Raises:
        ValueError: a list of another length than the channels, or ``std <= 0``.
    """
    is_tensor, arr = _as_float_array(image)
    n = arr.shape[0]
    params = {}
    for name, values in (("lower", lower), ("upper", upper), ("mean", mean), ("std", std)):
        values = [float(v) for v in (values if isinstance(values, (list, tuple, np.ndarray)) else [values])]
        if len(values) == 1:
            values = values * n
        if len(values) != n:
            raise ValueError(f"ct normalisation: '{name}' has {len(values)} values for {n} channel(s)")
        params[name] = values
    if min(params["std"]) <= 0:
        raise ValueError(f"ct normalisation: std must be positive, got {params['std']}")
    out = np.empty_like(arr, dtype=np.float32)
    for c in range(n):
        clipped = np.clip(arr[c], params["lower"][c], params["upper"][c])
        out[c] = (clipped - params["mean"][c]) / params["std"][c]
    return torch.from_numpy(out) if is_tensor else out


def check_normalization(spec: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """A normalisation spec as a dict: ``None`` -> ``{"mode": "percentile"}``, ``"zscore"`` ->
    ``{"mode": "zscore"}``; ``"ct"`` needs the plan's statistics (``lower``, ``upper``, ``mean``, ``std``).

    Raises:
        ValueError: an unknown mode, or ``"ct"`` without its statistics.
    """
    spec = {"mode": "percentile"} if spec is None else ({"mode": spec} if isinstance(spec, str) else dict(spec))
    mode = spec.get("mode")
    if mode not in NORMALIZATION_MODES:
        raise ValueError(f"normalization mode must be one of {list(NORMALIZATION_MODES)}, got {mode!r}")
    missing = [k for k in _CT_KEYS if k not in spec]
    if mode == "ct" and missing:
        raise ValueError(f"normalization 'ct' needs the dataset statistics {missing} (from the plan)")
    return spec


def normalize(image: np.ndarray | torch.Tensor, spec: str | Mapping[str, Any] | None = None) -> np.ndarray | torch.Tensor:
    """Normalise intensities as ``spec`` says: ``"percentile"`` (default, :func:`normalize_intensity`),
    ``"zscore"`` (:func:`normalize_zscore`) or ``{"mode": "ct", "lower", "upper", "mean", "std"}``
    (:func:`normalize_ct`). The one entry point of training (:class:`Normalized`) and inference.

    Raises:
        ValueError: as :func:`check_normalization`.
    """
    spec = check_normalization(spec)
    if spec["mode"] == "zscore":
        return normalize_zscore(image)
    if spec["mode"] == "ct":
        return normalize_ct(image, *(spec[k] for k in _CT_KEYS))
    return normalize_intensity(image)


def _as_float_array(image: np.ndarray | torch.Tensor) -> tuple[bool, np.ndarray]:
    is_tensor = isinstance(image, torch.Tensor)
    arr = image.detach().cpu().numpy() if is_tensor else np.asarray(image)
    return is_tensor, arr.astype(np.float32, copy=False)


def map_mask_values(mask: np.ndarray | torch.Tensor, num_segments: int, source: str = "label") -> np.ndarray:
    """Turn a stored mask into segment indices ``0..num_segments - 1``.

    Binary (``num_segments == 2``): any value above 0 is the lesion, so masks stored 0/1 or 0/255
    both work. Multi-class: values must already be ``0..S-1``; a mask holding only 0 and 255 is taken
    as a binary mask stored 0/255. A mask with several identical channels (grey saved as RGB; an
    RGBA mask's alpha is ignored) is reduced to one.

    Args:
        mask: ``(C, *spatial)`` array or tensor.

    Returns:
        uint8 array ``(1, *spatial)``.

    Raises:
        ValueError: channels that differ, or a value outside ``0..S-1``; names ``source`` and the value.
    """
    arr = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
    arr = arr[:3] if arr.shape[0] == 4 else arr  # RGBA: the alpha channel is not part of the mask
    if arr.shape[0] > 1:
        if not all(np.array_equal(arr[0], arr[c]) for c in range(1, arr.shape[0])):
            raise ValueError(f"{source}: mask has {arr.shape[0]} channels that differ; expected one")
        arr = arr[:1]
    if num_segments == 2:
        return (arr > 0).astype(np.uint8)
    values = np.unique(arr)
    if values.size and set(values.tolist()) <= {0, 255}:
        return (arr > 0).astype(np.uint8)
    bad = [v for v in values.tolist() if v < 0 or v > num_segments - 1 or v != int(v)]
    if bad:
        raise ValueError(f"{source}: mask value {bad[0]:g} is outside the segment indices 0..{num_segments - 1}")
    return arr.astype(np.uint8)


def _source_of(value: Any) -> str:
    """A readable name for a datalist path or list of paths (one file per channel)."""
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


class RememberSourced(MapTransform):
    """Copy the file name(s) of each key to ``<key>_source`` before loading (``""`` when absent)."""

    def __init__(self, keys: KeysCollection = (IMAGE, LABEL)) -> None:
        super().__init__(keys, allow_missing_keys=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            d[f"{key}_source"] = _source_of(d[key]) if d.get(key) is not None else ""
        return d


class PartialLabelsd(MapTransform):
    """Fill in what a partially labelled sample lacks and flag what it has.

    No ``label``: an all-zero uint8 ``(1, *spatial)`` label and ``has_seg = 0`` (else 1). No
    ``class`` (or ``None``): ``class = -1`` and ``has_cls = 0`` (else 1). No ``group``: ``""``, so
    batches of mixed samples still collate. Run after loading (it needs the image's shape).

    Raises:
        ValueError: the label's spatial shape differs from the image's, or ``class`` is not an
            integer; names the file.
    """

    def __init__(self, image_key: str = IMAGE, label_key: str = LABEL) -> None:
        super().__init__([image_key, label_key], allow_missing_keys=True)
        self.image_key, self.label_key = image_key, label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        spatial = tuple(d[self.image_key].shape[1:])
        source = d.get(f"{self.image_key}_source", self.image_key)
        if d.get(self.label_key) is None:
            d[self.label_key] = torch.zeros((1, *spatial), dtype=torch.uint8)
            d[HAS_SEG] = torch.tensor(0.0)
        else:
            if tuple(d[self.label_key].shape[1:]) != spatial:
                label_source = d.get(f"{self.label_key}_source", self.label_key)
                raise ValueError(f"{label_source}: mask shape {tuple(d[self.label_key].shape[1:])} differs "
                                 f"from its image's {spatial} ({source})")
            d[HAS_SEG] = torch.tensor(1.0)
        cls = d.get(CLASS)
        cls = cls.item() if isinstance(cls, (torch.Tensor, np.generic)) else cls
        if cls is None or cls == MISSING_CLASS:
            d[CLASS], d[HAS_CLS] = torch.tensor(MISSING_CLASS, dtype=torch.int64), torch.tensor(0.0)
        else:
            if isinstance(cls, bool) or not isinstance(cls, int) or cls < 0:
                raise ValueError(f"{source}: class {cls!r} is not a class index")
            d[CLASS], d[HAS_CLS] = torch.tensor(cls, dtype=torch.int64), torch.tensor(1.0)
        d.setdefault(GROUP, "")
        return d


#: what a 3D training patch without lesion voxels, cut from a study with a tumour diagnosis, is taught
PATCH_CLASS_RULES = ("tumor_free", "ignore", "keep")


class LesionFreePatchClassd(MapTransform):
    """What a 3D training patch that shows no lesion, cut from a study with a tumour diagnosis, is taught.

    A patch cropped away from the lesion (the ``neg`` odds of the patch crop) shows healthy tissue.
    Taught its study's "glioma", it asks the diagnosis head to call healthy tissue glioma; taught
    the tumour-free class it agrees with how inference reads such a window (a window without
    predicted tumour barely counts in a study with one, :mod:`scripts.core.sliding_window`). Yet on
    the generated 3D set (seed 0, 56 test volumes, 20 CPU minutes) keeping the study's class did
    best: lesion Dice 0.283 / accuracy 0.536 (``keep``) against 0.257 / 0.411 (``tumor_free``) and
    0.223 / 0.429 (``ignore``). ``keep`` is the default (``lesion_free_patch_class`` in
    ``configs/train_3d.json``).

    ``rule="tumor_free"``: such a patch takes class ``tumor_free`` (the index of the tumour-free
    class); when the classes have none (all studies have a tumour), it keeps no diagnosis
    (``has_cls = 0``, ``class = -1``). ``rule="ignore"``: such a patch keeps no diagnosis (it trains
    the segmentation only). ``rule="keep"``: patches keep their study's class (the former
    behaviour). Patches without a mask (``has_seg == 0``), without a diagnosis, or already
    tumour-free are left alone.

    Raises:
        ValueError: an unknown rule.
    """

    def __init__(self, tumor_free: int | None, rule: str = "keep", label_key: str = LABEL) -> None:
        super().__init__([label_key], allow_missing_keys=True)
        if rule not in PATCH_CLASS_RULES:
            raise ValueError(f"lesion_free_patch_class must be one of {list(PATCH_CLASS_RULES)}, got {rule!r}")
        self.tumor_free, self.rule, self.label_key = tumor_free, rule, label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.rule == "keep" or float(d.get(HAS_SEG, 0)) <= 0 or float(d.get(HAS_CLS, 0)) <= 0:
            return d
        cls = int(d[CLASS])
        if cls == self.tumor_free or bool((d[self.label_key] > 0).any()):
            return d
        if self.tumor_free is None or self.rule == "ignore":
            d[CLASS], d[HAS_CLS] = torch.tensor(MISSING_CLASS, dtype=torch.int64), torch.tensor(0.0)
        else:
            d[CLASS] = torch.tensor(int(self.tumor_free), dtype=torch.int64)
        return d


class MatchChannelsd(MapTransform):
    """Dict wrapper of :func:`match_channels` (grey <-> RGB); other counts raise, naming the file."""

    def __init__(self, in_channels: int, keys: KeysCollection = IMAGE) -> None:
        super().__init__(keys)
        self.in_channels = in_channels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if img.shape[0] != self.in_channels:
                source = d.get(f"{key}_source", key)
                out = match_channels(np.asarray(img.detach().cpu()), self.in_channels, source)
                d[key] = convert_to_dst_type(out, img)[0]
        return d


class MapMaskValuesd(MapTransform):
    """Dict wrapper of :func:`map_mask_values`; the label becomes uint8 ``(1, *spatial)``."""

    def __init__(self, num_segments: int, keys: KeysCollection = LABEL) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.num_segments = num_segments

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            source = d.get(f"{key}_source", key)
            out = map_mask_values(d[key], self.num_segments, source)
            d[key] = convert_to_dst_type(out, d[key], dtype=torch.uint8)[0]
        return d


class PercentileNormalized(MapTransform):
    """Dict wrapper of :func:`normalize_intensity` (per channel, percentiles 0.5..99.5 -> 0..1)."""

    def __init__(self, keys: KeysCollection = IMAGE) -> None:
        super().__init__(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = convert_to_dst_type(normalize_intensity(d[key]), d[key], dtype=torch.float32)[0]
        return d


class Normalized(MapTransform):
    """Dict wrapper of :func:`normalize` (the plan's / model card's ``normalization`` spec)."""

    def __init__(self, spec: str | Mapping[str, Any] | None = None, keys: KeysCollection = IMAGE) -> None:
        super().__init__(keys)
        self.spec = check_normalization(spec)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = convert_to_dst_type(normalize(d[key], self.spec), d[key], dtype=torch.float32)[0]
        return d


#: sample key holding the foreground box ``(start, end)`` of the stored volume between :class:`ForegroundBoxd`
#: and :class:`CanonicalGridd`
FOREGROUND_BOX = "foreground_box"
#: bump when the deterministic 3D chain changes: the persistent cache (:func:`preprocess_cache_dir`) is then rebuilt
PREPROCESS_VERSION = 1


class ForegroundBoxd(MapTransform):
    """Note the foreground box of the stored (not yet normalised) image under :data:`FOREGROUND_BOX`.

    :func:`scripts.core.canonical.foreground_box`: voxels above 5 % of each channel's 0.5..99.5 percentile
    range plus a margin -- the same box the Predictor computes on the study it reads. The crop
    itself happens in :class:`CanonicalGridd`, after the intensities were normalised over the whole
    volume, as the Predictor normalises them.
    """

    def __init__(self, key: str = IMAGE) -> None:
        super().__init__(key)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d[FOREGROUND_BOX] = foreground_box(d[self.keys[0]])
        return d


class CanonicalGridd(MapTransform):
    """Crop to the foreground box (when noted) and resample onto the canonical grid (when a spacing is given).

    The grid is :func:`scripts.core.canonical.canonical_grid` of the (cropped) stored grid: axes in
    ``orientation``, voxels of ``target_spacing`` mm. The image is interpolated linearly, the label by
    nearest neighbour, both from the image's affine (``image_meta_dict``, as ``LoadImaged(image_only=False)``
    leaves it; the label file must share the image's grid, as the datalist check demands of its size).
    The meta dictionaries are dropped afterwards: the result is the usual metadata-free sample.

    Raises:
        ValueError: no ``image_meta_dict`` with an affine (load with ``image_only=False``); a mask whose
            affine differs from its image's (names both files); a bad spacing or orientation.
    """

    def __init__(self, target_spacing: Sequence[float] | None, orientation: str = ORIENTATION,
                 keys: KeysCollection = (IMAGE, LABEL)) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.target_spacing = None if target_spacing is None else check_target_spacing(target_spacing)
        orientation_matrix(orientation)  # checks the codes
        self.orientation = orientation

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        meta = d.pop(f"{IMAGE}_meta_dict", None)
        label_meta = d.pop(f"{LABEL}_meta_dict", None)
        box = d.pop(FOREGROUND_BOX, None)
        stored = tuple(d[IMAGE].shape[1:])
        for key in self.key_iterator(d):  # plain tensors: a MetaTensor's affine would be stale from here on
            d[key] = d[key].as_tensor() if isinstance(d[key], MetaTensor) else torch.as_tensor(d[key])
            if box is not None:
                d[key] = d[key][(slice(None), *(slice(a, b) for a, b in zip(*box)))]
        if self.target_spacing is None:
            return d
        if meta is None or "affine" not in meta:
            raise ValueError(f"{d.get(IMAGE_SOURCE, IMAGE)}: no affine to resample with; load with image_only=False")
        affine = np.asarray(meta["affine"], dtype=float)
        if label_meta is not None and "affine" in label_meta and \
                not np.allclose(np.asarray(label_meta["affine"], dtype=float), affine, rtol=1e-5, atol=1e-3):
            raise ValueError(f"{d.get(LABEL_SOURCE, LABEL)}: the mask lies on another grid than its image "
                             f"{d.get(IMAGE_SOURCE, IMAGE)} (different affine: orientation, spacing or origin)")
        start = [0, 0, 0] if box is None else list(box[0])
        src = Grid(stored, affine).shifted(start, d[IMAGE].shape[1:])
        dst = canonical_grid(src.affine, src.shape, self.target_spacing, self.orientation)
        for key in self.key_iterator(d):
            d[key] = resample(d[key], src.affine, dst, "linear" if key == IMAGE else "nearest")
        return d


def load_transforms(image_only: bool = True) -> list:
    """Load ``image`` (one file, or a list stacked as channels in list order) and ``label`` if present.

    Files are read by the bundle's image layer (:class:`scripts.imageio.monai_reader.LayerReader`, as
    the inference API and prepare read them): raster files (PNG/JPG/BMP/TIFF) rows first, ``(C, H, W)``;
    NIfTI, NRRD and MHA ``(C, X, Y, Z)`` in file index order. What the layer does not read as one file
    (a DICOM folder, NumPy) falls back to MONAI's readers. ``image_only=False`` also keeps
    ``<key>_meta_dict`` (with the RAS ``affine``) for :class:`CanonicalGridd`.
    """
    return [RememberSourced((IMAGE, LABEL)),
            LoadImaged((IMAGE, LABEL), reader=LayerReader(), ensure_channel_first=True, image_only=image_only,
                       allow_missing_keys=True)]


def deterministic_transforms(spatial_dims: int, spatial_size: Sequence[int], in_channels: int,
                             num_segments: int, normalization: str | Mapping[str, Any] | None = None,
                             target_spacing: Sequence[float] | None = None, orientation: str = ORIENTATION,
                             crop_foreground: bool = False) -> list:
    """The cacheable part shared by training and validation (see the module docstring for the order).

    ``normalization`` is a :func:`normalize` spec (the plan's; default per-image percentiles).

    3D only: ``crop_foreground`` crops each volume to its foreground box and ``target_spacing`` (mm
    per axis of ``orientation``) resamples it onto its canonical grid (:mod:`scripts.core.canonical`),
    exactly as the Predictor does for a card with these settings. ``target_spacing=None`` keeps the
    stored grid (file index order), as 3D models trained before canonical grids existed saw it.

    Raises:
        ValueError: ``spatial_dims`` not 2/3, ``spatial_size`` of another length or not positive,
            ``in_channels < 1`` or ``num_segments < 2``; a bad ``normalization``.
    """
    _check_args(spatial_dims, spatial_size, in_channels, num_segments)
    if spatial_dims == 3 and (target_spacing is not None or crop_foreground):
        return load_transforms(image_only=False) + [
            PartialLabelsd(),
            *([ForegroundBoxd()] if crop_foreground else []),
            MatchChannelsd(in_channels),
            MapMaskValuesd(num_segments),
            Normalized(normalization),
            CanonicalGridd(target_spacing, orientation),
            EnsureTyped((IMAGE, LABEL), dtype=(torch.float32, torch.uint8)),
        ]
    chain = load_transforms() + [
        PartialLabelsd(),
        MatchChannelsd(in_channels),
        MapMaskValuesd(num_segments),
        Normalized(normalization),
    ]
    if spatial_dims == 2:  # 2D models see the whole image at one size; 3D ones see patches (training)
        chain.append(Resized((IMAGE, LABEL), spatial_size=tuple(spatial_size), mode=(IMAGE_RESIZE_MODE, "nearest")))
    chain.append(EnsureTyped((IMAGE, LABEL), dtype=(torch.float32, torch.uint8)))
    return chain


#: the intensity augmentations' ranges, shared with the batch augmentation (scripts.train.batch_augment)
BRIGHTNESS = 0.1  # offset drawn from U(-0.1, 0.1)
CONTRAST = 0.2  # factor drawn from 1 + U(-0.2, 0.2)
GAMMA_RANGE = (0.7, 1.5)

#: augmentation strengths (the plan's ``augmentation``) as :func:`augmentations` knobs; "medium" is its defaults
AUGMENT_STRENGTHS: dict[str, dict[str, float]] = {
    "light": {"p_affine": 0.3, "p_elastic": 0.1, "p_intensity": 0.3, "p_gamma": 0.15, "p_noise": 0.1,
              "rotate_deg": 10.0, "scale": 0.05},
    "medium": {},
    "strong": {"p_affine": 0.7, "p_elastic": 0.3, "p_intensity": 0.7, "p_gamma": 0.35, "p_noise": 0.3,
               "rotate_deg": 25.0, "scale": 0.15, "shift": 0.1},
}


def checked_flip_axes(spatial_dims: int, flip_axes: Sequence[int] | None) -> tuple[int, ...]:
    """The spatial axes flips may mirror: ``flip_axes`` checked (each once, within ``0..spatial_dims-1``),
    or every axis when None.

    Raises:
        ValueError: an axis outside the spatial axes, or one named twice.
    """
    if flip_axes is None:
        return tuple(range(spatial_dims))
    axes = tuple(int(a) for a in flip_axes)
    if any(a != b for a, b in zip(axes, flip_axes)) or not all(0 <= a < spatial_dims for a in axes) \
            or len(set(axes)) != len(axes):
        raise ValueError(f"flip_axes must name distinct spatial axes in 0..{spatial_dims - 1}, got {list(flip_axes)}")
    return axes


def orientation_knobs(mirror_axes: Sequence[int] | None, rot90: bool) -> dict[str, Any]:
    """The augmentation knobs of the plan's ``mirror_axes`` and ``rot90``: ``flip_axes``, and
    ``p_rot90 = 0`` when quarter turns are off (:func:`scripts.core.plan.decide_mirroring`)."""
    knobs: dict[str, Any] = {"flip_axes": None if mirror_axes is None else list(mirror_axes)}  # checked where used
    if not rot90:
        knobs["p_rot90"] = 0.0
    return knobs


def augmentations(spatial_dims: int, spatial_size: Sequence[int], p_flip: float = 0.5, p_rot90: float = 0.5,
                  p_affine: float = 0.5, p_elastic: float = 0.2, p_intensity: float = 0.5, p_gamma: float = 0.25,
                  p_noise: float = 0.2, rotate_deg: float = 15.0, scale: float = 0.1, shift: float = 0.0625,
                  noise_std: float = 0.05, flip_axes: Sequence[int] | None = None) -> list:
    """The random augmentations of the BUSI project, each with its probability knob.

    Spatial ones (flips on every axis, rotate-90 in the image plane, shift-scale-rotate, elastic)
    draw once per sample and move ``image`` and ``label`` together (label by nearest neighbour).
    Rotating by 90 degrees swaps the two in-plane sizes, so it is drawn only when they are equal; a
    non-square ``spatial_size`` is turned by 180 degrees instead (with ``p_rot90``), which keeps every
    sample at ``spatial_size`` so that batches collate.
    Intensity ones (brightness, contrast, gamma, Gaussian noise) touch only ``image``.
    ``shift`` is a fraction of the image size; ``rotate_deg`` rotates in the image plane.
    ``flip_axes``: the spatial axes that flips may mirror (None: every axis). A 2D image in display
    orientation keeps its "up" with ``flip_axes=(1,)`` (left-right only) and ``p_rot90=0`` (the plan's
    ``mirror_axes`` and ``rot90``).

    Raises:
        ValueError: a probability outside 0..1 (names the knob); a flip axis that is not a spatial axis.
    """
    probs = {"p_flip": p_flip, "p_rot90": p_rot90, "p_affine": p_affine, "p_elastic": p_elastic,
             "p_intensity": p_intensity, "p_gamma": p_gamma, "p_noise": p_noise}
    for name, p in probs.items():
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in 0..1, got {p}")
    axes = checked_flip_axes(spatial_dims, flip_axes)
    keys, modes = (IMAGE, LABEL), ("bilinear", "nearest")
    rotate = math.radians(rotate_deg)
    # in 3D the image plane is (X, Y): rotations turn about the slice axis only
    rotate_range = rotate if spatial_dims == 2 else (0.0, 0.0, rotate)
    chain: list = [RandFlipd(keys, prob=p_flip, spatial_axis=axis) for axis in axes]
    chain += [
        RandRotate90d(keys, prob=p_rot90, spatial_axes=(0, 1)) if spatial_size[0] == spatial_size[1]
        else RandFlipd(keys, prob=p_rot90, spatial_axis=(0, 1)),  # both axes flipped: 180 degrees
        RandAffined(keys, prob=p_affine, rotate_range=rotate_range, scale_range=scale,
                    translate_range=[shift * s for s in spatial_size], mode=modes, padding_mode="zeros"),
    ]
    if spatial_dims == 2:  # control points every 1/8 of the image, each moved by N(0, 1) x 0.5-1.5 px (RandDeformGrid)
        spacing = tuple(max(4, s // 8) for s in spatial_size)
        chain.append(Rand2DElasticd(keys, spacing=spacing, magnitude_range=(0.5, 1.5), prob=p_elastic,
                                    mode=modes, padding_mode="zeros"))
    else:
        chain.append(Rand3DElasticd(keys, sigma_range=(5.0, 8.0), magnitude_range=(50.0, 150.0), prob=p_elastic,
                                    mode=modes, padding_mode="zeros"))
    chain += [
        RandShiftIntensityd(IMAGE, offsets=BRIGHTNESS, prob=p_intensity),  # brightness
        RandScaleIntensityd(IMAGE, factors=CONTRAST, prob=p_intensity),  # contrast
        RandAdjustContrastd(IMAGE, gamma=GAMMA_RANGE, prob=p_gamma),
        RandGaussianNoised(IMAGE, std=noise_std, prob=p_noise),
    ]
    return chain


def train_transforms(spatial_dims: int, spatial_size: Sequence[int], in_channels: int, num_segments: int,
                     augment: bool = True, crop_pos: float = 2.0, crop_neg: float = 1.0,
                     normalization: str | Mapping[str, Any] | None = None, augment_strength: str = "medium",
                     target_spacing: Sequence[float] | None = None, orientation: str = ORIENTATION,
                     crop_foreground: bool = False, num_samples: int = 1,
                     augment_knobs: Mapping[str, Any] | None = None, tumor_free_class: int | None = None,
                     lesion_free_patch_class: str = "keep", **augment_kwargs: float) -> Compose:
    """The training chain: deterministic part, then (3D) a patch crop, then augmentations.

    3D volumes are padded to ``spatial_size`` and ``num_samples`` patches of that size are cropped,
    each centred on the lesion with odds ``crop_pos : crop_neg`` (MONAI's ``list_data_collate`` puts
    them all in the batch: ``batch_size`` volumes give ``batch_size * num_samples`` patches). Every
    patch keeps its study's diagnosis; ``lesion_free_patch_class`` ``"tumor_free"`` / ``"ignore"``
    teaches a patch without lesion voxels ``tumor_free_class`` (the tumour-free class index; no
    diagnosis when None) / no diagnosis instead (:class:`LesionFreePatchClassd`). ``augment_strength`` (``light`` / ``medium`` /
    ``strong``, :data:`AUGMENT_STRENGTHS`) sets the knobs of :func:`augmentations`; ``augment_kwargs``
    override single ones (probability knobs ``p_flip``, ``p_rot90``, ``p_affine``, ``p_elastic``,
    ``p_intensity``, ``p_gamma``, ``p_noise``, and ``rotate_deg``, ``scale``, ``shift``, ``noise_std``,
    ``flip_axes``); ``augment_knobs`` is the same as a mapping (the config's :func:`orientation_knobs`), under
    ``augment_kwargs``.
    ``normalization``, and in 3D ``target_spacing``, ``orientation``, ``crop_foreground``: see
    :func:`deterministic_transforms`.

    Returns:
        ``Compose`` producing ``image`` float32 ``(C, *spatial_size)``, ``label`` uint8 ``(1, *spatial_size)``,
        ``class`` int64, ``has_seg`` / ``has_cls`` float32 (a list of one such dict in 3D).

    Raises:
        ValueError: as :func:`deterministic_transforms` and :func:`augmentations`; negative crop odds or fewer than one patch per volume;
            an unknown ``augment_strength`` or ``lesion_free_patch_class``.
    """
    if augment_strength not in AUGMENT_STRENGTHS:
        raise ValueError(f"augment_strength must be one of {list(AUGMENT_STRENGTHS)}, got {augment_strength!r}")
    chain = deterministic_transforms(spatial_dims, spatial_size, in_channels, num_segments, normalization,
                                     target_spacing, orientation, crop_foreground)
    if spatial_dims == 3:
        if crop_pos < 0 or crop_neg < 0 or crop_pos + crop_neg == 0:
            raise ValueError(f"crop_pos and crop_neg must be >= 0 and not both 0, got {crop_pos}, {crop_neg}")
        if int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"num_samples (patches per volume) must be a whole number >= 1, got {num_samples}")
        chain += [SpatialPadd((IMAGE, LABEL), spatial_size=tuple(spatial_size)),
                  RandCropByPosNegLabeld((IMAGE, LABEL), label_key=LABEL, spatial_size=tuple(spatial_size),
                                         pos=crop_pos, neg=crop_neg, num_samples=int(num_samples)),
                  LesionFreePatchClassd(tumor_free_class, lesion_free_patch_class)]
    if augment:
        chain += augmentations(spatial_dims, spatial_size, **{**AUGMENT_STRENGTHS[augment_strength],
                                                              **dict(augment_knobs or {}), **augment_kwargs})
        chain.append(EnsureTyped((IMAGE, LABEL), dtype=(torch.float32, torch.uint8)))  # spatial ones return float
    return Compose(chain)


def val_transforms(spatial_dims: int, spatial_size: Sequence[int], in_channels: int, num_segments: int,
                   normalization: str | Mapping[str, Any] | None = None, target_spacing: Sequence[float] | None = None,
                   orientation: str = ORIENTATION, crop_foreground: bool = False) -> Compose:
    """The validation / test chain: the deterministic part only (3D: the whole volume, for sliding windows;
    cropped to its foreground and on its canonical grid when so configured).

    Raises:
        ValueError: as :func:`deterministic_transforms`.
    """
    return Compose(deterministic_transforms(spatial_dims, spatial_size, in_channels, num_segments, normalization,
                                            target_spacing, orientation, crop_foreground))


def preprocess_cache_dir(root: str | os.PathLike, transform: Compose) -> str:
    """The folder under ``root`` for volumes pre-processed by ``transform`` (a ``PersistentDataset``'s ``cache_dir``).

    Its name is a digest of the deterministic transforms up to the first random one (what the
    dataset caches): their classes and settings (channels, segments, normalisation, target spacing,
    orientation, foreground crop, ...) and :data:`PREPROCESS_VERSION`. Volumes prepared with other
    settings (another plan, another spacing) are never read; files are keyed within it by
    :func:`sample_hash`. Old folders are not removed: delete ``root`` to reclaim the space.
    """
    def plain(value: Any) -> Any:
        if isinstance(value, (bool, int, float, str, type(None))):
            return value
        if isinstance(value, (torch.dtype, np.dtype, type)):
            return str(value)
        if isinstance(value, (list, tuple)):
            items = [plain(v) for v in value]
            return None if any(v is _SKIP for v in items) else items
        if isinstance(value, Mapping):
            items = {str(k): plain(v) for k, v in value.items()}
            return {k: v for k, v in items.items() if v is not _SKIP}
        return _SKIP

    steps = []
    for t in transform.transforms:
        if isinstance(t, RandomizableTrait):
            break
        settings = {k: plain(v) for k, v in sorted(vars(t).items())}
        steps.append([f"{type(t).__module__}.{type(t).__qualname__}", {k: v for k, v in settings.items() if v is not _SKIP}])
    digest = hashlib.sha256(json.dumps([PREPROCESS_VERSION, steps], sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(os.fspath(root), f"preprocessed-{digest}")


_SKIP = object()  # a setting that does not go into the cache digest (objects: readers, adjusters)


def sample_hash(item: Mapping[str, Any]) -> bytes:
    """Cache key of a datalist entry: its content plus size and modification time of each file it names.

    A file replaced under the same name gets a new key, so the cache never serves an outdated volume.
    """
    def stat(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [stat(v) for v in value]
        if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
            st = os.stat(value)
            return [os.fspath(value), st.st_size, st.st_mtime_ns]
        return value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)

    content = {str(k): stat(v) for k, v in sorted(item.items(), key=lambda kv: str(kv[0]))}
    return hashlib.md5(json.dumps(content, sort_keys=True).encode(), usedforsecurity=False).hexdigest().encode()


def _check_args(spatial_dims: int, spatial_size: Sequence[int], in_channels: int, num_segments: int) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    if len(spatial_size) != spatial_dims or min(int(s) for s in spatial_size) < 1:
        raise ValueError(f"spatial_size must be {spatial_dims} positive sizes, got {list(spatial_size)}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be at least 1, got {in_channels}")
    if num_segments < 2:
        raise ValueError(f"num_segments must be at least 2 (background + one segment), got {num_segments}")
