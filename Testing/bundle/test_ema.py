"""The weight average that validation, the best checkpoint and calibration use (scripts/train/ema.py)."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine

from scripts.train.ema import EMAHandler, ema_network
from scripts.core.networks import MultiTaskUNet
from scripts.train.training import unwrap


def test_the_average_follows_the_weights_with_a_warm_decay() -> None:
    net = MultiTaskUNet(channels=(4, 8))
    ema = ema_network(net, decay=0.9)
    start = {k: v.clone() for k, v in unwrap(ema).state_dict().items()}
    name = "segmentation_head.bias"
    values = []
    for step in range(1, 41):
        with torch.no_grad():
            net.segmentation_head.bias.fill_(float(step))
        ema.update_parameters(net)
        values.append(float(unwrap(ema).state_dict()[name][0]))
    assert values[0] == 1.0  # the first update copies the weights
    d2 = min(0.9, 2 / 11)  # second update: the ramped decay (1 + n) / (10 + n) with n = 1
    assert values[1] == pytest.approx(d2 * 1.0 + (1 - d2) * 2.0)
    assert 40 - 1 / 0.1 - 1 < values[-1] < 40  # then an EMA lagging ~(1 / (1 - decay)) steps behind a ramp
    assert not torch.equal(start[name], unwrap(ema).state_dict()[name])


def test_the_plain_network_loads_the_averaged_weights() -> None:
    net = MultiTaskUNet(channels=(4, 8))
    ema = ema_network(net, decay=0.99)
    ema.update_parameters(net)
    MultiTaskUNet(channels=(4, 8)).load_state_dict(unwrap(ema).state_dict())  # strict: model.pt is a plain state dict
    x = torch.randn(1, 1, 16, 16)
    net.eval(), ema.eval()
    torch.testing.assert_close(ema(x)["cls"], net(x)["cls"])


def test_decay_zero_is_the_network_itself_and_bad_decay_is_refused() -> None:
    net = MultiTaskUNet(channels=(4, 8))
    assert ema_network(net, 0.0) is net
    with pytest.raises(ValueError, match="ema_decay"):
        ema_network(net, 1.0)


def test_the_handler_updates_after_every_iteration() -> None:
    net = MultiTaskUNet(channels=(4, 8))
    ema = ema_network(net, decay=0.5)
    engine = Engine(lambda e, b: None)
    EMAHandler(net, ema).attach(engine)
    engine.run(range(3), max_epochs=2)
    assert int(ema.n_averaged) == 6


def test_auto_decay_averages_over_about_one_epoch() -> None:
    from scripts.train.ema import auto_decay

    assert auto_decay(40) == pytest.approx(0.975) and auto_decay(3) == 0.9 and auto_decay(10**6) == 0.999
    net = MultiTaskUNet(channels=(4, 8))
    ema = ema_network(net)  # "auto"
    engine = Engine(lambda e, b: None)
    EMAHandler(net, ema).attach(engine)
    engine.run(range(50), max_epochs=1)
    assert ema.avg_fn.decay == pytest.approx(0.98)
    with pytest.raises(ValueError, match="ema_decay"):
        ema_network(net, "fast")
