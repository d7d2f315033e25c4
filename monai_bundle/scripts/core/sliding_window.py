"""Whole-image inference for a multi-task network: dict outputs, sliding windows for 3D.

MONAI's ``sliding_window_inference`` stitches spatial outputs only; a ``(B, K)`` diagnosis cannot
be stitched. :class:`MultiTaskSlidingWindowInferer` lets MONAI stitch the segmentation and
aggregates the per-window class logits itself, with this rule:

    study logits = sum_w a_w * logits_w / sum_w a_w,   a_w = eps + (predicted tumor voxels in window w)

so windows that show tumor decide the diagnosis, and with no tumor anywhere every window counts
equally (plain mean). The same rule serves validation during training and the Predictor.

Both inferers can run the network in bfloat16 on a CPU (``cpu_bf16``, :func:`forward`): MONAI's
engines autocast on CUDA only (``amp``), and a CPU with native bf16 (AVX512-BF16 or AMX,
:func:`cpu_bf16_native`) trains the plan's network about 1.5x faster under CPU autocast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import Inferer, sliding_window_inference

from scripts.core.tasks import Task


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX tiles).

    Elsewhere oneDNN emulates bf16, which is slower than float32, so the plan asks for CPU autocast
    only where this is true. torch exposes the checks privately (``torch.cpu._is_*``); a torch
    without them counts as no.
    """
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(bool(check()) for check in checks if check is not None)
    except RuntimeError:  # pragma: no cover - a build without the CPU feature query
        return False


def channels_last(network: torch.nn.Module, cpu_bf16: bool) -> torch.nn.Module:
    """A 2D network that runs under CPU bf16 (``cpu_bf16``) in channels-last memory format, in place.

    oneDNN's bf16 convolutions run NHWC natively: with weights and inputs (:func:`forward`) in that
    layout the bundle's trainer runs 1.13x the samples per second and a forward pass of one image of
    the plan's 2D network takes 0.8x the time (benchmarks README, session 16); converting the inputs
    alone gains little. float32 networks, 3D ones and CUDA are left as they are (their outputs stay
    bit for bit what they were).
    """
    dims = {2 if isinstance(m, torch.nn.Conv2d) else 3 for m in network.modules()
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))}
    if cpu_bf16 and dims == {2} and all(p.device.type == "cpu" for p in network.parameters()):
        network.to(memory_format=torch.channels_last)
    return network


def place_network(network: torch.nn.Module, device: torch.device | str, cpu_bf16: bool = False) -> torch.nn.Module:
    """``network.to(device)``, in channels-last format where it will run under CPU bf16 (:func:`channels_last`)."""
    return channels_last(network.to(device), cpu_bf16)


def forward(network, inputs: torch.Tensor, *args, cpu_bf16: bool = False, **kwargs):
    """``network(inputs, *args, **kwargs)``; with ``cpu_bf16`` and CPU inputs under bfloat16 autocast,
    its tensor outputs (a dict's values, or one tensor) handed back as float32 for the loss and metrics.
    2D inputs then go in channels-last format (:func:`channels_last`). Elsewhere (CUDA, where the
    engines' own ``amp`` autocasts) the call is plain."""
    if not cpu_bf16 or inputs.device.type != "cpu":
        return network(inputs, *args, **kwargs)
    if inputs.dim() == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = network(inputs, *args, **kwargs)
    if isinstance(out, torch.Tensor):
        return out.float()
    cast: dict[int, torch.Tensor] = {}  # "pred" is the same tensor as "seg": cast it once
    return {k: cast.setdefault(id(v), v.float()) if isinstance(v, torch.Tensor) else v for k, v in out.items()}


EPS_WEIGHT = 1.0  # a window without tumor still counts as one voxel's worth
#: FlipTTA's third output: ``(B, 2, *spatial)`` = (|p - p_mirror|, max(p, p_mirror)) of the tumour probability
FLIP_DISAGREEMENT = "flip_disagreement"


def aggregate_class_logits(logits: torch.Tensor, tumor_voxels: torch.Tensor) -> torch.Tensor:
    """Combine per-window (or per-slice) class logits into one.

    Args:
        logits: ``(N, K)`` class logits of N windows/slices of one image.
        tumor_voxels: ``(N,)`` predicted tumor voxel count of each window/slice.

    Returns:
        ``(K,)`` logits, weighted mean by ``EPS_WEIGHT + tumor_voxels``.

    Raises:
        ValueError: the shapes disagree or N is 0.
    """
    if logits.ndim != 2 or tumor_voxels.shape != logits.shape[:1] or logits.shape[0] == 0:
        raise ValueError(f"need logits (N, K) and tumor_voxels (N,) with N > 0, got {tuple(logits.shape)} and {tuple(tumor_voxels.shape)}")
    weights = EPS_WEIGHT + tumor_voxels.to(logits.dtype).clamp_min(0)
    return (weights[:, None] * logits).sum(0) / weights.sum()


def label_map(logits: torch.Tensor) -> torch.Tensor:
    """``(B, S, *spatial)`` logits -> ``(B, *spatial)`` uint8 arg-max over S (the first maximum wins).

    Equal to ``logits.argmax(1)``; S - 1 comparisons instead, because PyTorch's CPU arg-max over a
    strided channel axis is some 30-100x slower (it dominated the post-processing of large volumes).
    """
    best = logits[:, 0]
    label = torch.zeros(best.shape, dtype=torch.uint8, device=logits.device)
    last = logits.shape[1] - 1
    for s in range(1, last + 1):
        better = logits[:, s] > best
        label.masked_fill_(better, s)
        if s < last:  # the running maximum is not needed after the last channel
            best = torch.where(better, logits[:, s], best)
    return label


class MultiTaskSlidingWindowInferer(Inferer):
    """Sliding-window inference returning ``{"seg": (B, S, *spatial), "cls": (B, K)}``.

    Each image of the batch is run on its own so that windows of different images never mix in
    one class aggregate. Windows use Gaussian blending for the segmentation.
    """

    def __init__(self, roi_size: Sequence[int], sw_batch_size: int = 2, overlap: float = 0.25, mode: str = "gaussian",
                 cpu_bf16: bool = False) -> None:
        super().__init__()
        self.cpu_bf16 = bool(cpu_bf16)
        self.roi_size = tuple(int(r) for r in roi_size)
        self.sw_batch_size = sw_batch_size
        self.overlap = overlap
        self.mode = mode

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> dict[str, torch.Tensor]:
        segs, clss, flips = [], [], []
        for image in inputs:  # (C, *spatial)
            window_logits: list[torch.Tensor] = []
            window_tumor: list[torch.Tensor] = []

            def seg_of(x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
                out = forward(network, x, *args, cpu_bf16=self.cpu_bf16, **kwargs)
                seg = out[Task.SEG]
                window_logits.append(out[Task.CLS].float())
                window_tumor.append((label_map(seg) > 0).flatten(1).sum(1))  # (b,) tumor voxels per window
                if FLIP_DISAGREEMENT in out:  # stitched like the segmentation (same blending)
                    return {Task.SEG.value: seg, FLIP_DISAGREEMENT: out[FLIP_DISAGREEMENT]}
                return seg

            seg = sliding_window_inference(image[None], self.roi_size, self.sw_batch_size, seg_of, self.overlap, self.mode)
            if isinstance(seg, dict):
                flips.append(seg[FLIP_DISAGREEMENT])
                seg = seg[Task.SEG.value]
            segs.append(seg)
            clss.append(aggregate_class_logits(torch.cat(window_logits), torch.cat(window_tumor)))
        out = {Task.SEG.value: torch.cat(segs), Task.CLS.value: torch.stack(clss)}
        if flips:
            out[FLIP_DISAGREEMENT] = torch.cat(flips)
        return out


class MultiTaskSimpleInferer(Inferer):
    """Whole-input forward pass returning the network's ``{"seg", "cls"}`` (2D training and validation;
    ``cpu_bf16``: see :func:`forward`)."""

    def __init__(self, cpu_bf16: bool = False) -> None:
        super().__init__()
        self.cpu_bf16 = bool(cpu_bf16)

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs) -> dict[str, torch.Tensor]:
        out = forward(network, inputs, *args, cpu_bf16=self.cpu_bf16, **kwargs)
        return {Task.SEG.value: out[Task.SEG], Task.CLS.value: out[Task.CLS]}


class FlipTTA(torch.nn.Module):
    """Flip test-time augmentation for both heads: the network on the input and on its mirror image.

    ``forward(x)`` returns ``{"seg": mean of the logits (the mirrored one flipped back), "cls": mean
    of the class logits, FLIP_DISAGREEMENT: (B, 2, *spatial)}``. The last is what the two passes say
    about each voxel's tumour probability ``p = 1 - softmax(seg)[background]``: channel 0 their
    disagreement ``|p - p_mirror|`` (0..1), channel 1 ``max(p, p_mirror)`` (a voxel either pass calls
    tumour has it >= 0.5); :class:`scripts.inference.uncertainty.FlipUncertainty` turns it into the
    study's segmentation uncertainty. The mean logits are computed as without it. The flip is
    left-right: the last axis of a 2D display-oriented slice ``(B, C, rows, cols)`` (columns run
    R->L), the first spatial axis of a 3D volume ``(B, C, X, Y, Z)`` in canonical orientation. Twice the network cost; any 2D/3D path (slices, sliding windows) can
    use it because it is just another network.
    """

    def __init__(self, network: torch.nn.Module, spatial_dims: int) -> None:
        super().__init__()
        self.network = network
        self.flip_dim = -1 if spatial_dims == 2 else 2

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        a = self.network(x)
        b = self.network(x.flip(self.flip_dim))
        seg_a, seg_b = a[Task.SEG].float(), b[Task.SEG].float().flip(self.flip_dim)  # the mirror's flipped back
        seg = 0.5 * (seg_a + seg_b)
        cls = 0.5 * (a[Task.CLS].float() + b[Task.CLS].float())
        p_a = 1 - torch.softmax(seg_a, dim=1)[:, :1]  # (B, 1, *spatial) tumour probability
        p_b = 1 - torch.softmax(seg_b, dim=1)[:, :1]
        flip = torch.cat([(p_a - p_b).abs(), torch.maximum(p_a, p_b)], dim=1)  # (B, 2, *spatial)
        return {Task.SEG.value: seg, Task.CLS.value: cls, FLIP_DISAGREEMENT: flip}
