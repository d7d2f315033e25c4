"""Medical Segmentation Decathlon and nnU-Net v2 data sets, plus a class table.

**MSD** (``TaskXX_Name/``): ``dataset.json`` with ``modality`` (``{"0": "FLAIR", ...}``), ``labels``
(``{"0": "background", ...}``), ``training: [{image, label}]`` and ``test: [image]``; images are
NIfTI, 4D channels-last for multi-modal tasks. The datalist's ``channels`` are the modality names
in index order, which is the order of the 4D file's last axis, so the model's channel i is
modality i; each image's channel count is checked against the modality list.

**nnU-Net v2** (``DatasetXXX_Name/``): ``dataset.json`` with ``channel_names``, ``labels``
(``{"background": 0, ...}``) and ``file_ending``; ``imagesTr/<case>_<XXXX><file_ending>`` one file
per channel, ``labelsTr/<case><file_ending>``, optional ``imagesTs``. A sample's image is the list
of its channel files ordered by the 4-digit channel index. A ``.png`` file ending gives a 2D set.

Neither format has a diagnosis: classes come from a ``case,class`` CSV (``--classes-csv``); a case
the table does not list trains the segmentation head only. Official test images are kept in
``test`` when the table gives their class (they have no masks); others are left out.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from scripts.prepare.common import Collection, PrepareError, Sample, read_class_table
from scripts.prepare.imageio import RASTER_SUFFIXES, read_image, strip_suffix

_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<index>\d{4})$")


def _read_dataset_json(source: Path) -> dict[str, Any]:
    path = Path(source) / "dataset.json"
    if not path.is_file():
        raise PrepareError(f"{source}: no dataset.json (is this an MSD / nnU-Net data set folder?)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PrepareError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise PrepareError(f"{path}: expected a JSON object")
    return raw


def _indexed_names(mapping: Any, what: str, path: Path) -> list[str]:
    """``{"0": "FLAIR", "1": "T1"}`` -> ``["FLAIR", "T1"]``, requiring indices 0..N-1."""
    if not isinstance(mapping, dict) or not mapping:
        raise PrepareError(f"{path}: '{what}' must be a non-empty object of index -> name")
    try:
        by_index = {int(k): str(v) for k, v in mapping.items()}
    except (TypeError, ValueError) as e:
        raise PrepareError(f"{path}: '{what}' keys must be integers, got {list(mapping)}") from e
    if sorted(by_index) != list(range(len(by_index))):
        raise PrepareError(f"{path}: '{what}' indices must be 0..{len(by_index) - 1}, got {sorted(by_index)}")
    return [by_index[i] for i in range(len(by_index))]


def _nnunet_segments(labels: Any, path: Path) -> list[str]:
    """nnU-Net v2 ``{"background": 0, "tumor": 1}`` -> ``["background", "tumor"]``."""
    if not isinstance(labels, dict) or not labels:
        raise PrepareError(f"{path}: 'labels' must be a non-empty object of name -> value")
    if any(not isinstance(v, int) or isinstance(v, bool) for v in labels.values()):
        raise PrepareError(
            f"{path}: region-based 'labels' (lists of values) are not supported; give one integer per label"
        )
    return _indexed_names({v: k for k, v in labels.items()}, "labels", path)


def _apply_classes(col: Collection, classes_csv: Path, class_names: list[str] | None) -> dict[str, str]:
    table, classes = read_class_table(classes_csv, class_names)
    if len(classes) < 2:
        raise PrepareError(
            f"{classes_csv}: the class table names {len(classes)} class(es) {classes}; a diagnosis needs at least 2"
        )
    col.classes = classes
    return table


def _finish(col: Collection, table: dict[str, str], classes_csv: Path, skipped_test: int) -> Collection:
    cases = {s.key for s in col.samples}
    unknown = sorted(set(table) - cases)
    if unknown:
        col.warnings.append(f"{classes_csv}: {len(unknown)} case(s) not in the data set, e.g. {unknown[:3]}")
    if skipped_test:
        col.warnings.append(f"{skipped_test} official test image(s) left out: no mask and no class in {classes_csv}")
    return col


def collect_msd(source: Path, out: Path, classes_csv: Path, class_names: list[str] | None = None) -> Collection:
    """Collect an MSD task (``dataset.json`` + 4D channels-last NIfTI) with classes from a table.

    Raises:
        PrepareError: no or bad ``dataset.json``, bad ``modality`` / ``labels``, a bad class table.
    """
    source = Path(source)
    raw = _read_dataset_json(source)
    path = source / "dataset.json"
    channels = _indexed_names(raw.get("modality"), "modality", path)
    segments = _indexed_names(raw.get("labels"), "labels", path)
    col = Collection(str(raw.get("name", source.name)), 3, channels, segments, [])
    table = _apply_classes(col, classes_csv, class_names)
    lookup = {c: i for i, c in enumerate(col.classes)}
    skipped = 0
    entries = [(e.get("image"), e.get("label"), None) for e in raw.get("training", []) if isinstance(e, dict)]
    entries += [(e if isinstance(e, str) else e.get("image"), None, "test") for e in raw.get("test", [])]
    for image, label, split in entries:
        if not isinstance(image, str):
            col.problems.append(f"{path}: an entry has no 'image'")
            continue
        case = strip_suffix(Path(image).name)
        cls = lookup[table[case]] if case in table else None
        if split == "test" and cls is None:
            skipped += 1
            continue
        img = (source / image).resolve()
        lab = (source / label).resolve() if isinstance(label, str) else None
        if _check_msd_files(img, lab, len(channels), col):
            col.samples.append(
                Sample(key=case, image=str(img), label=str(lab) if lab else None, class_index=cls, split=split)
            )
    return _finish(col, table, classes_csv, skipped)


def _check_msd_files(image: Path, label: Path | None, n_channels: int, col: Collection) -> bool:
    missing = [p for p in (image, label) if p is not None and not p.is_file()]
    if missing:
        col.problems += [f"{p}: file not found (listed in dataset.json)" for p in missing]
        return False
    try:
        _, geom = read_image(image, header_only=True)
    except (OSError, ValueError) as e:
        col.problems.append(f"{image}: cannot read ({e})")
        return False
    if geom.channels != n_channels:
        col.problems.append(
            f"{image}: has {geom.channels} channel(s) on its last axis, dataset.json lists {n_channels} modalities"
        )
        return False
    return True


def _channel_files(folder: Path, ending: str, n_channels: int, col: Collection) -> dict[str, list[Path]]:
    """Case -> channel files ordered by index, for complete cases of an nnU-Net ``images*`` folder."""
    found: dict[str, dict[int, Path]] = defaultdict(dict)
    for f in sorted(folder.iterdir()):
        if not f.name.endswith(ending) or f.name.startswith("."):
            continue
        m = _CHANNEL_FILE.match(f.name[: -len(ending)])
        if not m:
            col.problems.append(f"{f}: not named <case>_<XXXX>{ending}")
            continue
        found[m.group("case")][int(m.group("index"))] = f
    cases = {}
    for case, files in sorted(found.items()):
        if sorted(files) != list(range(n_channels)):
            col.problems.append(
                f"{folder}/{case}: channel files {sorted(files)}, "
                f"dataset.json lists {n_channels} channels (0..{n_channels - 1})"
            )
            continue
        cases[case] = [files[i] for i in range(n_channels)]
    return cases


def collect_nnunet(source: Path, out: Path, classes_csv: Path, class_names: list[str] | None = None) -> Collection:
    """Collect an nnU-Net v2 raw data set (one file per channel) with classes from a table.

    Raises:
        PrepareError: no or bad ``dataset.json`` (``channel_names``, ``labels``, ``file_ending``), no
            ``imagesTr`` folder, a bad class table.
    """
    source = Path(source)
    raw = _read_dataset_json(source)
    path = source / "dataset.json"
    channels = _indexed_names(raw.get("channel_names", raw.get("modality")), "channel_names", path)
    segments = _nnunet_segments(raw.get("labels"), path)
    ending = raw.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise PrepareError(f"{path}: 'file_ending' must be a string like '.nii.gz', got {ending!r}")
    if not (source / "imagesTr").is_dir():
        raise PrepareError(f"{source}: no imagesTr/ folder")
    dims = 2 if ending.lower() in RASTER_SUFFIXES else 3
    col = Collection(str(raw.get("name", source.name)), dims, channels, segments, [])
    table = _apply_classes(col, classes_csv, class_names)
    lookup = {c: i for i, c in enumerate(col.classes)}
    skipped = 0
    for folder, split in (("imagesTr", None), ("imagesTs", "test")):
        if not (source / folder).is_dir():
            continue
        labels_dir = source / folder.replace("images", "labels")
        for case, files in _channel_files(source / folder, ending, len(channels), col).items():
            label = labels_dir / f"{case}{ending}"
            label_path = str(label.resolve()) if label.is_file() else None
            cls = lookup[table[case]] if case in table else None
            if label_path is None and cls is None:
                if split == "test":
                    skipped += 1
                else:
                    col.problems.append(f"{label}: no mask and no class for case {case}")
                continue
            col.samples.append(
                Sample(
                    key=case, image=[str(f.resolve()) for f in files], label=label_path, class_index=cls, split=split
                )
            )
    return _finish(col, table, classes_csv, skipped)
