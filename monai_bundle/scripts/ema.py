"""An exponential moving average (EMA) of the network's weights, validated and saved instead of them.

Short CPU trainings end while the weights still jump from step to step: which epoch happens to
score best on a small validation split then depends on the seed. The average of the last few
hundred steps is a smoother, usually better model (Polyak averaging). :func:`ema_network` builds
the averaged copy (``torch.optim.swa_utils.AveragedModel`` with BatchNorm statistics averaged too,
the decay ramped up over the first updates);
:class:`EMAHandler` updates it after every optimizer step. The training config hands the averaged
network to the evaluator, the best-model checkpoint and the calibration, and keeps both in
``checkpoint_last.pt`` so a resumed run continues the same average.

``ema_decay`` 0 turns it off: the "averaged" network is then the training network itself.
"""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from torch import nn
from torch.optim.swa_utils import AveragedModel


class EMANetwork(AveragedModel):
    """``AveragedModel`` called like the network. Its ``.module`` is the plain averaged network:
    ``scripts.training.unwrap`` returns it, so ``model.pt`` written from it loads into a fresh
    network; its own ``state_dict`` (a checkpoint's ``"ema"`` entry) also holds the update count.
    """

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


class _WarmDecay:
    """EMA step with the decay ramped up over the first updates: ``min(decay, (1 + n) / (10 + n))``.

    Early on the average then follows the fast-changing weights instead of staying near the random
    initialisation (which matters for short runs).
    """

    def __init__(self, decay: float) -> None:
        self.decay = decay

    def __call__(self, averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        n = float(num_averaged)
        d = min(self.decay, (1.0 + n) / (10.0 + n))
        return averaged * d + current * (1.0 - d)


def ema_network(network: nn.Module, decay: float = 0.995) -> nn.Module:
    """The averaged copy of ``network`` (unwrapped from DDP), or ``network`` itself when ``decay == 0``.

    Raises:
        ValueError: ``decay`` outside [0, 1).
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1) (0: off), got {decay}")
    if decay == 0.0:
        return network
    plain = network.module if hasattr(network, "module") else network
    return EMANetwork(plain, avg_fn=_WarmDecay(decay), use_buffers=True)


class EMAHandler:
    """Update the averaged network after every training iteration (nothing when it is the network)."""

    def __init__(self, network: nn.Module, ema: nn.Module) -> None:
        self.network, self.ema = network, ema

    def attach(self, engine: Engine) -> None:
        if isinstance(self.ema, AveragedModel):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.update)

    def update(self, engine: Engine) -> None:
        plain = self.network.module if hasattr(self.network, "module") else self.network
        self.ema.update_parameters(plain)
