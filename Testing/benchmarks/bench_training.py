"""Training throughput: the bundle's SupervisedTrainer vs a plain PyTorch loop, side by side.

    .venv/bin/python Testing/benchmarks/bench_training.py [--device cpu|cuda] [--steps 20] [--rounds 3]

Both loops train the same network (fresh copies of one initial state) with the same loss,
optimizer, data loader and batch size; rounds alternate trainer / plain so that drift of the
machine hits both. Prints samples/s of each, their ratio (target >= 0.95), and FLOPs per step
(forward + backward, counted by ``torch.utils.flop_counter``).

On a CPU with hardware bf16 (``scripts.core.sliding_window.cpu_bf16_native``, or ``--cpu-bf16 on``) a
third loop runs in every round: the trainer with the plan's ``cpu_bf16`` as ``train.json`` sets it up
(bf16 autocast in the inferer, the network in channels-last format: ``place_network``), and its
speed-up over the float32 trainer is printed; a fourth, the same without channels-last, shows what
the memory format adds.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "monai_bundle"))
from scripts.core.sliding_window import MultiTaskSimpleInferer, cpu_bf16_native, place_network  # noqa: E402
from scripts.train.losses import MultiTaskLoss  # noqa: E402
from scripts.core.networks import MultiTaskUNet  # noqa: E402
from scripts.core.tasks import Keys  # noqa: E402
from scripts.train.training import prepare_batch  # noqa: E402


def make_data(n: int, size: int, seed: int = 0) -> list[dict]:
    """Pre-processed samples as the cached dataset yields them (the loaders are not what is measured)."""
    g = torch.Generator().manual_seed(seed)
    data = []
    for i in range(n):
        label = (torch.rand(1, size, size, generator=g) > 0.8).long()
        data.append({Keys.IMAGE.value: torch.rand(1, size, size, generator=g) + label, Keys.LABEL.value: label,
                     Keys.CLASS.value: torch.tensor(i % 4), Keys.HAS_SEG.value: torch.tensor(1.0), Keys.HAS_CLS.value: torch.tensor(1.0)})
    return data


def plain_loop(net, loss_fn, opt, loader, device, steps: int) -> float:
    """The reference: the shortest correct training loop. Returns seconds for ``steps`` steps."""
    net.train()
    done, t0 = 0, time.perf_counter()
    while done < steps:
        for batch in loader:
            image, targets = prepare_batch(batch, device)
            opt.zero_grad(set_to_none=True)
            # the same mixed precision as the trainer's amp=True (bf16 autocast on CUDA)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = loss_fn(net(image), targets)
            loss.backward()
            opt.step()
            done += 1
            if done == steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def trainer_loop(net, loss_fn, opt, loader, device, steps: int, cpu_bf16: bool = False) -> float:
    """The bundle's engine: MONAI SupervisedTrainer with the bundle's prepare_batch and inferer."""
    trainer = SupervisedTrainer(device=device, max_epochs=10**6, train_data_loader=loader, network=net, optimizer=opt,
                                loss_function=loss_fn, inferer=MultiTaskSimpleInferer(cpu_bf16=cpu_bf16),
                                prepare_batch=prepare_batch,
                                decollate=False, amp=device.type == "cuda",
                                amp_kwargs={"dtype": torch.bfloat16})
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=steps), lambda e: e.terminate())
    t0 = time.perf_counter()
    trainer.run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def flops_per_step(net, loss_fn, batch, device) -> int:
    image, targets = prepare_batch(batch, device)
    with FlopCounterMode(display=False) as counter:
        loss_fn(net(image), targets).backward()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--channels", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--cpu-bf16", choices=("auto", "on", "off"), default="auto",
                        help="also time the trainer under CPU bf16 autocast (auto: where the CPU has hardware bf16)")
    args = parser.parse_args()
    device = torch.device(args.device)
    bf16 = device.type == "cpu" and (args.cpu_bf16 == "on" or (args.cpu_bf16 == "auto" and cpu_bf16_native()))
    torch.manual_seed(0)
    base = MultiTaskUNet(2, 1, 2, 4, channels=args.channels, cls_pooling="lesion").to(device)
    loader = DataLoader(make_data(args.batch_size * 8, args.size), batch_size=args.batch_size, shuffle=True, num_workers=0)
    fresh_loss = MultiTaskLoss(2, 4).to(device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, input {args.batch_size}x1x{args.size}x{args.size}, "
          f"channels {args.channels}, params {sum(p.numel() for p in base.parameters()) / 1e6:.2f} M")
    flops = flops_per_step(copy.deepcopy(base).train(), fresh_loss, next(iter(loader)), device)
    print(f"FLOPs per training step (fwd+bwd): {flops / 1e9:.1f} GFLOP  ({flops / args.batch_size / 1e9:.2f} GFLOP per sample)")

    # one warm-up step of each (allocator, cudnn autotune) before timing
    loops = {"plain": plain_loop, "trainer": trainer_loop}
    if bf16:
        # in place: the optimiser built over the network's parameters keeps them
        loops["trainer_bf16"] = lambda net, *a: trainer_loop(place_network(net, device, True), *a, cpu_bf16=True)
        loops["bf16_nchw"] = lambda *a: trainer_loop(*a, cpu_bf16=True)
    for loop in loops.values():
        net = copy.deepcopy(base)
        loop(net, copy.deepcopy(fresh_loss), torch.optim.Adam(net.parameters(), 1e-3), loader, device, 2)
    results: dict[str, list[float]] = {name: [] for name in loops}
    for r in range(args.rounds):
        for name, loop in (list(loops.items())[::-1] if r % 2 else list(loops.items())):
            net = copy.deepcopy(base)
            seconds = loop(net, copy.deepcopy(fresh_loss), torch.optim.Adam(net.parameters(), 1e-3), loader, device, args.steps)
            results[name].append(args.steps * args.batch_size / seconds)
            print(f"round {r + 1} {name:>12}: {results[name][-1]:7.1f} samples/s")
    plain, trainer = statistics.median(results["plain"]), statistics.median(results["trainer"])
    print(f"\nmedian samples/s: plain loop {plain:.1f}, SupervisedTrainer {trainer:.1f}")
    print(f"throughput ratio trainer / plain = {trainer / plain:.3f}  (target >= 0.95)")
    print(f"achieved compute: {trainer * flops / args.batch_size / 1e9:.1f} GFLOP/s")
    if bf16:
        fast = statistics.median(results["trainer_bf16"])
        nchw = statistics.median(results["bf16_nchw"])
        print(f"SupervisedTrainer with cpu_bf16: {fast:.1f} samples/s, {fast / trainer:.2f}x the float32 trainer "
              f"(without channels-last {nchw:.1f} samples/s, {nchw / trainer:.2f}x; channels-last {fast / nchw:.2f}x)")


if __name__ == "__main__":
    main()
