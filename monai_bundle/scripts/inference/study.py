"""One input study as read (:class:`Study`) and its output stem (:func:`study_name`).

Its own module, below the readers that build it (:mod:`scripts.inference.readers` for files,
:mod:`scripts.inference.dicom` for DICOM, :mod:`scripts.inference.archive` for zips and DICOMweb), so
that none of them imports another to make one. The axis conventions are the readers'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scripts.imageio import Geometry, strip_image_suffix

@dataclass
class Study:
    """One input study as read.

    Attributes:
        path: the file or folder given (a :class:`~scripts.inference.dicomweb.DicomWebUrl` for a URL).
        name: stem for the output files (``<name>_seg.nii.gz`` ...).
        image: ``(C, *spatial)`` float32 in the axis convention of :mod:`scripts.inference.readers`.
        geometry: placement of the spatial grid.
        raster: True for PNG/JPG-like images (``(C, H, W)``, no physical spacing).
        dicom: header-only pydicom datasets of the source instances in slice order (DICOM input
            only; DICOM SEG needs them), else None.
        multiframe: the DICOM input is one multi-frame (enhanced) instance.
        four_d: the file was 4D (X, Y, Z, T); its T volumes are the channels of ``image``.
        warnings: things the user should know about the input (series chosen, ...).
        workdir: the temporary folder a zip was unpacked into; removed when the study is.
    """

    path: Path
    name: str
    image: np.ndarray
    geometry: Geometry
    raster: bool = False
    dicom: list | None = None
    multiframe: bool = False
    four_d: bool = False
    warnings: list[str] = field(default_factory=list)
    workdir: Any = None

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])


def study_name(path: Path) -> str:
    """Output stem: the file name without its image suffix(es), or the folder name."""
    return strip_image_suffix(path.name, (".gz",)) or path.name
