"""Run a benchmark's measurement in a fresh process and read the JSON it prints last.

Each benchmark measures in its own worker process (its own threads, caches and peak memory); the
worker prints one JSON line as its last line of stdout.
"""

from __future__ import annotations

import json
import subprocess


def run_json_worker(cmd: list[str], env: dict[str, str], what: str, tail: int = 4000) -> dict:
    """``cmd`` run with ``env``; its last stdout line parsed as JSON.

    Raises:
        RuntimeError: the worker failed; the message names ``what`` and ends with its stderr.
    """
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-tail:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
