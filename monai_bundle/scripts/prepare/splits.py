"""Seeded, group-respecting, class-stratified splits; official splits kept; k-fold on request.

Rules, in order:

1. A group (patient) is never divided: all its samples land in one split.
2. Official splits are kept. A group whose samples carry different official splits goes to the
   latest of ``test`` > ``validation`` > ``training`` (this is how regrouped duplicates of a test
   image follow it), with a warning.
3. A split is drawn from the remaining groups only when the data set has no official one of that
   name: ``validation`` with ``val_fraction`` and ``test`` with ``test_fraction`` of the remaining
   samples. BRISC keeps its official ``test`` and draws ``validation`` from its ``train`` folder.
4. Within each class (a group's class is its samples' most common one), groups are shuffled by
   the seed, taken largest first, and each goes to the split furthest below its target count, so
   every split gets its share of every class.
5. k-fold (``folds >= 2``): ``test`` is held out as above, the rest is cut into k group-disjoint,
   stratified folds; fold i is ``validation`` of datalist i and the others its ``training``.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict

from scripts.prepare.common import SPLITS, PrepareError, Sample

_PRIORITY = {name: i for i, name in enumerate(SPLITS)}


def _groups(samples: list[Sample]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[s.group].append(i)
    return dict(sorted(groups.items()))


def _official(samples: list[Sample], groups: dict[str, list[int]], warnings: list[str]) -> dict[str, str]:
    """Group -> official split, for groups with any official sample."""
    fixed = {}
    for g, members in groups.items():
        names = {samples[i].split for i in members if samples[i].split}
        if not names:
            continue
        fixed[g] = max(names, key=_PRIORITY.__getitem__)
        moved = [samples[i].key for i in members if samples[i].split and samples[i].split != fixed[g]]
        if moved:
            warnings.append(
                f"group {g}: {len(moved)} sample(s) moved from their official split to {fixed[g]} "
                "to keep the group together"
            )
        joined = [samples[i].key for i in members if not samples[i].split]
        if joined:
            warnings.append(
                f"group {g}: {len(joined)} sample(s) without an official split follow the group to {fixed[g]}"
            )
    return fixed


def _stratum(samples: list[Sample], members: list[int]) -> int:
    counts = Counter(-1 if samples[i].class_index is None else samples[i].class_index for i in members)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def _allocate(
    samples: list[Sample], groups: dict[str, list[int]], names: list[str], fractions: list[float], seed: int
) -> dict[str, str]:
    """Assign each group to one of ``names`` so every class meets ``fractions`` as closely as groups allow."""
    rng = random.Random(seed)
    by_stratum: dict[int, list[str]] = defaultdict(list)
    for g, members in groups.items():
        by_stratum[_stratum(samples, members)].append(g)
    out: dict[str, str] = {}
    for stratum in sorted(by_stratum):
        gs = by_stratum[stratum]
        rng.shuffle(gs)
        gs.sort(key=lambda g: -len(groups[g]))  # stable: the shuffle breaks ties between equal sizes
        total = sum(len(groups[g]) for g in gs)
        counts = [0] * len(names)
        for g in gs:
            deficits = [f * total - c for f, c in zip(fractions, counts)]
            k = max(range(len(names)), key=lambda j: (deficits[j], -j))
            out[g] = names[k]
            counts[k] += len(groups[g])
    _fill_empty(samples, groups, out, names, fractions)
    return out


def _fill_empty(
    samples: list[Sample], groups: dict[str, list[int]], out: dict[str, str], names: list[str], fractions: list[float]
) -> None:
    """On tiny data sets a drawn split can stay empty: move it the smallest group of the first split."""
    for name, frac in zip(names[1:], fractions[1:]):
        if frac <= 0 or name in out.values():
            continue
        donors = sorted((g for g, n in out.items() if n == names[0]), key=lambda g: (len(groups[g]), g))
        if len(donors) > 1:
            out[donors[0]] = name


def _kfold(samples: list[Sample], groups: dict[str, list[int]], folds: int, seed: int) -> dict[str, int]:
    """Group -> fold index, stratified by class, balanced by sample count."""
    if len(groups) < folds:
        raise PrepareError(
            f"{folds}-fold cross-validation needs at least {folds} groups, the data set has {len(groups)}"
        )
    rng = random.Random(seed)
    by_stratum: dict[int, list[str]] = defaultdict(list)
    for g, members in groups.items():
        by_stratum[_stratum(samples, members)].append(g)
    totals = [0] * folds
    out: dict[str, int] = {}
    for stratum in sorted(by_stratum):
        gs = by_stratum[stratum]
        rng.shuffle(gs)
        gs.sort(key=lambda g: -len(groups[g]))
        counts = [0] * folds
        for g in gs:
            k = min(range(folds), key=lambda j: (counts[j], totals[j], j))
            out[g] = k
            counts[k] += len(groups[g])
            totals[k] += len(groups[g])
    return out


def split_samples(
    samples: list[Sample],
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    folds: int = 0,
    warnings: list[str] | None = None,
) -> list[dict[int, str]]:
    """Assign every sample a split (see the module docstring for the rules).

    Args:
        samples: collected samples (``group``, ``class_index``, official ``split`` are read).
        val_fraction / test_fraction: shares of the samples without an official split, used only
            for splits the data set does not provide.
        seed: the random seed; the same inputs and seed give the same splits.
        folds: 0 for one split; k >= 2 for k-fold cross-validation.
        warnings: messages about moved official samples are appended here.

    Returns:
        one ``{sample index: split name}`` per datalist (one, or ``folds``).

    Raises:
        PrepareError: fractions outside [0, 1) or summing to 1 or more, ``folds`` of 1 or negative,
            or fewer groups than folds.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise PrepareError(
            f"split fractions must be in [0, 1) and sum below 1, got validation {val_fraction}, test {test_fraction}"
        )
    if folds == 1 or folds < 0:
        raise PrepareError(f"folds must be 0 (no cross-validation) or at least 2, got {folds}")
    warn = warnings if warnings is not None else []
    groups = _groups(samples)
    fixed = _official(samples, groups, warn)
    free = {g: m for g, m in groups.items() if g not in fixed}
    official = set(fixed.values())
    draw_test = "test" not in official and test_fraction > 0
    draw_val = "validation" not in official and (val_fraction > 0 or folds)
    if folds:
        held = (
            _allocate(samples, free, ["training", "test"], [1 - test_fraction, test_fraction], seed)
            if draw_test
            else {}
        )
        fold_of = _kfold(samples, {g: m for g, m in free.items() if held.get(g) != "test"}, folds, seed)
        return [
            _by_sample(
                samples, {**fixed, **held, **{g: ("validation" if f == k else "training") for g, f in fold_of.items()}}
            )
            for k in range(folds)
        ]
    names, fractions = ["training"], [1.0]
    if draw_val:
        names.append("validation")
        fractions.append(val_fraction)
    if draw_test:
        names.append("test")
        fractions.append(test_fraction)
    fractions[0] = 1.0 - sum(fractions[1:])
    return [_by_sample(samples, {**fixed, **_allocate(samples, free, names, fractions, seed)})]


def _by_sample(samples: list[Sample], group_split: dict[str, str]) -> dict[int, str]:
    return {i: group_split[s.group] for i, s in enumerate(samples)}
