"""The statistics of randomized-smoothing certificates (Cohen, Rosenfeld & Kolter, ICML 2019).

Kept apart from the smoothing module because they are pure statistics on vote counts, shared by every
certifiable defense and testable without a network:

* :func:`abstaining_prediction` -- Cohen's PREDICT: the top class when a two-sided binomial test says it
  beats the runner-up at level ``alpha``, else abstain. ``scipy.stats.binomtest`` (``binom_test`` is gone
  from SciPy).
* :func:`clopper_pearson_lower` -- the one-sided (1 - alpha) Clopper--Pearson lower confidence bound on a
  binomial proportion, ``Beta(alpha; k, n - k + 1)``; the certified radius is ``sigma * Phi^-1(p_lower)``.
* :func:`certified_accuracy` / :func:`certified_rows` -- the fraction of examples certified correct at
  each L2 radius: a certificate counts at radius r when the prediction is the true label and its radius
  is at least r (so abstentions never count).

Abstentions are the label :data:`ABSTAIN` (-1), which is no class, like robustkit's NO_MAJORITY.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from scipy import stats

ABSTAIN = -1
DEFAULT_RADII: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


def clopper_pearson_lower(successes: np.ndarray | int, trials: int, alpha: float) -> np.ndarray:
    """One-sided (1 - alpha) lower confidence bound on p from ``successes`` out of ``trials`` (exact, Clopper-Pearson).

    Equal to ``binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low``, which is
    what Cohen et al. compute with statsmodels' ``proportion_confint(k, n, alpha=2 * alpha, method="beta")``.
    The bound is 0 when there are no successes.
    """
    k = np.asarray(successes, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        low = stats.beta.ppf(alpha, k, trials - k + 1)
    return np.where(k > 0, np.nan_to_num(low, nan=0.0), 0.0)


def abstaining_prediction(counts: torch.Tensor, alpha: float) -> torch.Tensor:
    """Cohen's PREDICT from per-class vote counts (n_examples, n_classes): top class or :data:`ABSTAIN`.

    The top class is returned only when a two-sided binomial test of "top vs runner-up are equally likely"
    has p-value <= alpha; then the probability of returning a class other than the smoothed classifier's
    is at most alpha (Cohen et al., Theorem 2).
    """
    top2 = counts.topk(min(2, counts.shape[1]), dim=1)
    out = torch.full((counts.shape[0],), ABSTAIN, dtype=torch.long)
    for i in range(counts.shape[0]):
        n_a = int(top2.values[i, 0])
        n_b = int(top2.values[i, 1]) if counts.shape[1] > 1 else 0
        if n_a + n_b == 0:
            continue
        if stats.binomtest(n_a, n_a + n_b, p=0.5, alternative="two-sided").pvalue <= alpha:
            out[i] = int(top2.indices[i, 0])
    return out


@dataclass
class CertifyResult:
    """Per-example certificates: ``prediction`` (int64, :data:`ABSTAIN` = -1), ``radius`` (float64, L2; 0 where
    abstained), ``p_lower`` (the lower bound on the top class's probability) and the sampling settings."""

    prediction: torch.Tensor
    radius: torch.Tensor
    p_lower: torch.Tensor
    count: torch.Tensor
    settings: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.prediction.shape[0])


def certify_from_counts(selection_counts: torch.Tensor, estimation_counts: torch.Tensor, n: int, alpha: float,
                        sigma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cohen's CERTIFY given the two independent vote counts: (prediction, radius, p_lower, count of the class).

    The class is chosen on the ``n0`` selection samples; its probability is bounded with the ``n``
    estimation samples only (reusing the selection samples would bias the bound). Abstain when the bound
    is below 1/2; otherwise the radius is ``sigma * Phi^-1(p_lower)``.
    """
    c_a = selection_counts.argmax(dim=1)
    n_a = estimation_counts.gather(1, c_a[:, None]).squeeze(1)
    p_lower = clopper_pearson_lower(n_a.cpu().numpy(), n, alpha)
    with np.errstate(divide="ignore"):
        radius = sigma * stats.norm.ppf(p_lower)
    certified = p_lower >= 0.5
    prediction = torch.where(torch.from_numpy(certified), c_a.cpu(), torch.full_like(c_a.cpu(), ABSTAIN))
    radius_t = torch.from_numpy(np.where(certified, radius, 0.0)).to(torch.float64)
    return prediction, radius_t, torch.from_numpy(p_lower).to(torch.float64), n_a.cpu()


def _checked_radii(radii: Sequence[float]) -> list[float]:
    out = [float(r) for r in radii]
    if not out or any(not np.isfinite(r) or r < 0 for r in out):
        raise ValueError(f"radii must be a non-empty list of finite numbers >= 0, got {list(radii)!r}")
    return out


def certified_counts(result: CertifyResult, y: torch.Tensor, radii: Sequence[float] = DEFAULT_RADII) -> dict[float, int]:
    """How many examples are certified correct at each radius (prediction == y and radius >= r)."""
    y = torch.as_tensor(y).reshape(-1).cpu().long()
    if y.shape[0] != len(result):
        raise ValueError(f"{len(result)} certificates but {y.shape[0]} labels")
    correct = result.prediction.cpu() == y
    return {r: int((correct & (result.radius.cpu() >= r)).sum()) for r in _checked_radii(radii)}


def certified_accuracy(result: CertifyResult, y: torch.Tensor,
                       radii: Sequence[float] = DEFAULT_RADII) -> dict[float, float]:
    """Certified accuracy (a fraction in [0, 1]) at each L2 radius, default 0, 0.25, 0.5, 0.75, 1.0."""
    counts = certified_counts(result, y, radii)
    n = len(result)
    return {r: (c / n if n else float("nan")) for r, c in counts.items()}


def certified_rows(result: CertifyResult, y: torch.Tensor, radii: Sequence[float] = DEFAULT_RADII
                   ) -> list[dict[str, Any]]:
    """Leaderboard rows, one per radius: ``{"radius", "n_examples", "certified_count", "certified_acc" (percent,
    2 decimals, as the leaderboard's accuracies), "abstained", "kind": "certified"}``."""
    counts = certified_counts(result, y, radii)
    n = len(result)
    abstained = int((result.prediction == ABSTAIN).sum())
    return [{"radius": r, "n_examples": n, "certified_count": c,
             "certified_acc": round(100.0 * c / n, 2) if n else float("nan"), "abstained": abstained,
             "kind": "certified", **{k: v for k, v in result.settings.items() if k in ("sigma", "n0", "n", "alpha")}}
            for r, c in counts.items()]
