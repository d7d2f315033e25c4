"""MultiTaskUNet bundle scripts: network, data, losses, training, evaluation and inference.

Everything the bundle's configs reference lives here, so that the bundle is self-contained:
`"imports": ["$import scripts"]` in a config makes `scripts.<module>` importable from any folder.
"""

from pathlib import Path as _Path


def bundle_root() -> str:
    """Absolute path of this bundle (the folder holding ``configs/`` and ``scripts/``).

    The configs set ``bundle_root`` with ``{"_target_": "scripts.bundle_root"}`` so that
    ``python -m monai.bundle run --config_file <anywhere>/configs/train.json`` works from any folder.
    """
    return str(_Path(__file__).resolve().parents[1])
