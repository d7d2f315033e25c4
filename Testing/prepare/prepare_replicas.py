"""Small faithful replicas of the published data set layouts, built in ``tmp_path`` (fixtures + helpers).

Real file names and folder structure, tiny images: smooth random textures (so perceptual hashes of
different images differ, as in real data) with a bright "lesion" where the mask is.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter


def texture(seed: int, shape: tuple[int, ...] = (48, 48)) -> np.ndarray:
    """A smooth random uint8 image/volume, distinct per seed."""
    rng = np.random.default_rng(seed)
    img = gaussian_filter(rng.normal(size=shape), sigma=3)
    img = (img - img.min()) / (np.ptp(img) + 1e-9)
    return (img * 200 + 20).astype(np.uint8)


def blob(shape: tuple[int, ...], center: tuple[int, ...], radius: int) -> np.ndarray:
    """A boolean ball."""
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum((g - c) ** 2 for g, c in zip(grid, center)) <= radius**2


def save_png(arr: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def save_jpg(arr: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=95)
    return path


def save_nii(arr: np.ndarray, path: Path, spacing: tuple[float, ...] = (1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag(list(spacing) + [1.0])
    affine[:3, 3] = origin
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


def grey_rgb(plane: np.ndarray) -> np.ndarray:
    """Grey stored as 3 equal channels, the way BUSI ships its images."""
    return np.repeat(plane[..., None], 3, axis=-1)


@pytest.fixture
def busi_replica(tmp_path: Path):
    """``Dataset_BUSI_with_GT/{benign,malignant,normal}``: 4 images per class, grey-as-RGB PNG.

    ``benign (1)`` has an extra ``_mask_1`` (a second lesion); normal masks are empty.
    """

    def build(per_class: int = 4, seed0: int = 0) -> Path:
        root = tmp_path / "Dataset_BUSI_with_GT"
        seed = seed0
        for cls in ("benign", "malignant", "normal"):
            for n in range(1, per_class + 1):
                seed += 1
                img = texture(seed)
                mask = np.zeros(img.shape, np.uint8)
                if cls != "normal":
                    mask[blob(img.shape, (15 + n, 20), 6)] = 255
                    img[mask > 0] = 240
                save_png(grey_rgb(img), root / cls / f"{cls} ({n}).png")
                save_png(mask, root / cls / f"{cls} ({n})_mask.png")
        extra = np.zeros((48, 48), np.uint8)
        extra[blob((48, 48), (38, 38), 4)] = 255
        save_png(extra, root / "benign" / "benign (1)_mask_1.png")
        return root

    return build


BRISC_CODES = {"glioma": "gl", "meningioma": "me", "no_tumor": "no", "pituitary": "pi"}


@pytest.fixture
def brisc_replica(tmp_path: Path):
    """BRISC 2025 ``classification_task`` + ``segmentation_task``, split or flat layout.

    Per split: 3 images per class (train) / 2 (test); tumour images have masks in the
    segmentation task; no-tumour images have none. One no-tumour test image uses the ``nt`` code.
    """

    def build(layout: str = "split") -> Path:
        root = tmp_path / "brisc2025"
        idx = 0
        for split, n in (("train", 3), ("test", 2)):
            for cls, code in BRISC_CODES.items():
                for k in range(n):
                    idx += 1
                    c = "nt" if (split, cls, k) == ("test", "no_tumor", 1) else code
                    stem = f"brisc2025_{split}_{idx:05d}_{c}_{('ax', 'co', 'sa')[k % 3]}_t1"
                    img = texture(1000 + idx, (40, 40))
                    level = [split] if layout == "split" else []
                    save_jpg(grey_rgb(img), root.joinpath("classification_task", *level, cls, f"{stem}.jpg"))
                    if cls == "no_tumor":
                        continue
                    save_jpg(grey_rgb(img), root.joinpath("segmentation_task", *level, "images", f"{stem}.jpg"))
                    mask = np.where(blob(img.shape, (20, 20), 5 + k), 255, 0).astype(np.uint8)
                    save_png(mask, root.joinpath("segmentation_task", *level, "masks", f"{stem}.png"))
        return root

    return build


def channel_volume(band: int, seed: int, shape=(12, 12, 6)) -> np.ndarray:
    """A textured volume with values in ``[100*band, 100*band + 20)``: ``mean // 100`` tells the channel."""
    return (100.0 * band + texture(seed, shape) / 12.0).astype(np.float32)


@pytest.fixture
def msd_replica(tmp_path: Path):
    """``Task01_BrainTumour``: 4D channels-last NIfTI, channel i in band i+1 (see ``channel_volume``); modality keys
    deliberately out of order in dataset.json. Writes a class table ``classes.csv``."""

    def build(n_train: int = 6, n_test: int = 2) -> tuple[Path, Path]:
        root = tmp_path / "Task01_BrainTumour"
        training, test, rows = [], [], ["case,class"]
        for i in range(1, n_train + n_test + 1):
            case = f"BRATS_{i:03d}"
            vol = np.stack([channel_volume(c + 1, 10 * i + c) for c in range(4)], axis=-1)  # (X, Y, Z, 4)
            if i <= n_train:
                save_nii(vol, root / "imagesTr" / f"{case}.nii.gz")
                lab = np.zeros((12, 12, 6), np.uint8)
                lab[blob(lab.shape, (6, 6, 3), 2)] = 1 + i % 3
                save_nii(lab, root / "labelsTr" / f"{case}.nii.gz")
                training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
            else:
                save_nii(vol, root / "imagesTs" / f"{case}.nii.gz")
                test.append(f"./imagesTs/{case}.nii.gz")
            rows.append(f"{case},{'HGG' if i % 2 else 'LGG'}")
        meta = {
            "name": "BRATS",
            "modality": {"2": "T1gd", "0": "FLAIR", "3": "T2w", "1": "T1w"},
            "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
            "numTraining": n_train,
            "training": training,
            "test": test,
        }
        (root / "dataset.json").write_text(json.dumps(meta))
        table = tmp_path / "classes.csv"
        table.write_text("\n".join(rows) + "\n")
        return root, table

    return build


@pytest.fixture
def nnunet_replica(tmp_path: Path):
    """``Dataset004_Prostate`` (nnU-Net v2): ``imagesTr/<case>_<XXXX>.nii.gz``, channel i in
    band i+1; files written highest channel first. Writes ``classes.csv``."""

    def build(n: int = 6, channels=("T2", "ADC")) -> tuple[Path, Path]:
        root = tmp_path / "Dataset004_Prostate"
        rows = ["case,class"]
        for i in range(n):
            case = f"prostate_{i:02d}"
            for c in reversed(range(len(channels))):
                save_nii(channel_volume(c + 1, 10 * i + c), root / "imagesTr" / f"{case}_{c:04d}.nii.gz")
            lab = np.zeros((12, 12, 6), np.uint8)
            lab[blob(lab.shape, (5, 6, 3), 2)] = 1
            save_nii(lab, root / "labelsTr" / f"{case}.nii.gz")
            rows.append(f"{case},{'csPCa' if i % 2 else 'benign'}")
        meta = {
            "channel_names": {str(i): c for i, c in enumerate(channels)},
            "labels": {"background": 0, "lesion": 1},
            "numTraining": n,
            "file_ending": ".nii.gz",
        }
        (root / "dataset.json").write_text(json.dumps(meta))
        table = tmp_path / "classes.csv"
        table.write_text("\n".join(rows) + "\n")
        return root, table

    return build


BRATS20_SUFFIX_BANDS = {"flair": 1, "t1": 2, "t1ce": 3, "t2": 4}
BRATS23_SUFFIX_BANDS = {"t2f": 1, "t1n": 2, "t1c": 3, "t2w": 4}


def brats_seg(shape=(12, 12, 6), enhancing: int = 4) -> np.ndarray:
    seg = np.zeros(shape, np.uint8)
    seg[blob(shape, (6, 6, 3), 4)] = 2  # edema around
    seg[blob(shape, (6, 6, 3), 3)] = enhancing
    seg[blob(shape, (6, 6, 3), 1)] = 1  # necrotic core
    return seg


@pytest.fixture
def brats2020_replica(tmp_path: Path):
    """``MICCAI_BraTS2020_TrainingData``: 6 cases, grades in ``name_mapping.csv``; case 004's mask is
    named ``W39_1998.09.19_Segm.nii`` as in the real release. Sequences lie in the bands of ``BRATS20_SUFFIX_BANDS``."""

    def build(n: int = 6) -> Path:
        root = tmp_path / "MICCAI_BraTS2020_TrainingData"
        rows = [
            "Grade,BraTS_2017_subject_ID,BraTS_2018_subject_ID,TCGA_TCIA_subject_ID,"
            "BraTS_2019_subject_ID,BraTS_2020_subject_ID"
        ]
        for i in range(1, n + 1):
            case = f"BraTS20_Training_{i:03d}"
            for suffix, band in BRATS20_SUFFIX_BANDS.items():
                save_nii(channel_volume(band, 10 * i + band), root / case / f"{case}_{suffix}.nii.gz")
            seg_name = "W39_1998.09.19_Segm.nii" if i == 4 else f"{case}_seg.nii.gz"
            save_nii(brats_seg(), root / case / seg_name)
            rows.append(f"{'HGG' if i <= 4 else 'LGG'},NA,NA,NA,NA,{case}")
        (root / "name_mapping.csv").write_text("\n".join(rows) + "\n")
        return root

    return build


@pytest.fixture
def brats2023_replica(tmp_path: Path):
    """BraTS 2023+ naming: GLI patients 00000 (two timepoints) .. and MEN cases; labels 0..3."""

    def build(cohorts=("GLI", "MEN")) -> Path:
        root = tmp_path / "ASNR-MICCAI-BraTS2023-Training"
        cases = []
        for cohort in cohorts:
            cases += [f"BraTS-{cohort}-{p:05d}-{t:03d}" for p, t in ((0, 0), (0, 1), (2, 0), (3, 0))]
        for n, case in enumerate(cases):
            for suffix, band in BRATS23_SUFFIX_BANDS.items():
                save_nii(channel_volume(band, 10 * n + band), root / case / f"{case}-{suffix}.nii.gz")
            save_nii(brats_seg(enhancing=3), root / case / f"{case}-seg.nii.gz")
        return root

    return build
