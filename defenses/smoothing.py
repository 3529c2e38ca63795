"""Randomized smoothing (Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized
Smoothing", ICML 2019).

The smoothed classifier ``g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c)`` of a base classifier ``f`` is
provably constant in an L2 ball of radius ``sigma * Phi^-1(p_A)`` around ``x``. It is evaluated by Monte
Carlo, so every answer comes with a confidence level:

* :meth:`RandomizedSmoothing.predict` -- ``n`` noise samples and a binomial test; abstains when unsure;
* :meth:`RandomizedSmoothing.certify` -- the class is chosen on ``n0`` samples, its probability is bounded
  below on ``n`` fresh samples (Clopper--Pearson at level ``alpha``), radius ``sigma * Phi^-1(p_lower)``;
  abstain when ``p_lower < 1/2``. Paper defaults: ``n0 = 100``, ``n = 100000``, ``alpha = 0.001``.
* :meth:`RandomizedSmoothing.fit` -- Gaussian-noise augmentation training of the base classifier with the
  same ``sigma`` (without it the base classifier does not work under noise and nothing gets certified).

``forward`` -- what attacks differentiate -- is the *soft* smoothed classifier of Salman et al. (NeurIPS
2019, "Provably Robust Deep Learning via Adversarially Trained Smoothed Classifiers"): the log of the mean
softmax over ``samples`` noise draws, so cross-entropy on it is SmoothAdv's attack objective. It is random,
so the defense declares ``randomized = True`` and attacks add EOT on top (each EOT pass averages
``samples`` draws). The empirical robust accuracy of this forward is an upper bound estimate; the
certified accuracy from :meth:`certify` is a lower bound (with probability >= 1 - alpha per example).
Noise is not clipped to [0, 1], as in Cohen et al.: the certificate is about the unclipped noise.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import torch
import torch.nn.functional as F

from robustkit.errors import ConfigError
from robustkit.predict import eval_mode, model_device
from robustkit.training import train

from .base import Defense, register_defense
from .certification import (DEFAULT_RADII, CertifyResult, abstaining_prediction, certified_accuracy,
                            certify_from_counts)


def _noise(shape: torch.Size, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """N(0, 1) noise drawn on the generator's device (or on ``like``'s device without one)."""
    device = generator.device if generator is not None else like.device
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=like.dtype).to(like.device)


@torch.no_grad()
def sample_counts(base: torch.nn.Module, x: torch.Tensor, num: int, sigma: float, *, batch_size: int = 1000,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """For each input, how many of ``num`` noisy copies ``x + sigma * N(0, I)`` the base model puts in each class.

    Returns int64 counts of shape (n_inputs, n_classes). Noisy copies are evaluated in batches of about
    ``batch_size`` on the model's device; several inputs share a batch when ``num < batch_size``.
    """
    n_inputs = x.shape[0]
    counts: torch.Tensor | None = None
    per_input = max(1, min(num, batch_size))
    group = max(1, batch_size // per_input)
    for start in range(0, n_inputs, group):
        xg = x[start:start + group]
        remaining = num
        while remaining > 0:
            k = min(per_input, remaining)
            batch = xg.repeat_interleave(k, dim=0)
            logits = base(batch + sigma * _noise(batch.shape, batch, generator))
            if counts is None:
                counts = torch.zeros(n_inputs, logits.shape[1], dtype=torch.long, device=x.device)
            votes = F.one_hot(logits.argmax(dim=1), logits.shape[1]).reshape(xg.shape[0], k, -1).sum(dim=1)
            counts[start:start + xg.shape[0]] += votes
            remaining -= k
    if counts is None:  # no inputs: ask the model for its number of classes on nothing
        return torch.zeros(0, 0, dtype=torch.long)
    return counts.cpu()


@register_defense("smoothing", aliases=("randomized-smoothing",))
class RandomizedSmoothing(Defense):
    """Gaussian randomized smoothing with certification (Cohen et al. 2019); see the module docstring.

    Parameters: ``sigma`` (noise level, 0.25), ``samples`` (noise draws averaged per forward pass for
    attacks, 8), ``n0`` (100), ``n`` (100000), ``alpha`` (0.001) for :meth:`certify` / :meth:`predict`,
    ``batch_size`` (1000) for the Monte Carlo sampling.
    """

    name: ClassVar[str] = "smoothing"
    randomized = True
    certifiable: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = {"sigma": 0.25, "samples": 8, "n0": 100, "n": 100_000, "alpha": 0.001,
                                          "batch_size": 1000}

    def validate(self) -> None:
        if not self.params["sigma"] > 0:
            raise ConfigError(f"{self.who}: sigma: expected a number > 0, got {self.params['sigma']}")
        if self.params["samples"] < 1:
            raise ConfigError(f"{self.who}: samples: expected an integer >= 1, got {self.params['samples']}")
        _check_sampling(self.who, self.params)

    @property
    def sigma(self) -> float:
        return float(self.params["sigma"])

    # -------------------------------------------------------------------------------- for attacks
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """log E[softmax(f(x + noise))] over ``samples`` draws (Salman et al.'s soft smoothed classifier)."""
        m = int(self.params["samples"])
        batch = x.repeat_interleave(m, dim=0)
        noisy = batch + self.sigma * torch.randn_like(batch)
        log_probs = F.log_softmax(self.model(noisy).float(), dim=1).reshape(x.shape[0], m, -1)
        return torch.logsumexp(log_probs, dim=1) - math.log(m)

    # ------------------------------------------------------------------------- Monte Carlo verdicts
    def _settings(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """This defense's n0, n, alpha, batch_size with the call's overrides, checked like the parameters."""
        s = {k: self.params[k] for k in ("n0", "n", "alpha", "batch_size")}
        s.update({k: v for k, v in overrides.items() if v is not None})
        _check_sampling(self.who, s)
        return {**s, "sigma": self.sigma}

    def predict(self, x: torch.Tensor, n: int | None = None, alpha: float | None = None, *,
                batch_size: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Cohen's PREDICT: the smoothed class, or -1 (abstain) when the binomial test is not significant."""
        s = self._settings({"n": n, "alpha": alpha, "batch_size": batch_size})
        x = x.to(model_device(self.model), torch.float32)
        with eval_mode(self.model):
            counts = sample_counts(self.model, x, s["n"], self.sigma, batch_size=s["batch_size"], generator=generator)
        return abstaining_prediction(counts, s["alpha"])

    def certify(self, x: torch.Tensor, n0: int | None = None, n: int | None = None, alpha: float | None = None, *,
                batch_size: int | None = None, generator: torch.Generator | None = None) -> CertifyResult:
        """Cohen's CERTIFY for each input: prediction (-1 = abstain) and certified L2 radius."""
        s = self._settings({"n0": n0, "n": n, "alpha": alpha, "batch_size": batch_size})
        x = x.to(model_device(self.model), torch.float32)
        with eval_mode(self.model):
            selection = sample_counts(self.model, x, s["n0"], self.sigma, batch_size=s["batch_size"],
                                      generator=generator)
            estimation = sample_counts(self.model, x, s["n"], self.sigma, batch_size=s["batch_size"],
                                       generator=generator)
        pred, radius, p_lower, count = certify_from_counts(selection, estimation, s["n"], s["alpha"], self.sigma)
        return CertifyResult(prediction=pred, radius=radius, p_lower=p_lower, count=count, settings=s)

    def certified_accuracy(self, x: torch.Tensor, y: torch.Tensor, radii: Sequence[float] = DEFAULT_RADII,
                           **certify_options: Any) -> dict[float, float]:
        """Certified accuracy (fraction) at each L2 radius; ``certify_options`` go to :meth:`certify`."""
        return certified_accuracy(self.certify(x, **certify_options), y, radii)

    # ----------------------------------------------------------------------------------- training
    def fit(self, x: torch.Tensor, y: torch.Tensor, **options: Any) -> "RandomizedSmoothing":
        """Gaussian-noise augmentation training of the base model with this defense's ``sigma``."""
        if options.get("method", "noise") != "noise" or "sigma" in options:
            raise ConfigError(f"{self.who}: fit trains with Gaussian noise at the defense's sigma; "
                              f"do not pass method or sigma")
        train(self.model, x, y, method="noise", sigma=self.sigma, **{k: v for k, v in options.items() if k != "method"})
        return self


def _check_sampling(who: str, s: dict[str, Any]) -> None:
    for key in ("n0", "n", "batch_size"):
        if key in s and (isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1):
            raise ConfigError(f"{who}: {key}: expected an integer >= 1, got {s[key]!r}")
    alpha = s.get("alpha")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ConfigError(f"{who}: alpha: expected a number in (0, 1), got {alpha!r}")

