"""Clopper-Pearson intervals and the exact McNemar test against closed forms."""
from __future__ import annotations

import math

import numpy as np
import pytest

from robustkit.stats import clopper_pearson, clopper_pearson_percent, mcnemar_exact


def test_clopper_pearson_closed_forms() -> None:
    # k = 0: upper = 1 - (alpha/2)^(1/n); k = n: lower = (alpha/2)^(1/n)
    low, high = clopper_pearson(0, 10)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-9)
    low, high = clopper_pearson(10, 10)
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 10), rel=1e-9)
    low, high = clopper_pearson(50, 100)
    assert low < 0.5 < high and low == pytest.approx(1 - high, abs=1e-12)  # symmetric at p = 1/2
    assert clopper_pearson_percent(50, 100) == (39.83, 60.17)
    assert all(math.isnan(v) for v in clopper_pearson(0, 0))
    with pytest.raises(ValueError):
        clopper_pearson(11, 10)


def test_clopper_pearson_is_wider_than_wald() -> None:
    k, n = 930, 1000
    low, high = clopper_pearson(k, n)
    p = k / n
    wald = 1.96 * math.sqrt(p * (1 - p) / n)
    assert high - low > 2 * wald * 0.99


def test_mcnemar_exact() -> None:
    a = np.array([1, 1, 1, 1, 1, 0, 1, 1], dtype=bool)
    b = np.array([0, 0, 0, 0, 0, 0, 1, 1], dtype=bool)
    r = mcnemar_exact(a, b)
    assert (r.only_a, r.only_b) == (5, 0)
    assert r.p_value == pytest.approx(2 * 0.5 ** 5)  # two-sided, all discordant pairs one way
    same = mcnemar_exact(a, a)
    assert (same.only_a, same.only_b, same.p_value) == (0, 0, 1.0)
    balanced = mcnemar_exact([1, 0, 1, 0], [0, 1, 0, 1])
    assert balanced.p_value == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same samples"):
        mcnemar_exact([1, 0], [1])
