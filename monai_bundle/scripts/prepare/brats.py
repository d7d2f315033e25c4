"""BraTS glioma MRI: 2020 naming with ``name_mapping.csv`` grades, and 2023+ naming.

2020 (also 2018/2019 with ``HGG/`` and ``LGG/`` parent folders)::

    MICCAI_BraTS2020_TrainingData/name_mapping.csv   (Grade, ..., BraTS_2020_subject_ID)
    MICCAI_BraTS2020_TrainingData/BraTS20_Training_001/BraTS20_Training_001_{flair,t1,t1ce,t2,seg}.nii.gz

2023+ (GLI, MEN, MET, PED, SSA challenges)::

    BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t2f,t1n,t1c,t2w,seg}.nii.gz

* Channels, in this fixed order for every release (so models trained on either interchange, and
  the order matches MSD Task01): ``FLAIR`` (flair / t2f), ``T1`` (t1 / t1n), ``T1c`` (t1ce / t1c),
  ``T2`` (t2 / t2w). Each sample's image is the list of the four files in that order.
* Segments: ``subregions`` (default) ``background, necrosis, edema, enhancing`` = values 0..3:
  2020's enhancing label 4 becomes 3 (written to ``OUT/labels/<case>.nii.gz``); 2023+ labels are
  already 0..3 and used in place. ``whole-tumor``: ``background, tumor`` (any label > 0), written.
* Classes: 2020 grades ``HGG``/``LGG`` from ``name_mapping.csv`` (or the HGG/LGG parent folders);
  2023+ has no diagnosis: the challenge cohort (``GLI``, ``MEN``, ...) when several are present,
  else a ``case,class`` table (``classes_csv``), which also overrides the above.
* Group: the patient (2023+ ``BraTS-GLI-00000``, shared by its timepoints ``-000``, ``-001``).
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from scripts.prepare.common import Collection, PrepareError, Sample, read_class_table
from scripts.prepare.imageio import NIFTI_SUFFIXES, read_image, save_nifti_like

CHANNELS = ["FLAIR", "T1", "T1c", "T2"]
SUFFIXES = {2020: ["flair", "t1", "t1ce", "t2"], 2023: ["t2f", "t1n", "t1c", "t2w"]}
SEGMENT_MODES = {"subregions": ["background", "necrosis", "edema", "enhancing"], "whole-tumor": ["background", "tumor"]}
GRADES = ["HGG", "LGG"]
_CASE_2020 = re.compile(r"^BraTS\d{2}_", re.IGNORECASE)
_CASE_2023 = re.compile(r"^(?P<patient>BraTS-(?P<cohort>[A-Z]+)-\d+)-\d+$")


def _case_folders(source: Path) -> list[tuple[Path, str | None]]:
    """``[(case folder, grade from an HGG/LGG parent or None)]`` at depth 1 or 2."""
    found = []
    for child in sorted(p for p in source.iterdir() if p.is_dir()):
        if _CASE_2020.match(child.name) or _CASE_2023.match(child.name):
            found.append((child, None))
        elif child.name.upper() in GRADES:
            found += [(c, child.name.upper()) for c in sorted(child.iterdir()) if c.is_dir()]
    return found


def _find(folder: Path, stem: str) -> Path | None:
    for ext in (".nii.gz", ".nii"):
        if (folder / f"{stem}{ext}").is_file():
            return folder / f"{stem}{ext}"
    return None


def _find_seg(folder: Path, case: str, sep: str) -> Path | None:
    """The case's mask; a lone other ``*seg*`` NIfTI is accepted.

    BraTS20_Training_355 ships its mask as ``W39_1998.09.19_Segm.nii``.
    """
    seg = _find(folder, f"{case}{sep}seg")
    if seg is not None:
        return seg
    others = [f for f in folder.iterdir() if "seg" in f.name.lower() and f.name.lower().endswith(NIFTI_SUFFIXES)]
    return others[0] if len(others) == 1 else None


def _grades(source: Path) -> dict[str, str]:
    """Case -> grade from ``name_mapping.csv`` in ``source`` or its parent; {} when absent."""
    for folder in (source, source.parent):
        path = folder / "name_mapping.csv"
        if path.is_file():
            with open(path, newline="", encoding="utf-8-sig") as f:
                rows = list(csv.DictReader(f))
            id_col = next((c for c in (rows[0].keys() if rows else []) if c.startswith("BraTS_2020")), None)
            if id_col is None or "Grade" not in rows[0]:
                raise PrepareError(f"{path}: needs the columns 'Grade' and 'BraTS_2020_subject_ID'")
            return {r[id_col].strip(): r["Grade"].strip().upper() for r in rows if r.get(id_col)}
    return {}


def collect_brats(
    source: Path,
    out: Path,
    segments: str = "subregions",
    classes_csv: Path | None = None,
    class_names: list[str] | None = None,
) -> Collection:
    """Collect BraTS cases (2020 or 2023+ naming), writing remapped masks under ``out``.

    Raises:
        PrepareError: no case folder, mixed naming, unknown ``segments`` mode, no source of classes.
    """
    if segments not in SEGMENT_MODES:
        raise PrepareError(f"segments must be one of {list(SEGMENT_MODES)}, got {segments!r}")
    source = Path(source)
    cases = _case_folders(source) if source.is_dir() else []
    if not cases:
        raise PrepareError(f"{source}: no BraTS case folder (BraTS20_Training_001/ or BraTS-GLI-00000-000/)")
    releases = {2023 if _CASE_2023.match(c.name) else 2020 for c, _ in cases}
    if len(releases) > 1:
        raise PrepareError(f"{source}: mixes 2020 and 2023+ case naming; prepare each release on its own")
    release = releases.pop()
    col = Collection(f"BraTS{release}", 3, CHANNELS, SEGMENT_MODES[segments], [])
    class_of = _class_source(source, cases, release, classes_csv, class_names, col)
    for folder, _ in cases:
        sample = _case(folder, release, segments, out, col)
        if sample is None:
            continue
        name = class_of.get(folder.name)
        sample.class_index = col.classes.index(name) if name is not None else None
        if sample.label is None and sample.class_index is None:
            col.warnings.append(f"{folder}: no mask and no class, left out")
            continue
        col.samples.append(sample)
    return col


def _class_source(
    source: Path, cases: list, release: int, classes_csv: Path | None, class_names: list[str] | None, col: Collection
) -> dict[str, str]:
    """Case -> class name; sets ``col.classes``."""
    if classes_csv is not None:
        table, col.classes = read_class_table(classes_csv, class_names)
        return table
    if release == 2020:
        grades = _grades(source) or {c.name: g for c, g in cases if g}
        if grades:
            col.classes = GRADES
            bad = sorted({g for g in grades.values() if g not in GRADES})
            if bad:
                raise PrepareError(f"{source}: grades {bad} are not {GRADES}")
            return grades
    else:
        cohorts = {c.name: _CASE_2023.match(c.name).group("cohort") for c, _ in cases}
        if len(set(cohorts.values())) > 1:
            col.classes = sorted(set(cohorts.values()))
            return cohorts
    raise PrepareError(
        f"{source}: no diagnosis to learn (no name_mapping.csv grades, one cohort only): "
        "give --classes-csv with columns case,class"
    )


def _case(folder: Path, release: int, segments: str, out: Path, col: Collection) -> Sample | None:
    case, sep = folder.name, "-" if release == 2023 else "_"
    files = [_find(folder, f"{case}{sep}{s}") for s in SUFFIXES[release]]
    missing = [f"{case}{sep}{s}.nii.gz" for s, f in zip(SUFFIXES[release], files) if f is None]
    if missing:
        col.problems.append(f"{folder}: missing {', '.join(missing)}")
        return None
    m = _CASE_2023.match(case)
    group = m.group("patient") if m else case
    seg = _find_seg(folder, case, sep)
    label = None if seg is None else _label(seg, release, segments, out / "labels" / f"{case}.nii.gz", col)
    if label is False:
        return None
    return Sample(key=case, image=[str(f) for f in files], label=label, group=group)


def _label(seg: Path, release: int, segments: str, target: Path, col: Collection) -> str | bool:
    """The mask path the datalist uses: the source file or a remapped copy; False (and a problem) if bad."""
    if release == 2023 and segments == "subregions":
        return str(seg)  # already 0..3
    try:
        arr, _ = read_image(seg)
    except (OSError, ValueError, EOFError) as e:
        col.problems.append(f"{seg}: cannot read ({e})")
        return False
    values = np.rint(arr[0]).astype(np.int16)
    allowed = {0, 1, 2, 4} if release == 2020 else {0, 1, 2, 3}
    unexpected = sorted(set(np.unique(values).tolist()) - allowed)
    if unexpected:
        col.problems.append(f"{seg}: label values {unexpected} are not BraTS labels {sorted(allowed)}")
        return False
    if segments == "whole-tumor":
        out = (values > 0).astype(np.uint8)
    else:
        out = np.where(values == 4, 3, values).astype(np.uint8)  # 2020 enhancing tumour 4 -> 3
    save_nifti_like(out, seg, target)
    return str(target)
