"""The worklist benchmark's measure (Testing/benchmarks/bench_worklist.py): share of wrong diagnoses in the list's head."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from bench_worklist import share_in_top  # noqa: E402


def test_share_in_top_by_hand() -> None:
    wrong = np.array([True, False, False, True, False, False, False, False, False, True])
    assert share_in_top(wrong, np.arange(10), 0.3) == pytest.approx(1 / 3)  # first 3 of 10 hold 1 of 3 wrong
    assert share_in_top(wrong, np.array([9, 3, 0, 1, 2, 4, 5, 6, 7, 8]), 0.3) == 1.0
    assert share_in_top(wrong, np.array([1, 2, 4, 5, 6, 7, 8, 0, 3, 9]), 0.3) == 0.0
    assert share_in_top(wrong, np.arange(10), 0.25) == pytest.approx(1 / 3)  # ceil(2.5) = 3 studies


def test_best_share_is_capped_by_the_head_of_the_list() -> None:
    from bench_worklist import best_share

    assert best_share(np.array([True] * 3 + [False] * 7), 0.3) == 1.0  # 3 wrong fit in the first 3
    assert best_share(np.array([True] * 6 + [False] * 4), 0.3) == 0.5  # 6 wrong, the first 3 hold half
