"""Cost of one 3D training step and one inference batch: the project's U-Net with and without the strided stem,
against MONAI's UNet (the 3D baseline of ``bench_recipe.py``), side by side in one process.

    .venv/bin/python Testing/benchmarks/bench_network_3d.py [--patch 48 48 48] [--batch 2] [--windows 4]
                                                            [--threads 1] [--repeats 5]

Rows, each a fresh network (random weights, nothing downloaded) on random input:

* ``full resolution``: ``MultiTaskUNet`` as the plan built it for 3D on CPU before plan v5
  (``stem_stride`` 1, widths 16-32-64-128): two 3x3x3 convolutions at the patch's full resolution in
  the first encoder level and two in the last decoder level;
* ``strided stem``: what the CPU plan builds now (``stem_stride`` 2, widths 16-32-64, one convolution
  at full resolution in :class:`scripts.core.networks.LightUpBlock`);
* ``MONAI UNet``: ``monai.networks.nets.UNet`` with the baseline's settings (16-32-64-128-256, strides 2,
  2 residual units).

Per row: median seconds of a training step (forward, loss, backward, AdamW step) on ``--batch`` patches
and of a no-grad forward on ``--windows`` patches (a sliding-window batch), parameters, and the ratio
to the full-resolution row. A timing, not a test: run it on an otherwise idle machine (the load
average is printed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "monai_bundle"))


def _networks():
    from monai.networks.nets import UNet

    from scripts.core.networks import MultiTaskUNet

    return [
        ("full resolution (stem 1, 16-128)",
         lambda: MultiTaskUNet(3, 1, 2, 4, channels=(16, 32, 64, 128), dropout=0.3, cls_pooling="lesion")),
        ("strided stem (stem 2, 16-64)",
         lambda: MultiTaskUNet(3, 1, 2, 4, channels=(16, 32, 64), dropout=0.3, cls_pooling="lesion", stem_stride=2)),
        ("MONAI UNet (baseline)",
         lambda: UNet(3, 1, 2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)),
    ]


def _seg(out):
    return out if not isinstance(out, dict) else out["seg"]


def time_network(make, patch: list[int], batch: int, windows: int, repeats: int) -> dict:
    import torch

    torch.manual_seed(0)
    net = make()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, *patch)
    target = (torch.rand(batch, 1, *patch) > 0.9).long()
    loss_fn = torch.nn.CrossEntropyLoss()
    steps = []
    net.train()
    for i in range(repeats + 1):  # the first step warms the allocator up and is not counted
        start = time.perf_counter()
        out = _seg(net(x))
        loss = loss_fn(out, target[:, 0])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            steps.append(time.perf_counter() - start)
    net.eval()
    xw = torch.randn(windows, 1, *patch)
    infers = []
    with torch.no_grad():
        for i in range(repeats + 1):
            start = time.perf_counter()
            _seg(net(xw))
            if i:
                infers.append(time.perf_counter() - start)
    return {"train_s": statistics.median(steps), "infer_s": statistics.median(infers),
            "parameters": sum(p.numel() for p in net.parameters())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patch", type=int, nargs=3, default=[48, 48, 48])
    ap.add_argument("--batch", type=int, default=2, help="patches per training step (the CPU plan's 3D batch)")
    ap.add_argument("--windows", type=int, default=4, help="patches per inference batch")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {args.threads}, cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; "
          f"patch {'x'.join(map(str, args.patch))}, train batch {args.batch}, inference batch {args.windows}")
    rows = [(name, time_network(make, args.patch, args.batch, args.windows, args.repeats)) for name, make in _networks()]
    base = rows[0][1]
    print(f"\n{'network':<36}{'train step s':>14}{'x full-res':>12}{'inference s':>14}{'x full-res':>12}{'parameters':>13}")
    for name, r in rows:
        print(f"{name:<36}{r['train_s']:>14.3f}{r['train_s'] / base['train_s']:>12.2f}{r['infer_s']:>14.3f}"
              f"{r['infer_s'] / base['infer_s']:>12.2f}{r['parameters']:>13,}")
    print(f"\nload average now {os.getloadavg()[0]:.1f} (2 cores: above the threads used, other processes shared them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
