"""Inference benchmark: the Predictor end to end vs a plain MONAI sliding-window call, side by side.

    .venv/bin/python Testing/benchmarks/bench_inference.py [--device cpu|cuda] [--shape 256 256 160]
                                                           [--roi3d 64] [--repeats 1] [--paths 2d 3d ...]

One synthetic head volume (default 256 x 256 x 160, 1 x 1 x 2 mm, stored with ITK's identity
direction, i.e. LPS) is written as NIfTI. For each path -- a 2D model slice-wise, a 3D model by
sliding window on the stored grid (a card without ``target_spacing``), and a 3D model on the
canonical grid (``scripts.core.canonical``: foreground crop, RAS, target spacing) either at the stored
spacing (``3d-reindex``: flips only, nothing interpolated) or at 1.2 x 1.2 x 1.6 mm
(``3d-resample``: interpolated there and back) -- two measurements run, each in its own fresh
process (so peak memory is its own):

* ``predictor``: ``Predictor.predict(nifti, output_dir=...)``: read, normalise, network, resize
  back, arg-max, write label map + result JSON + overlay. The network's own forward time is
  clocked inside, so the share spent outside the network is reported.
* ``plain``: one ``monai.inferers.sliding_window_inference`` call of the same network on the
  already-loaded, normalised tensor (segmentation logits only; no I/O, no post-processing). For
  the 2D model its input is the stack of slices resized to the model size, so both do the same
  network work (one forward per slice); for the canonical paths it is the cropped, resampled
  volume the model sees, prepared before the clock starts -- so the Predictor's share outside the
  network includes the foreground box, the resampling onto the canonical grid and the resampling
  of the logits back onto the study, arg-max and writing.

Both run with the bundle's ``configs/inference.json`` settings (slices per batch, windows per
batch, overlap, blending, AMP), printed in the header. Prints seconds, share outside the network,
peak RSS (and CUDA peak), and predictor/plain ratios, wall and CPU time: on a machine shared with
other jobs the CPU-time ratio (one thread: ``OMP_NUM_THREADS=1``) is the steadier one. Random
weights: speed does not depend on what the model learned. Widths are printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BUNDLE = Path(__file__).resolve().parents[2] / "monai_bundle"
sys.path.insert(0, str(BUNDLE))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_worker import run_json_worker  # noqa: E402
WIDTHS = {2: [16, 32, 64, 128, 256], 3: [4, 8, 16, 32]}  # 2D: the default card's widths; 3D: small for CPU
SPATIAL_2D = [128, 128]  # the default card's 2D input size
#: path -> target spacing of a canonical 3D card (None: the stored grid)
PATHS = {"2d": None, "3d": None, "3d-reindex": [1.0, 1.0, 2.0], "3d-resample": [1.2, 1.2, 1.6]}


def make_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """A head-like phantom ``(X, Y, Z)``: noisy ellipsoid with a bright blob."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    r2 = sum(g ** 2 for g in grids)
    head = (r2 < 0.8).astype(np.float32) * 300
    blob = ((grids[0] - 0.3) ** 2 + (grids[1] + 0.2) ** 2 + grids[2] ** 2 < 0.03) * 400
    return head + blob + rng.normal(0, 20, shape).astype(np.float32)


def card_for(path: str, roi3d: int) -> dict:
    from scripts.core.model_card import DEFAULT_CARD

    dims = 2 if path == "2d" else 3
    card = json.loads(json.dumps(DEFAULT_CARD))
    card["network"].update(spatial_dims=dims, channels=WIDTHS[dims])
    card["spatial_size"] = SPATIAL_2D if dims == 2 else [roi3d] * 3
    if PATHS[path] is not None:
        card.update(target_spacing=PATHS[path], orientation="RAS", crop_foreground=True)
    return card


class TimedNetwork(torch.nn.Module):
    """Wraps a network to add up the seconds spent inside its forward (CUDA-synchronised)."""

    def __init__(self, network: torch.nn.Module, device: torch.device) -> None:
        super().__init__()
        self.network, self.device, self.seconds = network, device, 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._sync()
        start = time.perf_counter()
        out = self.network(x)
        self._sync()
        self.seconds += time.perf_counter() - start
        return out


def network_input(predictor, nifti: Path) -> torch.Tensor:
    """The study as the model sees it: normalised, and for canonical cards cropped and resampled (untimed)."""
    from scripts.core.canonical import affine_from_itk, canonical_grid, foreground_box, resample
    from scripts.inference import read_study

    study = read_study(nifti)
    image = predictor._prepare(study)  # the Predictor's own normalisation
    grid = predictor.grid_settings
    if grid is None:
        return torch.from_numpy(image)
    g = study.geometry
    affine = affine_from_itk(g.spacing, g.origin, g.direction)
    start, end = foreground_box(study.image)
    crop = image[(slice(None), *(slice(a, b) for a, b in zip(start, end)))]
    affine[:3, 3] = affine[:3, :3] @ np.asarray(start, float) + affine[:3, 3]
    target = canonical_grid(affine, crop.shape[1:], grid["target_spacing"], grid["orientation"])
    return resample(crop, affine, target)


def plain_call(timed: TimedNetwork, image: torch.Tensor, card: dict, device: torch.device,
               settings) -> tuple[float, float, int]:
    """Wall and CPU seconds of one bare ``sliding_window_inference`` call on the study as the model sees it; RSS before it.

    ``settings``: the Predictor's (:class:`scripts.inference.settings.InferenceSettings`), so both do the same batches.
    """
    import psutil
    from monai.inferers import sliding_window_inference
    from torch.nn import functional as F

    if len(card["spatial_size"]) == 2:  # the slices as the 2D model sees them: (Z, 1, 128, 128)
        x = F.interpolate(image.permute(3, 0, 1, 2), size=card["spatial_size"], mode="bilinear", align_corners=False)
        batch = settings.slice_batch_size
    else:
        x, batch = image[None], settings.sw_batch_size
    base_rss = psutil.Process().memory_info().rss
    amp = settings.amp and device.type == "cuda"
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        start, cpu = time.perf_counter(), time.process_time()
        # on the device first, as the Predictor's engine moves its input (MONAI stitches the windows on the
        # input's device, so a CPU input with CUDA windows fails)
        sliding_window_inference(x.to(device), card["spatial_size"], batch, lambda w: timed(w)["seg"], settings.overlap,
                                 settings.window_mode)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start, time.process_time() - cpu, base_rss


def run_worker(mode: str, path: str, nifti: Path, out_dir: Path, device_name: str, roi3d: int) -> dict:
    """One measurement in this process; returns its figures."""
    import psutil

    from scripts.inference import Predictor
    from scripts.core.model_card import build_network

    torch.manual_seed(0)
    card = card_for(path, roi3d)
    device = torch.device(device_name)
    network = build_network(card).to(device).eval()
    timed = TimedNetwork(network, device)
    predictor = Predictor(network, card, device=device)  # the bundle's inference.json settings
    predictor.network = timed  # the Predictor calls it like the module; its forward is now clocked
    with torch.inference_mode():  # warm-up: first-call allocations and kernel selection are not measured
        network(torch.rand(1, 1, *card["spatial_size"], device=device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base_rss = psutil.Process().memory_info().rss
    timed.seconds = 0.0
    if mode == "predictor":
        start, cpu = time.perf_counter(), time.process_time()
        pred = predictor.predict(nifti, output_dir=out_dir, name=f"bench{path}")
        total, cpu = time.perf_counter() - start, time.process_time() - cpu
        extra = {"timings_s": pred.result["timings_s"], "device": pred.result["device"]}
    else:
        image = network_input(predictor, nifti)
        total, cpu, base_rss = plain_call(timed, image, card, device, predictor.settings)
        extra = {"network_input": list(image.shape[1:])}
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    cuda_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    settings = {k: str(v) if k == "device" else v for k, v in dataclasses.asdict(predictor.settings).items()}
    return {"mode": mode, "path": path, "settings": settings, "seconds": total, "cpu_s": cpu, "network_s": timed.seconds,
            "outside_share": max(0.0, 1 - timed.seconds / total), "peak_rss_mb": peak_rss / 2 ** 20,
            "rss_over_start_mb": (peak_rss - base_rss) / 2 ** 20,
            "cuda_peak_mb": None if cuda_peak is None else cuda_peak / 2 ** 20, **extra}


def spawn(mode: str, path: str, nifti: Path, out_dir: Path, device: str, roi3d: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(BUNDLE))
    cmd = [sys.executable, __file__, "--worker", mode, "--path", path, "--nifti", str(nifti), "--out", str(out_dir),
           "--device", device, "--roi3d", str(roi3d)]
    return run_json_worker(cmd, env, f"worker {mode} {path}", tail=3000)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shape", type=int, nargs=3, default=[256, 256, 160])
    ap.add_argument("--roi3d", type=int, default=64, help="3D window edge (the 3D card's spatial_size)")
    ap.add_argument("--repeats", type=int, default=1, help="alternating predictor/plain rounds; the best of each is kept")
    ap.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS), help="which paths to measure")
    ap.add_argument("--worker", choices=["predictor", "plain"], help=argparse.SUPPRESS)
    ap.add_argument("--path", choices=list(PATHS), default="2d", help=argparse.SUPPRESS)
    ap.add_argument("--nifti", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args.worker, args.path, args.nifti, args.out, args.device, args.roi3d)))
        return 0
    import SimpleITK as sitk

    # this process imports nothing of the bundle: a worker's peak RSS starts from this process's
    # resident size (Linux keeps the high-water mark across fork + exec)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, device {args.device}")
    print(f"volume {tuple(args.shape)}; 2D widths {WIDTHS[2]} at {SPATIAL_2D}; 3D widths {WIDTHS[3]}, windows "
          f"{args.roi3d}^3; canonical target spacings { {k: v for k, v in PATHS.items() if v} }; "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        nifti = Path(tmp) / "head.nii.gz"
        image = sitk.GetImageFromArray(np.ascontiguousarray(make_volume(tuple(args.shape)).T))
        image.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(image, str(nifti))
        rows = []
        for path in args.paths:
            best: dict[str, dict] = {}
            for _ in range(args.repeats):
                for mode in ("predictor", "plain"):
                    r = spawn(mode, path, nifti, Path(tmp) / "out", args.device, args.roi3d)
                    if mode not in best or r["seconds"] < best[mode]["seconds"]:
                        best[mode] = r
            rows.append(best)
    print(f"settings of configs/inference.json (both sides): {rows[0]['plain']['settings']}")
    print(f"\n{'path':<30}{'seconds':>9}{'CPU s':>8}{'network s':>11}{'outside':>9}{'peak RSS MB':>13}{'RSS +MB':>9}"
          f"{'CUDA MB':>9}")
    for best in rows:
        for mode in ("predictor", "plain"):
            r = best[mode]
            name = f"{r['path']} {'slice-wise' if r['path'] == '2d' else 'sliding window'} {mode}"
            cuda = "-" if r["cuda_peak_mb"] is None else f"{r['cuda_peak_mb']:.0f}"
            print(f"{name:<30}{r['seconds']:>9.2f}{r['cpu_s']:>8.1f}{r['network_s']:>11.2f}{r['outside_share']:>9.0%}"
                  f"{r['peak_rss_mb']:>13.0f}{r['rss_over_start_mb']:>9.0f}{cuda:>9}")
        p, q = best["predictor"], best["plain"]
        seen = f", network input {q['network_input']}" if PATHS[p["path"]] is not None else ""
        print(f"  {p['path']} end-to-end / plain sliding_window_inference: {p['seconds'] / q['seconds']:.2f}x "
              f"(CPU time {p['cpu_s'] / q['cpu_s']:.2f}x; predictor timings {p['timings_s']}{seen})")
        # both run the same network work; on a shared machine its time swings between processes, so also
        # put each side's time outside the network on the plain call's network time
        outside_p, outside_q = p["seconds"] - p["network_s"], q["seconds"] - q["network_s"]
        print(f"  {p['path']} outside the network: predictor {outside_p:.2f} s, plain {outside_q:.2f} s; on the plain "
              f"call's network time: {(q['network_s'] + outside_p) / (q['network_s'] + outside_q):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
