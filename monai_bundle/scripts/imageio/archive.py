"""Zip archives unpacked safely: the one zip implementation (a zip of a DICOM series is read through it).

Safety rules, checked on the zip's headers before a byte is written: members with an absolute path,
a drive letter or ``..`` are refused, and so are symbolic links; more than :data:`MAX_ZIP_FILES`
files or :data:`MAX_ZIP_BYTES` unpacked are refused (``zipfile`` then stops reading a member at its
header's size and checks its CRC, so a zip bomb whose headers lie stops there too). macOS resource
forks (``__MACOSX/``) and ``.DS_Store`` / ``Thumbs.db`` are skipped. Messages name the zip.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from scripts.imageio.errors import InputError

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
