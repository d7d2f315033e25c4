"""MultiTaskUNetLib.tiny_bundle: the random-weight bundle copy used by the self-tests.

Making a real one (torch in a subprocess) is exercised by test_real_worker.py; here the copy rules
and the failure paths.
"""

import sys

import pytest

from MultiTaskUNetLib import tiny_bundle


def test_copy_takes_code_and_configs_only(tmp_path, bundle_root):
    dst = tiny_bundle.copy_bundle(bundle_root, tmp_path / "copy")
    assert (dst / "scripts" / "infer.py").is_file() and (dst / "configs" / "inference.json").is_file()
    assert not (dst / "models").exists() and not (dst / "data").exists()
    assert not list(dst.rglob("__pycache__"))


def test_copy_refuses_bad_source_and_existing_target(tmp_path, bundle_root):
    with pytest.raises(ValueError, match="not a bundle"):
        tiny_bundle.copy_bundle(tmp_path, tmp_path / "x")
    (tmp_path / "exists").mkdir()
    with pytest.raises(ValueError, match="exists: already exists"):
        tiny_bundle.copy_bundle(bundle_root, tmp_path / "exists")


def test_subprocess_failure_is_reported(tmp_path, fake_bundle):
    # a fake bundle has no scripts.core.model_card: the model cannot be written
    with pytest.raises(RuntimeError, match=r"(?s)making the tiny bundle in .* failed: .*No module named .scripts\.core."):
        tiny_bundle.make_in_subprocess(sys.executable, fake_bundle("ok"), tmp_path / "tiny")


def test_command_line_usage():
    assert tiny_bundle.main([]) == 2
