"""FGSM / fast gradient method (Goodfellow et al. 2015): one full-budget step along the gradient.

It is the cheapest white-box attack and the usual sanity check of a robustness claim (a model that resists
PGD but not FGSM has a broken evaluation). It deliberately does *no* search: the output is always
``x + eps * direction`` clipped to [0, 1], also for inputs the model already gets wrong, so that its numbers
are the textbook FGSM numbers (they equal torchattacks' ``FGSM`` exactly). Clean errors are counted by the
evaluator, not hidden here.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from robustkit.steps import per_sample, steepest_direction

from .base import Attack, register_attack


@register_attack()
class FGSM(Attack):
    """``x + eps * sign(grad)`` (Linf) or ``x + eps * grad / ||grad||_2`` (L2, the "fast gradient method").

    Parameters: ``loss`` (``ce`` default, ``margin``, ``dlr``) and the common ``targeted`` / ``eot_iter``.
    Targeted modes step up the targeted objective of :mod:`robustkit.attacks.losses`, i.e. down the loss of
    the target class. A zero gradient gives no move (sign(0) = 0; the L2 direction of 0 is 0).
    """

    name: ClassVar[str] = "fgsm"
    norms: ClassVar[tuple[str, ...]] = ("Linf", "L2")
    kind: ClassVar[str] = "white-box"
    defaults: ClassVar[dict[str, Any]] = {"loss": "ce"}

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, norm: str, *,
                target: torch.Tensor | None, generator: torch.Generator | None
                ) -> tuple[torch.Tensor, dict[str, Any]]:
        loss, grad, _ = self.loss_and_grad(model, x, y, self.params["loss"], target)
        x_adv = x + per_sample(eps, x) * steepest_direction(grad, norm)
        return x_adv.clamp_(0.0, 1.0), {"loss_at_start": loss.cpu()}
