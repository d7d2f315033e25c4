"""Scale benchmark: studies per minute of the CLI on one process and on Ray with 1 and 2 workers, side by side.

    .venv/bin/python Testing/benchmarks/bench_scale.py [--studies 48] [--shape 128 128 64] [--device cpu]

One bundle with the default model card's 2D network (random weights: speed does not depend on
what the model learned) and ``--studies`` synthetic head volumes (NIfTI, ``--shape`` voxels, the
phantom of ``bench_inference.py``). The same batch runs through ``python -m scripts.infer`` four
times, each in a fresh process into its own output folder, with ``--progress`` so that the moment
each study finishes is seen (its ``RESULT`` line):

* ``cli 1 thread``  -- the single-process CLI, ``OMP_NUM_THREADS=1``;
* ``cli 2 threads`` -- the single-process CLI, ``OMP_NUM_THREADS=2``;
* ``ray 1 worker``  -- ``--engine ray --workers 1 --threads 1`` (a local Ray instance for the run);
* ``ray 2 workers`` -- ``--engine ray --workers 2 --threads 1``.

For each: the wall time of the whole command (start-up, model loading, Ray's cluster and actors
included), end-to-end throughput (studies / wall time), steady throughput (studies finished after
the first / time from the first to the last: the rate once every worker is up), the start-up (time
to the first study) and the per-study cost of one worker (1 / steady throughput x workers).
Then the ratios: ray 2 / ray 1 (scaling; target >= 1.6 steady), ray 2 / cli 2 threads (the whole
Ray path against the single process with both cores; target >= 1.0), the parallel headroom the
machine had before and after (two busy processes against one: the ceiling of any 2-worker speed-up
at that time), and whether the outputs of
each run equal those of ``cli 1 thread`` byte for byte (result JSONs without their timings). Last,
a sizing table: workers needed for an archive of N studies in a given time at the measured cost.
Figures on a machine shared with other jobs are contended: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BUNDLE = Path(__file__).resolve().parents[2] / "monai_bundle"
sys.path.insert(0, str(BUNDLE))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import make_volume  # noqa: E402

RUNS = {  # name -> (OMP_NUM_THREADS, extra CLI arguments, workers)
    "cli 1 thread": (1, [], 1),
    "cli 2 threads": (2, [], 1),
    "ray 1 worker": (1, ["--engine", "ray", "--workers", "1", "--threads", "1"], 1),
    "ray 2 workers": (1, ["--engine", "ray", "--workers", "2", "--threads", "1"], 2),
}
ARCHIVES = (1_000, 10_000, 100_000)  # studies, for the sizing table
WITHIN_HOURS = (24, 24 * 7)


def _spin(loops: int) -> float:
    start = time.perf_counter()
    x = 0
    for i in range(loops):
        x += i
    return time.perf_counter() - start


def parallel_headroom(loops: int = 20_000_000) -> float:
    """How much faster two CPU-bound processes get through twice the work than one through the work,
    now, on this machine: 2.0 with two free cores, 1.0 when other jobs leave room for one only. The
    ceiling of any 2-worker speed-up measured at the same time."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        pool.map(_spin, [1000, 1000])  # start both
        one = pool.apply(_spin, (loops,))
        start = time.perf_counter()
        pool.map(_spin, [loops, loops])
        two = time.perf_counter() - start
    return 2 * one / two


def make_bundle(root: Path) -> Path:
    import torch

    from scripts.core.model_card import DEFAULT_CARD, build_network

    card = json.loads(json.dumps(DEFAULT_CARD))
    card["name"], card["version"] = "ScaleBench", "0"
    torch.manual_seed(0)
    network = build_network(card)
    (root / "models").mkdir(parents=True)
    (root / "models" / "model_card.json").write_text(json.dumps(card), encoding="utf-8")
    torch.save(network.state_dict(), root / "models" / "model.pt")
    return root


def make_studies(folder: Path, count: int, shape: tuple[int, int, int]) -> None:
    import SimpleITK as sitk

    folder.mkdir(parents=True)
    for k in range(count):
        image = sitk.GetImageFromArray(np.ascontiguousarray(make_volume(shape, seed=k).T))
        image.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(image, str(folder / f"s{k:03d}.nii.gz"))


def run(name: str, studies: Path, out: Path, bundle: Path, device: str) -> dict:
    threads, extra, workers = RUNS[name]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(BUNDLE))
    cmd = [sys.executable, "-m", "scripts.infer", str(studies), "--out", str(out), "--bundle", str(bundle),
           "--device", device, "--no-overlay", "--progress", *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=BUNDLE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            encoding="utf-8")
    finished = [time.perf_counter() - start for line in proc.stdout if line.startswith("RESULT ")]
    stderr = proc.stderr.read()
    code = proc.wait()
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{name}: exit {code}\n{stderr[-2000:]}")
    n = len(finished)
    steady = (n - 1) / (finished[-1] - finished[0]) * 60 if n > 1 and finished[-1] > finished[0] else float("nan")
    return {"wall": wall, "n": n, "end_to_end": n / wall * 60, "steady": steady, "startup": finished[0],
            "cost": workers * 60 / steady}


def outputs(folder: Path) -> dict[str, bytes]:
    files = {}
    for p in sorted(folder.iterdir()):
        data = p.read_bytes()
        if p.name.endswith("_result.json"):
            result = json.loads(data)
            result.pop("timings_s", None)
            data = json.dumps(result, sort_keys=True).replace(str(folder), "OUT").encode()
        elif p.name == "worklist.csv":
            data = data.replace(str(folder).encode(), b"OUT")
        files[p.name] = data
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=48)
    ap.add_argument("--shape", type=int, nargs=3, default=[128, 128, 64], help="voxels of each study (X Y Z)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        tmp = Path(tmp)
        bundle = make_bundle(tmp / "bundle")
        make_studies(tmp / "studies", args.studies, tuple(args.shape))
        print(f"{args.studies} studies of {'x'.join(map(str, args.shape))} voxels, the default card's 2D network "
              f"(random weights), device {args.device}, {os.cpu_count()} CPUs; load average before: "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        headroom = [parallel_headroom()]
        print(f"parallel headroom before: {headroom[0]:.2f}x (two busy processes against one; 2.00 = two free cores)",
              flush=True)
        results, files = {}, {}
        for name in RUNS:
            results[name] = run(name, tmp / "studies", tmp / name.replace(" ", "-"), bundle, args.device)
            files[name] = outputs(tmp / name.replace(" ", "-"))
            r = results[name]
            print(f"  done: {name} in {r['wall']:.1f} s", flush=True)
        headroom.append(parallel_headroom())
        print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; parallel headroom after: "
              f"{headroom[1]:.2f}x\n")
        header = f"{'run':<15}{'wall s':>9}{'start-up s':>12}{'studies/min':>13}{'steady/min':>12}{'s/study/worker':>16}"
        print(header)
        for name, r in results.items():
            print(f"{name:<15}{r['wall']:>9.1f}{r['startup']:>12.1f}{r['end_to_end']:>13.1f}{r['steady']:>12.1f}"
                  f"{r['cost']:>16.2f}")
        r1, r2, c1, c2 = (results[k] for k in ("ray 1 worker", "ray 2 workers", "cli 1 thread", "cli 2 threads"))
        print()
        print(f"ray 2 workers / ray 1 worker:   steady {r2['steady'] / r1['steady']:.2f}x (target >= 1.6; the machine "
              f"allowed {min(headroom):.2f}-{max(headroom):.2f}x), end to end {r2['end_to_end'] / r1['end_to_end']:.2f}x")
        print(f"ray 2 workers / cli 2 threads:  end to end {r2['end_to_end'] / c2['end_to_end']:.2f}x (target >= 1.0), "
              f"steady {r2['steady'] / c2['steady']:.2f}x")
        print(f"cli 2 threads / cli 1 thread:   end to end {c2['end_to_end'] / c1['end_to_end']:.2f}x, "
              f"steady {c2['steady'] / c1['steady']:.2f}x")
        print(f"ray 1 worker / cli 1 thread:    steady {r1['steady'] / c1['steady']:.2f}x (the cost of Ray per study)")
        for name in RUNS:
            if name != "cli 1 thread":
                same = files[name] == files["cli 1 thread"]
                print(f"outputs of {name} {'==' if same else '!='} cli 1 thread (result JSONs without timings)")
        cost, slices = r1["cost"], args.shape[2]
        efficiency = min(1.0, r2["steady"] / r1["steady"] / 2)
        print(f"\nsizing: one worker (one thread) takes {cost:.2f} s per study of {slices} slices "
              f"({cost / slices * 1000:.1f} ms per slice: scale by the slices of your studies); "
              f"{efficiency:.0%} efficiency at 2 workers. Workers for an archive of N studies of {slices} slices:")
        for hours in WITHIN_HOURS:
            cells = [f"{n:>7} studies: {math.ceil(n * cost / (hours * 3600) / efficiency):>4}" for n in ARCHIVES]
            print(f"  within {hours:>3} h: " + "; ".join(cells))

if __name__ == "__main__":
    main()
