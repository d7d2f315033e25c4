"""Fixtures of the web-demo tests: a tiny random-weight bundle, the app in a subprocess, Chromium."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from webdemo_helpers import CHROMIUM, CHROMIUM_ARGS, REPO, AppServer, serving, write_tiny_bundle

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # app.py and its mtunet_web package live at the repository root

from app import EXAMPLES  # noqa: E402  (the examples folder inside a bundle)
from mtunet_web.examples import write_examples  # noqa: E402

UPLOAD_LIMIT = "1mb"


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle, with 32 px examples already written where the app looks (it reuses them)."""
    root = tmp_path_factory.mktemp("bundle")
    examples = write_examples(root / EXAMPLES, size=32)
    return write_tiny_bundle(root, np.asarray(Image.open(examples[0]), np.float32))


@pytest.fixture(scope="session")
def app_server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """The demo serving the tiny bundle on a free port of 127.0.0.1, shared by the test files.

    Uploads are limited to :data:`UPLOAD_LIMIT` so that the limit can be tested with a small file.
    """
    with serving(tiny_bundle, tmp_path_factory.mktemp("app") / "app.log", "--max-file-size", UPLOAD_LIMIT) as server:
        yield server


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by playwright (never ``playwright install``)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()
