"""An exponential moving average (EMA) of the network's weights, validated and saved instead of them.

Short CPU trainings end while the weights still jump from step to step: which epoch happens to
score best on a small validation split then depends on the seed. The average of the last few
hundred steps is a smoother, usually better model (Polyak averaging). :func:`ema_network` builds
the averaged copy (``torch.optim.swa_utils.AveragedModel`` with BatchNorm statistics averaged too,
the decay ramped up over the first updates);
:class:`EMAHandler` updates it after every optimizer step. The training config hands the averaged
network to the evaluator, the best-model checkpoint and the calibration, and keeps both in
``checkpoint_last.pt`` so a resumed run continues the same average.

``ema_decay`` ``"auto"`` (the default) averages over about one epoch: ``1 - 1 / iterations per
epoch``, kept in [0.9, 0.999]. A fixed horizon would be wrong both ways: 200 steps are five epochs
of a small data set (validation would see weights from long ago) and a fraction of one of a large
one. ``ema_decay`` 0 turns it off: the "averaged" network is then the training network itself.
"""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from torch import nn
from torch.optim.swa_utils import AveragedModel


class EMANetwork(AveragedModel):
    """``AveragedModel`` called like the network. Its ``.module`` is the plain averaged network:
    ``scripts.train.training.unwrap`` returns it, so ``model.pt`` written from it loads into a fresh
    network; its own ``state_dict`` (a checkpoint's ``"ema"`` entry) also holds the update count.
    """

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


class _WarmDecay:
    """EMA step with the decay ramped up over the first updates: ``min(decay, (1 + n) / (10 + n))``.

    Early on the average then follows the fast-changing weights instead of staying near the random
    initialisation (which matters for short runs).
    """

    def __init__(self, decay: float | None) -> None:
        self.decay = decay  # None: "auto", set by EMAHandler when the epoch length is known

    def __call__(self, averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        n = float(num_averaged)
        d = min(self.decay if self.decay is not None else AUTO_RANGE[0], (1.0 + n) / (10.0 + n))
        return averaged * d + current * (1.0 - d)


#: the range of the "auto" decay (about one epoch of averaging)
AUTO_RANGE = (0.9, 0.999)


def auto_decay(iterations_per_epoch: int) -> float:
    """``1 - 1 / iterations_per_epoch`` within :data:`AUTO_RANGE`."""
    return min(max(1.0 - 1.0 / max(int(iterations_per_epoch), 1), AUTO_RANGE[0]), AUTO_RANGE[1])


def ema_network(network: nn.Module, decay: float | str = "auto") -> nn.Module:
    """The averaged copy of ``network`` (unwrapped from DDP), or ``network`` itself when ``decay == 0``.

    Raises:
        ValueError: ``decay`` neither ``"auto"`` nor in [0, 1).
    """
    if decay == "auto":
        value: float | None = None
    elif isinstance(decay, (int, float)) and not isinstance(decay, bool) and 0.0 <= decay < 1.0:
        value = float(decay)
    else:
        raise ValueError(f"ema_decay must be 'auto' or in [0, 1) (0: off), got {decay!r}")
    if value == 0.0:
        return network
    plain = network.module if hasattr(network, "module") else network
    return EMANetwork(plain, avg_fn=_WarmDecay(value), use_buffers=True)


class EMAHandler:
    """Update the averaged network after every training iteration (nothing when it is the network)."""

    def __init__(self, network: nn.Module, ema: nn.Module) -> None:
        self.network, self.ema = network, ema

    def attach(self, engine: Engine) -> None:
        if isinstance(self.ema, AveragedModel):
            engine.add_event_handler(Events.STARTED, self.started)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)

    def started(self, engine: Engine) -> None:
        fn = self.ema.avg_fn
        if isinstance(fn, _WarmDecay) and (fn.decay is None or getattr(self, "_auto", False)):
            self._auto = True
            fn.decay = auto_decay(engine.state.epoch_length or 1)
            engine.logger.info(f"weight average over about one epoch: EMA decay {fn.decay:.4f}")

    def update(self, engine: Engine) -> None:
        plain = self.network.module if hasattr(self.network, "module") else self.network
        self.ema.update_parameters(plain)
