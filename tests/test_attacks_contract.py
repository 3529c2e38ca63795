"""The attack plugin contract: ``Attack.__call__`` is final, subclasses implement ``perturb`` only."""
from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from robustkit.attacks import ATTACKS, Attack, build_attack, get_attack_class
from robustkit.threat import ThreatModel


def test_a_subclass_that_defines_call_is_rejected_with_a_clear_error():
    with pytest.raises(TypeError, match=r"ShortCut defines __call__, which is final.*implement perturb"):
        class ShortCut(Attack):  # noqa: F841  (never created: the class statement itself must fail)
            name = "shortcut"

            def __call__(self, model, x, y, threat, **kwargs):  # skips re-prediction and the budget check
                return x


def test_a_grandchild_cannot_override_call_either():
    class Base(Attack):
        name = "base-for-test"

        def perturb(self, model, x, y, eps, norm, *, target, generator):
            return x

    with pytest.raises(TypeError, match="final"):
        type("Child", (Base,), {"__call__": lambda self, *a, **k: None})


@pytest.mark.skipif(sys.version_info < (3, 11), reason="typing.final records __final__ from Python 3.11")
def test_call_is_marked_final_for_type_checkers():
    assert getattr(Attack.__call__, "__final__", False) is True


def test_no_registered_attack_overrides_call():
    classes = [ATTACKS.get(name) for name in ATTACKS.names()] + [get_attack_class("torchattacks:PGD")]
    for cls in classes:
        assert cls.__call__ is Attack.__call__, cls


def test_a_perturb_only_attack_gets_the_guarantees():
    """An attack that returns an out-of-ball point is projected back; success is re-predicted."""

    class Overshoot(Attack):
        name = "overshoot-for-test"

        def perturb(self, model, x, y, eps, norm, *, target, generator):
            return x + 10.0  # far outside the ball and outside [0, 1]

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    x = torch.full((3, 1, 2, 2), 0.5)
    y = model(x).argmax(1)
    res = build_attack(Overshoot())(model, x, y, ThreatModel("Linf", 0.1))
    assert torch.allclose(res.x_adv, torch.full_like(x, 0.6))
    assert torch.equal(res.pred, model(res.x_adv).argmax(1))
