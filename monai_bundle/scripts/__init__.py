"""MultiTaskUNet bundle scripts, in layers: each imports only the layers below it.

1. ``imageio/``   the image layer: every image is read here; imports nothing of the bundle.
2. ``core/``      what training and inference share: tasks, network, transforms, canonical grid, datalist,
                  fingerprint and plan, model card, sliding-window inferers, atomic writes.
3. ``train/``     training glue (loss, handlers, schedule, EMA, calibration, metrics, evaluation, report,
                  tracking) and ``inference/``, the one inference API (Predictor, readers, writers):
                  siblings, neither imports the other.
4. tools and shells: ``prepare/`` (``python -m scripts.prepare``), ``datasets/`` (``python -m
   scripts.datasets``; also the built-in synthetic set), ``infer.py`` (the CLI and Slicer worker),
   ``export.py`` (TorchScript / ONNX) and ``demo.py``.

Everything the bundle's configs reference lives here, so that the bundle is self-contained:
`"imports": ["$import scripts"]` in a config makes `scripts.<package>.<module>` importable from any folder.
``Testing/bundle/test_bundle_layering.py`` checks the order; ``docs/contracts.md`` ("Bundle layout") lists
the modules.
"""

from pathlib import Path as _Path


def bundle_root() -> str:
    """Absolute path of this bundle (the folder holding ``configs/`` and ``scripts/``).

    The configs set ``bundle_root`` with ``{"_target_": "scripts.bundle_root"}`` so that
    ``python -m monai.bundle run --config_file <anywhere>/configs/train.json`` works from any folder.
    """
    return str(_Path(__file__).resolve().parents[1])
