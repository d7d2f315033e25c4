"""Recipe benchmark: the project's training recipe vs single-task MONAI baselines at the same wall-clock budget.

    .venv/bin/python Testing/benchmarks/bench_recipe.py [--sets synthetic brain-mri ultrasound 3d | all]
                     [--budget-min 6] [--budget-3d-min 7.5 | --defaults] [--seeds 0 1 2] [--device auto|cpu|cuda]
                     [--out FILE.json] [--cache DIR] [--work DIR] [--keep] [--quick]

For every built-in set, per seed, three models train for the same wall-clock minutes
(``--budget-min``; 6 min = 12 CPU-minutes on 2 cores), each in its own process:

* ``project``: the bundle with its default configs (the plan decides input size, widths, batch,
  normalisation, augmentation), in a copy of the bundle in a work folder, through
  ``python -m monai.bundle run training --config_file COPY/configs/train.json --datalist_file P/datalist.json
  --time_budget_min M --max_epochs 1000 --seed S`` (3D: ``+ train_3d.json``, ``--budget-3d-min``);
  with ``--defaults``, ``... --seed S`` alone: the plan's own epochs and time ceiling, which is what a
  user's run gives (on 2 CPU cores 15-50 minutes), and the baselines of that seed get the wall minutes
  the project's training took;
* ``unet``: ``monai.networks.nets.UNet`` (16-32-64-128-256, strides 2, 2 residual units), segmentation
  only, DiceCE; ``densenet``: ``monai.networks.nets.DenseNet121`` (2D, random init), diagnosis only,
  CE (``recipe_baselines.py``). Both take the input size / 3D patch, normalisation, 3D spacing and
  orientation from the project's model card (its plan) of the same seed, the same datalist, random
  flips, AdamW + cosine over the budget, and keep their best validation epoch. The 3D row has the
  project and a 3D UNet only.

Everything is then evaluated as a user would get it, on the test split at each image's original
resolution: the project through the CLI ``python -m scripts.infer <test images> --out DIR --bundle COPY``
(model card, temperature and all), scoring the label maps it writes against the ground-truth masks;
the baselines by their own forward pass resized back to the image. Printed per set and method (mean
± std over seeds): lesion Dice (over test images with a lesion), accuracy, balanced accuracy, ECE
(MONAI ``CalibrationErrorMetric`` via ``scripts.train.calibration``), contradiction rate of the two heads
(``scripts.train.metrics.contradictions``, project only), median ms per image at inference (read,
normalise, network, back to the image's size; the project's from its result JSON, writing not
counted), epochs reached in the budget and seconds per epoch (validation included), then ratios
project / baseline of the means. A markdown table is printed and every figure written to ``--out``.

Sets (generated and prepared into ``--cache``, default ``monai_bundle/data/bench``, on first use):
``synthetic`` (``scripts.datasets.synthetic.ensure_dataset``), ``brain-mri`` (``python -m scripts.datasets
brain-mri`` -> ``prepare brisc``), ``ultrasound`` (``... ultrasound`` -> ``prepare busi``; skipped
with a note while that generator does not exist), ``3d`` (``... brain-mri-3d`` -> ``prepare msd``).
``--quick``: tiny sets, 0.3 min budgets, seed 0 -- a smoke run of the whole path, not figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BUNDLE = REPO / "monai_bundle"
sys.path.insert(0, str(BUNDLE))
sys.path.insert(0, str(HERE))
PY = sys.executable

ALL_SETS = ("synthetic", "brain-mri", "ultrasound", "3d")
DEFAULT_SETS = ("synthetic", "brain-mri", "ultrasound")
#: generator subcommand, prepare adapter, extra prepare options, layout (for the table)
REAL_SETS = {
    "brain-mri": ("brain-mri", "brisc", [], "BRISC 2025 layout"),
    "ultrasound": ("ultrasound", "busi", ["--regroup-duplicates"], "BUSI layout"),
    "3d": ("brain-mri-3d", "msd", ["--classes-csv", "{raw}/classes.csv"], "MSD layout"),
}
#: generator options of the full run (the rest: the generator's defaults) and of --quick; an option the
#: generator does not list in its --help is left out
GEN_ARGS = {"3d": {"--n": 40}}
QUICK_GEN_ARGS = {"brain-mri": {"--n-train": 40, "--n-test": 16, "--size": 128},
                  "ultrasound": {"--n": 60, "--n-train": 40, "--n-test": 16, "--size": 128},
                  "3d": {"--n": 16}}
QUICK_SYNTHETIC = {"n_train": 48, "n_val": 16, "n_test": 16, "size": 64}
QUICK_BUDGET_MIN = 0.3
METHOD_NAMES = {"project": "project (MultiTaskUNet, default recipe)", "unet": "MONAI UNet (segmentation only)",
                "densenet": "MONAI DenseNet121 (diagnosis only)"}
RASTER = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class Unavailable(Exception):
    """A set cannot be built here (e.g. its generator does not exist yet)."""


def log(msg: str) -> None:
    print(msg, flush=True)


def bundle_env(device: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(BUNDLE), str(HERE)]), PYTHONUNBUFFERED="1")
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run(cmd: list[str], cwd: Path, log_file: Path, env: dict[str, str]) -> float:
    """Run ``cmd`` with its output in ``log_file``; seconds taken. Raises RuntimeError with the log's tail."""
    t0 = time.perf_counter()
    with open(log_file, "w", encoding="utf-8") as f:
        done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = log_file.read_text(encoding="utf-8", errors="replace").splitlines()[-25:]
        raise RuntimeError(f"exit {done.returncode}: {' '.join(map(str, cmd))[:300]}\n  " + "\n  ".join(tail))
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------ the data sets


def generator_version(sub: str) -> int | None:
    """``GENERATOR_VERSION`` of a generator's module, read from its source (the bundle is not imported
    here), so that a set made by an older generator is built again; None when there is none."""
    source = BUNDLE / "scripts" / "datasets" / f"{sub.replace('-', '_')}.py"
    try:
        found = re.search(r"^GENERATOR_VERSION = (\d+)", source.read_text(encoding="utf-8"), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) if found else None


def generator_help(sub: str, env: dict[str, str]) -> str | None:
    """``python -m scripts.datasets SUB --help``, or None when there is no such generator."""
    done = subprocess.run([PY, "-m", "scripts.datasets", sub, "--help"], cwd=BUNDLE, env=env, capture_output=True,
                          text=True, check=False)
    return done.stdout if done.returncode == 0 else None


def prepare_set(name: str, cache: Path, quick: bool, env: dict[str, str]) -> Path:
    """The datalist of a built-in set, generated and prepared under ``cache`` when missing."""
    if name == "synthetic":
        from scripts.datasets.synthetic import ensure_dataset

        return Path(ensure_dataset(cache / "synthetic", seed=0, **(QUICK_SYNTHETIC if quick else {})))
    sub, adapter, extra, _ = REAL_SETS[name]
    folder = cache / name
    raw, prepared = folder / "raw", folder / "prepared"
    datalist, stamp_file = prepared / "datalist.json", folder / "bench_params.json"
    wanted = (QUICK_GEN_ARGS if quick else GEN_ARGS).get(name, {})
    stamp = {"generator": sub, "version": generator_version(sub), "options": wanted, "prepare": adapter,
             "prepare_options": extra}
    current = stamp_file.is_file() and json.loads(stamp_file.read_text(encoding="utf-8")) == stamp
    if datalist.is_file() and current:
        return datalist
    folder.mkdir(parents=True, exist_ok=True)
    if not current:  # made with other options: build again
        for old in (raw, prepared):
            shutil.rmtree(old, ignore_errors=True)
    if not (raw.is_dir() and (raw / "generator.json").is_file()):
        text = generator_help(sub, env)
        if text is None:
            raise Unavailable(f"no generator 'python -m scripts.datasets {sub}' in this tree yet")
        args = [str(a) for k, v in wanted.items() if f"{k} " in text for a in (k, v)]
        if raw.exists():
            shutil.rmtree(raw)
        log(f"[{name}] generating: python -m scripts.datasets {sub} --out {raw} {' '.join(args)}")
        secs = run([PY, "-m", "scripts.datasets", sub, "--out", raw, "--quiet", *args], BUNDLE, folder / "generate.log", env)
        log(f"[{name}] generated in {secs:.0f} s")
    opts = [o.format(raw=raw) for o in extra]
    shutil.rmtree(prepared, ignore_errors=True)
    run([PY, "-m", "scripts.prepare", adapter, raw, "--out", prepared, *opts], BUNDLE, folder / "prepare.log", env)
    stamp_file.write_text(json.dumps(stamp) + "\n", encoding="utf-8")
    log(f"[{name}] prepared: python -m scripts.prepare {adapter} {raw} --out {prepared} {' '.join(opts)}")
    return datalist


# ------------------------------------------------------------------------------------ reading maps


def read_array(path: str | Path) -> np.ndarray:
    """An image file as SimpleITK orders it, channels first: ``(C, H, W)`` / ``(C, Z, Y, X)``."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(image)
    return np.moveaxis(arr, -1, 0) if image.GetNumberOfComponentsPerPixel() > 1 else arr[None]


def read_mask(path: str | Path, n_segments: int) -> np.ndarray:
    from scripts.core.transforms import map_mask_values

    return map_mask_values(read_array(path), n_segments, str(path))[0]


# ------------------------------------------------------------------------------------------ scoring


def score(test: list[dict], gts: list[np.ndarray | None], labels: list[np.ndarray] | None, probs: np.ndarray | None,
          classes: list[str], segments: list[str]) -> dict[str, Any]:
    """The figures of one model on the test split; a head the model lacks (None) is not scored."""
    from scripts.train.calibration import ece_floor, expected_calibration_error
    from scripts.train.metrics import MetricsAccumulator

    acc = MetricsAccumulator(classes, segments)
    uniform = np.full(len(classes), 1.0 / len(classes))
    for i, sample in enumerate(test):
        gt = gts[i]
        pred = labels[i] if labels is not None else np.zeros((1, 1), np.uint8)
        has_seg = labels is not None and gt is not None
        if has_seg and pred.shape != gt.shape:
            raise ValueError(f"{sample['image']}: predicted map {pred.shape} differs from the mask {gt.shape}")
        truth = gt if has_seg else np.zeros_like(pred)
        cls = sample.get("class")
        has_cls = probs is not None and cls is not None and cls >= 0
        acc.update(pred[None], truth[None], np.array([float(has_seg)]), (probs[i] if probs is not None else uniform)[None],
                   np.array([cls if has_cls else -1]), np.array([float(has_cls)]), ids=[str(i)])
    m = acc.compute()
    st = acc.state()
    scored = st["scored"].astype(bool)
    out: dict[str, Any] = {}
    if labels is not None:
        les, empty = m["seg"]["lesion"], m["seg"]["empty_masks"]
        out.update(dice=les["dice"], iou=les["iou"], n_lesion_images=les["n_images"],
                   empty_masks_predicted_empty=empty["specificity"], n_empty_masks=empty["n_images"])
    if probs is not None:
        out.update(accuracy=m["cls"]["accuracy"], balanced_accuracy=m["cls"]["balanced_accuracy"],
                   auc_macro=m["cls"]["auc_macro"], n_classified=int(scored.sum()),
                   ece=expected_calibration_error(st["cls_prob"][scored], st["cls_true"][scored]),
                   ece_floor=ece_floor(st["cls_prob"][scored]))
    if labels is not None and probs is not None:
        out["contradiction_rate"] = m["consistency"]["rate"]
        out["contradictions"] = {k: m["consistency"][k] for k in ("tumor_free_with_lesion", "tumor_without_lesion", "n_images")}
    return out


# ------------------------------------------------------------------------------------------- runs


def copy_bundle(dest: Path) -> Path:
    shutil.copytree(BUNDLE, dest, ignore=shutil.ignore_patterns("models", "data", "eval", "runs", "__pycache__"))
    return dest


def run_project(datalist: Path, test: list[dict], dims: int, seed: int, budget: float | None, run_dir: Path, device: str,
                env: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any], list, np.ndarray]:
    """Train the bundle (a copy) and infer the test split with the CLI; ``(info, card, label maps, probs)``.

    ``budget`` None: the defaults (the plan's epochs and time ceiling), nothing overridden but the seed.
    """
    bundle = copy_bundle(run_dir / "bundle")
    configs = [bundle / "configs" / "train.json"] + ([bundle / "configs" / "train_3d.json"] if dims == 3 else [])
    config = str(configs[0]) if len(configs) == 1 else "[" + ",".join(f"'{c}'" for c in configs) + "]"
    fixed = [] if budget is None else ["--time_budget_min", budget, "--max_epochs", 1000]
    train_s = run([PY, "-m", "monai.bundle", "run", "training", "--config_file", config, "--datalist_file", datalist,
                   *fixed, "--seed", seed], run_dir, run_dir / "train.log", env)
    models = bundle / "models"
    history = json.loads((models / "history.json").read_text(encoding="utf-8"))
    card = json.loads((models / "model_card.json").read_text(encoding="utf-8"))
    images = []
    for s in test:
        if isinstance(s["image"], (list, tuple)):
            raise ValueError("multi-file (one file per channel) test images: the CLI takes one file per study")
        images.append(str(s["image"]))
    out_dir = run_dir / "infer"
    infer_s = run([PY, "-m", "scripts.infer", *images, "--out", out_dir, "--bundle", bundle, "--no-overlay",
                   "--progress", "--device", device], run_dir, run_dir / "infer.log", env)
    results = {}
    for f in out_dir.glob("*_result.json"):
        r = json.loads(f.read_text(encoding="utf-8"))
        results[str(Path(r["input"]).resolve())] = r
    labels, probs, ms = [], [], []
    for path in images:
        r = results[str(Path(path).resolve())]
        seg = Path(r["segmentation"]["path"])
        # the CLI's default format: PNG (0/255 for one segment) for PNG/JPG input, NIfTI otherwise
        labels.append(read_mask(seg if seg.is_absolute() else run_dir / seg, len(card["segments"])))
        probs.append([r["diagnosis"]["probabilities"][c] for c in card["classes"]])
        ms.append(1000 * (r["timings_s"]["load"] + r["timings_s"]["infer"]))
    scores = [h.get("val_score") for h in history]
    best = int(np.nanargmax([s if s is not None else np.nan for s in scores])) + 1 if any(s is not None for s in scores) else None
    info = {"epochs": len(history), "best_epoch": best, "trained_s": round(sum(h["seconds"] for h in history), 2),
            "seconds_per_epoch": float(np.mean([h["seconds"] for h in history])), "train_process_s": round(train_s, 1),
            "infer_process_s": round(infer_s, 1), "ms_per_image": ms, "temperature": card.get("temperature"),
            "spatial_size": card["spatial_size"], "network_channels": card["network"].get("channels"),
            "normalization": card.get("normalization"), "batch_size": (card.get("plan") or {}).get("batch_size")}
    probs = np.asarray(probs, dtype=np.float64)  # the result JSON rounds them to 4 decimals
    return info, card, labels, probs / probs.sum(axis=1, keepdims=True)


def run_baseline(kind: str, datalist: Path, card: dict, seed: int, budget: float, run_dir: Path, device: str,
                 lr: float, env: dict[str, str]) -> tuple[dict[str, Any], list | None, np.ndarray | None]:
    """One baseline in its own process (``recipe_baselines.run_worker``); ``(info, label maps, probs)``."""
    import torch

    plan = card.get("plan") or {}
    dims = int(card["network"]["spatial_dims"])
    spec = {"kind": kind, "datalist": str(datalist), "spatial_dims": dims, "spatial_size": card["spatial_size"],
            "normalization": card.get("normalization"), "in_channels": int(card["network"]["in_channels"]),
            "n_segments": len(card["segments"]), "n_classes": len(card["classes"]),
            "target_spacing": plan.get("target_spacing") if dims == 3 else None,
            "orientation": plan.get("orientation") if dims == 3 else None,
            "batch_size": plan.get("batch_size") or (16 if dims == 2 else 2),
            "val_batch_size": plan.get("val_batch_size") or (16 if dims == 2 else 1),
            "budget_min": budget, "max_epochs": 1000, "seed": seed, "learning_rate": lr, "weight_decay": 1e-4,
            "device": "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu", "out_dir": str(run_dir)}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
    process_s = run([PY, __file__, "--worker", run_dir / "spec.json"], run_dir, run_dir / "worker.log", env)
    info = json.loads((run_dir / "result.json").read_text(encoding="utf-8"))
    info["process_s"] = round(process_s, 1)
    info.pop("history", None)
    preds = np.load(run_dir / "preds.npz")
    n = len(info["images"])
    labels = [preds[f"label_{i}"] for i in range(n)] if kind == "unet" else None
    probs = preds["probs"] if "probs" in preds else None
    return info, labels, probs


# ----------------------------------------------------------------------------------------- report

FIGURES = ("dice", "accuracy", "balanced_accuracy", "ece", "contradiction_rate", "ms_per_image", "epochs",
           "seconds_per_epoch")
HEADERS = ("lesion Dice", "accuracy", "bal. accuracy", "ECE", "contradictions", "ms/image", "epochs", "s/epoch")


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean and sample std over seeds of every figure (runs that failed are left out)."""
    out = {}
    for key in FIGURES:
        values = [r[key] for r in runs if "error" not in r and r.get(key) is not None]
        out[key] = {"mean": float(np.mean(values)) if values else None,
                    "std": float(np.std(values, ddof=1)) if len(values) > 1 else (0.0 if values else None),
                    "n": len(values)}
    return out


def ratios(summary: dict[str, dict]) -> dict[str, float | None]:
    """Project / baseline of the means: Dice vs UNet, diagnosis figures vs DenseNet121, ms vs both together."""
    def mean(method: str, key: str) -> float | None:
        return (summary.get(method) or {}).get(key, {}).get("mean")

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    base_ms = [m for m in (mean("unet", "ms_per_image"), mean("densenet", "ms_per_image")) if m is not None]
    return {"dice": div(mean("project", "dice"), mean("unet", "dice")),
            "accuracy": div(mean("project", "accuracy"), mean("densenet", "accuracy")),
            "balanced_accuracy": div(mean("project", "balanced_accuracy"), mean("densenet", "balanced_accuracy")),
            "ece": div(mean("project", "ece"), mean("densenet", "ece")),
            "ms_per_image": div(mean("project", "ms_per_image"), sum(base_ms) if base_ms else None),
            "seconds_per_epoch_vs_unet": div(mean("project", "seconds_per_epoch"), mean("unet", "seconds_per_epoch"))}


def cell(fig: dict | None, key: str) -> str:
    if not fig or fig.get("mean") is None:
        return "-"
    digits = {"ms_per_image": 0, "epochs": 1, "seconds_per_epoch": 1}.get(key, 3)
    text = f"{fig['mean']:.{digits}f}"
    return text + (f" ± {fig['std']:.{digits}f}" if fig["n"] > 1 else "")


def markdown(results: dict[str, Any]) -> str:
    cfg = results["config"]
    budget = ("the defaults: the plan's epochs and time ceiling for the project, the project's training minutes of "
              "the same seed for the baselines" if cfg.get("defaults") else
              f"budget {cfg['budget_min']:g} wall min per 2D model run, {cfg['budget_3d_min']:g} per 3D run "
              f"(x {cfg['cpu_count']} cores = {cfg['budget_min'] * cfg['cpu_count']:g} / "
              f"{cfg['budget_3d_min'] * cfg['cpu_count']:g} CPU-min)")
    lines = [f"Recipe benchmark{' (QUICK SMOKE RUN: tiny sets, not figures)' if cfg['quick'] else ''}: "
             f"seeds {cfg['seeds']}, {budget}, device {cfg['device']}, "
             f"torch {cfg['torch']}, load average {cfg['load_average_start']} at start"]
    for name, res in results["sets"].items():
        lines.append("")
        if "error" in res:
            lines.append(f"### {name}: not run ({res['error']})")
            continue
        minutes = [r["budget_min"] for r in res["runs"].get("project", []) if r.get("budget_min") is not None]
        spent = f"; project training {', '.join(f'{m:.1f}' for m in minutes)} min by seed" if cfg.get("defaults") and minutes else ""
        lines.append(f"### {name} ({res['layout']}): {res['n_test']} test images, {res['n_lesion']} with a lesion, "
                     f"{res['n_classified']} with a class{spent}")
        lines.append("")
        lines.append("| method | " + " | ".join(HEADERS) + " |")
        lines.append("| --- |" + " ---: |" * len(HEADERS))
        for method, summary in res["summary"].items():
            failed = [r for r in res["runs"][method] if "error" in r]
            note = f" ({len(failed)} run(s) failed)" if failed else ""
            lines.append(f"| {METHOD_NAMES[method]}{note} | " + " | ".join(cell(summary.get(k), k) for k in FIGURES) + " |")
        r = res["ratios"]
        fmt = lambda key, vs: "-" if r[key] is None else f"{r[key]:.2f}x ({vs})"  # noqa: E731
        both = "UNet + DenseNet" if "densenet" in res["summary"] else "UNet"
        lines.append(f"| ratio project / baseline | {fmt('dice', 'UNet')} | {fmt('accuracy', 'DenseNet')} | "
                     f"{fmt('balanced_accuracy', 'DenseNet')} | {fmt('ece', 'DenseNet')} | - | "
                     f"{fmt('ms_per_image', both)} | - | {fmt('seconds_per_epoch_vs_unet', 'UNet')} |")
        floors = [r["ece_floor"] for r in res["runs"].get("project", []) if r.get("ece_floor") is not None]
        if floors:
            lines.append(f"- ECE floor: perfectly calibrated probabilities would show an ECE of {np.mean(floors):.3f} on "
                         f"these {res['n_classified']} images (the project's probabilities against classes drawn from "
                         "themselves, mean over seeds); an ECE near it cannot be told from perfect calibration")
        for method, runs in res["runs"].items():
            for run_ in runs:
                if "error" in run_:
                    lines.append(f"- {method} seed {run_['seed']} FAILED: {run_['error'].splitlines()[0][:200]}")
    return "\n".join(lines)


def bench_set(name: str, args: argparse.Namespace, work: Path, env: dict[str, str]) -> dict[str, Any]:
    from scripts.core.datalist import load_datalist

    datalist = prepare_set(name, args.cache, args.quick, env)
    dl = load_datalist(datalist)
    test = dl.split("test")
    if not test:
        raise Unavailable(f"{datalist} has no test split")
    gts = [read_mask(s["label"], len(dl.segments)) if s.get("label") else None for s in test]
    budget = None if args.defaults else args.budget_3d_min if name == "3d" else args.budget_min
    methods = ["project", "unet"] + ([] if name == "3d" else ["densenet"])
    runs: dict[str, list] = {m: [] for m in methods}
    for seed in args.seeds:
        base = work / name / f"seed{seed}"
        base.mkdir(parents=True, exist_ok=True)
        card, seed_budget = None, budget
        for method in methods:
            t0 = time.perf_counter()
            record: dict[str, Any] = {"seed": seed}
            try:
                if method == "project":
                    info, card, labels, probs = run_project(datalist, test, dl.spatial_dims, seed, budget,
                                                            base / "project", args.device, env)
                    if budget is None:  # --defaults: the baselines get the minutes the project's training took
                        seed_budget = round(info["train_process_s"] / 60, 2)
                else:
                    if card is None:
                        raise RuntimeError("the project run of this seed failed: no model card to take sizes from")
                    info, labels, probs = run_baseline(method, datalist, card, seed, seed_budget, base / method,
                                                       args.device, args.baseline_lr, env)
                info["budget_min"] = seed_budget
                ms = info.pop("ms_per_image")
                record.update(score(test, gts, labels, probs, dl.classes, dl.segments), **info,
                              ms_per_image=float(np.median(ms)), ms_per_image_mean=float(np.mean(ms)))
            except Exception as e:  # noqa: BLE001 - one failed run must not lose the others
                record["error"] = f"{type(e).__name__}: {e}"
            record["wall_s"] = round(time.perf_counter() - t0, 1)
            runs[method].append(record)
            brief = ", ".join(f"{k} {record[k]:.3f}" for k in ("dice", "accuracy", "ece") if record.get(k) is not None)
            log(f"[{name} seed {seed}] {method}: " + (record["error"].splitlines()[0][:300] if "error" in record else
                f"{record['epochs']} epochs, {brief}, {record['ms_per_image']:.0f} ms/image ({record['wall_s']:.0f} s)"))
    summary = {m: summarise(r) for m, r in runs.items()}
    return {"datalist": str(datalist), "layout": REAL_SETS[name][3] if name in REAL_SETS else "built-in synthetic",
            "spatial_dims": dl.spatial_dims, "classes": dl.classes, "segments": dl.segments,
            "n_train": len(dl.split("training")), "n_val": len(dl.split("validation")), "n_test": len(test),
            "n_lesion": int(sum(g is not None and bool(g.any()) for g in gts)),
            "n_classified": int(sum(s.get("class") is not None and s.get("class", -1) >= 0 for s in test)),
            "budget_min": budget, "runs": runs, "summary": summary, "ratios": ratios(summary)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", choices=[*ALL_SETS, "all"], default=list(DEFAULT_SETS),
                    help="built-in sets (default: the 2D ones; 'all' adds 3d)")
    ap.add_argument("--budget-min", type=float, help="wall minutes per 2D model run (default 6 = 12 CPU-min on 2 cores)")
    ap.add_argument("--budget-3d-min", type=float, help="wall minutes per 3D model run (default 7.5 = 15 CPU-min on 2 cores)")
    ap.add_argument("--defaults", action="store_true",
                    help="train the project with its plan's own epochs and time ceiling, as a user's run; each "
                         "baseline gets the wall minutes the project's training of its seed took")
    ap.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda (cpu hides the GPU from every run)")
    ap.add_argument("--baseline-lr", type=float, default=1e-3, help="AdamW learning rate of the baselines")
    ap.add_argument("--out", type=Path, help="JSON of all figures (default Testing/artifacts/bench_recipe[_quick].json)")
    ap.add_argument("--cache", type=Path, help="where the sets are generated (default monai_bundle/data/bench[/quick])")
    ap.add_argument("--work", type=Path, help="work folder of the runs (default: a temporary one, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (bundle copies, logs, predictions)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny sets, 0.3 min budgets, seed 0")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        from recipe_baselines import run_worker

        return run_worker(args.worker)
    import torch

    args.sets = list(ALL_SETS) if "all" in args.sets else list(dict.fromkeys(args.sets))
    args.budget_min = args.budget_min or (QUICK_BUDGET_MIN if args.quick else 6.0)
    args.budget_3d_min = args.budget_3d_min or (QUICK_BUDGET_MIN if args.quick else 7.5)
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.cache = args.cache or (BUNDLE / "data" / "bench" / ("quick" if args.quick else ""))
    args.out = args.out or REPO / "Testing" / "artifacts" / f"bench_recipe{'_quick' if args.quick else ''}.json"
    env = bundle_env(args.device)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_recipe_"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"config": {
        "quick": args.quick, "sets": args.sets, "seeds": args.seeds, "budget_min": args.budget_min,
        "budget_3d_min": args.budget_3d_min, "defaults": args.defaults, "device": args.device, "cuda": torch.cuda.is_available(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "baseline_lr": args.baseline_lr, "cache": str(args.cache), "work": str(work),
        "started": time.strftime("%Y-%m-%d %H:%M:%S")}, "sets": {}}
    log(f"recipe benchmark: sets {args.sets}, seeds {args.seeds}, "
        + ("the defaults (baselines: the project's minutes), " if args.defaults else
           f"budget {args.budget_min} min (3D {args.budget_3d_min}), ")
        + f"cache {args.cache}, work {work}")
    t0 = time.perf_counter()
    try:
        for name in args.sets:
            try:
                results["sets"][name] = bench_set(name, args, work, env)
            except Unavailable as e:
                log(f"[{name}] skipped: {e}")
                results["sets"][name] = {"error": f"skipped: {e}"}
            except Exception as e:  # noqa: BLE001 - the next set still runs
                log(f"[{name}] FAILED: {type(e).__name__}: {e}")
                results["sets"][name] = {"error": f"{type(e).__name__}: {e}"}
    finally:
        results["config"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        results["config"]["total_s"] = round(time.perf_counter() - t0, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
        if not (args.keep or args.work):
            shutil.rmtree(work, ignore_errors=True)
    log("")
    log(markdown(results))
    log(f"\nall figures: {args.out} ({results['config']['total_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
