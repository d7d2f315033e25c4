"""Outputs of one study, all written atomically: label map (PNG / NIfTI / .seg.nrrd), result JSON, overlay.

:class:`OutputSet` writes every file of a study under a hidden temporary name and renames them all
only when all were written, so a failure leaves nothing behind and a reader never sees half a
file. DICOM SEG is in :mod:`scripts.inference.dicom_seg`; the overlay is drawn by :mod:`scripts.inference.overlay`.

Label maps are ``uint8`` in the study's axis convention (:mod:`scripts.inference.readers`):
``(H, W)`` for raster input, ``(X, Y[, Z])`` for volumes.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

import nrrd
import numpy as np
import SimpleITK as sitk
from PIL import Image

from scripts.inference.errors import InputError
from scripts.inference.overlay import key_slices_picture, segment_colors
from scripts.imageio import Geometry
from scripts.inference.terminology import segment_term, slicer_terminology_tag

def check_output_dir(folder: str | os.PathLike) -> Path:
    """Check, without leaving anything behind, that ``folder`` can be created / written.

    Raises:
        InputError: the folder is a file, lies under a file, or is not writable (names it).
    """
    folder = Path(folder)
    probe_dir = folder
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise InputError(f"{folder}: output folder cannot be created: {probe_dir} is a file")
    try:  # os.access is not enough (root, read-only mounts): really create and remove a file
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"{folder}: output folder is not writable ({e.strerror or e})") from e
    return folder


class OutputSet:
    """Files of one study: each written to a temp name, all renamed on :meth:`commit`.

    Use as a context manager; leaving it by an exception removes every temp file.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._pending: list[tuple[Path, Path]] = []
        self._token = secrets.token_hex(4)

    def temp(self, final_name: str) -> Path:
        """The temp path to write ``final_name`` to; it keeps the suffix so writers pick the format."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".tmp-{self._token}-{final_name}"
        self._pending.append((tmp, self.folder / final_name))
        return tmp

    def commit(self) -> dict[str, Path]:
        """Rename every temp file to its final name, in the order they were requested."""
        for tmp, final in self._pending:
            os.replace(tmp, final)
        done = {final.name: final for _, final in self._pending}
        self._pending = []
        return done

    def abort(self) -> None:
        for tmp, _ in self._pending:
            tmp.unlink(missing_ok=True)
        self._pending = []

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def itk_order(label: np.ndarray, raster: bool) -> np.ndarray:
    """The label map indexed ``(i, j[, k])`` like ITK/NRRD: a raster ``(H, W)`` becomes ``(W, H)``."""
    return label.T if raster else label


def write_nifti(label: np.ndarray, geometry: Geometry, raster: bool, path: Path, dtype: type = np.uint8) -> Path:
    """Write a voxel map (a uint8 label map unless ``dtype`` says otherwise) with the study's geometry
    (any SimpleITK format by ``path``'s suffix)."""
    ijk = itk_order(label, raster)
    image = sitk.GetImageFromArray(np.ascontiguousarray(ijk.T, dtype=dtype))  # numpy wants (k, j, i)
    sitk.WriteImage(geometry.apply(image), str(path), useCompression=True)
    return path


def write_uncertainty_map(values: np.ndarray, geometry: Geometry, raster: bool, path: Path) -> Path:
    """Write a voxel-wise uncertainty map (0..1) on the study's grid.

    Both keep the value in steps of 1/255. Raster input (a ``.png`` path): an 8-bit grey PNG on the
    image's pixel grid, ``round(255 * value)``. Other input: float32 ``round(255 * value) / 255`` with the
    study's geometry (any SimpleITK format by ``path``'s suffix); the rounding lets gzip find the
    repeats (a 256 x 256 x 48 map: 11 MB and 0.41 s unrounded, 0.6 MB and 0.13 s rounded).

    Raises:
        ValueError: a PNG path for a map that is not 2D.
    """
    steps = np.round(np.clip(values, 0.0, 1.0) * 255)
    if path.suffix == ".png":
        if values.ndim != 2:
            raise ValueError(f"a PNG uncertainty map needs a 2D map, got shape {values.shape}")
        Image.fromarray(steps.astype(np.uint8)).save(path, format="PNG")
        return path
    return write_nifti((steps / 255).astype(np.float32), geometry, raster, path, dtype=np.float32)


def write_png_mask(label: np.ndarray, segments: list[str], path: Path) -> Path:
    """Write a raster study's label map ``(H, W)`` as an 8-bit grey PNG on the image's own pixel grid.

    Binary models (background + one segment) write 0 / 255, as BUSI and BRISC store their masks;
    with several segments each pixel holds its segment value ``0..S-1``.
    """
    if label.ndim != 2:
        raise ValueError(f"a PNG mask needs a 2D label map, got shape {label.shape}")
    values = label.astype(np.uint8) * (255 if len(segments) == 2 else 1)
    Image.fromarray(values).save(path, format="PNG")  # uint8 (H, W): 8-bit grey
    return path


def write_seg_nrrd(label: np.ndarray, geometry: Geometry, raster: bool, segments: list[str], path: Path) -> Path:
    """Write a 3D Slicer ``.seg.nrrd`` (one layer, label values) with segment names, colours, terms.

    A 2D label map is written as a one-slice volume, as Slicer stores 2D segmentations.
    """
    ijk = itk_order(label, raster).astype(np.uint8)
    spacing, origin = np.asarray(geometry.spacing), np.asarray(geometry.origin)
    direction = np.asarray(geometry.direction).reshape(len(spacing), len(spacing))
    if ijk.ndim == 2:  # lift to 3D: one slice, unit normal
        ijk = ijk[..., None]
        direction = np.pad(direction, ((0, 1), (0, 1)))
        direction[2, 2] = 1.0
        spacing, origin = np.append(spacing, 1.0), np.append(origin, 0.0)
    header: dict[str, Any] = {
        "type": "unsigned char", "dimension": 3, "space": "left-posterior-superior",
        "space directions": (direction * spacing[None, :]).T,  # row i: one step along axis i, in LPS mm
        "space origin": origin, "kinds": ["domain"] * 3, "encoding": "gzip",
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    extent = " ".join(f"0 {n - 1}" for n in ijk.shape)
    for index, name in enumerate(segments[1:]):
        value = index + 1
        term = segment_term(name, value)
        prefix = f"Segment{index}_"
        header.update({
            prefix + "ID": f"Segment_{value}", prefix + "Name": name, prefix + "NameAutoGenerated": "0",
            prefix + "Color": " ".join(f"{c / 255:.4f}" for c in term.color), prefix + "ColorAutoGenerated": "0",
            prefix + "LabelValue": str(value), prefix + "Layer": "0", prefix + "Extent": extent,
            prefix + "Tags": f"TerminologyEntry:{slicer_terminology_tag(term)}|",
        })
    nrrd.write(str(path), ijk, header, index_order="F")
    return path


def write_json(data: dict[str, Any], path: Path) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    return path


def write_overlay(image: np.ndarray, label: np.ndarray, view: Any, segments: list[str], path: Path) -> Path:
    """PNG of the key slices side by side at the image's own resolution, in display orientation, each
    segment filled and outlined in its terminology colour (:func:`scripts.inference.overlay.key_slices_picture`).

    Args:
        image: ``(C, *spatial)`` the study as read; label: ``(*spatial)`` uint8.
        view: the prediction's ``DisplayView`` (None for a PNG/JPG image, drawn as it is).
        segments: the model card's segment names, background first.
    """
    picture = key_slices_picture(image, label, segment_colors(segments), view)
    Image.fromarray(picture).save(path, format="PNG")
    return path
