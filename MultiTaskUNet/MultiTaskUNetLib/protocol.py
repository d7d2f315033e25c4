"""The worker's line protocol, parsed.

The worker (``python -m scripts.infer ... --progress``) writes on stdout ``PROGRESS <0-100> <stage>``
lines and one ``RESULT <path to result json>`` line per study; on failure it exits non-zero with a
last stderr line ``ERROR <message>``. Everything else is free-form log text. Parsing never raises:
a malformed protocol line is shown as log text rather than crashing the user interface.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Union


class Stream(str, Enum):
    """Which pipe of the worker a line came from."""

    STDOUT = "stdout"
    STDERR = "stderr"


@dataclass(frozen=True)
class Progress:
    """``PROGRESS`` line: ``percent`` clipped to 0..100, ``stage`` a short human-readable phrase."""

    percent: int
    stage: str


@dataclass(frozen=True)
class Result:
    """``RESULT`` line: path of one study's result JSON (as the worker wrote it)."""

    path: str


@dataclass(frozen=True)
class Error:
    """``ERROR`` line on stderr: the worker's own one-line explanation of its failure."""

    message: str


@dataclass(frozen=True)
class Log:
    """Any other line (warnings, tracebacks, library chatter)."""

    text: str
    stream: Stream


Event = Union[Progress, Result, Error, Log]  # Union, not |: Slicer may ship Python 3.9

_PROGRESS = re.compile(r"^PROGRESS\s+(-?\d+(?:\.\d+)?)\s*(.*)$")
_RESULT = re.compile(r"^RESULT\s+(.+?)\s*$")
_ERROR = re.compile(r"^ERROR\s+(.*?)\s*$")

# what PyTorch and the CUDA runtime print when the GPU runs out of memory
_OOM_MARKERS = (
    "cuda out of memory",
    "outofmemoryerror",
    "cuda error: out of memory",
    "cudaerrormemoryallocation",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
)


def parse_line(line: str, stream: Stream = Stream.STDOUT) -> Event:
    """Classify one line of worker output.

    ``PROGRESS``/``RESULT`` are recognised on stdout and ``ERROR`` on stderr only, so a log message
    that happens to start with one of the words is not mistaken for the protocol.
    """
    text = line.rstrip("\r\n")
    if stream is Stream.STDOUT:
        m = _PROGRESS.match(text)
        if m:
            percent = int(round(float(m.group(1))))
            return Progress(percent=min(100, max(0, percent)), stage=m.group(2).strip())
        m = _RESULT.match(text)
        if m:
            return Result(path=m.group(1))
    else:
        m = _ERROR.match(text)
        if m:
            return Error(message=m.group(1))
    return Log(text=text, stream=stream)


def is_cuda_out_of_memory(message: str) -> bool:
    """True when a worker error (or a traceback line) says the GPU ran out of memory."""
    low = message.lower()
    return any(marker in low for marker in _OOM_MARKERS)
