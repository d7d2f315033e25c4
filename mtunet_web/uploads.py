"""What the web demo does with an upload before and after the Predictor: type checks, plain error
messages, and the per-run folders it serves files from.

A zip of a DICOM series is unpacked by the Predictor's reader (:mod:`scripts.inference.archive`, the
same code and safety limits as the command line), not here.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

#: file endings the demo accepts (a DICOM series comes as a zip of its files)
SUPPORTED_SUFFIXES = (".png", ".jpg", ".jpeg", ".nii", ".nii.gz", ".nrrd", ".dcm", ".zip")


class UploadError(ValueError):
    """An upload the demo cannot use; the message names the file and the problem."""


def supported(name: str) -> bool:
    """Whether a file name has one of :data:`SUPPORTED_SUFFIXES` (case-insensitive)."""
    return name.lower().endswith(SUPPORTED_SUFFIXES)


def check_upload(path: str | os.PathLike) -> Path:
    """The uploaded file, to hand to the Predictor as it is, after the demo's own checks.

    Raises:
        UploadError: the file is missing, empty, or of a type the demo does not take.
    """
    path = Path(path)
    if not path.is_file():
        raise UploadError(f"{path.name}: file not found")
    if not supported(path.name):
        raise UploadError(f"{path.name}: unsupported file type; upload PNG/JPG, NIfTI (.nii/.nii.gz), "
                          "NRRD, a DICOM file or a zip of a DICOM series")
    if path.stat().st_size == 0:
        raise UploadError(f"{path.name}: the file is empty")
    return path


def plain_error(message: str, upload: str | os.PathLike) -> str:
    """An error message without the server's upload folder: the user knows the file by its name
    (a member of an uploaded zip reads ``study.zip/series/IM1.dcm``)."""
    return message.replace(str(Path(upload).parent) + os.sep, "")


def prune_runs(workdir: str | os.PathLike, max_age_s: float = 3600.0) -> int:
    """Delete per-run folders in ``workdir`` older than ``max_age_s`` (their files were served); returns the count."""
    removed = 0
    for run in Path(workdir).iterdir():
        if run.is_dir() and time.time() - run.stat().st_mtime > max_age_s:
            shutil.rmtree(run, ignore_errors=True)
            removed += 1
    return removed
