"""A small random-weight copy of a bundle, for self-tests of the whole flow without a trained model.

Run in the worker's Python (it imports torch and the bundle's ``scripts``)::

    python -m MultiTaskUNetLib.tiny_bundle SRC_BUNDLE DST_BUNDLE

``make_in_subprocess`` does exactly that from a process without torch (Slicer's GUI process).
Weights are random (seeded), so the answers are meaningless; only the plumbing is tested.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

#: network of the tiny model: 3 levels of 4/8/16 channels, 32x32 slices
TINY_CHANNELS = [4, 8, 16]
TINY_SPATIAL_SIZE = [32, 32]


def copy_bundle(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a bundle's code and configs (not its data, models or caches) to ``dst``.

    Raises:
        ValueError: ``src`` has no ``scripts/`` folder, or ``dst`` exists already.
    """
    src, dst = Path(src), Path(dst)
    if not (src / "scripts").is_dir():
        raise ValueError(f"{src}: not a bundle (no scripts/ folder)")
    if dst.exists():
        raise ValueError(f"{dst}: already exists")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    dst.mkdir(parents=True)
    for part in ("configs", "scripts"):
        if (src / part).is_dir():
            shutil.copytree(src / part, dst / part, ignore=ignore)
    return dst


def write_random_model(bundle: str | os.PathLike, seed: int = 0) -> Path:
    """Write ``models/model_card.json`` + ``models/model.pt`` for a tiny seeded random network."""
    bundle = Path(bundle).resolve()
    sys.path.insert(0, str(bundle))
    import torch
    from scripts.core.model_card import CARD_FILE, WEIGHTS_FILE, build_network, load_model_card
    from scripts.core.atomic import write_json_atomic  # noqa: I001  (after model_card: its absence names the bundle problem)

    card = load_model_card(bundle)
    card["network"]["channels"] = list(TINY_CHANNELS)
    card["spatial_size"] = list(TINY_SPATIAL_SIZE)
    card["version"] = card.get("version", "0.0.0") + "+tiny-random"
    torch.manual_seed(seed)
    network = build_network(card)
    (bundle / WEIGHTS_FILE).parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), bundle / WEIGHTS_FILE)
    write_json_atomic(bundle / CARD_FILE, card)
    return bundle


def make_in_subprocess(python: str | os.PathLike, src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy ``src`` to ``dst`` and write the tiny model using ``python`` (which has torch).

    Raises:
        RuntimeError: the subprocess failed (its stderr tail is in the message).
    """
    copy_bundle(src, dst)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([str(python), "-m", "MultiTaskUNetLib.tiny_bundle", "--model-only", str(dst)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"making the tiny bundle in {dst} failed: {proc.stderr.strip()[-2000:]}")
    return Path(dst)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--model-only"] and len(argv) == 2:
        write_random_model(argv[1])
    elif len(argv) == 2:
        write_random_model(copy_bundle(argv[0], argv[1]))
    else:
        print("usage: python -m MultiTaskUNetLib.tiny_bundle SRC DST | --model-only BUNDLE", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
