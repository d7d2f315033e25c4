"""A plain CSV: one row per sample, for data sets in no published layout.

Columns (header row required; names case-insensitive): ``image`` (required), ``mask``, ``class``,
``group``, ``split`` (optional, any may be empty on a row).

* ``image``: a file, or per-channel files joined by ``;`` (``t1.nii.gz;t2.nii.gz``). Paths are
  relative to the CSV's folder or absolute.
* ``mask``: values ``0..S-1`` of ``--segments``. A 2D raster mask stored 0/255 for a binary task is
  written as 0/1 PNG to ``OUT/masks/<row>_<stem>.png``; other masks are used in place.
* ``class``: a class name; the class list is ``--class-names`` (in that order) or the sorted names.
* ``group``: patient id (samples of one group share a split); default: the row's own group.
* ``split``: an official split (``training``/``train``, ``validation``/``val``, ``test``) to keep.

``spatial_dims`` and the channel count come from the first image (a 3D file with one slice counts
as 2D); channel names from ``--channels`` or ``image`` / ``ch0, ch1, ...``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from scripts.prepare.common import Collection, PrepareError, Sample, class_lookup
from scripts.prepare.imageio import binary_mask, is_raster, read_image, save_png, strip_suffix

SPLIT_NAMES = {
    "training": "training",
    "train": "training",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "test": "test",
}
DEFAULT_SEGMENTS = ["background", "tumor"]


def _rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in r.items()} for r in reader]
            header = [h.strip().lower() for h in reader.fieldnames or []]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise PrepareError(f"{path}: cannot read the CSV ({e})") from e
    if "image" not in header:
        raise PrepareError(
            f"{path}: needs a header row with an 'image' column (and optional mask, class, group, split), got {header}"
        )
    if not rows:
        raise PrepareError(f"{path}: no rows")
    return rows


def _resolve(base: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def collect_csv(
    source: Path,
    out: Path,
    channels: list[str] | None = None,
    segments: list[str] | None = None,
    class_names: list[str] | None = None,
) -> Collection:
    """Collect samples from a plain CSV (see the module docstring).

    Raises:
        PrepareError: unreadable CSV, no ``image`` column, no rows, the first image unreadable,
            ``channels`` not matching the first image's channel count, fewer than 2 classes.
    """
    source = Path(source)
    rows = _rows(source)
    base = source.parent
    first = [_resolve(base, p) for p in rows[0]["image"].split(";") if p.strip()]
    try:
        geoms = [read_image(p, header_only=True)[1] for p in first]
    except (OSError, ValueError, RuntimeError) as e:
        raise PrepareError(f"{source}: the first image {first[0] if first else '(empty)'} cannot be read ({e})") from e
    n_channels = sum(g.channels for g in geoms)
    spatial = tuple(s for s in geoms[0].shape if s != 1) if len(geoms[0].shape) == 3 else geoms[0].shape
    if channels is not None and len(channels) != n_channels and not (len(channels) == 1 and n_channels in (3, 4)):
        raise PrepareError(f"{first[0]}: has {n_channels} channel(s) but --channels names {len(channels)}: {channels}")
    names = channels or (
        ["image"] if n_channels in (1, 3, 4) and len(first) == 1 else [f"ch{i}" for i in range(n_channels)]
    )
    found = sorted({r.get("class", "") for r in rows} - {""})
    col = Collection(source.stem, len(spatial), names, segments or DEFAULT_SEGMENTS, class_names or found)
    if len(col.classes) < 2:
        raise PrepareError(
            f"{source}: the 'class' column names {len(col.classes)} class(es) {col.classes}; "
            "the datalist needs at least 2"
        )
    lookup = class_lookup(col.classes)
    keys: set[str] = set()
    for n, row in enumerate(rows, start=2):
        sample = _row_sample(row, n, source, out, lookup, col)
        if sample is None:
            continue
        if sample.key in keys:
            renamed = f"{sample.key}@{n}"  # two files named alike in different folders
            sample.group = renamed if sample.group == sample.key else sample.group
            sample.key = renamed
        keys.add(sample.key)
        col.samples.append(sample)
    return col


def _row_sample(
    row: dict[str, str], n: int, source: Path, out: Path, lookup: dict[str, int], col: Collection
) -> Sample | None:
    where = f"{source}:{n}"
    images = [_resolve(source.parent, p.strip()) for p in row["image"].split(";") if p.strip()]
    if not images:
        col.problems.append(f"{where}: empty 'image'")
        return None
    mask = _resolve(source.parent, row["mask"]) if row.get("mask") else None
    missing = [p for p in images + ([mask] if mask else []) if not p.exists()]
    if missing:
        col.problems += [f"{p}: file not found ({where})" for p in missing]
        return None
    cls = row.get("class", "")
    if cls and cls.lower() not in lookup:
        col.problems.append(f"{where}: class {cls!r} is not one of {col.classes}")
        return None
    split = row.get("split", "").lower()
    if split and split not in SPLIT_NAMES:
        col.problems.append(f"{where}: split {split!r} is not one of {sorted(set(SPLIT_NAMES))}")
        return None
    if mask is None and not cls:
        col.problems.append(f"{where}: neither mask nor class: the sample would train nothing")
        return None
    key = strip_suffix(images[0].name)
    label = _mask(mask, n, key, out, col) if mask else None
    if label is False:
        return None
    return Sample(
        key=key,
        image=[str(p) for p in images] if len(images) > 1 else str(images[0]),
        label=label,
        class_index=lookup[cls.lower()] if cls else None,
        group=row.get("group", "") or "",
        split=SPLIT_NAMES.get(split),
    )


def _mask(mask: Path, n: int, key: str, out: Path, col: Collection) -> str | bool:
    """A binary 0/255 raster mask becomes a 0/1 copy; anything else is used as it is (validate checks it)."""
    if not is_raster(mask) or len(col.segments) != 2:
        return str(mask)
    try:
        arr, _ = read_image(mask)
    except (OSError, ValueError) as e:
        col.problems.append(f"{mask}: cannot read ({e})")
        return False
    if set(np.unique(arr).tolist()) <= {0, 1}:
        return str(mask)
    if not set(np.unique(arr).tolist()) <= {0, 255}:
        return str(mask)
    target = out / "masks" / f"{n}_{key}.png"
    save_png(binary_mask(arr), target)
    return str(target)
