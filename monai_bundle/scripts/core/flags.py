"""On/off knobs of the bundle's configs, read the same way in training and inference."""

from __future__ import annotations

from typing import Any

#: how an on/off knob may arrive from the command line besides True / False
FLAG_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False, "on": True, "off": False}


def flag(value: Any, name: str) -> bool:
    """An on/off knob of the config as a bool.

    ``python -m monai.bundle run ... --resume false`` hands the config the *text* ``'false'`` (the
    command line's parser reads only ``False`` / ``True``, capitalised, as booleans), and a non-empty
    string is true: the run would have resumed, augmented or calibrated against what was asked. The
    configs (``train.json``, ``inference.json``) read every such knob through this function:
    ``true`` / ``false`` in any case, ``1`` / ``0``, ``yes`` / ``no`` and ``on`` / ``off`` count.

    Raises:
        ValueError: any other value (names the knob and the value).
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in FLAG_WORDS:
        return FLAG_WORDS[value.strip().lower()]
    raise ValueError(f"{name} must be true or false, got {value!r}")
