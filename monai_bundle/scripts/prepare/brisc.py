"""BRISC 2025 (brain tumour MRI, Fateh et al. 2025): both published layouts.

Split layout::

    classification_task/{train,test}/{glioma,meningioma,no_tumor,pituitary}/*.jpg
    segmentation_task/{train,test}/{images/*.jpg, masks/*.png}

Flat layout: the same without the ``{train,test}`` level. Names look like
``brisc2025_<split>_<idx5>_<gl|me|pi|no>_<ax|co|sa>_t1.jpg`` (``nt`` accepted for no tumour); a
mask has the image's stem and ``.png``.

* An image found in both tasks is one sample: the class from its classification folder, the
  mask from the segmentation task. The class from the folder and the class code in the name are
  cross-checked; so are the split folder and the split in the name (mismatch = problem).
* The official ``test`` split is kept; ``train`` is the pool validation is drawn from. In the flat
  layout the split in the file name is used.
* Masks (0/255) are written as 0/1 PNG to ``OUT/masks/<split>/<stem>.png``. A no-tumour image has
  no mask: an empty mask is written (it teaches "no tumour" to the seg head), or, with
  ``no_tumor="cls-only"``, the sample has no ``label``. A tumour image without a mask trains the
  classification head only. Images are used in place (RGB-stored grey; the bundle reads them grey).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scripts.prepare.common import Collection, PrepareError, Sample
from scripts.prepare.imageio import binary_mask, read_image, save_png

CLASSES = ["glioma", "meningioma", "no_tumor", "pituitary"]
SEGMENTS = ["background", "tumor"]
CHANNELS = ["T1"]
CODES = {"gl": "glioma", "me": "meningioma", "pi": "pituitary", "no": "no_tumor", "nt": "no_tumor"}
NO_TUMOR_MODES = ("empty-mask", "cls-only")
NAME = re.compile(
    r"^brisc2025_(?P<split>train|test)_(?P<idx>\d+)_(?P<code>gl|me|pi|no|nt)_(?P<plane>ax|co|sa)_t1$", re.IGNORECASE
)
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class _Entry:
    image: Path
    folder_class: str | None = None
    folder_split: str | None = None
    mask: Path | None = None


def parse_name(stem: str) -> tuple[str, str] | None:
    """``(class name, split)`` from a BRISC file stem, or None when it does not follow the naming."""
    m = NAME.match(stem)
    return (CODES[m.group("code").lower()], m.group("split").lower()) if m else None


def _folder_class(name: str) -> str | None:
    key = re.sub(r"[^a-z]", "", name.lower())
    return {"glioma": "glioma", "meningioma": "meningioma", "pituitary": "pituitary", "notumor": "no_tumor"}.get(key)


def find_root(source: Path) -> Path:
    """The folder holding ``classification_task`` and/or ``segmentation_task`` (``source`` or one level down).

    Raises:
        PrepareError: none found.
    """
    candidates = [source] + sorted(p for p in source.iterdir() if p.is_dir()) if source.is_dir() else []
    for root in candidates:
        if (root / "classification_task").is_dir() or (root / "segmentation_task").is_dir():
            return root
    raise PrepareError(f"{source}: not a BRISC 2025 folder (expected classification_task/ and/or segmentation_task/)")


def _split_dirs(task: Path) -> list[tuple[str | None, Path]]:
    """``[(split, folder)]``: the ``train``/``test`` folders of the split layout, or the task itself (flat)."""
    splits = [(s, task / s) for s in ("train", "test") if (task / s).is_dir()]
    return splits or [(None, task)]


def _images(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES and not f.name.startswith("."))


def _scan(root: Path, col: Collection) -> dict[str, _Entry]:
    entries: dict[str, _Entry] = {}
    cls_task, seg_task = root / "classification_task", root / "segmentation_task"
    if cls_task.is_dir():
        for split, folder in _split_dirs(cls_task):
            for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
                name = _folder_class(sub.name)
                if name is None:
                    col.warnings.append(f"{sub}: not a BRISC class folder, ignored")
                    continue
                for f in _images(sub):
                    if f.stem in entries and entries[f.stem].folder_class != name:
                        col.problems.append(f"{f}: also filed under {entries[f.stem].folder_class}")
                        entries[f.stem].folder_class = "?"
                        continue
                    entries[f.stem] = _Entry(f, name, split)
    if seg_task.is_dir():
        for split, folder in _split_dirs(seg_task):
            if (folder / "images").is_dir():
                for f in _images(folder / "images"):
                    entries.setdefault(f.stem, _Entry(f, None, split))
            if (folder / "masks").is_dir():
                for m in _images(folder / "masks"):
                    if m.stem in entries:
                        entries[m.stem].mask = m
                    else:
                        col.warnings.append(f"{m}: mask without an image, ignored")
    return entries


def collect_brisc(source: Path, out: Path, no_tumor: str = "empty-mask") -> Collection:
    """Collect BRISC 2025 samples (either layout), writing 0/1 masks under ``out``.

    Args:
        source: the BRISC folder (or its parent).
        out: output folder for derived masks.
        no_tumor: ``"empty-mask"`` or ``"cls-only"``: what a no-tumour image without a mask becomes.

    Raises:
        PrepareError: not a BRISC folder, or an unknown ``no_tumor`` mode.
    """
    if no_tumor not in NO_TUMOR_MODES:
        raise PrepareError(f"no_tumor must be one of {NO_TUMOR_MODES}, got {no_tumor!r}")
    root = find_root(Path(source))
    col = Collection("BRISC2025", 2, CHANNELS, SEGMENTS, CLASSES)
    entries = _scan(root, col)
    tumor_without_mask = 0
    for stem, e in sorted(entries.items()):
        resolved = _resolve(stem, e, col)
        if resolved is None:
            continue
        class_name, split = resolved
        label = _label(stem, e, class_name, split, out, no_tumor, col)
        if label is False:
            continue
        tumor_without_mask += label is None and class_name != "no_tumor"
        col.samples.append(
            Sample(
                key=stem,
                image=str(e.image),
                label=label,
                class_index=CLASSES.index(class_name),
                split="test" if split == "test" else None,
            )
        )
    if tumor_without_mask:
        col.warnings.append(
            f"{tumor_without_mask} tumour image(s) have no mask: they train the classification head only"
        )
    return col


def _resolve(stem: str, e: _Entry, col: Collection) -> tuple[str, str | None] | None:
    """(class, split) of an entry, cross-checking folder and name; None (and a problem) on conflict."""
    if e.folder_class == "?":
        return None
    parsed = parse_name(stem)
    name_class, name_split = parsed if parsed else (None, None)
    if e.folder_class and name_class and e.folder_class != name_class:
        col.problems.append(f"{e.image}: in the {e.folder_class} folder but its name says {name_class}")
        return None
    if e.folder_split and name_split and e.folder_split != name_split:
        col.problems.append(f"{e.image}: in the {e.folder_split} folder but its name says {name_split}")
        return None
    class_name = e.folder_class or name_class
    if class_name is None:
        col.problems.append(
            f"{e.image}: no class folder and the name does not follow brisc2025_<split>_<idx>_<gl|me|pi|no>_<plane>_t1"
        )
        return None
    return class_name, e.folder_split or name_split


def _label(
    stem: str, e: _Entry, class_name: str, split: str | None, out: Path, no_tumor: str, col: Collection
) -> str | None | bool:
    """Path of the 0/1 mask written for the entry, None for no mask, False (and a problem) on a bad file."""
    target = out / "masks" / (split or "all") / f"{stem}.png"
    if e.mask is None:
        if class_name != "no_tumor" or no_tumor == "cls-only":
            return None
        try:
            _, geom = read_image(e.image, header_only=True)
        except (OSError, ValueError) as err:
            col.problems.append(f"{e.image}: cannot read ({err})")
            return False
        save_png(np.zeros(geom.shape, np.uint8), target)
        return str(target)
    try:
        mask, _ = read_image(e.mask)
        _, geom = read_image(e.image, header_only=True)
    except (OSError, ValueError) as err:
        col.problems.append(f"{e.mask}: cannot read the mask or its image ({err})")
        return False
    if mask.shape[1:] != geom.shape:
        col.problems.append(f"{e.mask}: mask size {mask.shape[1:]} differs from its image {e.image.name} {geom.shape}")
        return False
    save_png(binary_mask(mask), target)
    return str(target)
