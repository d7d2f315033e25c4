"""A zip of a DICOM series as one study: unpacked safely, read as a DICOM folder.

The one zip implementation of the inference API: the CLI (``python -m scripts.infer study.zip``),
the batch runner and the web demo all reach it through :func:`scripts.inference.readers.read_study`.

Safety rules, checked on the zip's headers before a byte is written: members with an absolute path,
a drive letter or ``..`` are refused, and so are symbolic links; more than :data:`MAX_ZIP_FILES`
files or :data:`MAX_ZIP_BYTES` unpacked are refused (``zipfile`` then stops reading a member at its
header's size and checks its CRC, so a zip bomb whose headers lie stops there too). macOS resource
forks (``__MACOSX/``) and ``.DS_Store`` / ``Thumbs.db`` are skipped. The files are unpacked into a
temporary folder that lives as long as the :class:`~scripts.inference.readers.Study` read from it
(DICOM SEG output reads the source headers from there) and is removed with it. Messages name the
zip, and a path inside it as ``study.zip/sub/IM0001.dcm``, never the temporary folder.
"""

from __future__ import annotations

import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from scripts.inference.errors import InputError

ZIP_SUFFIXES = (".zip",)
MAX_ZIP_BYTES = 1 << 30  # 1 GiB unpacked: a large CT series, not a zip bomb
MAX_ZIP_FILES = 5000
_SKIPPED = ("__MACOSX/", ".DS_Store", "Thumbs.db")


def extract_zip(zip_path: str | Path, dest: str | Path, max_bytes: int = MAX_ZIP_BYTES,
                max_files: int = MAX_ZIP_FILES) -> list[Path]:
    """Extract a zip's regular files into ``dest``, refusing anything unsafe before writing a byte.

    Returns:
        The extracted files.

    Raises:
        InputError: not a zip; a member with an absolute path, ``..``, or a link; more than
            ``max_files`` files or ``max_bytes`` unpacked; no files at all; corrupt data; members
            that cannot be written (a file and a folder of one name). The message names the zip.
    """
    zip_path, dest = Path(zip_path), Path(dest)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"{zip_path}: not a readable zip file ({e})") from e
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir() and not _skipped(m.filename)]
        for m in members:
            _check_member(zip_path, m)
        if not members:
            raise InputError(f"{zip_path}: the zip holds no files")
        if len(members) > max_files:
            raise InputError(f"{zip_path}: the zip holds {len(members)} files, more than the limit of {max_files}")
        total = sum(m.file_size for m in members)
        if total > max_bytes:
            raise InputError(f"{zip_path}: the zip unpacks to {total} bytes, more than the limit of {max_bytes}")
        out = []
        for m in members:
            target = dest.joinpath(*PurePosixPath(m.filename.replace("\\", "/")).parts)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                # zipfile stops at the header's size and checks the CRC: a lying header raises here
                with archive.open(m) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except (zipfile.BadZipFile, zlib.error, EOFError) as e:
                raise InputError(f"{zip_path}: corrupt zip member {m.filename!r} ({e})") from e
            except OSError as e:
                raise InputError(f"{zip_path}: cannot extract {m.filename!r} ({e.strerror})") from e
            out.append(target)
    return out


def _skipped(member: str) -> bool:
    return any(member.startswith(s) or member.endswith(s) for s in _SKIPPED)


def _check_member(zip_path: Path, m: zipfile.ZipInfo) -> None:
    parts = PurePosixPath(m.filename.replace("\\", "/")).parts
    if m.filename.startswith(("/", "\\")) or (parts and ":" in parts[0]) or ".." in parts:
        raise InputError(f"{zip_path}: unsafe path in zip: {m.filename!r}")
    if stat.S_ISLNK(m.external_attr >> 16):
        raise InputError(f"{zip_path}: the zip holds a symbolic link ({m.filename!r}); links are not extracted")


def read_zip(path: Path, series_uid: str | None = None, max_bytes: int = MAX_ZIP_BYTES,
             max_files: int = MAX_ZIP_FILES):
    """The DICOM series in a zip, as a :class:`~scripts.inference.readers.Study` named after the zip.

    The series is chosen and checked as in a folder (:func:`scripts.inference.dicom.read_dicom_folder`).

    Raises:
        InputError: an unsafe, oversized, empty or corrupt zip (:func:`extract_zip`), or no usable
            DICOM series in it; the message names the zip (``study.zip/...`` for its members).
    """
    from scripts.inference.readers import study_name

    study = read_filled_folder(lambda root: extract_zip(path, root, max_bytes, max_files), path.name, str(path),
                               "mtunet-zip-", series_uid)  # the folder named like the zip: messages say "study.zip"
    study.path, study.name = path, study_name(path)
    return study


def read_filled_folder(fill, folder_name: str, shown: str, prefix: str, series_uid: str | None = None):
    """The DICOM series that ``fill(folder)`` puts into a new temporary folder ``folder_name``, as a
    :class:`~scripts.inference.readers.Study` whose ``workdir`` is that folder (removed with the study,
    or at once when anything fails): a zip's members, a DICOMweb retrieval.

    The messages of the input errors it raises, and the study's warnings, name ``shown`` (the zip, the
    URL) instead of the temporary folder; an error of a more specific kind (a server's) is kept as raised.
    """
    from scripts.inference.dicom import read_dicom_folder

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
