"""3D training epochs before / after canonical grids, foreground crops and the persistent cache, side by side.

    .venv/bin/python Testing/benchmarks/bench_epoch_3d.py [--epochs 2] [--train 16] [--val 4]
                                                         [--data DIR | --datalist FILE] [--only before|after|stem]
                                                         [--threads 2] [--val-overlap 0]

The data (unless ``--datalist`` names a prepared 3D datalist): MNI152-sized heads at about 1 mm,
made from nilearn's packaged MNI152 template (``load_mni152_template(resolution=1)``, 197 x 233 x
189, nothing downloaded): per case a small random affine and intensity change, a 8-18 mm lesion
(two diagnosis classes that look different), Rician background noise, and the mix of the issue --
half the cases at 1 mm isotropic, half resliced to 0.9 x 0.9 x 3 mm, stored RAS, LPS, left-handed
LAS or oblique. Written once under ``--data`` (default ``Testing/artifacts/bench_epoch_3d_data``).

Each configuration trains ``--epochs`` epochs in its own fresh process, with the bundle's
``configs/train.json`` + ``configs/train_3d.json`` and the same network (widths 16-32-64-128),
patch (64 x 64 x 32), batch (2) and validation split:

* ``before``: what train_3d.json did before: volumes on their stored grid (``target_spacing``
  None, no foreground crop), in-memory ``CacheDataset``, validation sliding over whole volumes with
  2 windows per batch, overlap 0.25.
* ``after``: the defaults now: every volume cropped to its foreground and resampled to RAS at the
  median spacing of the training split, kept in the persistent cache, validation on those volumes
  with train_3d.json's ``sw_batch_size`` (2 windows per batch on the CPU, 4 on CUDA) and
  ``val_overlap`` (0; ``--val-overlap`` sets it for both configurations). It runs
  twice: with an empty cache (epoch 1 pre-processes) and again in a new process with the cache
  filled (what a resumed or repeated run sees).
* ``stem``: ``after`` (cache filled) with the network the CPU plan picks now: the U-Net's first
  convolution strided (``stem_stride`` 2, a one-layer last up-step) and widths 16-32-64 (the
  plan's levels for the 32 x 32 x 16 first level).

Prints per configuration: set-up seconds (config, datalist check, ``CacheDataset`` filling),
wall seconds of each epoch (training + validation, from the trainer's EPOCH_STARTED to the end of
its EPOCH_COMPLETED handlers) and of its validation, the process's CPU seconds in the epoch (both
cores busy: about twice the wall time; less means other processes took cores), windows validated,
and the before / after ratio of the steady epoch. A timing, not a test: run it on an otherwise idle
machine (the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "monai_bundle"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_worker import run_json_worker  # noqa: E402
CONFIGS = [str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "train_3d.json")]
DATA_VERSION = 1
CLASSES = ["HGG", "LGG"]
#: storage of the cases, cycled: (name, ITK direction, spacing mm)
_RAS = np.diag([-1.0, -1.0, 1.0])


def _rotation(z_deg: float, x_deg: float) -> np.ndarray:
    a, b = np.radians(z_deg), np.radians(x_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


STORAGE = [
    ("ras_1mm", _RAS, (1.0, 1.0, 1.0)),
    ("lps_0.9x0.9x3mm", np.eye(3), (0.9, 0.9, 3.0)),
    ("las_1mm", np.diag([1.0, -1.0, 1.0]) @ _RAS, (1.0, 1.0, 1.0)),
    ("oblique_0.9x0.9x3mm", _RAS @ _rotation(15, 8), (0.9, 0.9, 3.0)),
    ("lps_1mm", np.eye(3), (1.0, 1.0, 1.0)),
    ("ras_0.9x0.9x3mm", _RAS, (0.9, 0.9, 3.0)),
    ("oblique_1mm", _RAS @ _rotation(-12, 6), (1.0, 1.0, 1.0)),
    ("las_0.9x0.9x3mm", np.diag([1.0, -1.0, 1.0]) @ _RAS, (0.9, 0.9, 3.0)),
]


# ------------------------------------------------------------------ data


def _reslice(image, direction: np.ndarray, spacing, interpolator, transform=None):
    """``image`` resampled onto a grid of ``direction`` / ``spacing`` covering its field of view."""
    import SimpleITK as sitk

    size = np.asarray(image.GetSize())
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint([float(a), float(b), float(c)])
                        for a in (-0.5, size[0] - 0.5) for b in (-0.5, size[1] - 0.5) for c in (-0.5, size[2] - 0.5)])
    along = corners @ direction
    low, high = along.min(axis=0), along.max(axis=0)
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputSpacing(tuple(float(s) for s in spacing))
    resampler.SetSize([int(n) for n in np.maximum(1, np.round((high - low) / spacing))])
    resampler.SetOutputDirection(tuple(direction.ravel()))
    resampler.SetOutputOrigin(tuple(direction @ (low + np.asarray(spacing) / 2)))
    resampler.SetInterpolator(interpolator)
    if transform is not None:
        resampler.SetTransform(transform)
    return resampler.Execute(image)


def _case(template, brain: np.ndarray, index: int, label: int, rng: np.random.Generator):
    """One case on the template's 1 mm grid: (image, mask) SimpleITK images (RAS-stored, LPS direction)."""
    import SimpleITK as sitk

    shape = brain.shape
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    inside = np.argwhere(brain)
    radii = rng.uniform(8, 18, 3)
    while True:  # a lesion centre well inside the brain
        centre = inside[rng.integers(len(inside))].astype(np.float32)
        lo, hi = np.maximum(centre - radii, 0).astype(int), np.minimum(centre + radii, np.asarray(shape) - 1).astype(int)
        if brain[tuple(lo)] and brain[tuple(hi)] and brain[lo[0], hi[1], lo[2]] and brain[hi[0], lo[1], hi[2]]:
            break
    r = sum(((g - c) / rad) ** 2 for g, c, rad in zip(grids, centre, radii))
    mask = r < 1.0
    image = template * rng.uniform(0.85, 1.15)
    if label == 0:  # HGG: enhancing rim around a dark core
        image[mask] = np.where(r[mask] > 0.55, 1400.0, 350.0) + rng.normal(0, 40, int(mask.sum()))
    else:  # LGG: homogeneous, mildly bright
        image[mask] = 1050.0 + rng.normal(0, 30, int(mask.sum()))
    del grids, r
    img = sitk.GetImageFromArray(np.ascontiguousarray(image.T.astype(np.float32)))
    seg = sitk.GetImageFromArray(np.ascontiguousarray(mask.T.astype(np.uint8)))
    for im in (img, seg):
        im.SetSpacing((1.0, 1.0, 1.0))
        im.SetOrigin((98.0, 134.0, -72.0))  # LPS of the template's RAS origin (-98, -134, -72)
        im.SetDirection(tuple(_RAS.ravel()))
    # a small pose change per case (same for image and mask)
    pose = sitk.AffineTransform(3)
    pose.SetCenter(img.TransformContinuousIndexToPhysicalPoint([n / 2 for n in shape]))
    pose.SetMatrix(tuple((_rotation(rng.uniform(-4, 4), rng.uniform(-3, 3)) @ np.diag(rng.uniform(0.95, 1.05, 3))).ravel()))
    return img, seg, pose


def make_dataset(folder: Path, n_train: int, n_val: int, seed: int = 0) -> Path:
    """Write the cases and ``datalist.json`` under ``folder`` (kept and reused when the parameters match)."""
    import SimpleITK as sitk
    from nilearn.datasets import load_mni152_template

    params = {"version": DATA_VERSION, "n_train": n_train, "n_val": n_val, "seed": seed}
    datalist = folder / "datalist.json"
    if datalist.is_file() and json.loads(datalist.read_text()).get("bench_params") == params:
        return datalist
    folder.mkdir(parents=True, exist_ok=True)
    template = np.asarray(load_mni152_template(resolution=1).get_fdata(), np.float32) * 1000.0
    brain = template > 100
    rng = np.random.default_rng(seed)
    splits: dict[str, list] = {"training": [], "validation": [], "test": []}
    start = time.perf_counter()
    for i in range(n_train + n_val):
        label = i % 2
        img, seg, pose = _case(template, brain, i, label, rng)
        name, direction, spacing = STORAGE[(i if i < n_train else i - n_train) % len(STORAGE)]
        img = _reslice(img, direction, spacing, sitk.sitkLinear, pose)
        seg = _reslice(seg, direction, spacing, sitk.sitkNearestNeighbor, pose)
        arr = sitk.GetArrayFromImage(img)
        sigma = 15.0  # Rician noise: 1.5 % of the tissue intensity, as in the air around a real head
        noisy = np.hypot(arr + rng.normal(0, sigma, arr.shape), rng.normal(0, sigma, arr.shape))
        out = sitk.GetImageFromArray(np.round(noisy).astype(np.int16))
        out.CopyInformation(img)
        stem = f"case{i:03d}_{name}"
        sitk.WriteImage(out, str(folder / f"{stem}.nii.gz"))
        sitk.WriteImage(seg, str(folder / f"{stem}_seg.nii.gz"))
        split = "training" if i < n_train else "validation"
        splits[split].append({"image": f"{stem}.nii.gz", "label": f"{stem}_seg.nii.gz", "class": label,
                              "group": f"patient-{i:03d}"})
        print(f"  case {i + 1}/{n_train + n_val} {stem}: {out.GetSize()} ({time.perf_counter() - start:.0f} s)", flush=True)
    datalist.write_text(json.dumps({"name": "bench-mni152-3d", "spatial_dims": 3, "channels": ["T1c"],
                                    "segments": ["background", "tumor"], "classes": CLASSES, **splits,
                                    "bench_params": params}, indent=1))
    return datalist


# ------------------------------------------------------------------ one configuration in this process


def overrides_for(variant: str, datalist: Path, work: Path, epochs: int) -> dict:
    """The config overrides of ``before`` / ``after`` / ``stem`` (same patch and batch; what differs is the point)."""
    common = {"datalist_file": str(datalist), "ckpt_dir": str(work / f"models_{variant}"), "max_epochs": epochs,
              "spatial_size": [64, 64, 32], "network_channels": [16, 32, 64, 128], "batch_size": 2,
              "val_batch_size": 1, "num_workers": 0, "resume": False, "early_stop_patience": 1000, "seed": 0,
              "orientation": "RAS", "stem_stride": 1}
    if variant == "before":
        def cached(split: str, chain: str) -> dict:
            return {"_target_": "CacheDataset", "data": f"$@datalist.split('{split}')", "transform": chain,
                    "cache_rate": 1.0, "num_workers": 0}
        return {**common, "target_spacing": None, "crop_foreground": False, "sw_batch_size": 2, "val_overlap": 0.25,
                "train#dataset": cached("training", "@train#preprocessing"),
                "validate#dataset": cached("validation", "@validate#preprocessing")}
    sys.path.insert(0, str(BUNDLE))
    from scripts.core.datalist import load_datalist
    from scripts.core.canonical import median_target_spacing

    spacing = median_target_spacing(load_datalist(datalist).split("training"))
    after = {**common, "target_spacing": spacing, "crop_foreground": True, "cache_dir": str(work / "cache")}
    if variant == "stem":
        return {**after, "ckpt_dir": str(work / "models_stem"), "stem_stride": 2, "network_channels": [16, 32, 64]}
    return after


def _pin_plan(config: dict, overrides: dict) -> dict:
    """Configs that default to a dataset plan: pin what the plan would decide, so both runs differ only as stated."""
    if "plan" not in config:
        return overrides
    pinned = {"plan": None, "normalization": None, "augment_strength": "medium", "time_budget_min": None}
    return {**{k: v for k, v in pinned.items() if k in config}, **overrides}


def run_here(variant: str, datalist: Path, work: Path, epochs: int, threads: int = 2,
             val_overlap: float | None = None) -> dict:
    """Train ``epochs`` epochs with the bundle config and these overrides; return the timings."""
    import torch
    from ignite.engine import Events
    from monai.bundle import ConfigParser

    torch.set_num_threads(threads)
    start = time.perf_counter()
    parser = ConfigParser()
    parser.read_meta(str(BUNDLE / "configs" / "metadata.json"))
    parser.read_config(CONFIGS)
    parser.update(_pin_plan(parser.get(), overrides_for(variant, datalist, work, epochs)))
    if val_overlap is not None:  # the validation windows' overlap (train_3d.json: 0; before: 0.25; the Predictor: 0.25)
        parser["val_overlap"] = val_overlap
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    evaluator = parser.get_parsed_content("validate#evaluator")
    epochs_s: list[float] = []
    epochs_cpu_s: list[float] = []
    val_s: list[float] = []
    marks: dict[str, float] = {}

    def epoch_started(engine) -> None:
        marks["epoch"], marks["epoch_cpu"] = time.perf_counter(), time.process_time()

    def epoch_completed(engine) -> None:
        epochs_s.append(time.perf_counter() - marks["epoch"])
        epochs_cpu_s.append(time.process_time() - marks["epoch_cpu"])

    trainer.add_event_handler(Events.EPOCH_STARTED, epoch_started)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, epoch_completed)
    evaluator.add_event_handler(Events.STARTED, lambda e: marks.__setitem__("val", time.perf_counter()))
    evaluator.add_event_handler(Events.COMPLETED, lambda e: val_s.append(time.perf_counter() - marks["val"]))
    setup = time.perf_counter() - start
    parser.get_parsed_content("run")
    from scripts.inference.engine import count_windows

    inferer = parser.get_parsed_content("validate#inferer")
    shapes = [tuple(d["image"].shape[1:]) for d in parser.get_parsed_content("validate#dataset")]
    return {"variant": variant, "setup_s": setup, "epochs_s": epochs_s, "epochs_cpu_s": epochs_cpu_s,
            "validation_s": val_s, "val_windows_per_epoch": sum(count_windows(sh, inferer.roi_size, inferer.overlap)
                                                                for sh in shapes),
            "first_val_shape": shapes[0],
            "target_spacing": overrides_for(variant, datalist, work, epochs).get("target_spacing"),
            "val_score": trainer.state.metrics.get("val_score") if trainer.state else None,
            "total_s": time.perf_counter() - start}


def spawn(variant: str, datalist: Path, work: Path, epochs: int, threads: int = 2,
          val_overlap: float | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(BUNDLE), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, __file__, "--worker", variant, "--datalist", str(datalist), "--work", str(work),
           "--epochs", str(epochs), "--threads", str(threads),
           *([] if val_overlap is None else ["--val-overlap", str(val_overlap)])]
    return run_json_worker(cmd, env, variant)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--train", type=int, default=16)
    ap.add_argument("--val", type=int, default=4)
    ap.add_argument("--data", type=Path, default=REPO / "Testing" / "artifacts" / "bench_epoch_3d_data")
    ap.add_argument("--datalist", type=Path, help="a prepared 3D datalist to use instead of the generated data")
    ap.add_argument("--only", choices=["before", "after", "stem"], help="run one configuration only (stem: fills the cache first if empty)")
    ap.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads of each run (2: both cores)")
    ap.add_argument("--val-overlap", type=float, help="overlap of the validation windows of both configurations (default: before 0.25, after train_3d.json's 0)")
    ap.add_argument("--worker", choices=["before", "after", "stem"], help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(run_here(args.worker, args.datalist, args.work, args.epochs, args.threads, args.val_overlap)))
        return 0
    import torch

    print(f"torch {torch.__version__}, cpus {os.cpu_count()}, threads per run {args.threads}, "
          f"load average {os.getloadavg()[0]:.1f}")
    datalist = args.datalist or make_dataset(args.data, args.train, args.val)
    dl = json.loads(Path(datalist).read_text())
    print(f"datalist {datalist}: {len(dl['training'])} training, {len(dl.get('validation', []))} validation volumes")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for variant in [v for v in ("before", "after", "stem") if args.only in (None, v)]:
            rows.append((variant, spawn(variant, Path(datalist), work, args.epochs, args.threads, args.val_overlap)))
            if variant == "after":
                rows.append(("after, cache filled", spawn(variant, Path(datalist), work, args.epochs, args.threads,
                                                          args.val_overlap)))
    print(f"\nload average now {os.getloadavg()[0]:.1f} (2 cores: above 2, other processes took part of the time)")
    print(f"\n{'configuration':<22}{'set-up s':>10}  {'epochs: wall s (validation s) / CPU s':<46}{'windows':>9}"
          "  first validation volume")
    for name, r in rows:
        epochs = ", ".join(f"{e:.1f} ({v:.1f}) / {c:.0f}" for e, v, c in zip(r["epochs_s"], r["validation_s"], r["epochs_cpu_s"]))
        print(f"{name:<22}{r['setup_s']:>10.1f}  {epochs:<46}{r['val_windows_per_epoch']:>9.0f}  "
              f"{'x'.join(map(str, r['first_val_shape']))}")
    found = {name: r for name, r in rows}
    if "after, cache filled" in found and "stem" in found:
        after, stem = found["after, cache filled"]["epochs_s"][-1], found["stem"]["epochs_s"][-1]
        print(f"steady epoch: after {after:.1f} s, stem {stem:.1f} s: {after / stem:.1f}x faster "
              f"(stem / after = {stem / after:.2f}); validation scores after {found['after, cache filled']['val_score']}, "
              f"stem {found['stem']['val_score']}")
    if "before" in found and "after, cache filled" in found:
        before, after = found["before"]["epochs_s"][-1], found["after, cache filled"]["epochs_s"][-1]
        print(f"\ntarget spacing (after) {found['after']['target_spacing']} mm, RAS")
        print(f"steady epoch: before {before:.1f} s, after {after:.1f} s: {before / after:.1f}x faster "
              f"(after / before = {after / before:.2f})")
        cpu_before, cpu_after = found["before"]["epochs_cpu_s"][-1], found["after, cache filled"]["epochs_cpu_s"][-1]
        print(f"steady epoch CPU time: before {cpu_before:.0f} s, after {cpu_after:.0f} s: {cpu_before / cpu_after:.1f}x less")
    return 0


if __name__ == "__main__":
    sys.exit(main())
