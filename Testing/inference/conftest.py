"""Fixtures of the inference tests (helpers in ``infer_helpers.py`` and ``pacs_helpers.py``, names no
other test folder uses)."""

from __future__ import annotations

from pathlib import Path

import pytest

from infer_helpers import make_bundle
from pacs_helpers import Orthanc


@pytest.fixture(scope="session")
def bundle2d(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle2d"))


@pytest.fixture(scope="session")
def bundle3d(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("bundle3d"), spatial_dims=3)


@pytest.fixture(scope="session")
def predictor2d(bundle2d):
    from scripts.inference import Predictor

    return Predictor.from_bundle(bundle2d, device="cpu")


@pytest.fixture(scope="session")
def predictor3d(bundle3d):
    from scripts.inference import Predictor

    return Predictor.from_bundle(bundle3d, device="cpu")


@pytest.fixture(scope="session")
def orthanc():
    """A real Orthanc + DICOMweb plugin with HTTP basic auth (AuthenticationEnabled, RegisteredUsers)."""
    server = Orthanc("basic").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def orthanc_token():
    """A real Orthanc + DICOMweb plugin that wants a bearer token and refuses DICOM SR instances."""
    server = Orthanc("token").start()
    yield server
    server.stop()
