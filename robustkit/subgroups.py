"""Subgroup discrepancy: worst-group accuracy and MacroStd (docs/subgroups.md).

Following "Better May Not Be Fairer: A Study on Subgroup Discrepancy in Image Classification" (Chiu et
al., ICCV 2023), each example carries a subgroup id inside its class (e.g. the fine class of a CIFAR-100
superclass, or a stroke-thickness tercile of an MNIST digit). A cell is a (class, subgroup) pair with at
least one example; ``a_cg`` its accuracy and ``n_cg`` its size. Then

* worst-group accuracy = min over cells of ``a_cg`` (with the cell's Clopper-Pearson interval);
* MacroStd = (1 / |classes|) * sum_c sqrt( sum_g n_cg (a_cg - mu_c)^2 / sum_g n_cg ),
  mu_c = sum_g n_cg a_cg / sum_g n_cg: per class, the size-weighted standard deviation of its subgroups'
  accuracies, macro-averaged over the classes present. Its 95% interval is a percentile bootstrap over
  examples (scipy.stats.bootstrap, 1000 resamples, fixed seed): no exact interval exists for it.

The same functions serve clean accuracy and every robust accuracy: pass the per-example correctness.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import bootstrap

from .errors import ConfigError
from .stats import clopper_pearson_percent

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class SubgroupMetrics:
    """Worst-group accuracy and MacroStd in percent (points), each with its 95% interval."""

    worst_group_acc: float
    worst_group_ci: tuple[float, float]
    worst_group: str          # "class <c> / group <g>", the cell that attains the minimum
    macro_std: float
    macro_std_ci: tuple[float, float]


def _cells(labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cell index of each example and the (class, group) of each cell."""
    pairs = np.stack([labels, groups], axis=1)
    keys, inverse = np.unique(pairs, axis=0, return_inverse=True)
    return inverse.reshape(-1), keys


def _check(correct: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, ...]:
    correct = np.asarray(correct, dtype=float).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    groups = np.asarray(groups).reshape(-1).astype(np.int64)
    if not correct.shape == labels.shape == groups.shape:
        raise ConfigError(f"subgroups: need one correctness value, label and subgroup per example, got "
                          f"{correct.shape[0]}, {labels.shape[0]} and {groups.shape[0]}")
    if correct.size == 0:
        raise ConfigError("subgroups: no examples")
    return correct, labels, groups


def macro_std(correct: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """MacroStd (as a fraction, not percent) of per-example correctness; see the module docstring."""
    correct, labels, groups = _check(correct, labels, groups)
    cell, keys = _cells(labels, groups)
    n = np.bincount(cell, minlength=len(keys)).astype(float)
    acc = np.bincount(cell, weights=correct, minlength=len(keys)) / n
    stds = []
    for c in np.unique(keys[:, 0]):
        sel = keys[:, 0] == c
        mu = np.sum(n[sel] * acc[sel]) / np.sum(n[sel])
        stds.append(np.sqrt(np.sum(n[sel] * (acc[sel] - mu) ** 2) / np.sum(n[sel])))
    return float(np.mean(stds))


def worst_group(correct: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> tuple[int, int, int, int]:
    """(correct count, size, class, subgroup) of the cell with the lowest accuracy (ties: the first cell)."""
    correct, labels, groups = _check(correct, labels, groups)
    cell, keys = _cells(labels, groups)
    n = np.bincount(cell, minlength=len(keys))
    hits = np.bincount(cell, weights=correct, minlength=len(keys)).round().astype(int)
    i = int(np.argmin(hits / n))
    return int(hits[i]), int(n[i]), int(keys[i, 0]), int(keys[i, 1])


def subgroup_metrics(correct: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> SubgroupMetrics:
    """Both metrics in percent with their intervals."""
    correct, labels, groups = _check(correct, labels, groups)
    hits, size, cls, grp = worst_group(correct, labels, groups)
    value = macro_std(correct, labels, groups)
    if np.all(correct == correct[0]):
        low = high = value  # every example equally right or wrong: nothing to resample
    else:
        res = bootstrap((correct, labels, groups), macro_std, paired=True, vectorized=False,
                        n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                        rng=np.random.default_rng(BOOTSTRAP_SEED))
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return SubgroupMetrics(
        worst_group_acc=round(100.0 * hits / size, 2), worst_group_ci=clopper_pearson_percent(hits, size),
        worst_group=f"class {cls} / group {grp}",
        macro_std=round(100.0 * value, 2), macro_std_ci=(round(100.0 * low, 2), round(100.0 * high, 2)))


def ink_terciles(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Subgroups 0/1/2 = thin/medium/thick strokes: per class, terciles of the ink area.

    Ink area = number of pixels brighter than 0.5 (images in [0, 1], bright strokes on a dark background,
    as MNIST); at a fixed digit shape it grows with stroke thickness. Cut points are each class's 1/3 and
    2/3 quantiles, so every class gets three subgroups of (nearly) equal size. Ties go to the lower tercile.
    """
    x = np.asarray(x)
    labels = np.asarray(labels).reshape(-1)
    ink = (x.reshape(x.shape[0], -1) > 0.5).sum(axis=1)
    out = np.zeros(x.shape[0], dtype=np.int64)
    for c in np.unique(labels):
        sel = labels == c
        cuts = np.quantile(ink[sel], [1 / 3, 2 / 3])
        out[sel] = (ink[sel] > cuts[0]).astype(np.int64) + (ink[sel] > cuts[1]).astype(np.int64)
    return out
