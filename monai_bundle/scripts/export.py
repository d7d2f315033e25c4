"""Export the trained model to TorchScript and ONNX, each checked against the eager network.

    python -m scripts.export [--bundle DIR] [--checkpoint FILE] [--card FILE]
                             [--torchscript models/model.ts] [--onnx models/model.onnx] [--atol 1e-4]

TorchScript keeps the network's dict output (``{"seg", "cls", "pred"}``). ONNX has one input
``image`` ``(B, C, *spatial_size)`` with a dynamic batch and two outputs ``seg`` ``(B, S, *spatial)``
and ``cls`` ``(B, K)``; the spatial size is fixed to the card's ``spatial_size``, the size the
Predictor feeds (2D: resized slices; 3D: sliding windows). The parity check runs the exports with
onnxruntime on the CPU at a batch size other than the export's, and fails (exit 1, nothing kept)
when an output differs from eager PyTorch by more than ``atol + rtol * |eager|``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scripts.core.atomic import atomic_path
from scripts.inference.errors import InputError
from scripts.inference.predictor import Predictor
from scripts.core.tasks import Task

RTOL = 1e-4


class ExportError(RuntimeError):
    """An export differs from the eager network (the message gives the largest difference)."""


class _TupleOutput(torch.nn.Module):
    """ONNX wants positional outputs: ``(seg, cls)`` instead of the dict (the ``pred`` alias dropped)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.network(x)
        return out[Task.SEG.value], out[Task.CLS.value]


def example_input(card: dict[str, Any], batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A random ``(batch, C, *spatial_size)`` input in the normalised range 0..1."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((batch, int(card["network"]["in_channels"]), *card["spatial_size"]), generator=g)


def export_torchscript(network: torch.nn.Module, path: str | os.PathLike) -> Path:
    """Script ``network`` (eval mode) into ``path`` atomically."""
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        torch.jit.script(network.eval()).save(str(tmp))
    return Path(path)


def export_onnx(network: torch.nn.Module, example: torch.Tensor, path: str | os.PathLike) -> Path:
    """Export ``network`` to one self-contained ONNX file (torch.export based, dynamic batch)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        torch.onnx.export(_TupleOutput(network.eval()).eval(), (example,), str(tmp), input_names=["image"],
                          output_names=[Task.SEG.value, Task.CLS.value], dynamo=True,
                          dynamic_shapes=({0: batch},), external_data=False, verbose=False)
    return Path(path)


def _worst(reference: torch.Tensor, other: np.ndarray | torch.Tensor, atol: float) -> tuple[float, bool]:
    """Largest absolute difference, and whether every element is within ``atol + RTOL * |reference|``."""
    ref = reference.detach().cpu().numpy()
    diff = np.abs(ref - np.asarray(other))
    return float(diff.max()), bool((diff <= atol + RTOL * np.abs(ref)).all())


def check_parity(network: torch.nn.Module, inputs: torch.Tensor, torchscript: Path | None = None,
                 onnx: Path | None = None, atol: float = 1e-4) -> dict[str, float]:
    """Run the exports on ``inputs`` ``(B, C, *spatial)`` and compare each output with eager.

    Returns:
        ``{"torchscript.seg": max |diff|, ...}``.

    Raises:
        ExportError: an output differs beyond tolerance.
    """
    with torch.no_grad():
        eager = network.eval()(inputs)
    outputs: dict[str, dict[str, Any]] = {}
    if torchscript is not None:
        with torch.no_grad():
            ts = torch.jit.load(str(torchscript), map_location="cpu")(inputs)
        outputs["torchscript"] = {t.value: ts[t.value] for t in Task}
    if onnx is not None:
        import onnxruntime as ort

        session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
        seg, cls = session.run([Task.SEG.value, Task.CLS.value], {"image": inputs.numpy()})
        outputs["onnx"] = {Task.SEG.value: seg, Task.CLS.value: cls}
    report, bad = {}, []
    for kind, outs in outputs.items():
        for task in Task:
            worst, ok = _worst(eager[task.value], outs[task.value], atol)
            report[f"{kind}.{task.value}"] = worst
            if not ok:
                bad.append(f"{kind} {task.value} differs from eager by up to {worst:.3g}")
    if bad:
        raise ExportError("; ".join(bad))
    return report


def export_model(predictor: Predictor, torchscript: Path | None, onnx: Path | None, atol: float = 1e-4) -> dict[str, float]:
    """Export the predictor's network and check parity; a failed check removes the exports.

    Raises:
        ExportError: parity failed.
    """
    network = predictor.network.to("cpu").eval()
    written = []
    try:
        if torchscript is not None:
            written.append(export_torchscript(network, torchscript))
        if onnx is not None:
            written.append(export_onnx(network, example_input(predictor.card, batch=2), onnx))
        return check_parity(network, example_input(predictor.card, batch=3, seed=1), torchscript, onnx, atol)
    except ExportError:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    import scripts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=Path(scripts.bundle_root()), help="bundle root")
    ap.add_argument("--checkpoint", type=Path, help="weights (default: BUNDLE/models/model.pt)")
    ap.add_argument("--card", type=Path, help="model card (default: BUNDLE/models/model_card.json)")
    ap.add_argument("--torchscript", type=Path, help="TorchScript file (default: BUNDLE/models/model.ts)")
    ap.add_argument("--onnx", type=Path, help="ONNX file (default: BUNDLE/models/model.onnx)")
    ap.add_argument("--no-onnx", action="store_true", help="TorchScript only")
    ap.add_argument("--atol", type=float, default=1e-4, help="absolute tolerance of the parity check")
    args = ap.parse_args(argv)
    torchscript = args.torchscript or args.bundle / "models" / "model.ts"
    onnx = None if args.no_onnx else args.onnx or args.bundle / "models" / "model.onnx"
    try:
        predictor = Predictor.from_bundle(args.bundle, device="cpu", checkpoint=args.checkpoint, card=args.card)
        report = export_model(predictor, torchscript, onnx, args.atol)
    except (InputError, ExportError) as e:
        print(f"ERROR {e}", file=sys.stderr)
        return 1
    for path in (torchscript, onnx):
        if path is not None:
            print(f"wrote {path}")
    print("parity (max |export - eager|): " + ", ".join(f"{k} {v:.2e}" for k, v in report.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
