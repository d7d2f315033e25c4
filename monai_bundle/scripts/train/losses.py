"""Multi-task loss: Dice + CE for segmentation, CE for diagnosis, fixed or learned task weights.

Partial labels are the normal case: a sample without a mask (``has_seg == 0``) adds nothing to the
segmentation term, one without a diagnosis (``has_cls == 0``) nothing to the classification term.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from monai.losses import DiceCELoss, DiceLoss
from torch import nn

from scripts.core.tasks import Keys, Task

WEIGHTINGS = ("fixed", "uncertainty")


def _class_weights(name: str, weights: Sequence[float] | None, expected: int) -> torch.Tensor | None:
    if weights is None:
        return None
    w = torch.as_tensor(list(weights), dtype=torch.float32)
    if w.ndim != 1 or len(w) != expected:
        raise ValueError(f"{name} must have {expected} entries, got {list(weights)}")
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"{name} must be non-negative and not all zero, got {list(weights)}")
    return w


def _class_counts(samples: Sequence[dict], num_classes: int) -> list[int]:
    """Samples per diagnosis class (samples without a valid ``"class"`` are not counted)."""
    counts = [0] * num_classes
    for s in samples:
        c = s.get("class")
        if isinstance(c, int) and 0 <= c < num_classes:
            counts[c] += 1
    return counts


#: balanced class weights are clipped to this range (a class with 3 samples must not dominate the loss)
BALANCED_WEIGHT_RANGE = (0.25, 4.0)


def class_weights_for(weights: str | Sequence[float] | None, samples: Sequence[dict], num_classes: int) -> list[float] | None:
    """The diagnosis class weights of the config: ``"balanced"``, explicit weights, or None.

    ``"balanced"`` weighs class ``k`` by ``N / (K * n_k)`` over the training samples that carry a
    class (clipped to :data:`BALANCED_WEIGHT_RANGE`; a class without samples gets the maximum), so
    every class counts as much in the loss as it does in balanced accuracy. BUSI, for one, is 56%
    benign. Explicit weights and None pass through unchanged; the strings ``"null"`` and ``"none"``
    (how ``--cls_class_weights null`` reaches the config from the command line) mean None.

    Raises:
        ValueError: an unknown string.
    """
    if isinstance(weights, str) and weights.strip().lower() in ("null", "none", ""):
        return None  # what ``--cls_class_weights null`` on the command line arrives as
    if not isinstance(weights, str):
        return None if weights is None else [float(w) for w in weights]
    if weights != "balanced":
        raise ValueError(f"cls_class_weights must be 'balanced', a list of {num_classes} weights or null, got {weights!r}")
    counts = _class_counts(samples, num_classes)
    total = sum(counts)
    low, high = BALANCED_WEIGHT_RANGE
    if total == 0:
        return None
    return [round(min(max(total / (num_classes * n), low), high), 4) if n else high for n in counts]


def presence_logits(seg_logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """``(B,)`` image-level lesion logits of ``(B, S, *spatial)`` segmentation logits: the mean of the
    ``top_k`` largest pixel lesion logits, ``logsumexp(foreground classes) - background``."""
    z = torch.logsumexp(seg_logits[:, 1:].float(), dim=1) - seg_logits[:, 0].float()
    z = z.reshape(z.shape[0], -1)
    return z.topk(min(top_k, z.shape[1]), dim=1).values.mean(dim=1)


def class_log_prior(samples: Sequence[dict], num_classes: int) -> list[float] | None:
    """``log`` of the diagnosis class frequencies over the training samples that carry a class (for
    ``MultiTaskLoss(cls_logit_adjustment=)``); a class without samples counts as half a sample. None
    when no sample carries a class."""
    counts = _class_counts(samples, num_classes)
    total = sum(counts)
    if total == 0:
        return None
    return [round(math.log(max(n, 0.5) / total), 6) for n in counts]


class MultiTaskLoss(nn.Module):
    """``loss(preds, targets)`` for the dictionaries of the network and of ``prepare_batch``.

    Args:
        seg_classes: S, segment classes including background.
        num_classes: K, diagnosis classes.
        task_weights: ``{"seg": w, "cls": w}`` for ``weighting="fixed"`` (default 1.0 / 1.0).
        weighting: ``"fixed"`` or ``"uncertainty"`` (Kendall et al. 2018: per task a learnable
            log-variance ``s``; ``0.5 * exp(-s) * L + 0.5 * s``). The ``s`` are parameters of this
            module: give ``loss.parameters()`` to the optimizer (the training config does).
        seg_class_weights: S weights of the segmentation CE term (e.g. to up-weight tumor pixels).
        cls_class_weights: K weights of the diagnosis CE (class imbalance).
        label_smoothing: of the diagnosis CE, in [0, 1).
        lambda_dice, lambda_ce: mix of the segmentation Dice and CE terms.
        dice_include_background: whether the Dice term also scores the background (default False, as
            nnU-Net: with lesions of 1 % of the image the background's near-perfect Dice halves the
            lesions' share of the gradient; the CE term always covers every class).
        dice_sample_share: share of the Dice term computed per image rather than over the whole batch,
            in [0, 1] (default 0: the batch Dice of nnU-Net's 2D setting). A batch Dice is dominated by
            the large lesions of the batch: a missed lesion of 30 pixels beside one of 3000 barely moves
            it. The per-image Dice counts every image's lesion alike, so small lesions pull as hard as
            large ones; but an image with an empty mask gives it almost no gradient (its Dice is ~1
            whatever is predicted, until the lesion logits sit some 15 below the background's), so only
            the batch share and the CE term penalise segments on tumour-free images.
        presence_weight: weight of the lesion-presence term (default 0: none). The segmentation's
            own answer to "is there a lesion?" -- the mean lesion logit of its ``presence_top_k`` most
            lesion-like pixels (voxels), the lesion logit being ``logsumexp(foreground) - background`` --
            is trained with a binary CE against "the mask is not empty". The Dice and CE terms sum over
            pixels, so a 40-pixel false segment on a tumour-free image costs them little; this term
            costs it as much as a missed image-level answer, which is what a reader and the diagnosis
            see (a tumour-free diagnosis beside a segment is a contradiction). On an image with a
            lesion it pulls the most lesion-like pixels up, so keep ``presence_top_k`` below the
            smallest lesion (in pixels at the network's input size).
        presence_positive_weight: weight of the images with a lesion in the presence term (those
            without count 1); 0 makes it a pure penalty on segments where the mask is empty.
        cls_log_prior: K log class frequencies of the training split (:func:`class_log_prior`).
        cls_logit_adjustment: ``tau`` of logit-adjusted cross-entropy (Menon et al. 2021, "Long-tail
            learning via logit adjustment"; default 0: plain CE). Training adds ``tau * log prior`` to
            the diagnosis logits before the CE; inference uses the logits as they are, so the
            prediction is the class with the largest ``p(x | class)`` -- what balanced accuracy asks
            for -- instead of leaning to the frequent classes. The alternative to balanced class
            weights (use one or the other), which reweigh the gradient instead of moving the margin.

    ``forward(preds, targets)``: ``preds = {"seg": (B, S, *spatial) logits, "cls": (B, K) logits}``;
    ``targets = {"seg": (B, 1, *spatial) int, "cls": (B,) int, "has_seg": (B,), "has_cls": (B,)}``.
    Returns the scalar total and nothing else: a call keeps no state (no per-step host sync). The
    unweighted per-task terms of a batch are :meth:`task_terms` (the training history computes them
    from the trainer's output).

    ``task_factors`` (public setting, ``{"seg": 1.0, "cls": 1.0}`` at construction) scales each task's
    contribution on top of its weighting, the way an optimizer's ``lr`` is set by a schedule:
    :class:`scripts.train.training.TaskWeightSchedule` sets the diagnosis factor to 0 during the
    segmentation-only warm-up. A task with factor 0 adds nothing at all (with ``"uncertainty"`` not
    its ``0.5 * s`` either, so its log-variance gets no gradient); factors are not part of the
    state dict (the schedule sets them again from the epoch on a resume).

    Raises:
        ValueError: an argument is out of range; the message names it and its value.
    """

    def __init__(
        self,
        seg_classes: int,
        num_classes: int,
        task_weights: dict[str, float] | None = None,
        weighting: str = "fixed",
        seg_class_weights: Sequence[float] | None = None,
        cls_class_weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        dice_include_background: bool = False,
        dice_sample_share: float = 0.0,
        presence_weight: float = 0.0,
        presence_top_k: int = 4,
        presence_positive_weight: float = 1.0,
        cls_log_prior: Sequence[float] | None = None,
        cls_logit_adjustment: float = 0.0,
    ) -> None:
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        weights = {Task.SEG.value: 1.0, Task.CLS.value: 1.0, **(task_weights or {})}
        unknown = set(weights) - {t.value for t in Task}
        if unknown:
            raise ValueError(f"task_weights keys must be {[t.value for t in Task]}, got {sorted(weights)}")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"task_weights must be non-negative and not all zero, got {weights}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if not 0.0 <= dice_sample_share <= 1.0:
            raise ValueError(f"dice_sample_share must be in [0, 1], got {dice_sample_share}")
        if not (math.isfinite(presence_weight) and presence_weight >= 0):
            raise ValueError(f"presence_weight must be finite and non-negative, got {presence_weight}")
        if int(presence_top_k) < 1:
            raise ValueError(f"presence_top_k must be at least 1, got {presence_top_k}")
        if not (math.isfinite(presence_positive_weight) and presence_positive_weight >= 0):
            raise ValueError(f"presence_positive_weight must be finite and non-negative, got {presence_positive_weight}")
        self.presence_weight, self.presence_top_k = float(presence_weight), int(presence_top_k)
        self.presence_positive_weight = float(presence_positive_weight)
        if not (math.isfinite(cls_logit_adjustment) and cls_logit_adjustment >= 0):
            raise ValueError(f"cls_logit_adjustment must be finite and non-negative, got {cls_logit_adjustment}")
        # a non-persistent buffer (it moves with .to(device)) only when used: a plain CE's state dict stays as before
        shift = None
        if cls_logit_adjustment > 0 and cls_log_prior is not None:
            prior = torch.as_tensor(list(cls_log_prior), dtype=torch.float32)
            if prior.shape != (num_classes,) or not torch.isfinite(prior).all():
                raise ValueError(f"cls_log_prior must be {num_classes} finite values, got {list(cls_log_prior)}")
            shift = float(cls_logit_adjustment) * prior
        self.cls_prior_shift: torch.Tensor | None
        self.register_buffer("cls_prior_shift", shift, persistent=False)
        self.weighting = weighting
        self.task_weights = {Task(k): float(v) for k, v in weights.items()}
        self.seg_loss = DiceCELoss(
            to_onehot_y=True, softmax=True, batch=True, lambda_dice=lambda_dice * (1.0 - dice_sample_share),
            lambda_ce=lambda_ce, include_background=dice_include_background,
            weight=_class_weights("seg_class_weights", seg_class_weights, seg_classes),
        )
        # the per-image share of the Dice (absent at share 0, so the module and its state stay as before)
        self.sample_dice_weight = lambda_dice * dice_sample_share
        self.sample_dice = (
            DiceLoss(to_onehot_y=True, softmax=True, batch=False, include_background=dice_include_background,
                     weight=self.seg_loss.dice.class_weight)  # the batch Dice's class weights, as MONAI sliced them
            if dice_sample_share > 0 else None
        )
        self.cls_loss = nn.CrossEntropyLoss(
            weight=_class_weights("cls_class_weights", cls_class_weights, num_classes), label_smoothing=label_smoothing
        )
        # one log-variance per task, used only with weighting="uncertainty"
        self.log_vars = nn.ParameterDict({t.value: nn.Parameter(torch.zeros(())) for t in Task})
        if weighting == "fixed":
            self.log_vars.requires_grad_(False)
        self._task_factors: dict[Task, float] = {t: 1.0 for t in Task}

    @property
    def task_factors(self) -> dict[str, float]:
        """The per-task factors in effect (a copy): ``{"seg": f, "cls": f}``."""
        return {t.value: f for t, f in self._task_factors.items()}

    @task_factors.setter
    def task_factors(self, factors: Mapping[str, float]) -> None:
        """Set the factors; a task not named gets 1.0.

        Raises:
            ValueError: an unknown task, or a factor that is negative or not finite.
        """
        unknown = {str(k.value if isinstance(k, Task) else k) for k in factors} - {t.value for t in Task}
        if unknown:
            raise ValueError(f"task_factors keys must be {[t.value for t in Task]}, got {sorted(unknown)}")
        values = {Task(k): float(v) for k, v in factors.items()}
        if any(not math.isfinite(v) or v < 0 for v in values.values()):
            raise ValueError(f"task_factors must be finite and non-negative, got {dict(factors)}")
        self._task_factors = {t: values.get(t, 1.0) for t in Task}

    def task_terms(self, preds: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> dict[Task, torch.Tensor]:
        """Unweighted per-task losses over the samples that carry that task's target.

        A task no sample of the batch carries is absent from the returned dict.
        """
        seg_logits, cls_logits = preds[Task.SEG], preds[Task.CLS]
        has_seg = targets[Keys.HAS_SEG].reshape(-1) > 0
        has_cls = targets[Keys.HAS_CLS].reshape(-1) > 0
        terms: dict[Task, torch.Tensor] = {}
        if has_seg.any():
            seg, mask = seg_logits[has_seg], targets[Task.SEG][has_seg].long()
            terms[Task.SEG] = self.seg_loss(seg, mask)
            if self.sample_dice is not None:
                terms[Task.SEG] = terms[Task.SEG] + self.sample_dice_weight * self.sample_dice(seg, mask)
            if self.presence_weight > 0:
                terms[Task.SEG] = terms[Task.SEG] + self.presence_weight * self.presence_loss(seg, mask)
        if has_cls.any():
            logits = cls_logits[has_cls]
            if self.cls_prior_shift is not None:
                logits = logits.float() + self.cls_prior_shift
            terms[Task.CLS] = self.cls_loss(logits, targets[Task.CLS].reshape(-1)[has_cls].long())
        return terms

    def presence_loss(self, seg_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Binary CE of the segmentation's image-level lesion logit against "the mask is not empty".

        ``seg_logits (B, S, *spatial)``, ``mask (B, 1, *spatial)``; see ``presence_weight``.
        """
        logits = presence_logits(seg_logits, self.presence_top_k)
        present = (mask.reshape(mask.shape[0], -1) > 0).any(dim=1).to(logits.dtype)
        weight = torch.where(present > 0, self.presence_positive_weight, 1.0).to(logits.dtype)
        return nn.functional.binary_cross_entropy_with_logits(logits, present, weight=weight)

    def forward(self, preds: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        terms = self.task_terms(preds, targets)
        # zero with a graph, so a batch with no usable target still back-propagates (nothing)
        total = preds[Task.SEG].sum() * 0.0 + preds[Task.CLS].sum() * 0.0
        for task, term in terms.items():
            factor = self._task_factors[task]
            if factor == 0.0:  # switched off: no term, no log-variance term, no gradient for it
                continue
            if self.weighting == "uncertainty":
                s = self.log_vars[task.value]
                total = total + factor * 0.5 * torch.exp(-s) * term + factor * 0.5 * s
            else:
                total = total + factor * self.task_weights[task] * term
        return total
