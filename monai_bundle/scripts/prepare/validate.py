"""``validate``: check a datalist and every file it names, list every problem, count the samples.

Built on :func:`scripts.core.datalist.load_datalist` (structure, class indices, path resolution). On top
of it, every image and mask is read in full (a truncated file fails here, not in epoch 7):

* every file exists and decodes;
* the image has the declared channel count (grey stored as RGB is accepted for one channel, as the
  bundle's transforms convert it) and ``spatial_dims`` dimensions; per-channel files agree;
* mask values are integers within ``0..len(segments)-1`` (or only 0 and 255: a binary mask stored
  0/255, which the bundle's transforms read as 0/1); a mask has one channel;
* image and mask have the same size and, for volumes, the same spacing, origin and direction;
* names in ``channels`` / ``segments`` / ``classes`` are unique; an image file appears once.

Problems never stop the check; :func:`validate` returns them all with a table of counts per class
and split.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import load_decathlon_datalist

from scripts.core.datalist import DatalistError, load_datalist
from scripts.imageio import ImageHeader
from scripts.prepare.common import (  # noqa: F401 (the count table's names are re-exported)
    NO_CLASS,
    SPLITS,
    TOTAL,
    WITH_MASK,
    count_table,
    format_counts,
)
from scripts.prepare.imageio import read_image
from scripts.core.tasks import Keys


@dataclass
class ValidationReport:
    """Every problem found, and ``counts[split][column]`` (class names, no class, with mask, total)."""

    path: Path
    problems: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def validate(path: str | Path) -> ValidationReport:
    """Check a datalist and all its files; see the module docstring for what is checked.

    Returns:
        a :class:`ValidationReport`; ``report.ok`` is False when any problem was found. Nothing
        is raised for a bad datalist or file: each becomes one line of ``report.problems``.
    """
    path = Path(path).expanduser().resolve()
    report = ValidationReport(path)
    try:
        dl = load_datalist(path)
        header = {
            "spatial_dims": dl.spatial_dims,
            "channels": dl.channels,
            "segments": dl.segments,
            "classes": dl.classes,
        }
        splits = dl.splits
    except DatalistError as e:
        report.problems += [f"{path}: {p}" for p in e.problems]
        header, splits = _lenient_load(path)
        if header is None:
            return report  # the header itself is unusable: no file can be judged against it
    report.classes = list(header["classes"])
    report.problems += _check_names(path, header)
    report.problems += _check_repeats(splits)
    for split in SPLITS:
        for i, sample in enumerate(splits.get(split, [])):
            if Keys.IMAGE.value in sample:
                report.problems += check_sample_files(sample, header, f"{split}[{i}]")
    report.counts = count_table(splits, report.classes)
    return report


def _lenient_load(path: Path) -> tuple[dict[str, Any] | None, dict[str, list[dict[str, Any]]]]:
    """Header and samples of a datalist that failed ``load_datalist``, to keep checking its files."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, {}
    if not isinstance(raw, dict):
        return None, {}
    header = {k: raw.get(k) for k in ("spatial_dims", "channels", "segments", "classes")}
    if not all(isinstance(header[k], list) for k in ("channels", "segments", "classes")) or header[
        "spatial_dims"
    ] not in (2, 3):
        return None, {}
    splits = {}
    for split in SPLITS:
        if isinstance(raw.get(split), list) and raw[split]:
            try:
                splits[split] = load_decathlon_datalist(
                    path, is_segmentation=True, data_list_key=split, base_dir=path.parent
                )
            except (ValueError, TypeError, KeyError):
                continue  # already reported by load_datalist
    return header, splits


def _check_names(path: Path, header: dict[str, Any]) -> list[str]:
    problems = []
    for key in ("channels", "segments", "classes"):
        repeated = sorted(n for n, k in Counter(map(str, header[key])).items() if k > 1)
        if repeated:
            problems.append(f"{path}: '{key}' names repeated: {repeated}")
    return problems


def _check_repeats(splits: dict[str, list[dict[str, Any]]]) -> list[str]:
    """An image file listed more than once (worst across splits: the model is scored on its training data)."""
    seen: dict[str, list[str]] = {}
    for split in SPLITS:
        for s in splits.get(split, []):
            image = s.get(Keys.IMAGE.value)
            first = image[0] if isinstance(image, (list, tuple)) and image else image
            if first is not None:
                seen.setdefault(str(first), []).append(split)
    return [f"{f}: listed {len(where)} times ({', '.join(where)})" for f, where in seen.items() if len(where) > 1]


def check_sample_files(sample: dict[str, Any], header: dict[str, Any], where: str) -> list[str]:
    """Read one sample's image (all channel files) and mask in full and check them against the header.

    Args:
        sample: ``{"image": path or [paths], "label": path?}`` with absolute paths.
        header: ``spatial_dims``, ``channels``, ``segments`` of the datalist.
        where: ``"<split>[<index>]"``, put into each message.

    Returns:
        the problems, each starting with the file it concerns.
    """
    image = sample[Keys.IMAGE.value]
    files = [str(f) for f in (image if isinstance(image, (list, tuple)) else [image])]
    problems: list[str] = []
    geoms: list[ImageHeader] = []
    for f in files:
        geom, err = _read(f, where)
        if err:
            problems.append(err)
        else:
            geoms.append(geom)
    if problems:
        return problems
    problems += _check_image(files, geoms, header, where)
    label = sample.get(Keys.LABEL.value)
    if label is not None:
        problems += _check_mask(str(label), files[0], geoms[0], header, where)
    return problems


def _read(f: str, where: str, keep: list | None = None) -> tuple[ImageHeader | None, str | None]:
    if not Path(f).exists():
        return None, f"{f}: file not found ({where})"
    try:
        arr, geom = read_image(f)
    except Exception as e:  # each reader raises its own types; all mean "unreadable"
        return None, f"{f}: cannot read ({where}: {type(e).__name__}: {e})"
    if keep is not None:
        keep.append(arr)
    return geom, None


def _check_image(files: list[str], geoms: list[ImageHeader], header: dict[str, Any], where: str) -> list[str]:
    problems = []
    want = len(header["channels"])
    got = sum(g.channels for g in geoms)
    if got != want and not (want == 1 and got in (3, 4)) and not (want == 3 and got in (1, 4)):
        problems.append(
            f"{files[0]}: image has {got} channel(s), the datalist declares {want} {header['channels']} ({where})"
        )
    shape = geoms[0].shape
    dims = len(tuple(s for s in shape if s != 1)) if len(shape) > header["spatial_dims"] else len(shape)
    if dims != header["spatial_dims"]:
        problems.append(
            f"{files[0]}: image is {len(shape)}D {shape}, "
            f"the datalist declares spatial_dims {header['spatial_dims']} ({where})"
        )
    for f, g in zip(files[1:], geoms[1:]):
        diff = _geometry_diff(geoms[0], g)
        if diff:
            problems.append(f"{f}: channel file {diff} the first channel file {files[0]} ({where})")
    return problems


def _check_mask(label: str, image_file: str, image_geom: ImageHeader, header: dict[str, Any], where: str) -> list[str]:
    arrays: list[np.ndarray] = []
    geom, err = _read(label, where, arrays)
    if err:
        return [err]
    problems = []
    mask = arrays[0]
    if mask.shape[0] > 1 and not all(np.array_equal(mask[0], mask[c]) for c in range(1, mask.shape[0])):
        problems.append(f"{label}: mask has {mask.shape[0]} different channels, a mask must have one ({where})")
    diff = _geometry_diff(image_geom, geom)
    if diff:
        problems.append(f"{label}: mask {diff} its image {image_file} ({where})")
    n_seg = len(header["segments"])
    values = np.unique(mask[0])
    if not np.all(np.mod(values, 1) == 0):
        problems.append(f"{label}: mask has non-integer values {values[np.mod(values, 1) != 0][:5].tolist()} ({where})")
    bad = values[(values < 0) | (values > n_seg - 1)]
    if set(values.tolist()) <= {0, 255}:
        bad = bad[:0]  # a binary mask stored 0/255: scripts.core.transforms.map_mask_values reads it as 0/1
    if bad.size:
        problems.append(
            f"{label}: mask values {bad[:10].tolist()} outside 0..{n_seg - 1} "
            f"of the {n_seg} segments {header['segments']} ({where})"
        )
    return problems


def _geometry_diff(a: ImageHeader, b: ImageHeader) -> str | None:
    """``"size (..) differs from"`` / ``"spacing (..) differs from"`` ... or None when they agree."""
    if a.shape != b.shape:
        return f"size {b.shape} differs from {a.shape} of"
    for name, tol in (("spacing", 1e-3), ("origin", 1e-2), ("direction", 1e-3)):
        va, vb = getattr(a, name), getattr(b, name)
        if (va is None) != (vb is None):
            continue  # raster vs volume: only the size is comparable
        if va is not None and (np.shape(va) != np.shape(vb) or not np.allclose(va, vb, rtol=1e-4, atol=tol)):
            show_a, show_b = (np.round(v, 4) + 0.0 for v in (va, vb))  # + 0.0 turns -0.0 into 0.0
            return f"{name} {show_b.tolist()} differs from {show_a.tolist()} of"
    return None
