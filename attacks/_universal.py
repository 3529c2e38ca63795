"""Universal attacks: fitted once on a training split, then the same perturbation (or patch) for every input.

A universal attack has two phases. :meth:`UniversalAttack.fit` optimises one perturbation on training
examples; the attack call then applies it to the evaluated examples through the ordinary contract, so the
base class still projects, budget-checks and re-predicts every output. The evaluated examples must be a
*held-out* split: the engine (and every benchmark) fits on one split and evaluates on another, and records
both. Calling the attack before :meth:`fit`, or with another model or budget than it was fitted for, is an
error rather than a silent refit on the evaluated examples.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from robustkit.errors import ConfigError, RobustkitError
from robustkit.predict import model_device
from robustkit.threat import ThreatModel

from .base import Attack, eval_mode


@dataclass
class Fitted:
    """A fitted universal perturbation and what it was fitted for."""

    model: "weakref.ref[nn.Module]"
    norm: str
    eps: float
    payload: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


def single_eps(eps: torch.Tensor | float, who: str) -> float:
    """The one eps a universal perturbation is fitted for (per-sample budgets make no sense for it)."""
    if isinstance(eps, torch.Tensor):
        values = eps.reshape(-1)
        if values.numel() and bool((values != values[0]).any()):
            raise ConfigError(f"attack {who!r}: a universal perturbation needs one eps for all samples")
        return float(values[0]) if values.numel() else 0.0
    return float(eps)


class UniversalAttack(Attack):
    """Base class of universal attacks: subclasses implement :meth:`optimise` and apply the payload in perturb."""

    universal: bool = True

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._fitted: Fitted | None = None

    def optimise(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, eps: float,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, dict[str, Any]]:
        """Return the universal payload and an info dict (called in eval mode, data on the model's device)."""
        raise NotImplementedError

    def fit(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
            generator: torch.Generator | None = None) -> dict[str, Any]:
        """Optimise the universal payload on the training examples ``(x, y)``; returns its info."""
        if threat.norm not in self.norms:
            raise ConfigError(f"attack {self.name!r} supports norms {', '.join(self.norms)}, not {threat.norm}")
        if x.shape[0] == 0:
            raise ConfigError(f"attack {self.name!r}: the training split is empty")
        eps = single_eps(threat.eps, self.name)
        device = model_device(model)
        x = x.detach().to(device=device, dtype=torch.float32)
        y = y.detach().to(device=device, dtype=torch.long)
        with eval_mode(model):
            payload, info = self.optimise(model, x, y, threat, eps, generator)
        info = {"train_examples": int(x.shape[0]), **info}
        self._fitted = Fitted(weakref.ref(model), threat.norm, eps, payload.detach(), info)
        return info

    def fitted_payload(self, model: nn.Module, eps: torch.Tensor, norm: str) -> torch.Tensor:
        """The payload fitted for this model and budget; an error if there is none."""
        f = self._fitted
        if f is None:
            raise RobustkitError(f"attack {self.name!r} is universal: call fit() on a training split first")
        if f.model() is not model or f.norm != norm or abs(single_eps(eps, self.name) - f.eps) > 1e-6 * f.eps:
            raise RobustkitError(f"attack {self.name!r} was fitted for another model or budget "
                                 f"({f.norm} eps={f.eps:g}); fit it again")
        return f.payload

    @property
    def fit_info(self) -> dict[str, Any]:
        return dict(self._fitted.info) if self._fitted is not None else {}

    def restore(self, model: nn.Module, norm: str, eps: float, payload: torch.Tensor, info: dict[str, Any]) -> None:
        """Reinstate a payload fitted earlier (read back from a results folder, so a resume does not refit)."""
        self._fitted = Fitted(weakref.ref(model), norm, float(eps), payload.detach(), dict(info))
