"""Find and describe the model bundle the module runs: the installed one or any folder the user picks."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

CARD_FILE = Path("models") / "model_card.json"
WEIGHTS_FILE = Path("models") / "model.pt"
WORKER_FILE = Path("scripts") / "infer.py"


class BundleError(ValueError):
    """A folder is not a usable MultiTaskUNet bundle."""


@dataclass(frozen=True)
class BundleInfo:
    """What the panel shows about a bundle before running it."""

    root: Path
    name: str
    version: str
    classes: tuple[str, ...]
    segments: tuple[str, ...]
    has_weights: bool
    #: the input channels the model reads, by name (``("T1c",)``), from the model card
    channels: tuple[str, ...] = ()
    #: what the model was trained on: the card's ``training_data`` (datalist and counts per split), else
    #: the bundle metadata's ``data_source``; empty when neither says
    training_data: str = ""

    def describe(self) -> str:
        """One line for the panel, e.g. ``MultiTaskUNet 0.1.0 - glioma, meningioma, ...``."""
        text = f"{self.name} {self.version}".strip()
        if self.classes:
            text += " - " + ", ".join(self.classes)
        if not self.has_weights:
            text += " (no trained weights in models/: train the bundle or pick another folder)"
        return text

    def details(self) -> str:
        """The panel's lines under :meth:`describe`: input channels and training data."""
        channels = ", ".join(self.channels) if self.channels else "not stated in the model card"
        return f"Input: {channels}\nTraining data: {self.training_data or 'not described in the model card'}"


def _training_data(card: dict, meta: dict) -> str:
    """One line on the training data: ``datalist.json: train 120, val 30 (20 reviewed)`` from the card's
    ``training_data`` (``scripts.core.model_card.training_data``), else the metadata's ``data_source``."""
    data = card.get("training_data")
    if isinstance(data, dict) and data.get("datalist"):
        splits, reviewed = [], 0
        for split, counts in (data.get("provenance") or {}).items():
            if isinstance(counts, dict):
                numbers = [n for n in counts.values() if isinstance(n, int)]
                splits.append(f"{split} {sum(numbers)}")
                reviewed += sum(n for kind, n in counts.items() if kind != "original" and isinstance(n, int))
        text = Path(str(data["datalist"]).replace("\\", "/")).name
        if splits:
            text += ": " + ", ".join(splits) + (f" ({reviewed} reviewed by radiologists)" if reviewed else "")
        return text
    return str(meta.get("data_source") or "")


def default_bundle_dir(module_dir: str | os.PathLike) -> Optional[Path]:
    """The bundle installed with the module (next to it when installed, one level up in the source tree)."""
    module_dir = Path(module_dir)
    for candidate in (module_dir / "monai_bundle", module_dir.parent / "monai_bundle"):
        if (candidate / WORKER_FILE).is_file():
            return candidate
    return None


def inspect_bundle(root: str | os.PathLike) -> BundleInfo:
    """Read a bundle's model card (if trained) without importing anything from it.

    Raises:
        BundleError: no ``scripts/infer.py`` in the folder, or a model card that is not valid JSON.
    """
    root = Path(root)
    if not (root / WORKER_FILE).is_file():
        raise BundleError(f"{root}: not a MultiTaskUNet bundle (no {WORKER_FILE.as_posix()})")
    card: dict = {}
    card_path = root / CARD_FILE
    if card_path.is_file():
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise BundleError(f"{card_path}: model card is not valid JSON ({e})") from e
    meta_path = root / "configs" / "metadata.json"
    meta: dict = {}
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            meta = {}  # the card is what inference uses; a broken metadata file only loses the name
    return BundleInfo(root=root, name=str(card.get("name") or meta.get("name") or root.name),
                      version=str(card.get("version") or meta.get("version") or ""),
                      classes=tuple(card.get("classes", ())), segments=tuple(card.get("segments", ())),
                      has_weights=(root / WEIGHTS_FILE).is_file(), channels=tuple(str(c) for c in card.get("channels", ())),
                      training_data=_training_data(card, meta))
