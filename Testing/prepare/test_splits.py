"""Splits: groups never divided, classes stratified, seeds reproducible, official splits kept, k-fold."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from scripts.prepare.common import PrepareError, Sample
from scripts.prepare.splits import split_samples


def _samples(n_groups: int, per_group: int, classes, split=None) -> list[Sample]:
    return [
        Sample(key=f"s{g}_{k}", image=f"/x/{g}_{k}.png", class_index=classes(g), group=f"p{g}", split=split)
        for g in range(n_groups)
        for k in range(per_group)
    ]


def _groups_by_split(samples, assignment) -> dict[str, set[str]]:
    out = defaultdict(set)
    for i, s in enumerate(samples):
        out[s.group].add(assignment[i])
    return out


def test_groups_are_never_divided():
    samples = _samples(20, 3, lambda g: g % 3)
    for seed in range(5):
        (assignment,) = split_samples(samples, 0.2, 0.2, seed=seed)
        assert all(len(splits) == 1 for splits in _groups_by_split(samples, assignment).values())
        assert set(assignment.values()) == {"training", "validation", "test"}


def test_each_class_is_split_in_proportion():
    samples = _samples(40, 1, lambda g: 0 if g < 30 else 1)
    (assignment,) = split_samples(samples, 0.2, 0.2, seed=3)
    counts = Counter((samples[i].class_index, split) for i, split in assignment.items())
    # 30 of class 0 -> 18/6/6, 10 of class 1 -> 6/2/2
    assert counts == {
        (0, "training"): 18,
        (0, "validation"): 6,
        (0, "test"): 6,
        (1, "training"): 6,
        (1, "validation"): 2,
        (1, "test"): 2,
    }


def test_same_seed_same_split_other_seed_other_split():
    samples = _samples(30, 2, lambda g: g % 2)
    a = split_samples(samples, 0.2, 0.2, seed=1)
    assert a == split_samples(samples, 0.2, 0.2, seed=1)
    assert a != split_samples(samples, 0.2, 0.2, seed=2)


def test_official_test_kept_and_no_test_drawn():
    pool = _samples(10, 1, lambda g: g % 2)
    official = [Sample(key=f"t{i}", image=f"/t/{i}.png", class_index=i % 2, split="test") for i in range(4)]
    samples = pool + official
    (assignment,) = split_samples(samples, 0.2, 0.3, seed=0)
    assert [assignment[i] for i in range(10, 14)] == ["test"] * 4
    assert Counter(assignment[i] for i in range(10)) == {"training": 8, "validation": 2}


def test_group_with_mixed_official_splits_goes_to_test_with_a_warning():
    samples = [
        Sample(key="a", image="/a.png", class_index=0, group="g", split="test"),
        Sample(key="b", image="/b.png", class_index=0, group="g", split="training"),
        Sample(key="c", image="/c.png", class_index=0, group="g"),
    ] + _samples(6, 1, lambda g: 0)
    warnings: list[str] = []
    (assignment,) = split_samples(samples, 0.2, 0.2, warnings=warnings)
    assert [assignment[i] for i in range(3)] == ["test"] * 3
    assert warnings == [
        "group g: 1 sample(s) moved from their official split to test to keep the group together",
        "group g: 1 sample(s) without an official split follow the group to test",
    ]


def test_kfold_each_group_validates_once_and_test_is_shared():
    samples = _samples(25, 2, lambda g: g % 2)
    folds = split_samples(samples, 0.2, 0.2, seed=0, folds=5)
    assert len(folds) == 5
    test = {i for i, s in folds[0].items() if s == "test"}
    assert test and all({i for i, s in f.items() if s == "test"} == test for f in folds)
    val_count = Counter(i for f in folds for i, s in f.items() if s == "validation")
    assert set(val_count) == set(range(50)) - test and set(val_count.values()) == {1}
    for f in folds:
        assert all(len(s) == 1 for s in _groups_by_split(samples, f).values())
        assert {samples[i].class_index for i, s in f.items() if s == "validation"} == {0, 1}


def test_tiny_data_still_gets_a_validation_sample():
    samples = _samples(3, 1, lambda g: g)  # one group per class: stratification alone gives all to training
    (assignment,) = split_samples(samples, 0.1, 0.0)
    assert Counter(assignment.values()) == {"training": 2, "validation": 1}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"val_fraction": 1.0}, "split fractions must be in"),
        ({"val_fraction": 0.6, "test_fraction": 0.4}, "sum below 1"),
        ({"test_fraction": -0.1}, "split fractions must be in"),
        ({"folds": 1}, "folds must be 0 .* or at least 2, got 1"),
        ({"folds": 9}, "9-fold cross-validation needs at least 9 groups, the data set has 4"),
    ],
)
def test_errors(kwargs, message):
    samples = _samples(5, 1, lambda g: 0)
    with pytest.raises(PrepareError, match=message):
        split_samples(samples, **({"val_fraction": 0.2, "test_fraction": 0.2} | kwargs))
