"""Exact statistics for published accuracies: Clopper-Pearson intervals and McNemar's exact test.

Why exact: robustness numbers are often measured on a few hundred or thousand samples and sit near 0% or
100%, where normal-approximation (Wald) intervals are too narrow or leave [0, 1]. The Clopper-Pearson
interval is conservative (coverage >= the nominal level), and McNemar's test on the discordant pairs is the
right test when two models are evaluated on the *same* samples (the two accuracies are paired, not
independent). Both come from scipy (``binomtest``), not hand-written distributions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.stats import binomtest

CONFIDENCE = 0.95
ALPHA = 1.0 - CONFIDENCE


def clopper_pearson(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact two-sided interval for a binomial proportion, as fractions in [0, 1] (NaN, NaN when n == 0)."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in 0..{n}, got {successes}")
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def clopper_pearson_percent(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """:func:`clopper_pearson` in percent, rounded to 2 decimals (the leaderboard's unit)."""
    low, high = clopper_pearson(successes, n, confidence)
    return round(100.0 * low, 2), round(100.0 * high, 2)


@dataclass(frozen=True)
class McNemarResult:
    """Discordant counts and the exact two-sided p-value: ``only_a`` = samples A gets right and B wrong."""

    only_a: int
    only_b: int
    p_value: float


def mcnemar_exact(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray) -> McNemarResult:
    """Exact McNemar test of "A and B have the same accuracy" on paired per-sample outcomes.

    Under the null hypothesis each discordant sample is equally likely to favour A or B, so the count of
    samples only A gets right is Binomial(discordant, 1/2); the p-value is ``binomtest``'s two-sided one.
    No discordant pair at all gives p = 1.
    """
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need the same samples: {a.shape} vs {b.shape}")
    only_a = int((a & ~b).sum())
    only_b = int((~a & b).sum())
    if only_a + only_b == 0:
        return McNemarResult(0, 0, 1.0)
    return McNemarResult(only_a, only_b, float(binomtest(only_a, only_a + only_b, 0.5).pvalue))
