"""How the Predictor runs a model: the knobs of ``configs/inference.json``, written there once.

``python -m monai.bundle run --config_file configs/inference.json`` hands these keys to the
Predictor it builds (its ``settings`` entry), and ``Predictor.from_bundle`` -- used by the CLI, the
Slicer worker and the web demo -- reads the same keys from the bundle's own file (a folder holding
only ``models/`` uses the file of the code's bundle). No Python code repeats their values: a
Predictor built without settings reads this bundle's file too. Keyword arguments, and the CLI
flags that set them (``--device``, ``--tta``), override the file; ``None`` keeps its value.

=================  =========================================================================
key                what it changes
=================  =========================================================================
device             ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``
slice_batch_size   2D model: slices of a volume per forward pass (speed vs memory)
sw_batch_size      3D model: sliding windows per forward pass (speed vs memory)
overlap            3D model: overlap of neighbouring windows, 0 <= overlap < 1 (smoother seams, slower)
window_mode        3D model: blending of overlapping windows, ``"gaussian"`` or ``"constant"``
amp                bf16 autocast: on CUDA; on a CPU with hardware bf16 for a model that trained so
                   (its card's ``cpu_bf16``); ``false``: float32 everywhere
tta                flip test-time augmentation of both heads (twice the network time)
=================  =========================================================================
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

#: the bundle's inference configuration, relative to its root
CONFIG_FILE = "configs/inference.json"
WINDOW_MODES = ("gaussian", "constant")


@dataclass(frozen=True)
class InferenceSettings:
    """The knobs of the module docstring's table (no defaults here: the values live in the JSON).

    Raises:
        ValueError: a value of the wrong type or out of range (names the key and the value).
    """

    device: str | torch.device
    slice_batch_size: int
    sw_batch_size: int
    overlap: float
    window_mode: str
    amp: bool
    tta: bool

    def __post_init__(self) -> None:
        for name in ("slice_batch_size", "sw_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"inference setting {name!r} must be a positive integer, got {value!r}")
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, (int, float)) or not 0 <= self.overlap < 1:
            raise ValueError(f"inference setting 'overlap' must be a number in [0, 1), got {self.overlap!r}")
        if self.window_mode not in WINDOW_MODES:
            raise ValueError(f"inference setting 'window_mode' must be one of {list(WINDOW_MODES)}, got {self.window_mode!r}")
        for name in ("amp", "tta"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"inference setting {name!r} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.device, (str, torch.device)):
            raise ValueError(f"inference setting 'device' must be a string such as 'auto' or 'cpu', got {self.device!r}")

    def with_overrides(self, **overrides: Any) -> InferenceSettings:
        """A copy with the given keys changed; ``None`` values are ignored (a flag not given).

        Raises:
            ValueError: a key that is not a setting, or a bad value.
        """
        names = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise ValueError(f"unknown inference setting(s) {unknown}; the settings are {names}")
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **given) if given else self


def config_file(bundle_root: str | os.PathLike | None = None) -> Path:
    """``bundle_root/configs/inference.json`` when it exists, else the one of the bundle this code is in."""
    if bundle_root is not None and (Path(bundle_root) / CONFIG_FILE).is_file():
        return Path(bundle_root) / CONFIG_FILE
    import scripts

    return Path(scripts.bundle_root()) / CONFIG_FILE


def load_settings(path: str | os.PathLike | None = None, **overrides: Any) -> InferenceSettings:
    """The settings an ``inference.json`` gives (default: this bundle's), ``overrides`` winning.

    The keys are read as ``monai.bundle`` reads them (``$`` expressions and ``@`` references work).

    Raises:
        ValueError: the file is missing or not valid JSON, lacks a key, or holds a bad value (names the file).
    """
    from monai.bundle import ConfigParser

    path = Path(path) if path is not None else config_file()
    if not path.is_file():
        raise ValueError(f"{path}: inference configuration not found")
    parser = ConfigParser()
    try:
        parser.read_config(str(path))
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{path}: not a readable inference configuration ({e})") from e
    names = [f.name for f in dataclasses.fields(InferenceSettings)]
    missing = [n for n in names if n not in parser]
    if missing:
        raise ValueError(f"{path}: lacks the inference setting(s) {missing}")
    try:
        settings = InferenceSettings(**{n: parser.get_parsed_content(n) for n in names})
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return settings.with_overrides(**overrides)
