"""Ensembles of classifiers, attacked end to end as one model.

Aggregation rules (parameter ``aggregation``):

* ``logits`` -- mean of the members' logits.
* ``probs`` -- mean of the members' softmax probabilities; the output is its log, so that softmax of the
  output is exactly the mean probability and cross-entropy attacks target the ensemble's probability.
* ``vote`` -- majority (plurality) vote of the members' predicted labels. Output: the fraction of votes
  per class plus ``0.5 / n_members`` x the mean probability, which breaks ties between equally voted
  classes by mean probability and never overturns a vote difference. Counting votes has no gradient, so
  the vote is wrapped in BPDA (:mod:`robustkit.attacks.bpda`) with the mean probabilities as substitute:
  attacks follow the gradient of the mean probabilities while every verdict uses the real vote.
* ``crossmax`` -- CrossMax, the robust aggregation of Fort & Lakshminarayanan ("Ensemble everything
  everywhere: Multi-scale aggregation for adversarial robustness", 2024, Algorithm 1): with logits Z of
  shape (batch, members, classes), (1) subtract each member's max logit per sample, (2) subtract, per
  class, the max over members, (3) take per class the k-th highest value over members. The paper writes
  the median in step 3 and uses the k-th highest with k = 3 ("top-3") for its self-ensembles of many
  intermediate-layer predictors; ``k`` is configurable (default 3; k = ceil(members / 2) is the median
  for an odd number of members) and must not exceed the number of members. All three steps are
  (sub)differentiable, so attacks differentiate straight through the aggregation.

Members may be any models, including randomized or BPDA-wrapped defenses; the ensemble is randomized
when any member is, and its BPDA parts include its members'.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F

from robustkit.attacks.bpda import bpda
from robustkit.errors import ConfigError
from robustkit.training import train

from .base import Defense, register_defense

AGGREGATIONS = ("logits", "probs", "vote", "crossmax")


def mean_logits(z: torch.Tensor) -> torch.Tensor:
    """z: (batch, members, classes) -> mean over members."""
    return z.mean(dim=1)


def log_mean_probs(z: torch.Tensor) -> torch.Tensor:
    """log of the mean softmax over members, computed stably (logsumexp of log-softmax)."""
    return torch.logsumexp(F.log_softmax(z, dim=2), dim=1) - torch.log(torch.tensor(float(z.shape[1])))


def mean_probs(z: torch.Tensor) -> torch.Tensor:
    """Mean softmax over members: the vote's BPDA substitute (a vote fraction is a hardened mean probability)."""
    return F.softmax(z, dim=2).mean(dim=1)


def vote_scores(z: torch.Tensor) -> torch.Tensor:
    """Vote fractions per class with ties broken by mean probability (see the module docstring)."""
    members, classes = z.shape[1], z.shape[2]
    votes = F.one_hot(z.argmax(dim=2), classes).sum(dim=1).to(z.dtype)
    return (votes + 0.5 * F.softmax(z, dim=2).mean(dim=1)) / members


def crossmax(z: torch.Tensor, k: int = 3) -> torch.Tensor:
    """CrossMax (Fort & Lakshminarayanan 2024, Algorithm 1) with the k-th highest value over members."""
    if not 1 <= k <= z.shape[1]:
        raise ConfigError(f"crossmax: k must be between 1 and the number of members ({z.shape[1]}), got {k}")
    z = z - z.amax(dim=2, keepdim=True)   # each member's own max logit -> 0: no member dominates
    z = z - z.amax(dim=1, keepdim=True)   # each class's max over members -> 0: no class dominates
    return z.topk(k, dim=1).values[:, k - 1, :]


@register_defense("ensemble")
class Ensemble(Defense):
    """Ensemble of member models with the aggregation rule ``aggregation`` (logits | probs | vote | crossmax).

    ``k`` (default 3) is CrossMax's rank over members; it is ignored by the other rules.
    """

    name: ClassVar[str] = "ensemble"
    takes_members: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {"aggregation": "logits", "k": 3}

    def validate(self) -> None:
        agg = self.params["aggregation"].lower()
        if agg not in AGGREGATIONS:
            raise ConfigError(f"{self.who}: aggregation: expected one of {', '.join(AGGREGATIONS)}, "
                              f"got {self.params['aggregation']!r}")
        self.params["aggregation"] = agg
        if agg == "crossmax" and not 1 <= self.params["k"] <= len(self.members):
            raise ConfigError(f"{self.who}: k: CrossMax takes the k-th highest of {len(self.members)} members, so "
                              f"k must be between 1 and {len(self.members)}, got {self.params['k']}")
        if agg == "vote":
            self.bpda = ["vote"]  # reported by robustkit.attacks.bpda.bpda_parts

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        if cfg["aggregation"] != "crossmax":
            cfg.pop("k")
        return cfg

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")

    def fit(self, x: torch.Tensor, y: torch.Tensor, **options: Any) -> "Ensemble":
        """Train each member on its own (seed ``seed + i`` for member i, so members differ), as deep ensembles
        are trained; ``options`` go to :func:`robustkit.training.train` (method, epochs, eps, ...)."""
        seed = options.pop("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"{self.who}: seed: expected an integer, got {seed!r}")
        self.training_history = [train(m, x, y, seed=seed + i, **options).history for i, m in enumerate(self.members)]
        return self

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Stacked member logits, shape (batch, members, classes), in fp32."""
        outs = [m(x).float() for m in self.members]
        shapes = {tuple(o.shape) for o in outs}
        if len(shapes) != 1:
            raise ConfigError(f"{self.who}: members return logits of different shapes {sorted(shapes)}")
        return torch.stack(outs, dim=1)

    def _aggregate(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda x: fn(self.member_logits(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        agg = self.params["aggregation"]
        if agg == "logits":
            return mean_logits(self.member_logits(x))
        if agg == "probs":
            return log_mean_probs(self.member_logits(x))
        if agg == "crossmax":
            return crossmax(self.member_logits(x), self.params["k"])
        # vote: exact vote forward, gradient of the mean probabilities backward (BPDA)
        return bpda(self._aggregate(vote_scores), self._aggregate(mean_probs))(x)
