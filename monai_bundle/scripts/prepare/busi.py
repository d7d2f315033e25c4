"""BUSI (Breast Ultrasound Images, Al-Dhabyani et al. 2020): ``Dataset_BUSI_with_GT/``.

Layout::

    Dataset_BUSI_with_GT/{benign,malignant,normal}/<class> (<n>).png
                                                   <class> (<n>)_mask.png
                                                   <class> (<n>)_mask_1.png   (some lesions: extra masks)

* classes ``["normal", "benign", "malignant"]`` (the order of the PyTorch BUSI seed); no patient
  ids, so each image is its own group (``--regroup-duplicates`` joins copies).
* every image's masks (``_mask``, ``_mask_1``, ``_mask_2``, ...) are OR-merged into one 0/1 PNG at
  ``OUT/masks/<class>/<stem>.png`` (the source masks are 0/255, the datalist wants segment values).
* normal images have (empty) masks; a normal image without one gets an empty mask written; a
  benign/malignant image without a mask is a problem.
* images stored as 3-channel grey are written as 1-channel grey PNG to ``OUT/images/<class>/``
  (``channels: ["US"]``); single-channel images are used in place.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from scripts.prepare.common import Collection, PrepareError, Sample
from scripts.prepare.imageio import binary_mask, read_image, save_png, to_grey

CLASSES = ["normal", "benign", "malignant"]
SEGMENTS = ["background", "lesion"]
CHANNELS = ["US"]
_MASK = re.compile(r"^(?P<stem>.+)_mask(?:_\d+)?$", re.IGNORECASE)


def find_root(source: Path) -> Path:
    """The folder holding the class folders: ``source`` itself or ``source/Dataset_BUSI_with_GT``.

    Raises:
        PrepareError: neither holds a ``benign``, ``malignant`` or ``normal`` folder.
    """
    for root in (source, source / "Dataset_BUSI_with_GT"):
        if root.is_dir() and any((root / c).is_dir() for c in CLASSES):
            return root
    raise PrepareError(
        f"{source}: not a BUSI folder "
        f"(expected {'/'.join(CLASSES)} class folders, or Dataset_BUSI_with_GT/ holding them)"
    )


def collect_busi(source: Path, out: Path) -> Collection:
    """Collect BUSI samples, writing merged masks and grey copies under ``out``.

    Raises:
        PrepareError: ``source`` is not a BUSI folder.
    """
    root = find_root(Path(source))
    col = Collection("BUSI", 2, CHANNELS, SEGMENTS, CLASSES)
    for class_index, name in enumerate(CLASSES):
        folder = root / name
        if not folder.is_dir():
            col.warnings.append(f"{folder}: class folder missing, no {name} samples")
            continue
        images, masks = _scan(folder, col)
        for stem, image_path in sorted(images.items()):
            sample = _sample(stem, image_path, masks.pop(stem, []), class_index, out, col)
            if sample is not None:
                col.samples.append(sample)
        col.warnings += [f"{folder / (s + '_mask.png')}: mask without an image, ignored" for s in sorted(masks)]
    return col


def _scan(folder: Path, col: Collection) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Image stem -> image file, and image stem -> its mask files, of one class folder."""
    images: dict[str, Path] = {}
    masks: dict[str, list[Path]] = defaultdict(list)
    for f in sorted(folder.iterdir()):
        if f.suffix.lower() != ".png" or f.name.startswith("."):
            continue
        m = _MASK.match(f.stem)
        if m:
            masks[m.group("stem")].append(f)
        else:
            images[f.stem] = f
    return images, masks


def _sample(
    stem: str, image_path: Path, mask_paths: list[Path], class_index: int, out: Path, col: Collection
) -> Sample | None:
    class_name = CLASSES[class_index]
    try:
        arr, _ = read_image(image_path)
    except (OSError, ValueError) as e:
        col.problems.append(f"{image_path}: cannot read ({e})")
        return None
    image_file = image_path
    if arr.shape[0] != 1:
        grey, identical = to_grey(arr)
        if not identical:
            col.warnings.append(f"{image_path}: colour image converted to grey by luminance")
        image_file = out / "images" / class_name / f"{stem}.png"
        save_png(grey, image_file)
    shape = arr.shape[1:]
    merged = np.zeros(shape, np.uint8)
    for m in mask_paths:
        try:
            mask, _ = read_image(m)
        except (OSError, ValueError) as e:
            col.problems.append(f"{m}: cannot read ({e})")
            return None
        if mask.shape[1:] != shape:
            col.problems.append(f"{m}: mask size {mask.shape[1:]} differs from its image {image_path.name} {shape}")
            return None
        merged |= binary_mask(mask)  # OR-merge: the extra masks outline further lesions of the image
    if not mask_paths:
        if class_name != "normal":
            col.problems.append(f"{image_path}: {class_name} image has no mask file ({stem}_mask.png)")
            return None
        col.warnings.append(f"{image_path}: normal image without a mask, an empty mask was written")
    label = out / "masks" / class_name / f"{stem}.png"
    save_png(merged, label)
    return Sample(key=stem, image=str(image_file), label=str(label), class_index=class_index)
