"""MultiTaskUNetLib.dependencies: what to install, and advice when installing fails."""

import json

import pytest

from MultiTaskUNetLib.dependencies import (DEFAULT_REQUIREMENTS, MIN_SLICER, MIN_TORCH, PINNED_DISTRIBUTIONS,
                                           bundle_requirements, environment_problem, import_name,
                                           install_failure_advice, installed_versions, pip_arguments, pip_constraints,
                                           plan_installation, version_tuple, worker_error_advice)


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
    assert f"PyTorch >= {MIN_TORCH} (missing" in text and "monai>=1.4, scikit-image" in text
    assert "internet connection" in text


def test_old_torch():
    plan = plan_installation({}, torch_version="1.13.1", is_installed=lambda m: True)
    assert plan.torch == f"too old: 1.13.1, need >= {MIN_TORCH}"
    assert "(too old: 1.13.1" in plan.confirmation_text() and "Python packages" not in plan.confirmation_text()


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


def test_highdicom_is_never_installed_into_slicer(bundle_root):
    """Inside Slicer the worker writes NIfTI and DICOM SEG goes through Slicer's exporter; highdicom >= 0.23
    needs pydicom 3 and would replace Slicer 5.10's pydicom 2.4.4."""
    assert "highdicom" in (bundle_root / "configs" / "metadata.json").read_text(encoding="utf-8")  # the bundle's CLI does use it
    assert "highdicom" not in bundle_requirements(bundle_root) and "highdicom" not in DEFAULT_REQUIREMENTS
    assert bundle_requirements(bundle_root)["pydicom"] == ""  # unpinned: Slicer's own pydicom satisfies it
    assert "pydicom" in PINNED_DISTRIBUTIONS  # and pip may not replace it


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


def test_real_bundle_requirements_cover_what_the_worker_imports(bundle_root, repo_root):
    """Every third-party module the inference code imports is either planned for pip or torch.

    ``dicom_seg.py`` and ``dicom_sr.py`` (highdicom) are left out: they are imported only for ``--format
    dicom-seg``, which the Slicer module never asks for (it runs the worker with the default NIfTI output).
    """
    import ast

    predictor = ast.parse((bundle_root / "scripts" / "inference" / "predictor.py").read_text(encoding="utf-8"))
    top_level = {n.module for n in predictor.body if isinstance(n, ast.ImportFrom)}
    assert not top_level & {"scripts.inference.dicom_seg", "scripts.inference.dicom_sr"}  # lazily, for DICOM SEG
    module = (repo_root / "MultiTaskUNet" / "MultiTaskUNet.py").read_text(encoding="utf-8")
    assert "seg_format" not in module and "dicom-seg\"" not in module.split("def startJob")[1].split("def ")[0]
    reqs = {import_name(n) for n in bundle_requirements(bundle_root)}
    dicom_out = ("dicom_seg.py", "dicom_sr.py")
    # DICOMweb (URL inputs, --push) and Ray (--engine ray) import their packages inside the functions that
    # use them, and the module passes neither URLs nor --push / --engine: they stay off the Slicer install
    import sys
    hospital = ("dicomweb.py", "distributed.py")
    for name in hospital:
        body = ast.parse((bundle_root / "scripts" / "inference" / name).read_text(encoding="utf-8")).body
        top = {a.name.split(".")[0] for n in body if isinstance(n, ast.Import) for a in n.names}
        top |= {n.module.split(".")[0] for n in body if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module}
        assert top <= set(sys.stdlib_module_names) | {"scripts", "__future__"}, (name, top)
    assert "--push" not in module and "--engine" not in module and "dicom-web" not in module
    files = [bundle_root / "scripts" / "infer.py",
             *sorted(f for f in (bundle_root / "scripts" / "inference").glob("*.py") if f.name not in dicom_out + hospital)]
    imported = set()
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported if m not in sys.stdlib_module_names and m not in ("scripts", "__future__")}
    assert third_party - {"torch"} <= reqs, third_party - {"torch"} - reqs


@pytest.mark.parametrize("slicer_version, python, supported", [
    ((5, 8), (3, 9), False), ((5, 6), (3, 9), False), ((5, 10), (3, 12), True), ((5, 12), (3, 12), True),
    ((6, 0), (3, 13), True), ((5, 10), (3, 9), False)])
def test_environment_problem(slicer_version, python, supported):
    problem = environment_problem(slicer_version, python)
    assert (problem is None) == supported
    if problem:
        assert "needs 3D Slicer 5.10 or later" in problem and f"this is Slicer {slicer_version[0]}.{slicer_version[1]}" in problem
        assert "download.slicer.org" in problem
    assert MIN_SLICER == (5, 10)


def test_min_torch_covers_what_monai_requires(bundle_root):
    """MONAI of the bundle's tested version declares its torch minimum; MIN_TORCH is at least that."""
    import importlib.metadata
    import re

    meta = json.loads((bundle_root / "configs" / "metadata.json").read_text(encoding="utf-8"))
    # requirements.txt pins the tested MONAI, so a mismatch is a broken set-up, not a reason to skip
    assert importlib.metadata.version("monai") == meta["monai_version"], "the test environment's MONAI is not the bundle's tested version"
    [torch_req] = [r for r in importlib.metadata.requires("monai") if re.match(r"torch\b", r) and "extra" not in r]
    needed = re.search(r">=\s*([\d.]+)", torch_req).group(1)
    assert version_tuple(MIN_TORCH) >= version_tuple(needed)[:len(version_tuple(MIN_TORCH))], (torch_req, MIN_TORCH)
    assert bundle_requirements(bundle_root)["monai"] == ">=" + ".".join(meta["monai_version"].split(".")[:2])


def test_pip_constraints_pin_torch_and_slicers_packages():
    text = pip_constraints({"torch": "2.8.0+cu126", "numpy": "2.0.2", "pydicom": "2.4.4", "SimpleITK": "2.4.0"})
    assert text.splitlines() == ["numpy==2.0.2", "pydicom==2.4.4", "SimpleITK==2.4.0", "torch==2.8.0+cu126"]
    with pytest.raises(ValueError, match="PyTorch must be installed"):
        pip_constraints({"numpy": "2.0.2"})
    with pytest.raises(ValueError, match="PyTorch 2.1.0 is older than"):
        pip_constraints({"torch": "2.1.0"})


def test_installed_versions_skips_what_is_absent():
    import importlib.metadata

    def version_of(name):
        if name == "torch":
            return "2.9.1+cpu"
        raise importlib.metadata.PackageNotFoundError(name)

    assert installed_versions(("torch", "numpy"), version_of) == {"torch": "2.9.1+cpu"}
    assert installed_versions()["numpy"]  # the real lookup, in this environment


def test_pip_arguments_pass_the_constraints_file(tmp_path):
    assert pip_arguments(["monai>=1.6", "pynrrd"], tmp_path / "c.txt") == ["-c", str(tmp_path / "c.txt"), "monai>=1.6", "pynrrd"]
    with pytest.raises(ValueError, match="nothing to install"):
        pip_arguments([], tmp_path / "c.txt")


def test_pip_honours_the_constraints_file(tmp_path):
    """pip (offline, dry run) refuses a requirement that conflicts with a pinned distribution."""
    import subprocess
    import sys

    (tmp_path / "c.txt").write_text(pip_constraints({"torch": "2.8.0", "numpy": "1.0.0"}))
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--quiet",
                           *pip_arguments(["numpy>=2"], tmp_path / "c.txt")], capture_output=True, text=True)
    assert done.returncode != 0
    assert "Cannot install numpy>=2" in done.stderr and "ResolutionImpossible" in done.stderr, done.stderr
    assert "A package needs another version of PyTorch" in install_failure_advice(done.stderr)
