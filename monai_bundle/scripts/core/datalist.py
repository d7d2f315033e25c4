"""The datalist: which images, masks and diagnoses a run uses (format: ``docs/README.md``, "The datalist").

``load_datalist`` reads the JSON with MONAI's datalist loader (relative paths resolve against the
datalist's folder), checks its structure and returns a :class:`Datalist`. ``check_samples`` reads
file headers (not pixel data) to catch the problems that would otherwise stop a run mid-way:
missing files, a mask whose size differs from its image, a wrong channel count. Both collect every
problem and raise one :class:`DatalistError` listing them, each naming its file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.core.tasks import Keys
from scripts.imageio import channels_compatible
from scripts.imageio import read_header as read_image_header

SPLITS = ("training", "validation", "test")
#: reviewed studies that train nothing (``python -m scripts.prepare reviewed``): listed, read by no split
REJECTED_KEY = "rejected"
MAX_LISTED_PROBLEMS = 20


class DatalistError(ValueError):
    """A datalist or a file it names cannot be used; ``problems`` lists each one."""

    def __init__(self, source: str | os.PathLike, problems: list[str]) -> None:
        self.problems = list(problems)
        shown = self.problems[:MAX_LISTED_PROBLEMS]
        more = len(self.problems) - len(shown)
        lines = "\n  - ".join(shown) + (f"\n  ... and {more} more" if more > 0 else "")
        super().__init__(f"{source}: {len(self.problems)} problem(s):\n  - {lines}")


@dataclass
class Datalist:
    """A loaded datalist; sample paths are absolute, ``class`` is an int index when present."""

    path: Path
    name: str
    spatial_dims: int
    channels: list[str]
    segments: list[str]
    classes: list[str]
    splits: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def split(self, name: str) -> list[dict[str, Any]]:
        """Samples of one split (``training``, ``validation`` or ``test``); [] when absent."""
        return self.splits.get(name, [])

    @property
    def in_channels(self) -> int:
        return len(self.channels)


def _header_fields(raw: dict[str, Any], path: Path) -> tuple[list[str], dict[str, Any]]:
    problems: list[str] = []
    fields: dict[str, Any] = {"name": raw.get("name", path.stem)}
    for key, kind in (("channels", list), ("segments", list), ("classes", list), ("spatial_dims", int)):
        value = raw.get(key)
        if not isinstance(value, kind):
            problems.append(f"'{key}' must be a {kind.__name__}, got {value!r}")
        fields[key] = value
    if isinstance(fields["spatial_dims"], int) and fields["spatial_dims"] not in (2, 3):
        problems.append(f"'spatial_dims' must be 2 or 3, got {fields['spatial_dims']}")
    for key, low in (("channels", 1), ("segments", 2), ("classes", 2)):
        if isinstance(fields[key], list) and len(fields[key]) < low:
            problems.append(f"'{key}' needs at least {low} entries, got {fields[key]}")
    return problems, fields


def _check_sample(sample: dict[str, Any], where: str, classes: list[str]) -> list[str]:
    """Structure of one sample; converts a class name to its index in place."""
    problems = []
    if Keys.IMAGE.value not in sample:
        problems.append(f"{where}: no 'image'")
    if Keys.LABEL.value not in sample and Keys.CLASS.value not in sample:
        problems.append(f"{where}: has neither 'label' nor 'class', so it trains nothing")
    if Keys.CLASS.value in sample:
        cls = sample[Keys.CLASS.value]
        if isinstance(cls, str) and cls in classes:
            sample[Keys.CLASS.value] = classes.index(cls)
        elif isinstance(cls, bool) or not isinstance(cls, int) or not 0 <= cls < len(classes):
            problems.append(f"{where}: class {cls!r} is out of range for {len(classes)} classes {classes}")
    return problems


def load_datalist(path: str | os.PathLike, require_training: bool = True) -> Datalist:
    """Read and check a datalist JSON.

    Args:
        path: the datalist file.
        require_training: an empty or missing ``training`` split is an error (training needs one).

    Raises:
        DatalistError: the file is missing or not JSON, a header field is wrong, a sample lacks an
            image or both targets, a class index is out of range, or the training split is empty.
    """
    from monai.data import load_decathlon_datalist  # MONAI (torch) only when a datalist is loaded: prepare stays light
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DatalistError(path, ["datalist file not found"])
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatalistError(path, [f"not valid JSON ({e})"]) from e
    problems, fields = _header_fields(raw, path)
    if problems:
        raise DatalistError(path, problems)
    splits: dict[str, list[dict[str, Any]]] = {}
    for split in SPLITS:
        if split not in raw:
            continue
        if not isinstance(raw[split], list):
            problems.append(f"'{split}' must be a list of samples")
            continue
        # MONAI's loader resolves 'image' and 'label' (also lists of files) against the datalist folder
        samples = load_decathlon_datalist(path, is_segmentation=True, data_list_key=split, base_dir=path.parent) if raw[split] else []
        for i, sample in enumerate(samples):
            problems += _check_sample(sample, f"{split}[{i}] ({_first(sample.get(Keys.IMAGE.value))})", fields["classes"])
        splits[split] = samples
    if require_training and not splits.get("training"):
        problems.append("the 'training' split is empty: there is nothing to train on")
    if problems:
        raise DatalistError(path, problems)
    return Datalist(path=path, splits=splits, **fields)


def _first(value: Any) -> str:
    return str(value[0] if isinstance(value, (list, tuple)) and value else value)


def read_header(path: str | os.PathLike) -> tuple[tuple[int, ...], int]:
    """``(spatial shape, channels)`` of an image file from its header, without reading pixels.

    Raster images report ``(H, W)`` (rows first, the training convention), volumes ``(X, Y, Z)``.

    Raises:
        ValueError: the file cannot be read as an image (names the file).
    """
    try:
        header = read_image_header(path)
    except Exception as e:  # every reader has its own exception types; all mean "unreadable"
        raise ValueError(f"{path}: cannot read image header ({type(e).__name__}: {e})") from e
    return header.shape, header.channels


def image_files(image: str | list[str]) -> list[str]:
    """A sample's ``image`` entry as a list of files (one file, or one per channel)."""
    return list(image) if isinstance(image, (list, tuple)) else [image]


def _image_header(image: str | list[str]) -> tuple[tuple[int, ...], int]:
    """Header of a sample's image; a list of files (one per channel) adds up the channels."""
    files = image_files(image)
    shapes_channels = [read_header(f) for f in files]
    shapes = {s for s, _ in shapes_channels}
    if len(shapes) > 1:
        raise ValueError(f"{files[0]}: the channel files of one image differ in size {sorted(shapes)}")
    return shapes_channels[0][0], sum(c for _, c in shapes_channels)


def _header_or_problem(read: Any, files: Any, problems: list[str]) -> tuple[tuple[int, ...], int] | None:
    """``read(files)``, or None with its error added to ``problems`` when the files cannot be read."""
    try:
        return read(files)
    except ValueError as e:
        problems.append(str(e))
        return None


def check_samples(datalist: Datalist, splits: tuple[str, ...] = ("training", "validation")) -> None:
    """Check every file of the given splits exists and agrees with the datalist, reading headers only.

    Raises:
        DatalistError: listing each missing/unreadable file, each mask whose spatial size differs
            from its image, each image whose channel count is not ``len(channels)`` (RGB stored
            grey images are accepted for a 1-channel datalist), each image of the wrong dimension.
    """
    problems: list[str] = []
    want_c = datalist.in_channels
    for split in splits:
        for sample in datalist.split(split):
            image = sample.get(Keys.IMAGE.value)
            files = image_files(image)
            missing = [f for f in files if not Path(f).exists()]
            label = sample.get(Keys.LABEL.value)
            if label is not None and not Path(label).exists():
                missing.append(label)
            if missing:
                problems += [f"{f}: file not found ({split})" for f in missing]
                continue
            header = _header_or_problem(_image_header, image, problems)
            if header is None:
                continue
            shape, channels = header
            if not channels_compatible(channels, want_c):
                problems.append(f"{files[0]}: has {channels} channel(s), the datalist declares {want_c} {datalist.channels}")
            squeezed = tuple(s for s in shape if s != 1) if len(shape) > datalist.spatial_dims else shape
            if len(squeezed) != datalist.spatial_dims:
                problems.append(f"{files[0]}: is {len(shape)}D {shape}, the datalist declares spatial_dims {datalist.spatial_dims}")
            label_header = None if label is None else _header_or_problem(read_header, label, problems)
            if label_header is None:
                continue
            label_shape = label_header[0]
            if label_shape != shape:
                problems.append(f"{label}: mask size {label_shape} differs from its image {files[0]} {shape}")
    if problems:
        raise DatalistError(datalist.path, problems)


def load_and_check(path: str | os.PathLike, splits: tuple[str, ...] = ("training", "validation")) -> Datalist:
    """``load_datalist`` then ``check_samples``: what training calls before its first step.

    Raises:
        DatalistError: any problem of either, each naming its file.
    """
    datalist = load_datalist(path)
    check_samples(datalist, splits)
    return datalist


def provenance_counts(datalist: dict[str, Any], with_mask: bool = False) -> dict[str, dict[str, int]]:
    """``{split or "rejected": {provenance: count}}``; entries without one count as ``"original"``.

    ``with_mask``: count only the entries with a ``label`` (those that train the segmentation; a
    provenance whose entries have none counts 0), e.g. the accepted studies ``prepare reviewed``
    leaves unlabelled."""
    counts: dict[str, dict[str, int]] = {}
    for key in ("training", "validation", "test", REJECTED_KEY):
        for entry in datalist.get(key) or []:
            prov = str(entry.get("provenance", "original")) if isinstance(entry, dict) else "original"
            counts.setdefault(key, {}).setdefault(prov, 0)
            if not with_mask or (isinstance(entry, dict) and entry.get(Keys.LABEL.value) is not None):
                counts[key][prov] += 1
    return counts
