"""What every adapter shares: the sample record, the collected data set, atomic writes, paths.

An adapter (``busi``, ``brisc``, ``msd``, ``brats``, ``plain_csv``) reads a published layout and
returns a :class:`Collection`: samples with absolute file paths, the data set's channel / segment /
class names, and the problems it met. :mod:`scripts.prepare.pipeline` then checks duplicates,
splits and writes the datalist. Adapters never write into the source folder: every derived file
(merged mask, grey copy, remapped label) goes under the output folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.core.tasks import Keys

#: datalist split names, in the order they are written
SPLITS = ("training", "validation", "test")
#: extra columns of the count table
NO_CLASS, WITH_MASK, TOTAL = "(no class)", "with mask", "total"


class PrepareError(ValueError):
    """A data set cannot be prepared; the message names the file or folder and the problem."""


@dataclass
class Sample:
    """One datalist entry before splitting.

    Attributes:
        key: a short unique id used in reports (a file stem or case id, never a path).
        image: absolute path of the image, or a list of per-channel paths in channel order.
        label: absolute path of the mask (values ``0..S-1``), or None when the sample has no mask.
        class_index: index into the collection's ``classes``, or None when unknown.
        group: samples of one group (patient) always share a split.
        split: an official split (one of :data:`SPLITS`) that must be kept, or None.
        provenance: where the labels come from (``prepare reviewed``: accepted / edited / overridden
            / rejected), written to the datalist entry; None for a published data set's own labels.
    """

    key: str
    image: str | list[str]
    label: str | None = None
    class_index: int | None = None
    group: str = ""
    split: str | None = None
    provenance: str | None = None

    def __post_init__(self) -> None:
        if not self.group:
            self.group = self.key

    @property
    def first_image(self) -> str:
        """The image file (first channel file for a per-channel list)."""
        return self.image[0] if isinstance(self.image, list) else self.image


@dataclass
class Collection:
    """What an adapter found: samples plus the names the datalist declares.

    ``problems`` make the command fail unless ``--skip-bad`` is given (the samples they concern are
    already left out); ``warnings`` are reported but never fail.
    """

    name: str
    spatial_dims: int
    channels: list[str]
    segments: list[str]
    classes: list[str]
    samples: list[Sample] = field(default_factory=list)
    #: samples listed in the datalist under their own key (e.g. ``"rejected"``), never split or trained on
    listed: dict[str, list[Sample]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_out_dir(source: Path, out: Path, inside: bool = True) -> None:
    """Refuse an output folder that is the source folder or (``inside=True``) lies inside it.

    Derived files written into the source tree would be picked up as data by the next run.

    Raises:
        PrepareError: ``out`` is ``source`` or inside it.
    """
    src, dst = Path(source).resolve(), Path(out).resolve()
    if dst == src or (inside and src in dst.parents):
        raise PrepareError(f"{out}: the output folder must not be the source folder or inside it ({source})")


def path_for_datalist(path: str, datalist_dir: Path, absolute: bool) -> str:
    """A file path as the datalist stores it.

    Relative to the datalist's folder by default (POSIX separators; may contain ``..`` when the
    source lies beside the output folder), absolute with ``absolute=True`` or when no relative path
    exists (another drive on Windows).
    """
    if absolute:
        return str(Path(path).resolve())
    try:
        return Path(os.path.relpath(Path(path).resolve(), Path(datalist_dir).resolve())).as_posix()
    except ValueError:
        return str(Path(path).resolve())


def sample_entry(sample: Sample, datalist_dir: Path, absolute: bool) -> dict[str, Any]:
    """The datalist dictionary of a sample: ``image``, optional ``label`` / ``class``, ``group``, ``provenance``."""

    def conv(p: str) -> str:
        return path_for_datalist(p, datalist_dir, absolute)

    image = [conv(p) for p in sample.image] if isinstance(sample.image, list) else conv(sample.image)
    entry: dict[str, Any] = {Keys.IMAGE.value: image}
    if sample.label is not None:
        entry[Keys.LABEL.value] = conv(sample.label)
    if sample.class_index is not None:
        entry[Keys.CLASS.value] = int(sample.class_index)
    entry[Keys.GROUP.value] = sample.group
    if sample.provenance is not None:
        entry["provenance"] = sample.provenance
    return entry


def class_lookup(classes: list[str]) -> dict[str, int]:
    """Case-insensitive name -> index map of a class list."""
    return {c.lower(): i for i, c in enumerate(classes)}


def _read_table(path: Path, what: str, columns: tuple[tuple[str, ...], tuple[str, ...]]) -> list[tuple[int, str, str]]:
    """The two columns of a CSV table with a header row: ``(line number, first, second)`` per row, stripped.

    ``columns`` gives the accepted header names of each column (case-insensitive, the first found is
    used); extra columns are ignored.

    Raises:
        PrepareError: the file cannot be read, or its header lacks a column; the message names the file
            and ``what`` the table is.
    """
    import csv

    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
                    for row in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise PrepareError(f"{path}: cannot read the {what} ({e})") from e
    header = list(rows[0]) if rows else []
    found = [next((c for c in names if c in header), None) for names in columns]
    if None in found:
        wanted = " and ".join(repr(names[0]) + "".join(f" (or {a!r})" for a in names[1:]) for names in columns)
        raise PrepareError(f"{path}: the {what} needs a header with columns {wanted}, got {header}")
    first, second = found
    return [(n, row.get(first, ""), row.get(second, "")) for n, row in enumerate(rows, start=2)]


def read_class_table(path: Path, class_names: list[str] | None = None) -> tuple[dict[str, str], list[str]]:
    """Read a ``case,class`` CSV (header row required; extra columns ignored).

    Args:
        path: the CSV file.
        class_names: the class order to use; default: the sorted distinct names of the table.

    Returns:
        (case -> class name, class list).

    Raises:
        PrepareError: unreadable file, missing ``case``/``class`` columns, a case listed twice, or a
            class not in ``class_names``; all problems of the table in one message.
    """
    table: dict[str, str] = {}
    problems = []
    for n, case, name in _read_table(path, "class table", (("case",), ("class",))):
        if not case or not name:
            continue  # an empty class means "unknown": the case trains the seg head only
        if case in table:
            problems.append(f"line {n}: case {case!r} listed twice")
        table[case] = name
    classes = list(class_names) if class_names else sorted(set(table.values()))
    known = class_lookup(classes)
    problems += [f"case {c!r}: class {v!r} not in {classes}" for c, v in table.items() if v.lower() not in known]
    if problems:
        raise PrepareError(f"{path}: " + "; ".join(problems))
    return {c: classes[known[v.lower()]] for c, v in table.items()}, classes


#: accepted header names of a group table's two columns: the case, and its group (patient)
GROUP_TABLE_COLUMNS = (("case", "image"), ("group", "patient"))


def read_group_table(path: Path) -> dict[str, str]:
    """Read a ``case,group`` CSV: the patient (or any other unit that must not be split) of each case.

    The header names the two columns ``case`` (or ``image``) and ``group`` (or ``patient``); extra
    columns are ignored. A case is a sample's key -- the file stem for the 2D layouts, the case id
    for MSD / nnU-Net / BraTS -- or its image file name. Rows with an empty case or group are skipped.

    Returns:
        case -> group.

    Raises:
        PrepareError: missing or unreadable file, missing columns, or a case listed twice with different groups;
            all problems of the table in one message, naming the file and the lines.
    """
    if not Path(path).is_file():
        raise PrepareError(f"{path}: group table not found")
    table: dict[str, str] = {}
    problems = []
    for n, case, group in _read_table(path, "group table", GROUP_TABLE_COLUMNS):
        if not case or not group:
            continue
        if table.get(case, group) != group:
            problems.append(f"line {n}: case {case!r} listed again with another group ({table[case]!r}, {group!r})")
        table[case] = group
    if problems:
        raise PrepareError(f"{path}: " + "; ".join(problems))
    if not table:
        raise PrepareError(f"{path}: the group table lists no case with a group")
    return table


def apply_groups(samples: list[Sample], table: dict[str, str], source: Path) -> tuple[dict[str, int], list[str]]:
    """Give every sample the group the table names for it, so a patient's images share a split.

    A table row matches a sample by its key or by its image's file name (with or without the
    suffix). Samples the table does not name keep their own group.

    Returns:
        (counts ``{"samples_grouped", "groups", "samples_not_listed", "cases_not_found"}``, warnings).
    """
    by_name: dict[str, Sample] = {}
    for s in samples:
        name = Path(s.first_image).name
        for k in (s.key, name, name.split(".")[0]):
            by_name.setdefault(k, s)
    grouped: set[int] = set()
    missing = []
    for case, group in table.items():
        s = by_name.get(case) or by_name.get(Path(case).name) or by_name.get(Path(case).name.split(".")[0])
        if s is None:
            missing.append(case)
            continue
        s.group = group
        grouped.add(id(s))
    not_listed = [s.key for s in samples if id(s) not in grouped]
    warnings = []
    if missing:
        warnings.append(f"{source}: {len(missing)} case(s) of the group table are not in the data set, e.g. {missing[:3]}")
    if not_listed:
        warnings.append(f"{source}: {len(not_listed)} sample(s) not in the group table keep a group of their own, "
                        f"e.g. {not_listed[:3]}")
    counts = {"samples_grouped": len(grouped), "groups": len({s.group for s in samples if id(s) in grouped}),
              "samples_not_listed": len(not_listed), "cases_not_found": len(missing)}
    return counts, warnings


def count_table(splits: dict[str, list[dict[str, Any]]], classes: list[str]) -> dict[str, dict[str, int]]:
    """Samples per split: per class name, without class, with a mask, in total."""
    table = {}
    for split in SPLITS:
        samples = splits.get(split, [])
        row = {c: 0 for c in classes} | {NO_CLASS: 0}
        for s in samples:
            k = s.get(Keys.CLASS.value)
            name = classes[k] if isinstance(k, int) and not isinstance(k, bool) and 0 <= k < len(classes) else NO_CLASS
            row[name] += 1
        row[WITH_MASK] = sum(1 for s in samples if s.get(Keys.LABEL.value) is not None)
        row[TOTAL] = len(samples)
        table[split] = row
    return table


def format_counts(counts: dict[str, dict[str, int]]) -> str:
    """The count table as aligned text, one row per split."""
    cols = list(next(iter(counts.values())).keys()) if counts else []
    width = max([len(c) for c in cols] + [6])
    lines = [f"{'split':<12}" + "".join(f"{c:>{width + 2}}" for c in cols)]
    lines += [f"{split:<12}" + "".join(f"{row[c]:>{width + 2}}" for c in cols) for split, row in counts.items()]
    return "\n".join(lines)
