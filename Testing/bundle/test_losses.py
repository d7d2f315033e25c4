"""MultiTaskLoss: pinned values on tiny tensors (task and class weights), partial-label masking, learned task weights,
task factors (the warm-up schedule's setting), and a forward that keeps no state."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from scripts.train.losses import MultiTaskLoss, presence_logits
from scripts.core.tasks import Keys, Task

LN2, LN4 = math.log(2), math.log(4)
# DiceCE on uniform logits (p = 0.5) over a 1x2 mask [0, 1]: Dice = 2*0.5/(1+1) per class -> loss 0.5; CE = ln 2
SEG_UNIFORM = 0.5 + LN2


def _batch(has_seg=(1.0,), has_cls=(1.0,), classes=(0,)) -> tuple[dict, dict]:
    n = len(has_seg)
    preds = {Task.SEG.value: torch.zeros(n, 2, 1, 2, requires_grad=True), Task.CLS.value: torch.zeros(n, 4, requires_grad=True)}
    targets = {
        Task.SEG.value: torch.tensor([[[[0, 1]]]] * n),
        Task.CLS.value: torch.tensor(classes),
        Keys.HAS_SEG.value: torch.tensor(has_seg),
        Keys.HAS_CLS.value: torch.tensor(has_cls),
    }
    return preds, targets


def test_pinned_fixed_weights() -> None:
    loss = MultiTaskLoss(2, 4, task_weights={"seg": 1.0, "cls": 0.5})
    preds, targets = _batch()
    assert loss(preds, targets).item() == pytest.approx(SEG_UNIFORM + 0.5 * LN4, abs=1e-4)
    terms = {t.value: v.item() for t, v in loss.task_terms(preds, targets).items()}
    assert terms == pytest.approx({"seg": SEG_UNIFORM, "cls": LN4}, abs=1e-4)


def test_pinned_uncertainty_weights_at_zero_log_variance() -> None:
    loss = MultiTaskLoss(2, 4, weighting="uncertainty")
    preds, targets = _batch()
    assert loss(preds, targets).item() == pytest.approx(0.5 * SEG_UNIFORM + 0.5 * LN4, abs=1e-4)


def test_a_zero_task_factor_drops_the_diagnosis_term() -> None:
    loss = MultiTaskLoss(2, 4, task_weights={"seg": 1.0, "cls": 0.5})
    assert loss.task_factors == {"seg": 1.0, "cls": 1.0}
    loss.task_factors = {"cls": 0.0}  # the warm-up: a task not named keeps factor 1
    assert loss.task_factors == {"seg": 1.0, "cls": 0.0}
    preds, targets = _batch()
    assert loss(preds, targets).item() == pytest.approx(SEG_UNIFORM, abs=1e-4)
    loss.task_factors = {"seg": 1.0, "cls": 2.0}  # a factor multiplies the task's weighted term
    assert loss(preds, targets).item() == pytest.approx(SEG_UNIFORM + 2.0 * 0.5 * LN4, abs=1e-4)


def test_a_zero_task_factor_drops_the_whole_uncertainty_term() -> None:
    loss = MultiTaskLoss(2, 4, weighting="uncertainty")
    with torch.no_grad():
        loss.log_vars["cls"].fill_(1.0)  # a non-zero 0.5 * s that must not count either
    loss.task_factors = {"seg": 1.0, "cls": 0.0}
    preds, targets = _batch()
    value = loss(preds, targets)
    assert value.item() == pytest.approx(0.5 * SEG_UNIFORM, abs=1e-4)
    value.backward()
    assert loss.log_vars["cls"].grad is None and loss.log_vars["seg"].grad is not None  # AdamW skips it, as before


@pytest.mark.parametrize(("factors", "match"), [
    ({"det": 1.0}, "task_factors keys must be"),
    ({"cls": -1.0}, "task_factors must be finite and non-negative"),
    ({"cls": float("nan")}, "task_factors must be finite and non-negative"),
])
def test_invalid_task_factors(factors: dict, match: str) -> None:
    loss = MultiTaskLoss(2, 4)
    with pytest.raises(ValueError, match=match):
        loss.task_factors = factors
    assert loss.task_factors == {"seg": 1.0, "cls": 1.0}  # unchanged


def _snapshot(module: torch.nn.Module) -> dict:
    """Every plain attribute of the module and its submodules, and its state dict (copies)."""
    skip = {"_parameters", "_buffers", "_modules"}
    attrs = {name: {k: copy.deepcopy(v) for k, v in vars(m).items() if k not in skip and not callable(v)}
             for name, m in module.named_modules()}
    return {"attrs": attrs, "state": {k: v.clone() for k, v in module.state_dict().items()}}


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty"])
def test_forward_keeps_no_state(weighting: str) -> None:
    loss = MultiTaskLoss(2, 4, weighting=weighting, cls_class_weights=[1.0, 2.0, 1.0, 1.0])
    loss(*_batch())
    before = _snapshot(loss)
    preds, targets = _batch(has_seg=(1.0, 0.0), has_cls=(0.0, 1.0), classes=(-1, 2))
    with torch.no_grad():
        preds[Task.SEG.value][0, 1] = 3.0
    loss(preds, targets)
    after = _snapshot(loss)
    assert after["attrs"] == before["attrs"]
    torch.testing.assert_close(after["state"], before["state"])


def test_the_state_dict_keys_are_those_of_earlier_checkpoints() -> None:
    # checkpoint_last.pt files written before the task factors hold exactly these keys for the default loss
    loss = MultiTaskLoss(2, 4, weighting="uncertainty")
    assert set(loss.state_dict()) == {"log_vars.seg", "log_vars.cls"}
    loss.task_factors = {"cls": 0.0}
    loss.load_state_dict({"log_vars.seg": torch.tensor(0.3), "log_vars.cls": torch.tensor(-0.2)})  # strict
    assert float(loss.log_vars["seg"].detach()) == pytest.approx(0.3) and loss.task_factors["cls"] == 0.0


def test_samples_without_a_target_do_not_count() -> None:
    loss = MultiTaskLoss(2, 4)
    preds, targets = _batch(has_seg=(1.0, 0.0), has_cls=(0.0, 1.0), classes=(-1, 0))
    with torch.no_grad():  # garbage where the target is missing must not change the loss
        preds[Task.SEG.value][1] = 50.0
        preds[Task.CLS.value][0] = torch.tensor([9.0, -9.0, 3.0, 1.0])
    assert loss(preds, targets).item() == pytest.approx(SEG_UNIFORM + LN4, abs=1e-4)


def test_batch_without_any_target_gives_zero_with_a_graph() -> None:
    loss = MultiTaskLoss(2, 4)
    preds, targets = _batch(has_seg=(0.0,), has_cls=(0.0,), classes=(-1,))
    value = loss(preds, targets)
    value.backward()
    assert value.item() == 0.0 and loss.task_terms(preds, targets) == {}


def test_uncertainty_weights_are_optimised_and_fixed_ones_are_not() -> None:
    torch.manual_seed(0)
    for weighting, should_move in (("uncertainty", True), ("fixed", False)):
        loss = MultiTaskLoss(2, 4, weighting=weighting)
        head = torch.nn.Linear(3, 4)
        params = list(head.parameters()) + [p for p in loss.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=0.1)
        before = {k: float(v) for k, v in loss.log_vars.items()}
        for _ in range(5):
            preds, targets = _batch()
            preds[Task.CLS.value] = head(torch.randn(1, 3))
            opt.zero_grad()
            loss(preds, targets).backward()
            opt.step()
        after = {k: float(v) for k, v in loss.log_vars.items()}
        moved = all(abs(after[k] - before[k]) > 1e-3 for k in before)
        assert moved is should_move, (weighting, before, after)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"weighting": "gradnorm"}, "weighting must be one of"),
        ({"task_weights": {"seg": 1.0, "det": 1.0}}, "task_weights keys must be"),
        ({"task_weights": {"seg": -1.0}}, "task_weights must be non-negative"),
        ({"label_smoothing": 1.0}, r"label_smoothing must be in \[0, 1\), got 1.0"),
        ({"seg_class_weights": [1.0]}, "seg_class_weights must have 2 entries"),
        ({"cls_class_weights": [0.0, 0.0, 0.0, 0.0]}, "cls_class_weights must be non-negative and not all zero"),
        ({"dice_sample_share": 1.5}, r"dice_sample_share must be in \[0, 1\], got 1.5"),
        ({"presence_weight": -0.5}, "presence_weight must be finite and non-negative, got -0.5"),
        ({"presence_top_k": 0}, "presence_top_k must be at least 1, got 0"),
        ({"presence_positive_weight": float("nan")}, "presence_positive_weight must be finite and non-negative"),
        ({"cls_logit_adjustment": -1.0}, "cls_logit_adjustment must be finite and non-negative"),
        ({"cls_logit_adjustment": 1.0, "cls_log_prior": [0.0, 0.0]}, "cls_log_prior must be 4 finite values"),
    ],
)
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MultiTaskLoss(2, 4, **kwargs)


def test_label_smoothing_changes_the_value() -> None:
    preds, targets = _batch()
    with torch.no_grad():
        preds[Task.CLS.value][0, 1] = 2.0
    plain = MultiTaskLoss(2, 4, task_weights={"seg": 0.0, "cls": 1.0})(preds, targets)
    smoothed = MultiTaskLoss(2, 4, task_weights={"seg": 0.0, "cls": 1.0}, label_smoothing=0.2)(preds, targets)
    assert plain.item() != pytest.approx(smoothed.item())


def test_pinned_cls_class_weights() -> None:
    # sample 0 is class 0 at uniform logits (CE ln 4); sample 1 is class 1 with logit 2 on it (CE ln(e^2 + 3) - 2)
    preds, targets = _batch(has_seg=(0.0, 0.0), has_cls=(1.0, 1.0), classes=(0, 1))
    with torch.no_grad():
        preds[Task.CLS.value][1, 1] = 2.0
    ce0, ce1 = LN4, math.log(math.e**2 + 3) - 2
    plain = MultiTaskLoss(2, 4)(preds, targets).item()
    weighted = MultiTaskLoss(2, 4, cls_class_weights=[1.0, 3.0, 1.0, 1.0])(preds, targets).item()
    absent_weighted = MultiTaskLoss(2, 4, cls_class_weights=[1.0, 3.0, 7.0, 9.0])(preds, targets).item()
    assert plain == pytest.approx((ce0 + ce1) / 2, abs=1e-5)
    assert weighted == pytest.approx((1.0 * ce0 + 3.0 * ce1) / (1.0 + 3.0), abs=1e-5)  # mean weighted by the targets' class
    assert absent_weighted == pytest.approx(weighted, abs=1e-6)  # classes no sample has do not count


def test_pinned_seg_class_weights() -> None:
    # one 1x2 mask [0, 1]; pixel 0 at uniform logits, pixel 1 with tumor logit 2 (p = sigmoid(2))
    preds, targets = _batch(has_cls=(0.0,), classes=(-1,))
    with torch.no_grad():
        preds[Task.SEG.value][0, 1, 0, 1] = 2.0
    p = 1 / (1 + math.exp(-2))
    ce = (LN2, math.log(1 + math.exp(-2)))  # per pixel, target background / tumor
    dice = (1 - 2 * 0.5 / (0.5 + (1 - p) + 1), 1 - 2 * p / (0.5 + p + 1))  # per class, softmax over the batch
    plain = MultiTaskLoss(2, 4, dice_include_background=True)(preds, targets).item()
    weighted = MultiTaskLoss(2, 4, seg_class_weights=[1.0, 4.0], dice_include_background=True)(preds, targets).item()
    # the default Dice term scores the lesion only (nnU-Net); the CE still covers both classes
    assert MultiTaskLoss(2, 4)(preds, targets).item() == pytest.approx((ce[0] + ce[1]) / 2 + dice[1], abs=1e-4)
    assert plain == pytest.approx((ce[0] + ce[1]) / 2 + (dice[0] + dice[1]) / 2, abs=1e-4)
    # MONAI's DiceCELoss weights both terms: the CE is the pixel mean weighted by the target class, and
    # each class's Dice loss is multiplied by its weight before the mean over classes (not renormalised)
    assert weighted == pytest.approx((1.0 * ce[0] + 4.0 * ce[1]) / 5.0 + (1.0 * dice[0] + 4.0 * dice[1]) / 2, abs=1e-4)


def test_balanced_class_weights_follow_the_training_class_counts() -> None:
    from scripts.train.losses import class_weights_for

    samples = [{"class": 0}] * 6 + [{"class": 1}] * 3 + [{"class": 2}] * 1 + [{"image": "no class"}]
    assert class_weights_for("balanced", samples, 3) == pytest.approx([10 / 18, 10 / 9, 10 / 3], abs=1e-4)
    assert class_weights_for("balanced", [{"class": 0}] * 99 + [{"class": 1}], 3) == [0.3367, 4.0, 4.0]  # clipped; absent
    assert class_weights_for([1, 2], samples, 2) == [1.0, 2.0] and class_weights_for(None, samples, 3) is None
    # what `--cls_class_weights null` on the command line hands the config: a string
    assert class_weights_for("null", samples, 3) is None and class_weights_for("None", samples, 3) is None
    with pytest.raises(ValueError, match="balanced"):
        class_weights_for("inverse", samples, 3)


def _one_big_one_small_lesion() -> tuple[dict, dict]:
    """Two 32x32 images: a 16x16 lesion segmented exactly, a 2x2 lesion missed (confident logits)."""
    mask = torch.zeros(2, 1, 32, 32, dtype=torch.long)
    mask[0, 0, 8:24, 8:24] = 1
    mask[1, 0, 4:6, 4:6] = 1
    predicted = mask.clone()
    predicted[1] = 0  # the small lesion is missed
    logits = torch.cat([(predicted == 0).float(), (predicted == 1).float()], dim=1) * 8.0 - 4.0
    preds = {Task.SEG.value: logits.requires_grad_(), Task.CLS.value: torch.zeros(2, 4)}
    targets = {Task.SEG.value: mask, Task.CLS.value: torch.tensor([0, 1]),
               Keys.HAS_SEG.value: torch.ones(2), Keys.HAS_CLS.value: torch.ones(2)}
    return preds, targets


def test_the_per_image_dice_share_makes_a_missed_small_lesion_count() -> None:
    """Over the batch a missed 4-pixel lesion beside a found 256-pixel one costs ~1.5 % of the Dice; per image
    it costs half of it. Share 0 is the batch DiceCE unchanged, share 1 MONAI's per-image DiceCE, between a mix."""
    from monai.losses import DiceCELoss

    preds, targets = _one_big_one_small_lesion()
    seg, mask = preds[Task.SEG.value], targets[Task.SEG.value]
    value = {share: MultiTaskLoss(2, 4, dice_sample_share=share).task_terms(preds, targets)[Task.SEG].item()
             for share in (0.0, 0.5, 1.0)}
    batch = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, include_background=False)(seg, mask).item()
    per_image = DiceCELoss(to_onehot_y=True, softmax=True, batch=False, include_background=False)(seg, mask).item()
    assert value[0.0] == pytest.approx(batch, abs=1e-6) and value[1.0] == pytest.approx(per_image, abs=1e-6)
    assert value[0.5] == pytest.approx((batch + per_image) / 2, abs=1e-6)
    assert value[1.0] - value[0.0] > 0.4  # the missed small lesion: ~0.5 per image against ~0.02 over the batch
    # and the gradient on the missed lesion's pixels is many times larger with the per-image share
    def grad_on_small(share: float) -> float:
        p, t = _one_big_one_small_lesion()
        MultiTaskLoss(2, 4, dice_sample_share=share, lambda_ce=0.0).task_terms(p, t)[Task.SEG].backward()
        return p[Task.SEG.value].grad[1, 1, 4:6, 4:6].abs().sum().item()
    assert grad_on_small(1.0) > 10 * grad_on_small(0.0)
    # share 0 adds no module (earlier checkpoints' loss state loads unchanged)
    assert MultiTaskLoss(2, 4).sample_dice is None and MultiTaskLoss(2, 4, dice_sample_share=0.5).sample_dice is not None


def test_presence_logits_are_the_mean_of_the_top_k_pixel_lesion_logits() -> None:
    seg = torch.zeros(1, 3, 2, 3)
    seg[0, 1, 0, :] = torch.tensor([1.0, 2.0, 3.0])  # class 1 on the first row; class 2 and background at 0
    # pixel lesion logit: log(e^{s1} + e^{s2}) - s0
    z = torch.log(torch.exp(seg[0, 1]) + torch.exp(seg[0, 2])).reshape(-1)
    assert presence_logits(seg, 2).item() == pytest.approx(z.topk(2).values.mean().item(), abs=1e-6)
    assert presence_logits(seg, 100).item() == pytest.approx(z.mean().item(), abs=1e-6)  # k clipped to the pixels


def test_the_presence_term_costs_a_small_false_segment_on_a_tumour_free_image() -> None:
    """A 4-pixel false segment on a 32x32 image without a lesion: the pixel-summed Dice and CE terms barely
    notice it, the presence term costs it like a wrong image-level answer; with a lesion, a confident
    lesion answer is cheap. Weight 0 leaves the loss unchanged."""
    seg = torch.full((2, 2, 32, 32), 4.0)
    seg[:, 1] = -4.0  # confidently background everywhere...
    seg[0, 1, 3:5, 3:5] = 8.0  # ...but image 0 (tumour-free) has a confident 4-pixel false segment
    seg[1, 1, 10:14, 10:14] = 8.0  # image 1 segments its 16-pixel lesion
    mask = torch.zeros(2, 1, 32, 32, dtype=torch.long)
    mask[1, 0, 10:14, 10:14] = 1
    preds = {Task.SEG.value: seg.clone().requires_grad_(), Task.CLS.value: torch.zeros(2, 4)}
    targets = {Task.SEG.value: mask, Task.CLS.value: torch.tensor([0, 1]),
               Keys.HAS_SEG.value: torch.ones(2), Keys.HAS_CLS.value: torch.ones(2)}
    plain = MultiTaskLoss(2, 4).task_terms(preds, targets)[Task.SEG].item()
    with_presence = MultiTaskLoss(2, 4, presence_weight=1.0).task_terms(preds, targets)[Task.SEG].item()
    presence = MultiTaskLoss(2, 4, presence_weight=1.0, presence_top_k=4).presence_loss(seg, mask).item()
    assert with_presence == pytest.approx(plain + presence, abs=1e-5)
    # image 0: its 4 false pixels have lesion logit 8 - 4 = 4 -> BCE ~ 4; image 1: its lesion says so -> ~ 0
    assert presence > 1.5 and plain < 0.8
    image0 = torch.nn.functional.binary_cross_entropy_with_logits(presence_logits(seg, 4)[:1], torch.zeros(1))
    assert presence == pytest.approx(image0.item() / 2, rel=0.01)
    # removing the false segment removes the presence cost
    clean = seg.clone()
    clean[0, 1, 3:5, 3:5] = -4.0
    assert MultiTaskLoss(2, 4, presence_weight=1.0).presence_loss(clean, mask).item() < 0.01
    assert MultiTaskLoss(2, 4, presence_weight=0.0).task_terms(preds, targets)[Task.SEG].item() == pytest.approx(plain)
    # positive weight 0: only the tumour-free image counts; an image with a lesion adds nothing, whatever it predicts
    negatives_only = MultiTaskLoss(2, 4, presence_weight=1.0, presence_positive_weight=0.0)
    assert negatives_only.presence_loss(seg, mask).item() == pytest.approx(image0.item() / 2, rel=1e-4)
    missed = seg.clone()
    missed[1, 1] = -4.0  # image 1's lesion missed
    assert negatives_only.presence_loss(missed, mask).item() == pytest.approx(image0.item() / 2, rel=1e-4)
    assert MultiTaskLoss(2, 4, presence_weight=1.0).presence_loss(missed, mask).item() > presence + 1.0


def test_class_log_prior_counts_the_training_classes() -> None:
    from scripts.train.losses import class_log_prior

    samples = [{"class": 0}] * 6 + [{"class": 1}] * 3 + [{"class": 2}] + [{"image": "no class"}]
    assert class_log_prior(samples, 3) == pytest.approx([math.log(0.6), math.log(0.3), math.log(0.1)], abs=1e-6)
    assert class_log_prior(samples, 4)[3] == pytest.approx(math.log(0.5 / 10), abs=1e-6)  # absent: half a sample
    assert class_log_prior([{"image": "x"}], 3) is None


def test_logit_adjustment_shifts_the_training_logits_by_the_log_prior() -> None:
    """The diagnosis CE sees ``logits + tau * log prior``: pinned against cross_entropy on the shifted logits.
    On a balanced prior it changes nothing; at tau 0 (the default) no buffer is added to the state dict."""
    prior = [math.log(0.7), math.log(0.2), math.log(0.05), math.log(0.05)]
    preds, targets = _batch(has_seg=(1.0, 1.0), has_cls=(1.0, 1.0), classes=(0, 2))
    logits = torch.tensor([[0.5, 0.1, -0.2, 0.0], [0.3, 0.2, 0.1, -0.1]])
    preds[Task.CLS.value] = logits
    for tau in (0.5, 1.0):
        loss = MultiTaskLoss(2, 4, cls_log_prior=prior, cls_logit_adjustment=tau)
        expected = torch.nn.functional.cross_entropy(logits + tau * torch.tensor(prior), torch.tensor([0, 2]))
        assert loss.task_terms(preds, targets)[Task.CLS].item() == pytest.approx(expected.item(), abs=1e-5)
    plain = MultiTaskLoss(2, 4).task_terms(preds, targets)[Task.CLS].item()
    balanced = MultiTaskLoss(2, 4, cls_log_prior=[math.log(0.25)] * 4, cls_logit_adjustment=1.0)
    assert balanced.task_terms(preds, targets)[Task.CLS].item() == pytest.approx(plain, abs=1e-6)
    # the rare class's true logit must now beat the frequent class by a margin: its loss is larger
    adjusted = MultiTaskLoss(2, 4, cls_log_prior=prior, cls_logit_adjustment=1.0)
    assert adjusted.task_terms(preds, targets)[Task.CLS].item() > plain
    assert "cls_prior_shift" not in adjusted.state_dict() and MultiTaskLoss(2, 4, cls_log_prior=prior).cls_prior_shift is None
