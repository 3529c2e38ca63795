"""Universal adversarial perturbation (``uap``): one perturbation for a whole dataset, Linf or L2.

Two optimisers, both maximising the clamped cross-entropy ``min(CE(f(x + v), f(x)), beta)`` of the model's
own clean predictions (so the objective is the *fooling* rate, and the clamp keeps already-fooled images
from dominating the gradient), with steps of ``step_size * eps`` along the steepest-ascent direction:

* ``method: sga`` -- Stochastic Gradient Aggregation (Liu et al., ICCV 2023, "Enhancing Generalization of
  Universal Adversarial Perturbation through Gradient Aggregation"). For each batch, an *inner pre-search*
  walks ``inner_iters * batch / minibatch`` small random minibatches from the current perturbation, taking
  a step after each, and the outer step follows the *aggregate* (mean) of the inner gradients. Small batches
  escape the sharp local optima of plain stochastic gradients; aggregating them removes their noise.
* ``method: spgd`` -- the plain iterative baseline (stochastic PGD, Shafahi et al. 2020): one step per batch
  along the batch's mean gradient.

Fit on a training split with :meth:`UAP.fit`, then call the attack on held-out examples (docs/attacks.md).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.errors import ConfigError
from robustkit.steps import steepest_direction
from robustkit.threat import ThreatModel

from ._universal import UniversalAttack
from .base import register_attack

METHODS = ("sga", "spgd")


def project_delta(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project a (1, C, H, W) perturbation onto the ``norm`` ball of radius ``eps``."""
    if norm == "Linf":
        return delta.clamp(-eps, eps)
    n = float(delta.norm(p=2))
    return delta * (eps / n) if n > eps else delta


def fooling_rate(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, batch: int = 256) -> float:
    """Fraction of inputs whose predicted label changes (Moosavi-Dezfooli et al.'s fooling rate)."""
    changed = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            changed += int((model(x[i:i + batch]).argmax(1) != model(x_adv[i:i + batch]).argmax(1)).sum())
    return changed / max(1, x.shape[0])


@register_attack()
class UAP(UniversalAttack):
    """Universal perturbation fitted with SGA (default) or the plain stochastic-PGD baseline."""

    name: ClassVar[str] = "uap"
    norms: ClassVar[tuple[str, ...]] = ("Linf", "L2")
    kind: ClassVar[str] = "universal"
    supports_targeted: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {
        "method": "sga",
        "epochs": 10,
        "batch_size": 50,     # outer batch
        "minibatch": 10,      # SGA's inner minibatch
        "inner_iters": 4,     # SGA's K: inner steps = inner_iters * batch / minibatch
        "step_size": 0.1,     # as a fraction of eps
        "beta": 9.0,          # clamp of the cross-entropy
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        if p["method"] not in METHODS:
            raise ConfigError(f"attack 'uap': method: expected one of {', '.join(METHODS)}, got {p['method']!r}")
        for key in ("epochs", "batch_size", "minibatch", "inner_iters"):
            if p[key] < 1:
                raise ConfigError(f"attack 'uap': {key}: expected an integer >= 1, got {p[key]}")
        for key in ("step_size", "beta"):
            if not p[key] > 0:
                raise ConfigError(f"attack 'uap': {key}: expected a positive number, got {p[key]}")

    def _grad(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Gradient of the mean clamped cross-entropy with respect to the shared perturbation."""
        d = delta.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model((x + d).clamp(0.0, 1.0)).float()
            loss = F.cross_entropy(logits, labels, reduction="none").clamp_max(self.params["beta"]).mean()
            (grad,) = torch.autograd.grad(loss, d)
        return grad.detach()

    def optimise(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, eps: float,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, dict[str, Any]]:
        p = self.params
        norm = threat.norm
        gen_device = generator.device if generator is not None else torch.device("cpu")
        with torch.no_grad():
            labels = torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, x.shape[0], 256)])
        delta = torch.zeros((1, *x.shape[1:]), device=x.device)
        step = p["step_size"] * eps
        n = x.shape[0]
        gradients = 0
        for _ in range(p["epochs"]):
            order = torch.randperm(n, generator=generator, device=gen_device).to(x.device)
            for start in range(0, n, p["batch_size"]):
                idx = order[start:start + p["batch_size"]]
                if p["method"] == "spgd":
                    g = self._grad(model, x[idx], labels[idx], delta)
                    gradients += idx.numel()
                else:
                    g, used = self._aggregated_grad(model, x, labels, idx, delta, step, eps, norm, generator)
                    gradients += used
                delta = project_delta(delta + step * steepest_direction(g, norm), eps, norm)
        with torch.no_grad():
            fooled = sum(int((model((x[i:i + 256] + delta).clamp(0, 1)).argmax(1) != labels[i:i + 256]).sum())
                         for i in range(0, n, 256))
        return delta, {"method": p["method"], "train_fooling_rate": fooled / n, "input_gradients": gradients}

    def _aggregated_grad(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor,
                         delta: torch.Tensor, step: float, eps: float, norm: str,
                         generator: torch.Generator | None) -> tuple[torch.Tensor, int]:
        """SGA's inner pre-search from ``delta`` over small minibatches of the batch; the mean inner gradient."""
        p = self.params
        gen_device = generator.device if generator is not None else torch.device("cpu")
        m = min(p["minibatch"], idx.numel())
        count = max(1, p["inner_iters"] * idx.numel() // m)
        inner = delta.clone()
        total = torch.zeros_like(delta)
        for _ in range(count):
            pick = idx[torch.randperm(idx.numel(), generator=generator, device=gen_device)[:m].to(idx.device)]
            g = self._grad(model, x[pick], labels[pick], inner)
            inner = project_delta(inner + step * steepest_direction(g, norm), eps, norm)
            total += g
        return total / count, count * m

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, norm: str, *,
                target: torch.Tensor | None, generator: torch.Generator | None
                ) -> tuple[torch.Tensor, dict[str, Any]]:
        delta = self.fitted_payload(model, eps, norm).to(x.device)
        return (x + delta).clamp(0.0, 1.0), {"universal": True, **self.fit_info}
