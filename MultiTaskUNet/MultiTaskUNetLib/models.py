"""Models the module can run: add one from a bundle folder, a bundle zip or an https URL with its SHA-256.

A model is a MultiTaskUNet bundle with trained weights (``models/model.pt`` and
``models/model_card.json``) and the worker code (``scripts/infer.py``, ``configs/``). Every model
added is copied or unpacked into the models folder (in Slicer: ``MultiTaskUNet/models`` beside
Slicer's user settings), one sub-folder per model named from its card, and listed from its card.
A folder or zip with only ``models/`` gets the worker code of the bundle shipped with the extension.

Nothing here imports Slicer; the module calls these functions and shows their errors. Installing is
all-or-nothing: everything is staged in a hidden folder next to the final one and renamed into
place only once the bundle checks out, so a failed or cancelled download leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import os
import re
import shutil
import stat
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Optional

from MultiTaskUNetLib.bundles import CARD_FILE, WEIGHTS_FILE, WORKER_FILE, BundleError, BundleInfo, inspect_bundle

#: what is copied from a bundle folder (the rest - data/, runs/, eval/, checkpoints - is not needed to run it)
BUNDLE_PARTS = ("configs", "scripts", "docs", "LICENSE", CARD_FILE.as_posix(), WEIGHTS_FILE.as_posix())
#: limits on a zip (members, unpacked bytes) and on a download (bytes)
MAX_ZIP_MEMBERS = 20000
MAX_UNPACKED_BYTES = 8 << 30
MAX_DOWNLOAD_BYTES = 8 << 30
_SHA256 = re.compile(r"[0-9a-f]{64}")
_STAGING_PREFIX = ".staging-"

#: ``progress(bytes_done, bytes_total_or_None)``; raise (e.g. :class:`Cancelled`) to stop
Progress = Callable[[int, Optional[int]], None]


class ModelError(ValueError):
    """A model source cannot be used (the message names it and says what is wrong)."""


class Cancelled(Exception):
    """Raised by a progress callback to stop a download; nothing is left behind."""


def require_model(root: str | os.PathLike) -> BundleInfo:
    """The bundle at ``root`` if it can run: worker code, model card and weights.

    Raises:
        ModelError: not a bundle, or no trained model in it (the message says what is missing).
    """
    root = Path(root)
    try:
        info = inspect_bundle(root)
    except BundleError as e:
        raise ModelError(str(e)) from e
    missing = [p.as_posix() for p in (CARD_FILE, WEIGHTS_FILE) if not (root / p).is_file()]
    if missing:
        raise ModelError(f"{root}: no trained model in this bundle (missing {', '.join(missing)})")
    if not info.classes:
        raise ModelError(f"{root}: the model card lists no diagnosis classes")
    return info


def normalize_sha256(text: str) -> str:
    """A SHA-256 as 64 lower-case hex digits (``sha256:`` prefix, spaces and case tolerated).

    Raises:
        ModelError: not 64 hex digits.
    """
    value = re.sub(r"\s+", "", text or "").lower()
    if value.startswith("sha256:"):
        value = value[len("sha256:"):]
    if not _SHA256.fullmatch(value):
        raise ModelError(f"{text!r} is not a SHA-256 checksum (64 hexadecimal digits)")
    return value


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's content, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def check_url(url: str) -> str:
    """The URL if a model may be downloaded from it: ``https``, or ``http`` to this computer only.

    Raises:
        ModelError: another scheme, no host, or plain ``http`` to another computer.
    """
    parts = urllib.parse.urlsplit((url or "").strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ModelError(f"{url!r}: not an https:// address")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ModelError(f"{url}: only https:// addresses are accepted (plain http only from this computer)")
    return urllib.parse.urlunsplit(parts)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def model_folder_name(info: BundleInfo) -> str:
    """``<name>-<version>`` made safe as a folder name (``"My Model 1.0"`` -> ``"My_Model-1.0"``)."""
    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._")

    name = safe(info.name) or "model"
    version = safe(info.version)
    return f"{name}-{version}" if version else name


def list_models(models_dir: str | os.PathLike, extra: Iterable[str | os.PathLike] = ()) -> list[BundleInfo]:
    """Usable models: each sub-folder of ``models_dir`` with a trained bundle, then ``extra`` folders.

    Folders that are not usable (broken card, no weights, staging leftovers) are skipped; a folder
    listed twice appears once.
    """
    candidates: list[Path] = []
    models_dir = Path(models_dir)
    if models_dir.is_dir():
        candidates += sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    candidates += [Path(p) for p in extra if p]
    seen, out = set(), []
    for folder in candidates:
        key = os.path.normcase(os.path.realpath(folder))
        if key in seen:
            continue
        seen.add(key)
        try:
            out.append(require_model(folder))
        except ModelError:
            continue
    return out


def _bundle_root(folder: Path) -> Path:
    """The bundle inside an unpacked zip: the folder itself, or its only sub-folder."""
    if (folder / "models").is_dir() or (folder / "scripts").is_dir():
        return folder
    entries = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir():
        return _bundle_root(entries[0])
    raise ModelError("no bundle found: expected models/model.pt and models/model_card.json at the top of the zip "
                     "or inside its one top-level folder")


def _copy_parts(src: Path, dst: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in BUNDLE_PARTS:
        s, d = src / part, dst / part
        if s.is_dir():
            shutil.copytree(s, d, ignore=ignore)
        elif s.is_file():
            d.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(s, d)


def _add_worker_code(staged: Path, code_bundle: Optional[Path], source: str) -> None:
    """A models-only source gets ``configs/`` and ``scripts/`` of the bundle shipped with the module."""
    if (staged / WORKER_FILE).is_file():
        return
    if code_bundle is None or not (Path(code_bundle) / WORKER_FILE).is_file():
        raise ModelError(f"{source}: holds only models/ and no worker code (scripts/) is available to run it")
    for part in ("configs", "scripts"):
        if not (staged / part).exists() and (Path(code_bundle) / part).is_dir():
            shutil.copytree(Path(code_bundle) / part, staged / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _publish(staged: Path, models_dir: Path, source: str) -> BundleInfo:
    """Check the staged bundle and rename it into ``models_dir/<name>-<version>`` (replacing an older copy)."""
    try:
        info = require_model(staged)
    except ModelError as e:
        raise ModelError(f"{source}: {str(e).split(': ', 1)[-1]}") from e
    final = models_dir / model_folder_name(info)
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=".old-", dir=models_dir))
        os.replace(final, old / "bundle")
    try:
        os.replace(staged, final)
    except OSError:
        if old is not None:
            os.replace(old / "bundle", final)  # put the previous copy back
        raise
    if old is not None:
        _rmtree(old)
    return inspect_bundle(final)


def _rmtree(path: Path) -> None:
    def make_writable(func, p, _exc):  # read-only files (Windows) would stop rmtree
        try:
            os.chmod(p, stat.S_IWRITE)
            func(p)
        except OSError:
            pass

    if not path.exists():
        return
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=make_writable)
    else:
        shutil.rmtree(path, onerror=make_writable)


def _staging(models_dir: Path) -> Path:
    models_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=models_dir))


def install_folder(src: str | os.PathLike, models_dir: str | os.PathLike,
                   code_bundle: str | os.PathLike | None = None) -> BundleInfo:
    """Copy a bundle folder's code, configs and model (not its data or checkpoints) into ``models_dir``.

    Raises:
        ModelError: ``src`` is not a folder or holds no usable model.
    """
    src, models_dir = Path(src), Path(models_dir)
    if not src.is_dir():
        raise ModelError(f"{src}: not a folder")
    if not ((src / CARD_FILE).is_file() and (src / WEIGHTS_FILE).is_file()):
        raise ModelError(f"{src}: no trained model in this folder (expected {CARD_FILE.as_posix()} and "
                         f"{WEIGHTS_FILE.as_posix()})")
    staging = _staging(models_dir)
    try:
        bundle = staging / "bundle"
        bundle.mkdir()
        _copy_parts(src, bundle)
        _add_worker_code(bundle, Path(code_bundle) if code_bundle else None, str(src))
        return _publish(bundle, models_dir, str(src))
    finally:
        _rmtree(staging)


def _check_member(info: zipfile.ZipInfo, source: str) -> PurePosixPath:
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if path.is_absolute() or re.match(r"^[A-Za-z]:", name) or ".." in path.parts:
        raise ModelError(f"{source}: refused: the zip holds the path {info.filename!r} outside its folder")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ModelError(f"{source}: refused: the zip holds a link ({info.filename})")
    return path


def unpack_zip(zip_path: str | os.PathLike, dest: str | os.PathLike, source: Optional[str] = None) -> Path:
    """Unpack a zip into ``dest`` safely: no absolute paths, ``..``, links, or more than the size limits.

    Raises:
        ModelError: not a zip, or it breaks one of the rules (nothing is extracted then).
    """
    source = source or str(zip_path)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ModelError(f"{source}: not a readable zip file ({e})") from e
    with archive:
        members = archive.infolist()
        if len(members) > MAX_ZIP_MEMBERS:
            raise ModelError(f"{source}: refused: more than {MAX_ZIP_MEMBERS} files")
        if sum(m.file_size for m in members) > MAX_UNPACKED_BYTES:
            raise ModelError(f"{source}: refused: more than {MAX_UNPACKED_BYTES >> 30} GiB unpacked")
        paths = [_check_member(m, source) for m in members]
        for member, rel in zip(members, paths):
            target = dest.joinpath(*rel.parts)
            if member.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with archive.open(member) as fin, open(target, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as e:
                raise ModelError(f"{source}: cannot unpack {member.filename} ({e})") from e
    return dest


def install_zip(zip_path: str | os.PathLike, models_dir: str | os.PathLike, sha256: Optional[str] = None,
                code_bundle: str | os.PathLike | None = None, source: Optional[str] = None) -> BundleInfo:
    """Unpack a bundle zip into ``models_dir`` (after checking its SHA-256, when given).

    Raises:
        ModelError: checksum mismatch, unsafe or broken zip, or no usable model in it.
    """
    source = source or str(zip_path)
    if sha256 is not None:
        expected, actual = normalize_sha256(sha256), sha256_of(zip_path)
        if actual != expected:
            raise ModelError(f"{source}: SHA-256 is {actual}, expected {expected}: the file is not the one "
                             "published (damaged or replaced); it was not installed")
    models_dir = Path(models_dir)
    staging = _staging(models_dir)
    try:
        unpack_zip(zip_path, staging / "unpacked", source)
        root = _bundle_root(staging / "unpacked")
        _add_worker_code(root, Path(code_bundle) if code_bundle else None, source)
        return _publish(root, models_dir, source)
    finally:
        _rmtree(staging)


def download(url: str, dest: str | os.PathLike, sha256: str, progress: Optional[Progress] = None,
             timeout: float = 60.0, max_bytes: int = MAX_DOWNLOAD_BYTES) -> Path:
    """Download ``url`` to ``dest`` and check its SHA-256; ``dest`` appears only when both succeed.

    Raises:
        ModelError: bad URL or checksum, network/HTTP error, too large, or SHA-256 mismatch.
        Cancelled: (from ``progress``) the user stopped it; nothing is left behind.
    """
    url, expected = check_url(url), normalize_sha256(sha256)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    h, done = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "MultiTaskUNet"}),
                                                  timeout=timeout)
            except (OSError, ValueError, http.client.HTTPException) as e:  # URLError/HTTPError are OSErrors
                raise ModelError(f"{url}: download failed ({e})") from e
            with response:
                check_url(response.geturl())  # after redirects: plain http to another computer is refused
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                if total is not None and total > max_bytes:
                    raise ModelError(f"{url}: refused: {total} bytes is more than the {max_bytes >> 20} MiB limit")
                if progress is not None:
                    progress(0, total)
                while True:
                    try:
                        block = response.read(1 << 20)
                    except (OSError, http.client.HTTPException) as e:  # IncompleteRead: a chunked transfer cut short
                        raise ModelError(f"{url}: download failed after {done} bytes ({e})") from e
                    if not block:
                        break
                    done += len(block)
                    if done > max_bytes:
                        raise ModelError(f"{url}: refused: more than the {max_bytes >> 20} MiB limit")
                    h.update(block)
                    out.write(block)
                    if progress is not None:
                        progress(done, total)
                if total is not None and done != total:
                    raise ModelError(f"{url}: download incomplete ({done} of {total} bytes)")
        if h.hexdigest() != expected:
            raise ModelError(f"{url}: SHA-256 of the download is {h.hexdigest()}, expected {expected}: the file is "
                             "not the one published (damaged or replaced); it was not installed")
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def install_url(url: str, sha256: str, models_dir: str | os.PathLike, progress: Optional[Progress] = None,
                code_bundle: str | os.PathLike | None = None, timeout: float = 60.0) -> BundleInfo:
    """Download a bundle zip, check its SHA-256 and install it into ``models_dir``.

    Raises:
        ModelError, Cancelled: as :func:`download` and :func:`install_zip`.
    """
    models_dir = Path(models_dir)
    staging = _staging(models_dir)
    try:
        archive = download(url, staging / "download.zip", sha256, progress, timeout)
        return install_zip(archive, models_dir, None, code_bundle, source=check_url(url))
    finally:
        _rmtree(staging)
