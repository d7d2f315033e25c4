"""MultiTaskUNet: output shapes over 2D/3D, channels and encoders; gradients; TorchScript parity."""

from __future__ import annotations

import pytest
import torch

from scripts.core.networks import ENCODERS, MultiTaskUNet
from scripts.core.tasks import Task

SMALL = (4, 8, 16, 32)


def _net(spatial_dims: int, in_channels: int, encoder: str, seg_classes: int = 2, num_classes: int = 4) -> MultiTaskUNet:
    return MultiTaskUNet(spatial_dims, in_channels, seg_classes, num_classes, encoder=encoder, channels=SMALL)


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("spatial_dims,shape", [(2, (37, 48)), (3, (20, 24, 17))])
@pytest.mark.parametrize("in_channels", [1, 3, 4])
def test_output_shapes(encoder: str, spatial_dims: int, shape: tuple, in_channels: int) -> None:
    if encoder == "resnet50" and spatial_dims == 3 and in_channels != 1:
        shape = (16, 16, 16)  # keep the heaviest case small; the channel axis is what varies here
    net = _net(spatial_dims, in_channels, encoder, seg_classes=3, num_classes=5).eval()
    with torch.no_grad():
        out = net(torch.randn(2, in_channels, *shape))
    assert out[Task.SEG].shape == (2, 3, *shape)
    assert out[Task.CLS].shape == (2, 5)
    assert out["pred"] is out[Task.SEG]  # MONAI tooling alias
    assert torch.isfinite(out[Task.SEG]).all() and torch.isfinite(out[Task.CLS]).all()


@pytest.mark.parametrize("encoder", ENCODERS)
def test_every_parameter_gets_a_gradient(encoder: str) -> None:
    torch.manual_seed(0)
    net = _net(2, 1, encoder).train()
    out = net(torch.randn(2, 1, 64, 64))
    (out[Task.SEG].square().mean() + out[Task.CLS].square().mean()).backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert dead == []


def test_classification_head_reads_the_deepest_features() -> None:
    net = _net(2, 1, "unet").eval()
    seen = {}
    net.classification_head.register_forward_hook(lambda m, inp, out: seen.setdefault("c", inp[0].shape[1]))
    net(torch.randn(1, 1, 32, 32))
    assert seen["c"] == SMALL[-1]


@pytest.mark.parametrize("encoder", ["unet", "resnet18"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_torchscript_equals_eager(encoder: str, spatial_dims: int) -> None:
    net = _net(spatial_dims, 2, encoder).eval()
    scripted = torch.jit.script(net)
    x = torch.randn(1, 2, *([32] * spatial_dims))
    with torch.no_grad():
        a, b = net(x), scripted(x)
    for task in Task:
        torch.testing.assert_close(a[task.value], b[task.value])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"spatial_dims": 1}, "spatial_dims must be 2 or 3, got 1"),
        ({"encoder": "vgg"}, "encoder must be one of"),
        ({"in_channels": 0}, "in_channels must be >= 1, got 0"),
        ({"seg_classes": 1}, "seg_classes must be >= 2, got 1"),
        ({"num_classes": 1}, "num_classes must be >= 2, got 1"),
        ({"channels": (8,)}, "channels must list >= 2 positive widths"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"stem_stride": 4}, "stem_stride must be 1 or 2, got 4"),
        ({"encoder": "resnet18", "stem_stride": 2}, "stem_stride applies to the 'unet' encoder only"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MultiTaskUNet(**kwargs)


@pytest.mark.parametrize("spatial_dims,shape", [(2, (37, 48)), (3, (20, 24, 17))])
@pytest.mark.parametrize("cls_pooling", ["global", "lesion"])
def test_strided_stem_runs_one_layer_at_full_resolution(spatial_dims: int, shape: tuple, cls_pooling: str) -> None:
    """``stem_stride=2``: the output is at the input's size (odd sizes too), but of the 3x3 convolutions only
    the last up-step's one sees the full-resolution grid -- the point of the stem (about 4x cheaper in 3D)."""
    net = MultiTaskUNet(spatial_dims, 1, 3, 4, channels=SMALL, cls_pooling=cls_pooling, stem_stride=2).eval()
    full_res: list[str] = []

    def spy(name: str):
        def hook(module, inputs, output) -> None:
            if module.kernel_size[0] == 3 and tuple(output.shape[2:]) == shape:
                full_res.append(name)
        return hook

    hooks = [module.register_forward_hook(spy(name)) for name, module in net.named_modules()
             if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d))]
    with torch.no_grad():
        out = net(torch.randn(2, 1, *shape))
    for hook in hooks:
        hook.remove()
    assert out[Task.SEG].shape == (2, 3, *shape) and out[Task.CLS].shape == (2, 4)
    assert full_res == ["decoder.final_up.conv.0"]
    assert net.encoder.blocks[0][0].stride == (2,) * spatial_dims
    plain = MultiTaskUNet(spatial_dims, 1, 3, 4, channels=SMALL, cls_pooling=cls_pooling)
    assert plain.decoder.final_up is None  # the default keeps the earlier projects' U-Net
    scripted = torch.jit.script(net)
    x = torch.randn(2, 1, *shape)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x)[Task.SEG], net(x)[Task.SEG])
