"""A zip of a DICOM series as one study: unpacked safely (:func:`scripts.imageio.archive.extract_zip`,
the image layer's one zip implementation and its limits), read as a DICOM folder.

The one zip implementation of the inference API: the CLI (``python -m scripts.infer study.zip``),
the batch runner and the web demo all reach it through :func:`scripts.inference.readers.read_study`.

Safety rules, checked on the zip's headers before a byte is written: members with an absolute path,
a drive letter or ``..`` are refused, and so are symbolic links; more than :data:`MAX_ZIP_FILES`
files or :data:`MAX_ZIP_BYTES` unpacked are refused (``zipfile`` then stops reading a member at its
header's size and checks its CRC, so a zip bomb whose headers lie stops there too). macOS resource
forks (``__MACOSX/``) and ``.DS_Store`` / ``Thumbs.db`` are skipped. The files are unpacked into a
temporary folder that lives as long as the :class:`~scripts.inference.study.Study` read from it
(DICOM SEG output reads the source headers from there) and is removed with it. Messages name the
zip, and a path inside it as ``study.zip/sub/IM0001.dcm``, never the temporary folder.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from scripts.imageio import MAX_ZIP_BYTES, MAX_ZIP_FILES, ZIP_SUFFIXES, extract_zip
from scripts.inference.dicom import read_dicom_folder
from scripts.inference.errors import InputError
from scripts.inference.study import study_name

__all__ = ["MAX_ZIP_BYTES", "MAX_ZIP_FILES", "ZIP_SUFFIXES", "extract_zip", "read_filled_folder", "read_zip"]


def read_zip(path: Path, series_uid: str | None = None, max_bytes: int = MAX_ZIP_BYTES,
             max_files: int = MAX_ZIP_FILES):
    """The DICOM series in a zip, as a :class:`~scripts.inference.study.Study` named after the zip.

    The series is chosen and checked as in a folder (:func:`scripts.inference.dicom.read_dicom_folder`).

    Raises:
        InputError: an unsafe, oversized, empty or corrupt zip (:func:`extract_zip`), or no usable
            DICOM series in it; the message names the zip (``study.zip/...`` for its members).
    """
    study = read_filled_folder(lambda root: extract_zip(path, root, max_bytes, max_files), path.name, str(path),
                               "mtunet-zip-", series_uid)  # the folder named like the zip: messages say "study.zip"
    study.path, study.name = path, study_name(path)
    return study


def read_filled_folder(fill, folder_name: str, shown: str, prefix: str, series_uid: str | None = None):
    """The DICOM series that ``fill(folder)`` puts into a new temporary folder ``folder_name``, as a
    :class:`~scripts.inference.study.Study` whose ``workdir`` is that folder (removed with the study,
    or at once when anything fails): a zip's members, a DICOMweb retrieval.

    The messages of the input errors it raises, and the study's warnings, name ``shown`` (the zip, the
    URL) instead of the temporary folder; an error of a more specific kind (a server's) is kept as raised.
    """
    workdir = tempfile.TemporaryDirectory(prefix=prefix)
    root = Path(workdir.name) / folder_name

    def named(text: str) -> str:
        return text.replace(str(root), shown)

    try:
        root.mkdir()
        fill(root)
        study = read_dicom_folder(root, series_uid)
    except InputError as e:
        workdir.cleanup()
        if type(e) is not InputError:
            raise
        raise InputError(named(str(e))) from e
    except BaseException:
        workdir.cleanup()
        raise
    study.warnings = [named(w) for w in study.warnings]
    study.workdir = workdir  # removed when the study is
    return study
