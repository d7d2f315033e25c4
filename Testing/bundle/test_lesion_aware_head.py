"""The lesion-aware diagnosis head (scripts/networks.LesionAwareHead) and the heads' agreement metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scripts.train.metrics import MetricsAccumulator, contradictions
from scripts.core.networks import LesionAwareHead, MultiTaskUNet
from scripts.core.tasks import tumor_free_class


@pytest.mark.parametrize("dims, shape, encoder", [
    (2, (2, 1, 64, 64), "unet"), (2, (2, 3, 64, 48), "resnet18"), (3, (2, 2, 32, 32, 16), "unet"),
])
def test_every_parameter_learns_and_torchscript_agrees(dims: int, shape: tuple, encoder: str) -> None:
    torch.manual_seed(0)
    net = MultiTaskUNet(spatial_dims=dims, in_channels=shape[1], num_classes=3, encoder=encoder,
                        channels=(4, 8, 16, 32), cls_pooling="lesion", dropout=0.1)
    x = torch.randn(*shape)
    out = net(x)
    assert out["seg"].shape == (2, 2, *shape[2:]) and out["cls"].shape == (2, 3)
    (out["seg"].square().mean() + out["cls"].square().sum()).backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not dead, dead
    net.eval()
    scripted = torch.jit.script(net)
    torch.testing.assert_close(scripted(x)["cls"], net(x)["cls"])


def test_the_head_reads_the_lesion_and_not_only_the_whole_image() -> None:
    head = LesionAwareHead([3], num_classes=2, dropout=0.0, hidden=8).eval()
    features = torch.zeros(1, 3, 8, 8)
    features[0, 0, :4] = 1.0  # channel 0 is bright in the top half only
    seg_top = torch.zeros(1, 2, 8, 8)
    seg_top[0, 1, :4] = 10.0  # lesion predicted in the top half, background in the bottom half
    seg_top[0, 0, 4:] = 10.0
    seg_bottom = seg_top.flip(2)  # the same lesion area, in the bottom half
    inputs: list[torch.Tensor] = []
    head.mlp.register_forward_hook(lambda m, i, o: inputs.append(i[0]))
    head([features], seg_top)
    head([features], seg_bottom)
    top, bottom = inputs
    assert top[0, 0] == pytest.approx(bottom[0, 0])  # global pooling: the same
    assert top[0, 3] == pytest.approx(1.0, abs=1e-3) and bottom[0, 3] == pytest.approx(0.0, abs=1e-3)  # lesion pooling differs
    assert top[0, 6] == pytest.approx(0.5, abs=1e-3) and top[0, 7] == pytest.approx(1.0, abs=1e-3)  # mean and max of p


def test_the_segmentation_is_not_moved_by_the_diagnosis_loss_through_the_pooling() -> None:
    head = LesionAwareHead([2], num_classes=2, dropout=0.0, hidden=4)
    seg = torch.randn(1, 2, 4, 4, requires_grad=True)
    head([torch.randn(1, 2, 4, 4)], seg).sum().backward()
    assert seg.grad is None or torch.count_nonzero(seg.grad) == 0


def test_bad_pooling_is_refused() -> None:
    with pytest.raises(ValueError, match="cls_pooling"):
        MultiTaskUNet(cls_pooling="attention")


def test_contradictions_count_both_kinds() -> None:
    # classes: glioma 0, no_tumor 1; images of 10000 voxels, threshold 2 voxels (2e-4)
    pred = np.array([1, 1, 0, 0, 0, 1])
    voxels = np.array([0, 5, 0, 30, 1, 1])
    out = contradictions(pred, voxels, np.full(6, 10000), tumor_free=1)
    assert out["tumor_free_with_lesion"] == 1  # no_tumor over 5 voxels; 1 voxel is under the threshold
    assert out["tumor_without_lesion"] == 1  # glioma over nothing
    assert out["rate"] == pytest.approx(2 / 6)
    assert contradictions(pred, voxels, np.full(6, 10000), tumor_free=None)["rate"] is None


def test_metrics_report_the_contradiction_rate() -> None:
    classes = ["glioma", "no_tumor"]
    assert tumor_free_class(classes) == 1 and tumor_free_class(["Normal", "benign"]) == 0
    assert tumor_free_class(["benign", "malignant"]) is None
    acc = MetricsAccumulator(classes, ["background", "tumor"])
    seg_pred = np.zeros((2, 8, 8), np.uint8)
    seg_pred[0, :2, :2] = 1  # a lesion under a no_tumor diagnosis: a contradiction
    acc.update(seg_pred, np.zeros((2, 8, 8), np.uint8), np.array([0, 0]), np.array([[0.2, 0.8], [0.3, 0.7]]),
               np.array([1, 1]), np.array([1, 1]))
    con = acc.compute()["consistency"]
    assert con["rate"] == pytest.approx(0.5) and con["tumor_free_with_lesion"] == 1


def test_lesion_guidance_pools_with_the_true_mask_in_training_only() -> None:
    from scripts.train.training import prepare_batch, prepare_guided_batch

    torch.manual_seed(0)
    net = MultiTaskUNet(spatial_dims=2, in_channels=1, num_classes=3, channels=(4, 8, 16), cls_pooling="lesion",
                        dropout=0.0).eval()
    x = torch.randn(2, 1, 32, 32)
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, 0, 4:12, 20:28] = 1.0  # sample 0 has a lesion; sample 1 is tumor-free
    with torch.no_grad():
        plain, guided = net(x)["cls"], net(x, lesion=mask)["cls"]
        assert not torch.allclose(guided[0], plain[0])  # the mask steers the lesion pooling
        torch.testing.assert_close(guided[1], plain[1])  # an empty mask leaves the predicted lesion alone
        torch.testing.assert_close(torch.jit.script(net)(x, lesion=mask)["cls"], guided)
        glob = MultiTaskUNet(spatial_dims=2, in_channels=1, num_classes=3, channels=(4, 8, 16), dropout=0.0).eval()
        torch.testing.assert_close(glob(x, lesion=mask)["cls"], glob(x)["cls"])  # the global head ignores it

    label = torch.zeros(3, 1, 8, 8, dtype=torch.long)
    label[0, 0, 2:4, 2:4] = 1
    label[2, 0, 5:7, 5:7] = 2  # a second segment is lesion too; sample 2 carries no usable mask
    batch = {"image": torch.randn(3, 1, 8, 8), "label": label, "class": torch.tensor([0, 1, 2]),
             "has_seg": torch.tensor([1.0, 1.0, 0.0]), "has_cls": torch.ones(3)}
    image, targets, args, kwargs = prepare_guided_batch(batch, "cpu", rate=1.0)
    ref_image, ref_targets = prepare_batch(batch, "cpu")
    torch.testing.assert_close(image, ref_image)
    assert args == () and sorted(kwargs) == ["lesion"] and kwargs["lesion"].shape == (3, 1, 8, 8)
    assert kwargs["lesion"][0].sum() == 4 and kwargs["lesion"][1].sum() == 0 and kwargs["lesion"][2].sum() == 0
    assert all(torch.equal(targets[k], ref_targets[k]) for k in ref_targets)


def test_lesion_guidance_rate_guides_that_share_of_the_samples() -> None:
    from scripts.train.training import prepare_guided_batch

    label = torch.ones(400, 1, 2, 2, dtype=torch.long)
    batch = {"image": torch.zeros(400, 1, 2, 2), "label": label, "class": torch.zeros(400, dtype=torch.long),
             "has_seg": torch.ones(400), "has_cls": torch.ones(400)}
    torch.manual_seed(0)
    guided = prepare_guided_batch(batch, "cpu", rate=0.5)[3]["lesion"].flatten(1).amax(1)
    assert set(guided.tolist()) == {0.0, 1.0} and 0.4 < guided.mean().item() < 0.6
    assert prepare_guided_batch(batch, "cpu", rate=0.0)[3]["lesion"].sum() == 0
    with pytest.raises(ValueError, match="guidance rate"):
        prepare_guided_batch(batch, "cpu", rate=1.5)
