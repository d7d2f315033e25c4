"""Fixtures of the inference tests (helpers in ``infer_helpers.py``, a name no other test folder uses)."""

from __future__ import annotations

from pathlib import Path

import pytest

from infer_helpers import make_bundle


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


