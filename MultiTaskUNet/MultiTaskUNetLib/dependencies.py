"""Decide which Python packages the worker still needs, and explain install failures.

Pure decisions only: the module asks the user once, then installs torch through the PyTorch
extension's ``PyTorchUtils`` (it picks the CUDA build that matches the driver) and the rest with
``slicer.util.pip_install``. Nothing is installed or imported here; presence is checked with
``importlib.util.find_spec`` so a broken torch install is not loaded (and locked) by the check.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

#: oldest torch the bundle's network and TorchScript export are known to work with
MIN_TORCH = "2.1"

#: pip name -> import name, where they differ
IMPORT_NAMES = {"pytorch-ignite": "ignite", "scikit-image": "skimage", "pynrrd": "nrrd", "pillow": "PIL",
                "pyyaml": "yaml", "simpleitk": "SimpleITK"}

#: what the worker imports (pip name -> version spec) when the bundle's metadata does not say
DEFAULT_REQUIREMENTS = {"monai": ">=1.4", "nibabel": "", "pydicom": "", "highdicom": "", "pynrrd": "",
                        "pillow": "", "psutil": "", "SimpleITK": "", "tqdm": "", "numpy": "", "scipy": ""}

# packages the bundle's metadata may list that the worker does not need inside Slicer
_NOT_FOR_WORKER = {"torch", "pytorch", "tensorboard", "gradio", "gradio-client", "matplotlib", "jsonschema",
                   "onnx", "onnxruntime", "onnxscript", "playwright", "pytest", "pytorch-ignite", "itk"}


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
            parts.append(f"PyTorch ({self.torch}; installed by the PyTorch extension, which picks the build for "
                         "your GPU driver, or the CPU build)")
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


# (substrings of an error, advice) - first match wins
_ADVICE = (
    (("temporary failure in name resolution", "newconnectionerror", "could not fetch url", "connection refused",
      "network is unreachable", "read timed out", "proxyerror", "max retries exceeded"),
     "No network: the packages could not be downloaded. Connect to the internet (or set your proxy in the "
     "HTTPS_PROXY environment variable) and try again, or install them offline: in Slicer's Python console run "
     "slicer.util.pip_install('--no-index --find-links=<folder with wheels> monai nibabel ...')."),
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
    return ("Installation failed. The log below has pip's message. Restart Slicer and try again; if it fails "
            "again, report the log at the project's issue tracker.")


def worker_error_advice(message: str) -> Optional[str]:
    """Advice for a worker ``ERROR`` that comes from the environment rather than the input; else None."""
    advice = install_failure_advice(message)
    return None if advice.startswith("Installation failed") else advice
