"""The model card: what inference needs to rebuild a trained model, saved next to its weights.

Training writes ``models/model_card.json`` beside ``models/model.pt``; the Predictor, the export
command and ``configs/inference.json`` read it, so a model trained on any datalist (other classes,
channels, encoder) is served without editing a config.

The names of those files and the one way of loading the weights (strictly, ``weights_only``, with
the SHA-256 the result JSON reports) are defined here; the inference API, calibration and the
configs use them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from scripts.core.canonical import ORIENTATION
from scripts.core.datalist import provenance_counts
from scripts.core.networks import MultiTaskUNet
from scripts.core.plan import card_plan, file_sha256
from scripts.core.tasks import tumor_free_index
from scripts.core.transforms import check_normalization

#: a bundle's trained model: the folder, and the card and the weights in it
MODELS_DIR, CARD_NAME, WEIGHTS_NAME = "models", "model_card.json", "model.pt"
CARD_FILE, WEIGHTS_FILE = f"{MODELS_DIR}/{CARD_NAME}", f"{MODELS_DIR}/{WEIGHTS_NAME}"  # relative to the bundle root

#: the card of a model trained with the default configs on the built-in synthetic data
DEFAULT_CARD: dict[str, Any] = {
    "name": "MultiTaskUNet",
    "version": "0.1.0",
    "network": {
        "spatial_dims": 2,
        "in_channels": 1,
        "seg_classes": 2,
        "num_classes": 4,
        "encoder": "unet",
        "channels": [8, 16, 32, 64, 128],
        "dropout": 0.5,
        "cls_hidden": 0,
    },
    "channels": ["T1c"],
    "segments": ["background", "tumor"],
    "classes": ["glioma", "meningioma", "no_tumor", "pituitary"],
    "spatial_size": [96, 96],
    "no_tumor_class": "no_tumor",
}

_REQUIRED = ("network", "channels", "segments", "classes", "spatial_size")


def load_model_card(bundle_root: str | os.PathLike, card_file: str | os.PathLike | None = None) -> dict[str, Any]:
    """Read ``models/model_card.json`` of a bundle (or ``card_file``); the default card if none exists.

    Raises:
        ValueError: the card exists but is not valid JSON or lacks a required key (names the file).
    """
    path = Path(card_file) if card_file is not None else Path(bundle_root) / CARD_FILE
    if not path.is_file():
        if card_file is not None:
            raise ValueError(f"{path}: model card not found")
        return json.loads(json.dumps(DEFAULT_CARD))  # a deep copy callers may change
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: model card is not valid JSON ({e})") from e
    missing = [k for k in _REQUIRED if k not in card]
    if missing:
        raise ValueError(f"{path}: model card lacks {missing}")
    return card


#: what a model given to ``init_from`` must share with the run it starts (its card beside its weights)
INIT_CARD_KEYS = ("network", "channels", "segments", "classes", "spatial_size", "normalization")


def build_network(card: dict[str, Any], init_from: str | os.PathLike | None = None) -> MultiTaskUNet:
    """The network a card describes: untrained, or with the weights of ``init_from`` (fine-tuning).

    ``init_from`` is a trained ``model.pt`` (or a training checkpoint) with its ``model_card.json``
    beside it; that card must describe the same setup as ``card`` (:data:`INIT_CARD_KEYS`), so that
    weights learnt for other classes, segments, channels, input size or intensity scaling are never
    loaded silently. The weights load strictly and ``weights_only`` (:func:`load_weights`).

    Raises:
        ValueError: no card beside ``init_from``, a setup that differs (each difference named), or
            weights that do not load (names the file).
    """
    network = MultiTaskUNet(**card["network"])
    if init_from is not None:
        check_init_card(card, init_from)
        load_weights(network, init_from)
    return network


def check_init_card(card: dict[str, Any], init_from: str | os.PathLike) -> None:
    """Raise ``ValueError`` unless the card beside ``init_from`` has this run's :data:`INIT_CARD_KEYS`."""
    path = Path(init_from)
    card_file = path.with_name(CARD_NAME)
    if not path.is_file():
        raise ValueError(f"{path}: init_from weights not found")
    if not card_file.is_file():
        raise ValueError(f"{card_file}: no model card beside the init_from weights {path.name}; fine-tuning "
                         "needs it to check that the model was trained for this setup")
    old = load_model_card(path.parent, card_file)
    default_norm = {"mode": "percentile"}  # cards written before plans: per-image percentile scaling
    differences = setup_differences({**old, "normalization": old.get("normalization") or default_norm},
                                    {**card, "normalization": card.get("normalization") or default_norm},
                                    INIT_CARD_KEYS, card_file.name)
    if differences:
        raise ValueError(f"{card_file}: the init_from model was trained for another setup than this run:\n  "
                         + "\n  ".join(differences)
                         + "\nGive the differing settings on the command line (e.g. --spatial_size, "
                           "--network_channels) or train from scratch (init_from null).")


def setup_differences(old: dict[str, Any], new: dict[str, Any], keys: tuple[str, ...], where: str) -> list[str]:
    """Each of ``keys`` whose value differs between ``old`` (what a saved model or checkpoint was trained
    for) and ``new`` (this run), as ``"key: OLD in WHERE, NEW now"``; the network's arguments one by one."""
    differences = []
    for key in keys:
        was, now = old.get(key), new.get(key)
        if key == "network" and isinstance(was, dict) and isinstance(now, dict):
            differences += [f"network.{k}: {was.get(k)!r} in {where}, {now.get(k)!r} now"
                            for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)]
        elif was != now:
            differences.append(f"{key}: {was!r} in {where}, {now!r} now")
    return differences


def weights_path(models_dir: str | os.PathLike) -> str:
    """``models_dir/model.pt`` (for configs: ``{"_target_": "scripts.core.model_card.weights_path", ...}``)."""
    return str(Path(models_dir) / WEIGHTS_NAME)


def state_sha256(network: torch.nn.Module) -> str:
    """SHA-256 of in-memory weights (a network handed over without a file), hex."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_weights(network: torch.nn.Module, path: str | os.PathLike) -> str:
    """Load a state_dict (or a training checkpoint's ``"network"`` entry) strictly; return its file's SHA-256.

    Raises:
        ValueError: missing / unreadable file, or weights that do not fit the network (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no trained weights here; train the model first or pass a checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file (pickle, zip, EOF)
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {str(e)[:200]})") from e
    if isinstance(state, dict) and isinstance(state.get("network"), dict):
        state = state["network"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state_dict (found {type(state).__name__})")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:400]
        raise ValueError(f"{path}: checkpoint does not match the network of the model card: {detail}") from e
    return file_sha256(path)


def make_card(network_kwargs: dict[str, Any], channels: list[str], segments: list[str], classes: list[str],
              spatial_size: list[int], name: str = "MultiTaskUNet", version: str = "0.1.0",
              plan: dict[str, Any] | None = None, normalization: str | dict[str, Any] | None = None,
              target_spacing: list[float] | None = None, orientation: str | None = None,
              crop_foreground: bool = False, datalist_file: str | os.PathLike | None = None,
              init_from: str | os.PathLike | None = None, cpu_bf16: bool = False) -> dict[str, Any]:
    """Assemble a card from the training configuration.

    A 3D model trained on canonical grids (``target_spacing`` mm along the axes of ``orientation``,
    volumes cropped to their foreground when ``crop_foreground``, see ``scripts.core.canonical``) records
    those three settings, and the Predictor brings every study onto the same grid. Without a
    ``target_spacing`` none of them is written (2D; 3D models of the stored grid).

    ``plan`` (``scripts.core.plan``) is kept under ``"plan"`` (without MONAI's raw summaries);
    ``normalization`` -- the one training used, by default the plan's -- under ``"normalization"``,
    which inference applies. Cards written before plans existed have neither: inference then uses
    per-image percentile scaling, as training did then. The tumor-free class is found by name, else
    it is the plan's (the class whose masks are empty).

    ``datalist_file`` records the data the model learnt from under ``"training_data"``: the file,
    its SHA-256 and, per split, how many entries have each ``provenance`` (reviewed studies from
    ``prepare reviewed``: accepted / edited / overridden / rejected; the rest count as
    ``original``). ``init_from`` records the model fine-tuning started from (file, SHA-256, name,
    version) under ``"init_from"``.

    ``cpu_bf16``: the network trained (and was validated and calibrated) under CPU bfloat16 autocast
    (:func:`scripts.core.sliding_window.forward`); the Predictor then runs it so on a CPU that computes
    bf16 in hardware. Kept under ``"cpu_bf16"``; cards without it trained in float32.
    """
    free = tumor_free_index(classes, plan)
    no_tumor = None if free is None else classes[free]
    if normalization is None and plan is not None:
        normalization = plan.get("normalization")
    card = {
        "name": name,
        "version": version,
        "network": dict(network_kwargs),
        "channels": list(channels),
        "segments": list(segments),
        "classes": list(classes),
        "spatial_size": [int(s) for s in spatial_size],
        "no_tumor_class": no_tumor,
        "normalization": check_normalization(normalization),
        "cpu_bf16": bool(cpu_bf16),
    }
    if target_spacing is not None:
        card.update(target_spacing=[float(s) for s in target_spacing], orientation=orientation or ORIENTATION,
                    crop_foreground=bool(crop_foreground))
    if plan is not None:
        card["plan"] = card_plan(plan)
    if datalist_file is not None:
        card["training_data"] = training_data(datalist_file)
    if init_from is not None:
        start = load_model_card(Path(init_from).parent, Path(init_from).with_name(CARD_NAME)) \
            if Path(init_from).with_name(CARD_NAME).is_file() else {}
        card["init_from"] = {"path": str(Path(init_from).resolve()), "sha256": file_sha256(init_from),
                             "name": start.get("name"), "version": start.get("version")}
    return card


def training_data(datalist_file: str | os.PathLike) -> dict[str, Any]:
    """``{"datalist", "sha256", "provenance": {split: {provenance: count}}, "with_mask": {...}}`` of a
    datalist file; ``with_mask`` counts the entries with a mask, the ones that train the segmentation
    (``prepare reviewed`` gives accepted, unedited studies none)."""
    path = Path(datalist_file).resolve()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read the datalist ({e})") from e
    raw = raw if isinstance(raw, dict) else {}
    return {"datalist": str(path), "sha256": file_sha256(path), "provenance": provenance_counts(raw),
            "with_mask": provenance_counts(raw, with_mask=True)}
