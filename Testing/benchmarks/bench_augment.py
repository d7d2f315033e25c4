"""Cost of the training augmentations: the per-sample MONAI chain against the batch augmentation, and
both against the network's training step, side by side in one process.

    .venv/bin/python Testing/benchmarks/bench_augment.py [--threads 1] [--repeats 5]

Cases: a 2D batch as the CPU plan builds it for the generated brain set (16 x 1 x 96 x 96, the
width-8 U-Net) and a 3D batch as the 3D CPU plan builds it (2 x 1 x 64 x 64 x 32 patches, the strided
stem). Rows per case:

* ``per sample (MONAI)``: :func:`scripts.core.transforms.augmentations` at the plan's ``medium`` strength,
  one sample at a time, as the dataset ran it until ``augment_on`` became ``batch``;
* ``batch``: :class:`scripts.train.batch_augment.BatchAugment`, same strength, on the collated batch;
* ``network step``: forward, loss, backward and AdamW step of the ``MultiTaskUNet`` on the batch.

Printed: median milliseconds per batch and per sample (process CPU time, so another process on the
machine does not inflate it), and the ratios per sample / batch and augmentation / network step.
A timing, not a test.
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


def _cpu_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.process_time()
        fn()
        times.append((time.process_time() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import torch
    from monai.transforms import Compose

    from scripts.train.batch_augment import BatchAugment
    from scripts.core.networks import MultiTaskUNet
    from scripts.core.transforms import augmentations

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"threads {args.threads}, load average {os.getloadavg()[0]:.2f}, torch {torch.__version__}")
    cases = [("2D 16 x 96x96", 2, 16, (96, 96), dict(channels=(8, 16, 32, 64, 128), stem_stride=1)),
             ("3D 2 x 64x64x32", 3, 2, (64, 64, 32), dict(channels=(16, 32, 64), stem_stride=2))]
    print(f"{'case':18} {'row':22} {'ms/batch':>9} {'ms/sample':>10}")
    for name, dims, b, size, net_kwargs in cases:
        image = torch.rand(b, 1, *size)
        label = (image > 0.8).to(torch.uint8)
        chain = Compose(augmentations(dims, size))
        samples = [{"image": image[i], "label": label[i]} for i in range(b)]
        per_sample = _cpu_ms(lambda: [chain(dict(s)) for s in samples], args.repeats)
        aug = BatchAugment(dims)
        batch = _cpu_ms(lambda: aug(image, label), args.repeats)
        net = MultiTaskUNet(dims, 1, 2, 4, cls_pooling="lesion", **net_kwargs)
        opt = torch.optim.AdamW(net.parameters())

        def step():
            out = net(image)
            loss = torch.nn.functional.cross_entropy(out["seg"], label[:, 0].long()) + out["cls"].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        network = _cpu_ms(step, args.repeats)
        for row, ms in (("per sample (MONAI)", per_sample), ("batch", batch), ("network step", network)):
            print(f"{name:18} {row:22} {ms:9.1f} {ms / b:10.2f}")
        print(f"{name:18} per sample / batch {per_sample / batch:.1f}x; augmentation / network step: "
              f"per sample {per_sample / network:.2f}, batch {batch / network:.2f}")


if __name__ == "__main__":
    main()
