"""The web demo's example inputs, made from the bundle's built-in synthetic data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from scripts.core.atomic import atomic_path


def write_examples(folder: str | os.PathLike, seed: int = 0, size: int = 128) -> list[Path]:
    """Example inputs from the built-in synthetic data: a ``size``² PNG per class and a NIfTI volume.

    Written once (atomically); files already present are reused, so a restart costs nothing.
    """
    from scripts.datasets import synthetic  # imported here: the page's other helpers do not need scipy

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spacing = (1.5, 1.5, 5.0)  # a 19 cm field of view at 128 px, thick axial slices

    def slice_png(k: int):
        return lambda p: _save_png(p, synthetic.make_slice(np.random.default_rng([seed, k]), k, size)[0])

    def volume_nifti(k: int):
        return lambda p: _save_nifti(p, synthetic.make_volume(seed, k, (size, size, 24), spacing)[0], spacing)

    # rendering costs seconds: makers run only for files not yet on disk
    makers = {f"example_{name}.png": slice_png(k) for k, name in enumerate(synthetic.CLASSES)}
    makers["example_glioma_volume.nii.gz"] = volume_nifti(synthetic.CLASSES.index("glioma"))
    return [_write_once(folder / name, make) for name, make in makers.items()]


def _write_once(path: Path, write) -> Path:
    if path.is_file():
        return path
    with atomic_path(path, suffix="".join(path.suffixes)) as tmp:  # the writers pick the format by suffix
        write(str(tmp))
    return path


def _save_png(path: str, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8)).save(path, format="PNG")


def _save_nifti(path: str, volume: np.ndarray, spacing: tuple[float, float, float]) -> None:
    import nibabel as nib

    from scripts.datasets.synthetic import volume_affine  # i -> Left, j -> Posterior: viewers show the head upright

    nib.save(nib.Nifti1Image(volume.astype(np.float32), volume_affine(spacing)), path)
