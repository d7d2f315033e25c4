"""Cost of the segmentation uncertainty: flip TTA as before (no disagreement), with the score, with the map.

    python Testing/benchmarks/bench_uncertainty.py --models DIR [--repeats 5] [--size 256] [--slices 48]

On one PNG image (``--size``², a synthetic slice) and one NIfTI volume (``--slices`` axial slices of
``--size``², run slice by slice by a 2D model), :meth:`Predictor.predict` with files written is
timed, interleaved, in three ways:

- ``tta``: flip TTA whose network returns only the averaged heads (what it returned before the
  uncertainty existed: the engine then computes nothing more);
- ``+score``: today's TTA, which also reports both passes' tumour probability: the score;
- ``+map``: ``uncertainty_map=True``: the score, the voxel map and its file.

The median over ``--repeats`` is printed, with the ratios to ``tta``. ``--models DIR`` holds a 2D
``model.pt`` + ``model_card.json`` (e.g. the one ``bench_worklist.py --root R`` trains into ``R/models``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BUNDLE = HERE.parents[1] / "monai_bundle"
sys.path.insert(0, str(BUNDLE))


def _inputs(folder: Path, size: int, slices: int) -> list[Path]:
    import nibabel as nib
    from PIL import Image

    from scripts.datasets import synthetic

    image, _ = synthetic.make_slice(np.random.default_rng(0), 0, size)[:2]
    png = folder / "slice.png"
    Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8)).save(png)
    volume, _ = synthetic.make_volume(0, 0, (size, size, slices), (1.0, 1.0, 4.0))
    nii = folder / "volume.nii.gz"
    nib.save(nib.Nifti1Image(volume.astype(np.float32), np.diag([1.0, 1.0, 4.0, 1.0])), nii)
    return [png, nii]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", type=Path, required=True, help="folder with model.pt + model_card.json (2D)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--slices", type=int, default=48)
    args = p.parse_args(argv)

    import torch

    from scripts.inference import Predictor
    from scripts.core.sliding_window import FlipTTA
    from scripts.core.tasks import Task

    class HeadsOnlyTTA(FlipTTA):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            out = super().forward(x)
            return {Task.SEG.value: out[Task.SEG.value], Task.CLS.value: out[Task.CLS.value]}

    def predictor() -> Predictor:
        return Predictor.from_bundle(BUNDLE, checkpoint=args.models / "model.pt", card=args.models / "model_card.json",
                                     device="cpu", tta=True)

    plain, scored = predictor(), predictor()
    plain.network = HeadsOnlyTTA(plain.network.network, plain.spatial_dims).eval()
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, torch threads {torch.get_num_threads()}, "
          f"repeats {args.repeats}")
    with tempfile.TemporaryDirectory(prefix="bench_uncertainty_") as tmp:
        folder = Path(tmp)
        ways = {"tta": (plain, False), "+score": (scored, False), "+map": (scored, True)}
        for study in _inputs(folder, args.size, args.slices):
            times: dict[str, list[float]] = {w: [] for w in ways}
            for r in range(args.repeats + 1):  # the first round warms up and is not counted
                for way, (pred, keep) in ways.items():
                    start = time.perf_counter()
                    out = pred.predict(study, output_dir=folder / way, uncertainty_map=keep, overlay=False)
                    if r:
                        times[way].append(time.perf_counter() - start)
                assert out.result["segmentation"]["uncertainty"] is not None
            base = statistics.median(times["tta"])
            cells = "  ".join(f"{w} {statistics.median(t):.3f} s ({statistics.median(t) / base:.3f}x)" for w, t in times.items())
            print(f"{study.name:<16} {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
