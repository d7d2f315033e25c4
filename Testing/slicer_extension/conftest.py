"""Fixtures for the Slicer extension's tests: fake-worker bundles, small volumes, an MRML scene.

This folder is deliberately not named ``slicer``: slicer-core's ``slicer`` package extends its
``__path__`` with every ``slicer`` folder on ``sys.path`` and imports the modules it finds there.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest
from extension_helpers import DIRECTION, ORIGIN, SPACING, blob_volume

FAKES = Path(__file__).parent / "fake_workers"


@pytest.fixture
def fake_bundle(tmp_path: Path) -> Callable[[str], Path]:
    """``make(kind)``: a bundle whose ``scripts/infer.py`` is the fake worker ``kind`` (ok, error, sleep, oom)."""
    def make(kind: str) -> Path:
        root = tmp_path / f"bundle-{kind}"
        (root / "scripts").mkdir(parents=True)
        (root / "scripts" / "__init__.py").write_text("")
        shutil.copy(FAKES / "_fake_common.py", root / "scripts" / "_fake_common.py")
        shutil.copy(FAKES / f"{kind}.py", root / "scripts" / "infer.py")
        return root
    return make


@pytest.fixture
def volume_file(tmp_path: Path) -> Path:
    """A NRRD volume (what the module writes for the worker) with the geometry above."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(blob_volume())
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    path = tmp_path / "input.nrrd"
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def scene():
    """A fresh MRML scene (slicer-core has no application that would create one)."""
    import slicer

    scene = slicer.vtkMRMLScene()
    previous = getattr(slicer, "mrmlScene", None)
    slicer.mrmlScene = scene  # slicer.util helpers look here
    yield scene
    scene.Clear(1)
    slicer.mrmlScene = previous
