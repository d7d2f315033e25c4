"""Test set-up shared by the whole suite: import paths and small fixtures.

The bundle's ``scripts`` package and the Slicer module's ``MultiTaskUNetLib`` are imported the way
their users import them: the bundle root and the module folder on ``sys.path``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "monai_bundle"
MODULE = REPO / "MultiTaskUNet"
for p in (BUNDLE, MODULE):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

# the suite shares 2 cores; keep torch from oversubscribing them
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # MLflow is imported by `import monai` once installed
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

ARTIFACTS = REPO / "Testing" / "artifacts"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def bundle_root() -> Path:
    return BUNDLE


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests leave files a person may want to look at (screenshots, overlays)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
