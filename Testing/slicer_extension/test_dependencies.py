"""MultiTaskUNetLib.dependencies: what to install, and advice when installing fails."""

import json

import pytest

from MultiTaskUNetLib.dependencies import (DEFAULT_REQUIREMENTS, MIN_TORCH, bundle_requirements, import_name,
                                           install_failure_advice, plan_installation, version_tuple,
                                           worker_error_advice)


def test_import_names():
    assert [import_name(n) for n in ("scikit-image", "pynrrd", "pillow", "SimpleITK", "monai", "pytorch-ignite")] == \
        ["skimage", "nrrd", "PIL", "SimpleITK", "monai", "ignite"]


@pytest.mark.parametrize("text, expected", [("2.13.0", (2, 13, 0)), ("2.1.0+cu121", (2, 1, 0)), ("2.4.0rc1", (2, 4, 0)),
                                            ("1.13", (1, 13)), ("dev", ())])
def test_version_tuple(text, expected):
    assert version_tuple(text) == expected


def test_nothing_missing():
    plan = plan_installation({"monai": ">=1.4", "nibabel": ""}, torch_version="2.13.0", is_installed=lambda m: True)
    assert not plan.needed and plan.torch is None and plan.pip == ()


def test_missing_torch_and_packages():
    installed = {"nibabel"}
    plan = plan_installation({"nibabel": "", "monai": ">=1.4", "scikit-image": ""}, torch_version=None,
                             is_installed=installed.__contains__)
    assert plan.needed and plan.torch == "missing"
    assert plan.pip == ("monai>=1.4", "scikit-image")  # sorted, with their specs; nibabel is there
    text = plan.confirmation_text()
    assert "PyTorch (missing" in text and "monai>=1.4, scikit-image" in text and "internet connection" in text


def test_old_torch():
    plan = plan_installation({}, torch_version="1.13.1", is_installed=lambda m: True)
    assert plan.torch == f"too old: 1.13.1, need >= {MIN_TORCH}"
    assert "PyTorch (too old" in plan.confirmation_text() and "Python packages" not in plan.confirmation_text()


def test_requirements_from_bundle_metadata(tmp_path):
    assert bundle_requirements(tmp_path) == DEFAULT_REQUIREMENTS  # no metadata: defaults
    assert bundle_requirements(None) == DEFAULT_REQUIREMENTS  # no bundle found at all
    (tmp_path / "configs").mkdir()
    meta = {"monai_version": "1.6.1", "pytorch_version": "2.13.0",
            "required_packages_version": {"nibabel": "5.4.2", "tensorboard": "2.21.0", "torch": "2"},
            "optional_packages_version": {"einops": "0.8.0"}}
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps(meta))
    reqs = bundle_requirements(tmp_path)
    assert reqs["monai"] == ">=1.6"
    assert reqs["einops"] == "" and reqs["nibabel"] == ""  # unpinned: keep what Slicer ships
    assert "tensorboard" not in reqs and "torch" not in reqs  # training-only / installed via PyTorchUtils


def test_bad_bundle_metadata(tmp_path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "metadata.json").write_text("{")
    with pytest.raises(ValueError, match="metadata.json: bundle metadata is not valid JSON"):
        bundle_requirements(tmp_path)


@pytest.mark.parametrize("error, phrase", [
    ("pip: Could not fetch URL https://pypi.org/simple/monai/: Temporary failure in name resolution", "No network"),
    ("ERROR: No matching distribution found for monai>=1.4", "found no build"),
    ("RuntimeError: CUDA error: no kernel image is available for execution on the device", "PyTorch and the GPU driver do not match"),
    ("OSError: [Errno 13] Permission denied: '/opt/Slicer/lib/Python'", "No permission"),
    ("ModuleNotFoundError: No module named 'monai'", "A required Python package is missing"),
    ("something else entirely", "Installation failed"),
])
def test_install_failure_advice(error, phrase):
    assert phrase in install_failure_advice(error)


def test_worker_error_advice_only_for_environment_problems():
    assert worker_error_advice("scan.nii.gz: not a volume") is None
    assert "Device: CPU" in worker_error_advice("Found no NVIDIA driver on your system")


def test_real_bundle_requirements_cover_what_the_worker_imports(bundle_root):
    """Every third-party module the inference code imports is either planned for pip or torch."""
    import ast

    reqs = {import_name(n) for n in bundle_requirements(bundle_root)}
    files = [bundle_root / "scripts" / "infer.py", *sorted((bundle_root / "scripts" / "inference").glob("*.py"))]
    imported = set()
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    import sys
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m not in ("scripts", "__future__")}
    assert third_party - {"torch"} <= reqs, third_party - {"torch"} - reqs
