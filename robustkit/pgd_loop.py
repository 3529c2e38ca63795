"""The one projected-gradient loop: ``x <- project(x0, step(x, grad), eps)``, ``steps`` times.

Every PGD in robustkit runs through :func:`ascend`: the ``pgd`` attack (and ``cw-linf``, and anything
built on :func:`robustkit.attacks.pgd.best_iterate_search`), PGD / FGSM-RS and TRADES adversarial training
(:mod:`robustkit.training`) and so the digits quickstart zoo, which trains through it. What differs between
them is passed in, not copied:

* ``loss_and_grad(x) -> (per-sample loss, input gradient, logits)`` -- cross-entropy on one forward pass
  for training (:func:`input_gradient`), the EOT-averaged objective of an attack
  (:meth:`robustkit.attacks.Attack.loss_and_grad`), TRADES' KL term;
* the move, a :class:`StepRule` (default: steepest ascent for the norm, :func:`robustkit.steps.steepest_direction`);
* ``observe(x, loss, logits)``, called at every evaluated iterate: the attack keeps its best iterate per
  sample there; training ignores the iterates and keeps the last one.

The loop never synchronises with the host (no ``.item()``, no ``bool(tensor)``, no data-dependent shapes),
so a GPU runs the steps back to back. Callers that want to drop finished samples do so *between* calls
(the attack's search does it at a few fixed steps, see :mod:`robustkit.attacks.pgd`).

It lives in the core, below both the attack plugins and training, so that training (and the zoo, which
trains) never imports the attack package that evaluates its models.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from robustkit.steps import per_sample, steepest_direction
from robustkit.threat import project

LossAndGrad = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor, torch.Tensor]"]
Observer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]
PerSampleLoss = Callable[[torch.Tensor], torch.Tensor]


class StepRule:
    """How an iterate moves, given its loss gradient, before projection onto the ball and [0, 1].

    The default is PGD's steepest ascent for the norm. A subclass may keep per-sample state (tensors whose
    first dimension is the batch) in the dict made by :meth:`init_state`; callers that shrink the batch
    (the attack's search) drop the rows of finished samples from every such tensor, so the rule never sees
    them.
    """

    def init_state(self, x_start: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}

    def step(self, x: torch.Tensor, grad: torch.Tensor, step_size: torch.Tensor, norm: str,
             state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next iterate (unprojected). ``step_size`` is per sample, already shaped (n, 1, 1, 1)."""
        return x + step_size * steepest_direction(grad, norm)


def ascend(x0: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, step_size: torch.Tensor, norm: str,
           loss_and_grad: LossAndGrad, *, steps: int, rule: StepRule | None = None,
           state: dict[str, torch.Tensor] | None = None, observe: Observer | None = None) -> torch.Tensor:
    """Run ``steps`` projected gradient steps from ``x`` in the ``norm`` ball of radius ``eps`` around ``x0``.

    ``eps`` and ``step_size`` are per-sample tensors of shape (n,). Each step evaluates ``loss_and_grad`` at
    the current iterate, hands (iterate, loss, logits) to ``observe``, moves by ``rule`` and projects onto
    the ball and [0, 1]. Returns the last iterate (detached; it is not evaluated: a caller that needs its
    loss evaluates it). ``state`` is the rule's per-sample state (default: ``rule.init_state(x)``).
    """
    rule = rule or StepRule()
    state = rule.init_state(x) if state is None else state
    alpha = per_sample(step_size, x)
    for _ in range(steps):
        loss, grad, logits = loss_and_grad(x)
        if observe is not None:
            observe(x, loss, logits)
        x = project(x0, rule.step(x, grad, alpha, norm, state), eps, norm)
    return x.detach()


def input_gradient(model: nn.Module, per_sample_loss: Callable[[torch.Tensor], torch.Tensor]) -> LossAndGrad:
    """``loss_and_grad`` for one forward pass: ``per_sample_loss(fp32 logits)`` and its gradient w.r.t. x.

    Only the input gets a gradient (``torch.autograd.grad``), so no ``.grad`` of a model parameter is
    touched: training's inner attack must not leak into the optimizer's step.
    """

    def loss_and_grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(xr).float()
            loss = per_sample_loss(logits)
            (grad,) = torch.autograd.grad(loss.sum(), xr)
        return loss.detach(), grad, logits.detach()

    return loss_and_grad
