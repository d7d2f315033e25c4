"""Decide which Python packages the worker still needs, and explain install failures.

Pure decisions only. The module asks the user once (and only once a usable model is selected),
then installs torch through the PyTorch extension's ``PyTorchUtils`` (it picks the CUDA build that
matches the driver) and the rest with ``slicer.util.pip_install`` under a constraints file that pins
torch and the packages Slicer itself ships (:func:`pip_constraints`), so pip can never swap the CUDA
torch for a CPU build or replace Slicer's numpy / pydicom. Nothing is installed or imported here;
presence is checked with ``importlib.util.find_spec`` so a broken torch install is not loaded (and
locked) by the check.

Supported: 3D Slicer 5.10 or later (Python 3.12). Slicer 5.8 ships Python 3.9, on which MONAI 1.6
and the worker's other packages cannot be installed; :func:`environment_problem` says so.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

#: oldest 3D Slicer the module supports (5.10 ships Python 3.12; 5.8 ships 3.9)
MIN_SLICER = (5, 10)
#: oldest Python the worker's packages install on (MONAI 1.6, nibabel 5.4 and pydicom 3 need 3.10)
MIN_PYTHON = (3, 10)

#: oldest torch the worker runs with: MONAI 1.6 (the bundle's tested version) requires torch >= 2.8.0
MIN_TORCH = "2.8"

#: pip name -> import name, where they differ
IMPORT_NAMES = {"pytorch-ignite": "ignite", "scikit-image": "skimage", "pynrrd": "nrrd", "pillow": "PIL",
                "pyyaml": "yaml", "simpleitk": "SimpleITK"}

#: what the worker imports (pip name -> version spec) when the bundle's metadata does not say
DEFAULT_REQUIREMENTS = {"monai": ">=1.6", "nibabel": "", "pydicom": "", "pynrrd": "",
                        "pillow": "", "psutil": "", "SimpleITK": "", "tqdm": "", "numpy": "", "scipy": ""}

# packages the bundle's metadata may list that the worker does not need inside Slicer. highdicom:
# inside Slicer the worker writes NIfTI and DICOM SEG goes through Slicer's own exporter; highdicom
# >= 0.23 needs pydicom 3 and would replace the pydicom 2.4 that Slicer 5.10's DICOM module uses.
_NOT_FOR_WORKER = {"torch", "pytorch", "tensorboard", "gradio", "gradio-client", "matplotlib", "jsonschema",
                   "onnx", "onnxruntime", "onnxscript", "playwright", "pytest", "pytorch-ignite", "itk", "highdicom"}

#: distributions pip must never replace when it installs the worker's packages: the torch build
#: PyTorchUtils chose (CUDA or CPU) and what 3D Slicer itself ships and its modules import
PINNED_DISTRIBUTIONS = ("torch", "torchvision", "torchaudio", "numpy", "scipy", "pydicom", "pillow", "SimpleITK",
                        "highdicom", "dicomweb-client", "vtk", "requests", "six")


def environment_problem(slicer_version: tuple[int, int], python_version: tuple[int, ...]) -> Optional[str]:
    """Why this Slicer cannot run the module (None if it can): the message shown at module load.

    Args:
        slicer_version: ``(major, minor)`` of the running 3D Slicer.
        python_version: ``sys.version_info[:2]`` of Slicer's Python.
    """
    if tuple(slicer_version) < MIN_SLICER or tuple(python_version[:2]) < MIN_PYTHON:
        have = "{}.{}".format(*slicer_version[:2])
        need = "{}.{}".format(*MIN_SLICER)
        py = ".".join(str(v) for v in python_version[:2])
        return (f"MultiTaskUNet needs 3D Slicer {need} or later; this is Slicer {have} (Python {py}). The model's "
                f"packages (MONAI 1.6, PyTorch {MIN_TORCH}+) cannot be installed on it. Install the latest stable "
                "3D Slicer from https://download.slicer.org and install MultiTaskUNet there.")
    return None


@dataclass(frozen=True)
class InstallPlan:
    """What must be installed before the first run. ``torch``: None, ``"missing"`` or ``"too old"``."""

    torch: Optional[str]
    pip: tuple[str, ...]

    @property
    def needed(self) -> bool:
        return self.torch is not None or bool(self.pip)

    def confirmation_text(self) -> str:
        """The one question asked before installing (what, from where, how long)."""
        parts = []
        if self.torch:
            parts.append(f"PyTorch >= {MIN_TORCH} ({self.torch}; installed by the PyTorch extension, which picks the "
                         "build for your GPU driver, or the CPU build)")
        if self.pip:
            parts.append("Python packages: " + ", ".join(self.pip))
        return ("MultiTaskUNet needs to download and install:\n  - " + "\n  - ".join(parts)
                + "\n\nThis needs an internet connection and may take several minutes (PyTorch is about 2 GB). "
                  "Slicer may need a restart afterwards. Install now?")


def import_name(pip_name: str) -> str:
    """The module name ``import`` uses for a pip distribution name."""
    return IMPORT_NAMES.get(pip_name.lower(), pip_name.replace("-", "_"))


def bundle_requirements(bundle_dir: str | os.PathLike | None) -> dict[str, str]:
    """pip name -> version spec the worker needs, from the bundle's ``configs/metadata.json``.

    MONAI gets ``>=`` the bundle's tested version; other packages are left unpinned, so pip keeps
    what Slicer already ships. Falls back to :data:`DEFAULT_REQUIREMENTS` when metadata is absent
    (or no bundle is given).

    Raises:
        ValueError: the metadata file exists but is not valid JSON (names the file).
    """
    path = Path(bundle_dir or ".") / "configs" / "metadata.json"
    if bundle_dir is None or not path.is_file():
        return dict(DEFAULT_REQUIREMENTS)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: bundle metadata is not valid JSON ({e})") from e
    reqs = dict(DEFAULT_REQUIREMENTS)
    if meta.get("monai_version"):
        reqs["monai"] = ">=" + ".".join(str(meta["monai_version"]).split(".")[:2])
    listed = {**meta.get("required_packages_version", {}), **meta.get("optional_packages_version", {})}
    for name in listed:
        if name.lower() not in _NOT_FOR_WORKER:
            reqs.setdefault(name, "")
    return reqs


def _is_installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def version_tuple(version: str) -> tuple[int, ...]:
    """``"2.13.0+cu121"`` -> ``(2, 13, 0)``; ``"2.1.0rc1"`` -> ``(2, 1, 0)``."""
    out = []
    for part in version.split("+")[0].split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        out.append(int(m.group()))
        if m.group() != part:  # "0rc1": the numeric prefix counts, nothing after it
            break
    return tuple(out)


def plan_installation(requirements: dict[str, str], torch_version: Optional[str],
                      is_installed: Callable[[str], bool] = _is_installed) -> InstallPlan:
    """What is missing: torch (by its installed version, None if absent) and pip packages by import."""
    if torch_version is None:
        torch = "missing"
    elif version_tuple(torch_version) < version_tuple(MIN_TORCH):
        torch = f"too old: {torch_version}, need >= {MIN_TORCH}"
    else:
        torch = None
    pip = tuple(name + spec for name, spec in sorted(requirements.items(), key=lambda kv: kv[0].lower())
                if not is_installed(import_name(name)))
    return InstallPlan(torch=torch, pip=pip)


def installed_versions(names: Iterable[str] = PINNED_DISTRIBUTIONS,
                       version_of: Callable[[str], str] = importlib.metadata.version) -> dict[str, str]:
    """``{distribution: installed version}`` for those of ``names`` that are installed."""
    out = {}
    for name in names:
        try:
            out[name] = version_of(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def pip_constraints(installed: Mapping[str, str]) -> str:
    """A pip constraints file pinning each installed distribution to its exact version.

    pip then installs the worker's packages around them or fails with a conflict; it never upgrades,
    downgrades or swaps (CUDA -> CPU) torch, numpy, pydicom, ... Local versions stay exact
    (``torch==2.8.0+cu126``).

    Raises:
        ValueError: torch is not installed (it must come from PyTorchUtils first: pip would pull
            whatever build PyPI has) or is older than :data:`MIN_TORCH`.
    """
    torch = installed.get("torch")
    if torch is None:
        raise ValueError("PyTorch must be installed (through the PyTorch extension) before the other packages")
    if version_tuple(torch) < version_tuple(MIN_TORCH):
        raise ValueError(f"PyTorch {torch} is older than {MIN_TORCH}, which MONAI needs")
    return "".join(f"{name}=={version}\n" for name, version in sorted(installed.items(), key=lambda kv: kv[0].lower()))


def pip_arguments(packages: Iterable[str], constraints_file: str | os.PathLike) -> list[str]:
    """``slicer.util.pip_install`` arguments (a list: each item is passed to pip as one argument)."""
    packages = list(packages)
    if not packages:
        raise ValueError("nothing to install")
    return ["-c", str(constraints_file), *packages]


# (substrings of an error, advice) - first match wins
_ADVICE = (
    (("temporary failure in name resolution", "newconnectionerror", "could not fetch url", "connection refused",
      "network is unreachable", "read timed out", "proxyerror", "max retries exceeded"),
     "No network: the packages could not be downloaded. Connect to the internet (or set your proxy in the "
     "HTTPS_PROXY environment variable) and try again, or install them offline: in Slicer's Python console run "
     "slicer.util.pip_install('--no-index --find-links=<folder with wheels> monai nibabel ...')."),
    (("resolutionimpossible", "conflicting dependencies", "cannot install"),
     "A package needs another version of PyTorch, numpy or pydicom than this Slicer has; MultiTaskUNet does not "
     "let pip replace those (it would break the GPU build of PyTorch or Slicer's own modules). Update 3D Slicer "
     f"to the latest stable release, or update PyTorch (>= {MIN_TORCH}) in the PyTorch Utils module, then try again."),
    (("no matching distribution", "could not find a version"),
     "pip found no build of a package for this Slicer's Python version/platform. Update 3D Slicer to the latest "
     "stable release, or install the package versions listed in the log by hand."),
    (("cuda driver version is insufficient", "no kernel image is available", "not compiled with cuda",
      "cuda error: invalid device function", "found no nvidia driver", "libcudart", "cuda initialization"),
     "PyTorch and the GPU driver do not match. Choose Device: CPU to run now; to use the GPU, open the PyTorch "
     "Utils module, uninstall PyTorch, restart Slicer and install again with the computation backend that "
     "matches your driver (e.g. cu121), or update the NVIDIA driver."),
    (("permission denied", "access is denied", "errno 13"),
     "No permission to write into Slicer's Python folder. Install Slicer in a folder your user can write to "
     "(the default per-user install on Windows) or run the installation once as the user who installed Slicer."),
    (("no module named",),
     "A required Python package is missing. Press Segment & Classify again and accept the installation, or "
     "install it with slicer.util.pip_install('<package>') in Slicer's Python console."),
)


def install_failure_advice(error_text: str) -> str:
    """What to do about a failed installation (or a worker error caused by the environment)."""
    low = error_text.lower()
    for markers, advice in _ADVICE:
        if any(m in low for m in markers):
            return advice
    return ("Installation failed. pip's own messages are in Slicer's Python console (View > Python Console) and "
            "the application log (Help > Report a bug). Restart Slicer and try again; if it fails again, report "
            "those messages at the project's issue tracker.")


def worker_error_advice(message: str) -> Optional[str]:
    """Advice for a worker ``ERROR`` that comes from the environment rather than the input; else None."""
    advice = install_failure_advice(message)
    return None if advice.startswith("Installation failed") else advice
