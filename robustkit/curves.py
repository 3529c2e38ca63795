"""Robust accuracy as a function of eps, read off per-sample minimal adversarial norms.

A minimum-norm attack (``cw``, ``fmn``) finds, for each sample, the smallest perturbation that fools the model
(``AttackResult.info["min_norm"]``, inf where it found none). One such run therefore gives the whole
robust-accuracy-vs-eps curve at once: a sample counts as robust at ``eps`` exactly when it is classified
correctly and its minimal norm is larger than ``eps``. Because those norms are *upper bounds* on the true
minimal norms, the curve is an upper bound on the true robust accuracy, like any attack's number; the
evaluator confirms chosen points with a bounded attack at each eps and reports the lower of the two.

The convention "broken iff norm <= eps * (1 + 1e-6)" is the budget check of
:func:`robustkit.threat.check_budget` (relative tolerance ``RTOL``) and the rule of the bounded evaluation of
the minimum-norm attacks (:func:`robustkit.attacks.cw.select_within_budget`): a perturbation of norm exactly
eps is inside the threat model, and a curve read at eps counts the same samples as a bounded run at eps.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch

from .errors import ConfigError
from .threat import RTOL


def _checked(clean_correct: torch.Tensor, min_norms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    correct = torch.as_tensor(clean_correct).detach().reshape(-1).cpu()
    norms = torch.as_tensor(min_norms).detach().reshape(-1).cpu().to(torch.float64)
    if correct.dtype != torch.bool:
        raise ValueError(f"clean_correct must be a bool tensor, got {correct.dtype}")
    if correct.numel() != norms.numel():
        raise ValueError(f"clean_correct has {correct.numel()} entries but min_norms has {norms.numel()}")
    if bool(torch.isnan(norms).any()) or bool((norms < 0).any()):
        raise ValueError("min_norms must be >= 0 (inf where no adversarial example was found), not NaN")
    return correct, norms


def _checked_eps(eps_list: Iterable[float]) -> list[float]:
    out = []
    for e in eps_list:
        value = float(e)
        if math.isnan(value) or value < 0:
            raise ConfigError(f"eps: expected values >= 0 for a robust-accuracy curve, got {e!r}")
        out.append(value)
    return out


def robust_accuracy_curve(clean_correct: torch.Tensor, min_norms: torch.Tensor,
                          eps_list: Sequence[float]) -> list[tuple[float, float]]:
    """``[(eps, robust accuracy)]`` for each eps in ``eps_list`` (in the given order).

    ``clean_correct`` (bool, (n,)) says which samples the model classifies correctly without attack;
    ``min_norms`` ((n,)) are the per-sample minimal adversarial norms (inf: none found). Robust accuracy at
    eps is the fraction of all n samples that are clean-correct with ``min_norm > eps * (1 + RTOL)``; n = 0
    gives nan.
    """
    correct, norms = _checked(clean_correct, min_norms)
    eps_values = _checked_eps(eps_list)
    n = correct.numel()
    if n == 0:
        return [(eps, float("nan")) for eps in eps_values]
    sorted_norms = norms[correct].sort().values
    # robust at eps = clean-correct samples whose norm is > eps (1 + RTOL) = all of them minus the others
    limits = torch.tensor(eps_values, dtype=torch.float64) * (1 + RTOL)
    at_or_below = torch.searchsorted(sorted_norms, limits, right=True)
    robust = sorted_norms.numel() - at_or_below
    return [(eps, int(r) / n) for eps, r in zip(eps_values, robust.tolist())]


def full_robust_accuracy_curve(clean_correct: torch.Tensor,
                               min_norms: torch.Tensor) -> list[tuple[float, float]]:
    """The exact step function: ``(0, acc at 0)`` then one point at every distinct finite minimal norm.

    Robust accuracy only changes at the minimal norms of clean-correct samples, and there it drops (a sample
    of norm v is broken from eps = v on), so these points describe the whole curve: between two consecutive
    points the accuracy is that of the left one. The last value holds for all larger eps (the samples with
    no adversarial found stay robust).
    """
    correct, norms = _checked(clean_correct, min_norms)
    breaks = torch.unique(norms[correct & torch.isfinite(norms) & (norms > 0)]).tolist()
    return robust_accuracy_curve(correct, norms, [0.0, *breaks])


def merge_min_norms(*min_norms: torch.Tensor) -> torch.Tensor:
    """Per-sample minimum over several attacks' minimal norms: the worst case over the attacks."""
    if not min_norms:
        raise ValueError("merge_min_norms needs at least one tensor")
    stacked = torch.stack([torch.as_tensor(m).detach().reshape(-1).cpu().to(torch.float64) for m in min_norms])
    return stacked.amin(dim=0)
