"""The dataset fingerprint of an experiment plan, measured with MONAI's Auto3DSeg analyzers.

:func:`fingerprint` reads (a deterministic, class-stratified subsample of) the training split the
way training reads it (:func:`scripts.core.transforms.load_transforms`, channel matching and mask values
of :mod:`scripts.core.transforms`; 3D volumes turned to RAS) and runs MONAI's case analyzers on each
case -- :class:`monai.auto3dseg.SegSummarizer`, i.e. ``ImageStats`` (shape, spacing, intensity of
the non-zero bounding box), ``FgImageStats`` (intensity under the mask) and ``LabelStats`` (per
segment: pixel share and the bounding boxes of its connected components) -- then MONAI's summary
analyzers (``ImageStatsSumm``, ``FgImageStatsSumm``, ``LabelStatsSumm``) over the cases. This is
what :class:`monai.apps.auto3dseg.DataAnalyzer` does, run in-process on the CPU (the analyzers are
transforms, so a ``DataLoader``'s workers run them in parallel), with partial labels (cases without
a mask give image statistics only) and without writing MONAI's YAML files.

Large cases are analysed on a strided grid (every ``s``-th pixel per axis, ``s`` chosen so that at
most :data:`MAX_ANALYSIS_PIXELS` remain); sizes measured on that grid (shapes, component bounding
boxes) are scaled back by ``s`` and the fingerprint records ``s``. The plan's decisions only read
the compact summary this module returns (see ``docs/README.md``, "The plan").
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from scripts.core.datalist import image_files
from scripts.imageio.suffixes import is_raster

_CT = re.compile(r"^(ct|cta|cect|ncct|hu)$")
_MR = re.compile(r"^(mr|mri|t1|t2|flair|pd|adc|dwi|swi|hbv|dce|dsc|asl)")
_US = re.compile(r"^(us|ultrasound|echo|bmode)$")


def guess_modality(channel_names: Sequence[str], raw_channels: int, colour_fraction: float, raw_min: float,
                   raw_max: float, integer: bool = True) -> tuple[str, str]:
    """``(modality, reason)``: ``"CT"``, ``"MR"``, ``"US"``, ``"photo"`` or ``"unknown"``.

    Channel names decide first (``CT``; ``T1``, ``T2``, ``FLAIR``, ``ADC``, ...; ``US``), then the
    intensities: values down to -500 or below with a maximum of 300 or more are Hounsfield units
    (CT); images whose colour channels differ in half of the cases or more are photographs;
    anything else is ``"unknown"`` (8-bit grey exports of MR or ultrasound look alike).
    """
    names = [re.sub(r"[\s_\-]", "", str(n).lower()) for n in channel_names]
    if any(_CT.match(n) for n in names):
        return "CT", f"channel name {list(channel_names)}"
    if raw_min <= -500 and raw_max >= 300:
        return "CT", f"intensities from {raw_min:g} to {raw_max:g} (Hounsfield units)"
    if names and all(_MR.match(n) for n in names):
        return "MR", f"channel names {list(channel_names)}"
    if any(_US.match(n) for n in names):
        return "US", f"channel name {list(channel_names)}"
    if raw_channels >= 3 and colour_fraction >= 0.5:
        return "photo", f"colour images ({colour_fraction:.0%} have differing RGB channels)"
    depth = "8-bit grey" if integer and raw_min >= 0 and raw_max <= 255 else "grey"
    return "unknown", f"{depth} images, channel names {list(channel_names)} say nothing"


logger = logging.getLogger(__name__)

#: at most this many training cases are analysed (a deterministic, class-stratified subsample)
MAX_CASES = 200
#: cases larger than this are analysed on a strided grid (2D: 256 x 256, 3D: 128^3 pixels)
MAX_ANALYSIS_PIXELS = {2: 256 * 256, 3: 128**3}
#: a case whose mask is this share of the image or less counts as an empty mask
_EMPTY = 0.0
_NO_CLASS = "(no class)"


def select_cases(classes_of_cases: Sequence[int | None], max_cases: int = MAX_CASES) -> list[int]:
    """Indices of at most ``max_cases`` cases, stratified by class, evenly spaced within each class.

    Deterministic (no random draw): each class (``None`` = no diagnosis is a class of its own) gets
    a share proportional to its size, at least one case, taken at evenly spaced positions.

    Raises:
        ValueError: ``max_cases`` below 1.
    """
    if max_cases < 1:
        raise ValueError(f"max_cases must be at least 1, got {max_cases}")
    n = len(classes_of_cases)
    if n <= max_cases:
        return list(range(n))
    by_class: dict[Any, list[int]] = {}
    for i, c in enumerate(classes_of_cases):
        by_class.setdefault(-1 if c is None else int(c), []).append(i)
    chosen: list[int] = []
    for members in by_class.values():
        k = max(1, min(len(members), round(max_cases * len(members) / n)))
        chosen += [members[int((j + 0.5) * len(members) / k)] for j in range(k)]
    return sorted(chosen)


def _stride(spatial_shape: Sequence[int], spatial_dims: int) -> int:
    pixels = math.prod(int(s) for s in spatial_shape)
    limit = MAX_ANALYSIS_PIXELS[spatial_dims]
    return 1 if pixels <= limit else math.ceil((pixels / limit) ** (1.0 / len(spatial_shape)))


class _AnalyseCase:
    """Loaded sample dict -> compact per-case record (runs in DataLoader workers)."""

    def __init__(self, spatial_dims: int, in_channels: int, num_segments: int) -> None:
        from monai.auto3dseg import SegSummarizer
        from monai.transforms import Compose, Orientationd

        from scripts.core.transforms import IMAGE, LABEL, MapMaskValuesd, MatchChannelsd, load_transforms

        self.spatial_dims = spatial_dims
        self.load = Compose(load_transforms())
        self.match = MatchChannelsd(in_channels)
        self.masks = MapMaskValuesd(num_segments)
        self.orient = (Orientationd((IMAGE, LABEL), axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")),
                                    allow_missing_keys=True) if spatial_dims == 3 else None)
        self.with_label = SegSummarizer(IMAGE, LABEL, average=False, do_ccp=True, hist_bins=0)
        self.image_only = SegSummarizer(IMAGE, None, average=False, do_ccp=False, hist_bins=0)

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        import torch
        from monai.data import MetaTensor, affine_to_spacing

        from scripts.core.transforms import IMAGE, IMAGE_SOURCE, LABEL

        try:
            d = self.load(dict(sample))
        except Exception as e:  # every reader raises its own types; all mean "unreadable"
            files = ", ".join(str(sample[k]) for k in (IMAGE, LABEL) if sample.get(k) is not None)
            return {"error": f"{files}: cannot read for the plan ({type(e).__name__}: {str(e)[:300]})"}
        image = d[IMAGE]
        raw = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)
        colour = bool(raw.shape[0] >= 3 and not (np.array_equal(raw[0], raw[1]) and np.array_equal(raw[0], raw[2])))
        record: dict[str, Any] = {
            "source": str(d.get(IMAGE_SOURCE, "")), "class": sample.get("class"), "raw_channels": int(raw.shape[0]),
            "colour": colour, "integer": bool(np.issubdtype(raw.dtype, np.integer)),
            "raw_min": float(raw.min()), "raw_max": float(raw.max()),
        }
        d = self.match(d)
        if d.get(LABEL) is not None:
            d = self.masks(d)
        if self.orient is not None:
            d = self.orient(d)
        image = d[IMAGE]
        shape = [int(s) for s in image.shape[1:]]
        spacing = None
        if self.spatial_dims == 3 and isinstance(image, MetaTensor):
            spacing = [float(s) for s in affine_to_spacing(image.affine, r=3)]
        step = _stride(shape, self.spatial_dims)
        grid = (slice(None),) + (slice(None, None, step),) * len(shape)
        names = {IMAGE: record["source"], LABEL: str(d.get(f"{LABEL}_source", ""))}  # MONAI's FilenameStats reads them
        case = {IMAGE: MetaTensor(torch.as_tensor(image[grid], dtype=torch.float32).contiguous(),
                                  meta={"filename_or_obj": names[IMAGE]})}
        if not all(bool((channel > 0).any()) for channel in case[IMAGE]):
            # ImageStats crops each channel to its positive voxels; one without any (CT air, an
            # all-negative image) would leave nothing: such a channel is measured whole
            from monai.auto3dseg.utils import get_foreground_image

            case["nda_croppeds"] = [get_foreground_image(ch) if bool((ch > 0).any()) else ch for ch in case[IMAGE]]
        label = d.get(LABEL)
        if label is not None:
            case[LABEL] = MetaTensor(torch.as_tensor(np.asarray(label[grid][0]), dtype=torch.int16),
                                     meta={"filename_or_obj": names[LABEL]})
        stats = (self.with_label if label is not None else self.image_only)(case)
        image_stats = dict(stats["image_stats"])
        # the summarizer saw the strided grid: report the case's own shape, spacing and size in mm
        image_stats["shape"] = [shape for _ in image_stats["shape"]]
        image_stats["cropped_shape"] = [[min(s * step, full) for s, full in zip(c, shape)] for c in image_stats["cropped_shape"]]
        image_stats["spacing"] = spacing if spacing is not None else [1.0] * len(shape)
        image_stats["sizemm"] = [a * b for a, b in zip(shape, image_stats["spacing"])]
        record.update(shape=shape, spacing=spacing, stride=step, image_stats=image_stats)
        if label is not None:
            label_stats = dict(stats["label_stats"])
            label_stats["label"] = [dict(entry, shape=[[min(s * step, full) for s, full in zip(box, shape)] for box in entry["shape"]])
                                    for entry in label_stats["label"]]
            record.update(image_foreground_stats=stats["image_foreground_stats"], label_stats=label_stats)
        return record


def _percentiles(values: Sequence[float] | np.ndarray, qs: Sequence[float] = (5, 50, 95)) -> dict[str, Any]:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {}
    out: dict[str, Any] = {}
    for q in qs:
        v = np.percentile(arr, q, axis=0)
        out["median" if q == 50 else f"p{q:02g}"] = _num(v)
    out["min"], out["max"] = _num(arr.min(axis=0)), _num(arr.max(axis=0))
    return out


def _num(v: Any) -> Any:
    v = np.asarray(v, dtype=float)
    return [round(float(x), 4) for x in v.ravel()] if v.ndim else round(float(v), 4)


def _run_cases(samples: list[dict[str, Any]], analyse: _AnalyseCase, workers: int) -> list[dict[str, Any]]:
    from monai.data import DataLoader, Dataset
    from monai.data.utils import no_collation

    if workers <= 0:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in a worker: the analyzers' many small ops lose more than they gain from threads
        try:
            cases = [analyse(s) for s in samples]
        finally:
            torch.set_num_threads(threads)
    else:
        loader = DataLoader(Dataset(samples, transform=analyse), batch_size=1, shuffle=False, num_workers=workers,
                            collate_fn=no_collation)
        cases = [batch[0] for batch in loader]
    errors = [c["error"] for c in cases if "error" in c]
    if errors:
        raise ValueError(f"{len(errors)} training file(s) cannot be read:\n  - " + "\n  - ".join(errors[:20]))
    return cases


def _lesions(cases: list[dict[str, Any]], segments: list[str]) -> dict[str, Any]:
    """Per labelled case and foreground segment: its share of the image, its pixels and its width.

    The width of a segment in a case is the shortest bounding-box side of its largest connected
    component (MONAI's ``LabelStats`` components), in pixels of the case's own grid (and mm in 3D).
    """
    fraction, pixels, width_px, width_mm = [], [], [], []
    per_segment: dict[str, list[float]] = {}
    for case in cases:
        stats = case.get("label_stats")
        if not stats:
            continue
        n_pixels = math.prod(case["shape"])
        for uid, entry in zip(stats["labels"], stats["label"]):
            if uid == 0 or not entry["shape"]:
                continue
            share = float(entry["foreground_percentage"])
            biggest = max(entry["shape"], key=math.prod)
            fraction.append(share)
            pixels.append(share * n_pixels)
            width_px.append(min(biggest))
            if case["spacing"] is not None:
                width_mm.append(min(b * s for b, s in zip(biggest, case["spacing"])))
            name = segments[uid] if 0 <= uid < len(segments) else str(uid)
            per_segment.setdefault(name, []).append(min(biggest))
    out = {"n_lesions": len(fraction), "fraction": _percentiles(fraction), "pixels": _percentiles(pixels),
           "width_px": _percentiles(width_px),
           "width_px_by_segment": {k: _percentiles(v) for k, v in per_segment.items()}}
    if width_mm:
        out["width_mm"] = _percentiles(width_mm)
    return out


def _empty_masks(cases: list[dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    """Per diagnosis class: labelled cases analysed, how many have an empty mask, and the share."""
    counts: dict[str, list[int]] = {}
    for case in cases:
        stats = case.get("label_stats")
        if stats is None:
            continue
        cls = case["class"]
        name = classes[cls] if isinstance(cls, int) and 0 <= cls < len(classes) else _NO_CLASS
        empty = not any(uid != 0 and entry["foreground_percentage"] > _EMPTY for uid, entry in zip(stats["labels"], stats["label"]))
        row = counts.setdefault(name, [0, 0])
        row[0] += 1
        row[1] += int(empty)
    return {name: {"labelled": n, "empty": e, "fraction": round(e / n, 4)} for name, (n, e) in counts.items()}


def _intensity(summary: Mapping[str, Any], cases: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """Per channel: MONAI's summary (mean over cases of each case's 0.5 / 99.5 percentiles, mean,
    min, max) plus the pooled standard deviation sqrt(mean(std_i^2) + var(mean_i))."""
    intensity = summary["intensity"]
    means = np.asarray([[c["mean"] for c in case[key]["intensity"]] for case in cases], dtype=float)
    stds = np.asarray([[c["stdev"] for c in case[key]["intensity"]] for case in cases], dtype=float)
    pooled = np.sqrt((stds**2).mean(axis=0) + means.var(axis=0))
    as_list = (lambda v: [round(float(x), 4) for x in np.atleast_1d(v)])
    return {"p00_5": as_list(intensity["percentile_00_5"]), "p99_5": as_list(intensity["percentile_99_5"]),
            "mean": as_list(intensity["mean"]), "std": as_list(pooled), "min": as_list(intensity["min"]),
            "max": as_list(intensity["max"])}


def fingerprint(datalist: Any, max_cases: int = MAX_CASES, workers: int | None = None) -> dict[str, Any]:
    """Measure the training split of a loaded :class:`scripts.core.datalist.Datalist`.

    Args:
        datalist: the loaded datalist (sample paths absolute).
        max_cases: analyse at most this many training cases (class-stratified, deterministic).
        workers: DataLoader worker processes running the analyzers (None: up to 2, by CPU count).

    Returns:
        the fingerprint dict (JSON-ready) described in ``docs/README.md``.

    Raises:
        ValueError: a file cannot be read (names it), or the training split is empty.
    """
    from monai.auto3dseg import FgImageStatsSumm, ImageStatsSumm, LabelStatsSumm
    from monai.data import get_track_meta, set_track_meta

    start = time.perf_counter()
    samples = datalist.split("training")
    if not samples:
        raise ValueError(f"{datalist.path}: the training split is empty; nothing to plan from")
    picked = select_cases([s.get("class") for s in samples], max_cases)
    chosen = [samples[i] for i in picked]
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    workers = 0 if len(chosen) < 16 else workers  # starting workers costs more than a few cases
    tracking = get_track_meta()
    set_track_meta(True)  # training switches it off; the analyzers need affines (spacing, RAS)
    try:
        cases = _run_cases(chosen, _AnalyseCase(datalist.spatial_dims, datalist.in_channels, len(datalist.segments)), workers)
    finally:
        set_track_meta(tracking)
    labelled = [c for c in cases if "label_stats" in c]
    with_lesion = [c for c in labelled if any(u != 0 for u in c["label_stats"]["labels"])]
    monai: dict[str, Any] = {"image_stats": ImageStatsSumm(average=False)(cases)}
    if with_lesion:
        monai["image_foreground_stats"] = FgImageStatsSumm(average=False)(with_lesion)
    if labelled:
        monai["label_stats"] = LabelStatsSumm(average=False, do_ccp=True)(labelled)
    monai = _plain(monai)

    shapes = np.asarray([c["shape"] for c in cases], dtype=float)
    spacings = np.asarray([c["spacing"] for c in cases if c["spacing"] is not None], dtype=float)
    sizes = {**_percentiles(shapes, (5, 10, 50, 90, 95))}
    raw_min, raw_max = min(c["raw_min"] for c in cases), max(c["raw_max"] for c in cases)
    colour = float(np.mean([c["colour"] for c in cases]))
    raw_channels = int(np.median([c["raw_channels"] for c in cases]))
    integer = all(c["integer"] for c in cases)
    modality, reason = guess_modality(datalist.channels, raw_channels, colour, raw_min, raw_max, integer)
    result: dict[str, Any] = {
        "spatial_dims": datalist.spatial_dims,
        "channels": list(datalist.channels),
        "segments": list(datalist.segments),
        "classes": list(datalist.classes),
        "n_training": len(samples),
        "n_analysed": len(cases),
        "n_labelled": len(labelled),
        "n_with_lesion": len(with_lesion),
        "subsampled": len(cases) < len(samples),
        "subsample_rule": f"at most {max_cases} cases, stratified by class, evenly spaced within each class",
        "analysis_stride": int(max(c["stride"] for c in cases)),
        "orientation": "RAS" if datalist.spatial_dims == 3 else None,
        # rows and columns in display orientation (PNG, JPEG, ...), not voxel axes (NIfTI, NRRD, DICOM)
        "raster_fraction": round(float(np.mean([all(map(is_raster, image_files(s["image"]))) for s in samples])), 4),
        "modality": modality,
        "modality_reason": reason,
        "raw_channels": raw_channels,
        "colour_fraction": round(colour, 4),
        "raw_intensity_range": [round(raw_min, 4), round(raw_max, 4)],
        "image_size": sizes,
        "spacing": _percentiles(spacings, (10, 50, 90)) if spacings.size else None,
        "size_mm": (_percentiles([c["image_stats"]["sizemm"] for c in cases], (10, 50, 90))
                    if spacings.size else None),
        "intensity": {"global": _intensity(monai["image_stats"], cases, "image_stats")},
        "lesions": _lesions(labelled, list(datalist.segments)),
        "empty_mask": _empty_masks(labelled, list(datalist.classes)),
        "monai": monai,
    }
    if with_lesion:
        result["intensity"]["foreground"] = _intensity(monai["image_foreground_stats"], with_lesion, "image_foreground_stats")
    result["seconds"] = round(time.perf_counter() - start, 2)
    logger.info("fingerprint of %d/%d training cases in %.1f s", len(cases), len(samples), result["seconds"])
    return result


def _plain(value: Any) -> Any:
    """MONAI's reports (StrEnum keys, numpy / torch numbers) as plain JSON values, rounded."""
    if isinstance(value, Mapping):
        return {str(getattr(k, "value", k)): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    return value

