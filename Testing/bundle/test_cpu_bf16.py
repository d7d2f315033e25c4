"""bf16 autocast on a CPU (``cpu_bf16``): what the inferers run, what the loss sees, what the plan and
the configs decide."""

from __future__ import annotations

import pytest
import torch
from bundle_config_helpers import tiny_datalist, train_parser

from scripts.core import sliding_window as SW
from scripts.core.networks import MultiTaskUNet
from scripts.core.sliding_window import MultiTaskSimpleInferer, MultiTaskSlidingWindowInferer, forward, place_network
from scripts.core.tasks import Task


def _net(dims: int = 2) -> MultiTaskUNet:
    torch.manual_seed(0)
    return MultiTaskUNet(dims, 1, 2, 3, channels=[4, 8, 16], dropout=0.0, cls_pooling="lesion").eval()


def _conv_dtypes(net: torch.nn.Module) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)):
            m.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


def test_forward_runs_the_convolutions_in_bf16_and_hands_back_float32():
    net, x = _net(), torch.rand(2, 1, 32, 32)
    seen = _conv_dtypes(net)
    with torch.no_grad():
        ref = net(x)
        assert set(seen) == {torch.float32}
        seen.clear()
        out = forward(net, x, cpu_bf16=True)
    assert seen and set(seen) == {torch.bfloat16}  # the network really ran in bf16
    assert {k: v.dtype for k, v in out.items()} == {k: torch.float32 for k in ref}  # the loss gets float32
    assert out[Task.SEG.value] is out["pred"]  # one tensor under two names stays one tensor
    for key in (Task.SEG.value, Task.CLS.value):  # the same answer within bf16's 8 bits of mantissa
        torch.testing.assert_close(out[key], ref[key], atol=0.05, rtol=0.05)
        assert not torch.equal(out[key], ref[key])
    seen.clear()
    with torch.no_grad():
        plain = forward(net, x, cpu_bf16=False)
    assert set(seen) == {torch.float32} and torch.equal(plain[Task.SEG.value], ref[Task.SEG.value])


def test_training_through_bf16_gives_float32_gradients_close_to_float32_training():
    net, x = _net().train(), torch.rand(4, 1, 32, 32)
    target = (x > 0.6).long()[:, 0]
    grads = {}
    for bf16 in (False, True):
        net.zero_grad()
        out = forward(net, x, cpu_bf16=bf16)
        torch.nn.functional.cross_entropy(out[Task.SEG.value], target).backward()
        grads[bf16] = torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])
    assert grads[True].dtype == torch.float32 and torch.isfinite(grads[True]).all()
    cosine = torch.nn.functional.cosine_similarity(grads[True], grads[False], dim=0)
    assert cosine > 0.98


def test_both_inferers_pass_the_switch_on():
    net2, net3 = _net(2), _net(3)
    seen2, seen3 = _conv_dtypes(net2), _conv_dtypes(net3)
    with torch.no_grad():
        out = MultiTaskSimpleInferer(cpu_bf16=True)(torch.rand(2, 1, 32, 32), net2)
        sw = MultiTaskSlidingWindowInferer((16, 16, 16), sw_batch_size=2, cpu_bf16=True)(torch.rand(1, 1, 24, 20, 16), net3)
    assert set(seen2) == {torch.bfloat16} and set(seen3) == {torch.bfloat16}
    assert out[Task.SEG.value].dtype == sw[Task.SEG.value].dtype == sw[Task.CLS.value].dtype == torch.float32
    assert tuple(sw[Task.SEG.value].shape) == (1, 2, 24, 20, 16) and tuple(sw[Task.CLS.value].shape) == (1, 3)
    assert MultiTaskSimpleInferer().cpu_bf16 is False and MultiTaskSlidingWindowInferer((8, 8, 8)).cpu_bf16 is False


def _conv_weights(net: torch.nn.Module) -> list[torch.Tensor]:
    """The convolution weights whose layout tells NCHW from NHWC (more than one input channel, kernel > 1)."""
    return [m.weight for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))
            and m.weight.shape[1] > 1 and m.weight.shape[-1] > 1]


def test_a_2d_network_under_cpu_bf16_runs_channels_last(tmp_path):
    """Weights and inputs in NHWC (oneDNN's native bf16 layout): the same answers, a checkpoint that
    loads into a network of the default layout, and training gradients that point float32's way."""
    ref_net, x = _net(), torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        ref = forward(ref_net, x, cpu_bf16=True)
    net = place_network(_net(), "cpu", cpu_bf16=True)
    weights = _conv_weights(net)
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in weights)
    layouts: list[bool] = []
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_pre_hook(lambda _m, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    with torch.no_grad():
        out = forward(net, x, cpu_bf16=True)
    assert layouts and all(layouts)  # every convolution saw NHWC input
    for key in (Task.SEG.value, Task.CLS.value):
        assert out[key].dtype == torch.float32
        torch.testing.assert_close(out[key], ref[key], atol=0.05, rtol=0.05)
    torch.save(net.state_dict(), tmp_path / "model.pt")  # a checkpoint of the NHWC network ...
    plain = _net()
    plain.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))  # ... loads into the default layout
    assert all(w.is_contiguous() for w in _conv_weights(plain))
    for a, b in zip(plain.state_dict().values(), net.state_dict().values()):
        assert torch.equal(a, b)
    net.train(), ref_net.train()
    target = (x > 0.6).long()[:, 0]
    grads = []
    for model, bf16 in ((net, True), (ref_net, False)):
        torch.nn.functional.cross_entropy(forward(model, x, cpu_bf16=bf16)[Task.SEG.value], target).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.isfinite(grads[0]).all() and torch.nn.functional.cosine_similarity(*grads, dim=0) > 0.98


def test_float32_and_3d_networks_keep_their_layout():
    assert all(w.is_contiguous() for w in _conv_weights(place_network(_net(2), "cpu", cpu_bf16=False)))
    net3 = place_network(_net(3), "cpu", cpu_bf16=True)  # 3D under bf16: NCDHW as before
    assert all(w.is_contiguous() for w in _conv_weights(net3))
    with torch.no_grad():
        out = forward(net3, torch.rand(1, 1, 16, 16, 16), cpu_bf16=True)
    assert tuple(out[Task.SEG.value].shape) == (1, 2, 16, 16, 16)


def test_cuda_inputs_are_left_to_the_engines_amp():
    """Off the CPU the call is plain: MONAI's engines autocast CUDA themselves (``amp``)."""
    class Meta(torch.nn.Module):
        def forward(self, x):
            return {Task.SEG.value: x, Task.CLS.value: x.sum((1, 2, 3))[:, None]}

    x = torch.rand(1, 1, 4, 4, device="meta")
    out = forward(Meta(), x, cpu_bf16=True)
    assert out[Task.SEG.value] is x  # not cast, not wrapped


@pytest.mark.parametrize("native", [True, False])
def test_the_train_config_takes_the_switch_from_the_plan(tmp_path, monkeypatch, native):
    monkeypatch.setattr(SW, "cpu_bf16_native", lambda: native)
    datalist = tiny_datalist(tmp_path)
    parser = train_parser({"datalist_file": str(datalist), "ckpt_dir": str(tmp_path / "m")})
    assert parser.get_parsed_content("plan")["cpu_bf16"] is native
    assert parser.get_parsed_content("train#inferer").cpu_bf16 is native
    assert parser.get_parsed_content("validate#inferer").cpu_bf16 is native
    index = next(i for i, h in enumerate(parser["train"]["handlers"]) if isinstance(h, dict) and "MLflowTracking" in str(h.get("_target_")))
    assert parser.get_parsed_content(f"train#handlers#{index}#params")["cpu_bf16"] is native  # the run's parameters
    assert parser.get_parsed_content("model_card")["cpu_bf16"] is native  # the Predictor runs the model as it trained
    weights = _conv_weights(parser.get_parsed_content("network"))
    assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights) is native
    assert all(w.is_contiguous() for w in weights) is not native


def test_an_override_reaches_the_model_card(tmp_path, monkeypatch):
    """``--cpu_bf16 false`` on a bf16 CPU: the card says float32, so inference runs float32 too."""
    monkeypatch.setattr(SW, "cpu_bf16_native", lambda: True)
    datalist = tiny_datalist(tmp_path)
    parser = train_parser({"datalist_file": str(datalist), "ckpt_dir": str(tmp_path / "m"), "cpu_bf16": "false"})
    assert parser.get_parsed_content("plan")["cpu_bf16"] is True  # the plan's choice ...
    assert parser.get_parsed_content("model_card")["cpu_bf16"] is False  # ... overridden, and recorded so
