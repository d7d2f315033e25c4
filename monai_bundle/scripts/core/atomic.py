"""Atomic file writes: readers see the old file or the whole new one, never half of it.

Every writer of the bundle (model card, checkpoints, history, datalists, reports, exports, demo
examples) goes through :func:`atomic_path`: write to a temp name in the target folder, then
``os.replace``. A failure removes the temp file and leaves the target as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FILE_MODE = 0o644  # mkstemp creates 0600; results are meant to be read by others (shared installs)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside ``path``; on normal exit it replaces ``path``, on error it is removed.

    Args:
        path: the final file; its folder is created.
        suffix: of the temp name, for writers that choose the format by suffix (``.nii.gz``, ``.ts``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically.

    Raises:
        TypeError: ``data`` is not bytes.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON atomically."""
    return write_bytes_atomic(path, (json.dumps(data, indent=2) + "\n").encode())
