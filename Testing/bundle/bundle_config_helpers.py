"""Helpers of the bundle tests that parse ``configs/train.json`` in-process, the way ``monai.bundle run``
parses it, on a tiny generated 2D datalist (``test_plan_use``, ``test_batch_augment``, ``test_training``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from monai.bundle import ConfigParser
from PIL import Image

CONFIGS = Path(__file__).resolve().parents[2] / "monai_bundle" / "configs"


def train_parser(overrides: dict, files: tuple[str, ...] = ("train.json",)) -> ConfigParser:
    """``configs/metadata.json`` + ``files`` read into a parser, on the CPU, with ``overrides`` applied."""
    parser = ConfigParser()
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser.read_config([str(CONFIGS / f) for f in files])
    parser.update({"device": "$torch.device('cpu')", **overrides})
    return parser


def noisy_png(path: Path, size: int = 40, seed: int = 0) -> Path:
    """A grey PNG of noise with one bright rectangle (where :func:`tiny_datalist`'s masks put the lesion)."""
    rng = np.random.default_rng(seed)
    img = (rng.uniform(0, 1, (size, size)) * 150 + 50).astype(np.uint8)
    img[10:20, 12:24] = 250
    Image.fromarray(img).save(path)
    return path


def tiny_datalist(root: Path, n: int = 12, size: int = 40) -> Path:
    """``root/datalist.json``: ``n`` training images of ``size``^2 with a mask and one of two classes; the
    first four again as validation; no test split."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    train = []
    for i in range(n):
        noisy_png(root / "img" / f"{i}.png", size, seed=i)
        mask = np.zeros((size, size), np.uint8)
        mask[10:20, 12:24] = 1
        Image.fromarray(mask).save(root / "img" / f"{i}_m.png")
        train.append({"image": f"img/{i}.png", "label": f"img/{i}_m.png", "class": i % 2})
    path = root / "datalist.json"
    path.write_text(json.dumps({"name": "tiny", "spatial_dims": 2, "channels": ["T1"], "segments": ["bg", "tumor"],
                                "classes": ["a", "b"], "training": train, "validation": train[:4], "test": []}))
    return path
