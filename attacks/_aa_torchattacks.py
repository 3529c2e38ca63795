"""AutoAttack's components built from torchattacks, with the reference (official) parameters.

torchattacks re-implements APGD, APGD-T, FAB and Square after the official code, but its defaults (and its
own ``AutoAttack`` class) use 10 iterations instead of 100; here every parameter is set from
:mod:`robustkit.attacks._aa_reference`. Parameter names differ between the two code bases:

============================  ==================================================================
official                      torchattacks (3.5.1)
============================  ==================================================================
``n_iter``                    ``steps``
``n_target_classes`` (= k)    ``n_classes`` (it targets ``n_classes - 1`` classes, so k + 1)
``rho``                       ``rho``
FAB ``targeted=True``         FAB ``multi_targeted=True`` (its ``targeted`` is a user-target mode)
Square ``resc_schedule``      ``resc_schedule`` (the official AutoAttack passes False)
============================  ==================================================================

Like the official components, each torchattacks component re-seeds torch's global RNG with ``seed`` at the
start of ``perturb`` and runs every restart (and every target class) only on the points it has not broken
yet. torchattacks has no L1 version of APGD or Square, and its FAB fails on L1 (3.5.1 leaves the
perturbation size undefined for L1), so only Linf and L2 are offered here.
"""
from __future__ import annotations

import contextlib
import io

import torch
from torch import nn

from robustkit.errors import ConfigError

from ._aa_reference import ComponentPlan

NORMS = ("Linf", "L2")
INSTALL_OFFICIAL = "pip install pyautoattack"


def torchattacks_version() -> str:
    import torchattacks

    return str(getattr(torchattacks, "__version__", "unknown"))


def check_norm(norm: str) -> None:
    """One-line error for a norm that torchattacks' components cannot run."""
    if norm not in NORMS:
        raise ConfigError(
            f"attack 'autoattack': {norm} needs the official AutoAttack components (APGD-L1 with its eps schedule and "
            f"L1 Square exist only there; torchattacks has no working L1 components): use implementation: official "
            f"({INSTALL_OFFICIAL})"
        )


def build_component(plan: ComponentPlan, model: nn.Module, norm: str, eps: float, seed: int,
                    device: torch.device):
    """A torchattacks attack object for one component at one eps, configured as the official code does."""
    import torchattacks

    check_norm(norm)
    common = dict(norm=norm, eps=float(eps), seed=int(seed), verbose=False)
    # torchattacks prints a notice when a model has no parameters to infer the device from; we set it below
    with contextlib.redirect_stdout(io.StringIO()):
        if plan.name in ("apgd-ce", "apgd-dlr"):
            attack = torchattacks.APGD(model, steps=plan.n_iter, n_restarts=plan.n_restarts, loss=plan.loss,
                                       eot_iter=plan.eot_iter, rho=plan.rho, **common)
        elif plan.name == "apgd-t":
            attack = torchattacks.APGDT(model, steps=plan.n_iter, n_restarts=plan.n_restarts,
                                        eot_iter=plan.eot_iter, rho=plan.rho,
                                        n_classes=plan.n_target_classes + 1, **common)
        elif plan.name in ("fab", "fab-t"):
            attack = torchattacks.FAB(model, steps=plan.n_iter, n_restarts=plan.n_restarts,
                                      alpha_max=plan.alpha_max, eta=plan.eta, beta=plan.beta,
                                      multi_targeted=plan.name == "fab-t",
                                      n_classes=plan.n_target_classes + 1, **common)
        elif plan.name == "square":
            attack = torchattacks.Square(model, n_queries=plan.n_queries, n_restarts=plan.n_restarts,
                                         p_init=plan.p_init, loss=plan.loss, resc_schedule=False, **common)
        else:  # pragma: no cover - names are validated in _aa_reference
            raise ConfigError(f"attack 'autoattack': unknown component {plan.name!r}")
    attack.set_device(device)
    return attack


def run_component(attack, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Adversarial inputs from a component built by :func:`build_component` (unbroken points come back as x)."""
    return attack(x, y).detach()
