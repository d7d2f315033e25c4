"""Contact sheets of a generated (or real) set: ``python -m scripts.datasets preview SET --out sheet.png``.

One row per class, ``per_class`` random images each, the tumour / lesion outlined in its terminology colour. Knows the
BRISC 2025 and BUSI layouts and MSD-style volume sets (three planes through the lesion, shown after
reorienting to RAS, so every stored orientation shows the same way).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

TILE = 256


def _outline(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """An RGB tile of a grey image with the mask's outline in the tumour's terminology colour, drawn by the
    overlay renderer of the CLI and the web demo (:func:`scripts.inference.overlay.paint`, fill off)."""
    rgb = np.repeat(image[..., None], 3, axis=-1)
    if mask is None or not mask.any():
        return rgb
    from scripts.inference.overlay import paint, segment_colors  # the inference package loads torch: only when drawn

    return paint(rgb, mask.astype(np.uint8), segment_colors(["background", "tumor"]), opacity=0.0)


def _tile(image: np.ndarray, mask: np.ndarray | None) -> Image.Image:
    """A square tile: the image letterboxed to :data:`TILE` pixels, mask outlined."""
    if mask is not None and mask.shape != image.shape:
        mask = None
    rgb = Image.fromarray(_outline(image, mask))
    scale = TILE / max(rgb.size)
    rgb = rgb.resize((max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.NEAREST)
    tile = Image.new("RGB", (TILE, TILE))
    tile.paste(rgb, ((TILE - rgb.width) // 2, (TILE - rgb.height) // 2))
    return tile


def _grey(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def _brisc_rows(root: Path, per_class: int, rng: np.random.Generator) -> dict[str, list[Image.Image]]:
    rows = {}
    for folder in sorted((root / "classification_task" / "train").iterdir()):
        files = sorted(folder.glob("*.jpg"))
        picks = [files[i] for i in rng.permutation(len(files))[:per_class]]
        masks = [root / "segmentation_task" / "train" / "masks" / f"{f.stem}.png" for f in picks]
        rows[folder.name] = [_tile(_grey(f), _grey(m) > 127 if m.is_file() else None) for f, m in zip(picks, masks)]
    return rows


def _busi_rows(root: Path, per_class: int, rng: np.random.Generator) -> dict[str, list[Image.Image]]:
    rows = {}
    for name in ("normal", "benign", "malignant"):
        files = sorted(f for f in (root / name).glob("*.png") if "_mask" not in f.stem)
        picks = [files[i] for i in rng.permutation(len(files))[:per_class]]
        tiles = []
        for f in picks:
            masks = sorted(f.parent.glob(f"{f.stem}_mask*.png"))
            merged = np.any([_grey(m) > 127 for m in masks], axis=0) if masks else None
            tiles.append(_tile(_grey(f), merged))
        rows[name] = tiles
    return rows


def _volume_tiles(image_path: Path, label_path: Path) -> list[Image.Image]:
    """Axial, coronal and sagittal slices through the lesion centre (or the middle), RAS-reoriented."""
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(image_path))
    lab = nib.as_closest_canonical(nib.load(label_path))
    vol, mask = np.asarray(img.dataobj, np.float32), np.asarray(lab.dataobj) > 0
    centre = np.argwhere(mask).mean(0).round().astype(int) if mask.any() else np.array(vol.shape) // 2
    hi = float(np.percentile(vol, 99.5)) or 1.0
    zoom = img.header.get_zooms()[:3]
    tiles = []
    for axis in (2, 1, 0):  # axial, coronal, sagittal
        sl = [slice(None)] * 3
        sl[axis] = int(centre[axis])
        plane, pm = np.rot90(vol[tuple(sl)]), np.rot90(mask[tuple(sl)])
        if axis != 0:
            plane, pm = plane[:, ::-1], pm[:, ::-1]  # radiological: patient right on the left
        rest = [zoom[i] for i in range(3) if i != axis]
        h, w = plane.shape
        size = (max(1, round(w * rest[0] / min(rest))), max(1, round(h * rest[1] / min(rest))))
        grey = np.asarray(Image.fromarray(np.clip(plane / hi * 255, 0, 255).astype(np.uint8)).resize(size))
        tiles.append(_tile(grey, np.asarray(Image.fromarray(pm.astype(np.uint8)).resize(size)) > 0))
    return tiles


def _msd_rows(root: Path, per_class: int, rng: np.random.Generator) -> dict[str, list[Image.Image]]:
    with open(root / "classes.csv", newline="", encoding="utf-8") as f:
        table = [(r["case"], r["class"]) for r in csv.DictReader(f)]
    rows: dict[str, list[Image.Image]] = {}
    for name in sorted({c for _, c in table}):
        cases = [case for case, c in table if c == name]
        for i in rng.permutation(len(cases))[: max(1, per_class // 3)]:
            case = cases[i]
            rows.setdefault(name, []).extend(
                _volume_tiles(root / "imagesTr" / f"{case}.nii.gz", root / "labelsTr" / f"{case}.nii.gz"))
    return rows


def contact_sheet(source: str | Path, out: str | Path, per_class: int = 6, seed: int = 0) -> Path:
    """Write a PNG contact sheet of ``source`` (BRISC, BUSI or MSD-style layout) to ``out``.

    Raises:
        ValueError: ``source`` is none of the known layouts.
    """
    root, rng = Path(source), np.random.default_rng(seed)
    if (root / "classification_task").is_dir():
        rows = _brisc_rows(root, per_class, rng)
    elif (root / "Dataset_BUSI_with_GT").is_dir() or (root / "benign").is_dir():
        rows = _busi_rows(root / "Dataset_BUSI_with_GT" if (root / "Dataset_BUSI_with_GT").is_dir() else root,
                          per_class, rng)
    elif (root / "dataset.json").is_file() and (root / "classes.csv").is_file():
        rows = _msd_rows(root, per_class, rng)
    else:
        raise ValueError(f"{root}: not a BRISC, BUSI or MSD-style folder")
    width = max(len(t) for t in rows.values())
    sheet = Image.new("RGB", (width * TILE, len(rows) * (TILE + 18)), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for r, (name, tiles) in enumerate(rows.items()):
        draw.text((4, r * (TILE + 18) + 3), name, fill=(255, 255, 0))
        for c, tile in enumerate(tiles):
            sheet.paste(tile, (c * TILE, r * (TILE + 18) + 18))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return Path(out)
