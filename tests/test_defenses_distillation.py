"""Defensive distillation on real MNIST: the known result (Carlini & Wagner 2017).

Teacher and student (convex_adversarial's small ConvNet, ``kw-small``) are trained at T = 100 on the first
5000 MNIST test images; 200 images spread over the last 5000 (every 25th) are attacked. Deployed at T = 1,
the student's softmax saturates, the cross-entropy gradient underflows to exactly zero, and FGSM / PGD on the
cross-entropy "fail"; the logit margin loss (PGD) and Carlini--Wagner break it.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robustkit.attacks import build_attack
from robustkit.defenses import DefensiveDistillation, build_defense
from robustkit.errors import ConfigError
from robustkit.threat import ThreatModel
from robustkit.training import accuracy

TEMPERATURE = 100.0


@pytest.fixture(scope="module")
def distilled(mnist_test):
    from robustkit.zoo import build_arch

    defense = DefensiveDistillation(build_arch("kw-small"), temperature=TEMPERATURE)
    return defense.fit(mnist_test.x[:5000], mnist_test.y[:5000], epochs=8, batch_size=64, lr=3e-3, seed=0)


@pytest.fixture(scope="module")
def held_out(mnist_test):
    return mnist_test.x[5000::25], mnist_test.y[5000::25]


def _robust(model, spec, x, y, threat) -> float:
    torch.manual_seed(0)
    return 1.0 - float(build_attack(spec)(model, x, y, threat).success.float().mean())


def test_distillation_resists_cross_entropy_attacks_and_falls_to_margin_attacks(distilled, held_out,
                                                                                 lenet5_clean) -> None:
    x, y = held_out
    clean = accuracy(distilled, x, y)
    linf, l2 = ThreatModel("Linf", 0.3), ThreatModel("L2", 2.0)
    pgd_ce, pgd_margin = {"name": "pgd", "steps": 20}, {"name": "pgd", "steps": 20, "loss": "margin"}
    cw = {"name": "cw", "steps": 100, "binary_search_steps": 3, "initial_const": 0.01, "lr": 0.05}
    numbers = {
        "fgsm (ce), Linf 0.3": _robust(distilled, "fgsm", x, y, linf),
        "pgd-20 (ce), Linf 0.3": _robust(distilled, pgd_ce, x, y, linf),
        "pgd-20 (margin), Linf 0.3": _robust(distilled, pgd_margin, x, y, linf),
        "pgd-20 (ce), L2 2.0": _robust(distilled, pgd_ce, x, y, l2),
        "cw (margin on logits), L2 2.0": _robust(distilled, cw, x, y, l2),
        "undefended lenet5, pgd-20 (ce), Linf 0.3": _robust(lenet5_clean, pgd_ce, x, y, linf),
    }
    print(f"\ndistilled kw-small (T={TEMPERATURE:g}), {len(y)} MNIST images: clean {clean:.1%}; "
          + "; ".join(f"{k}: {v:.1%}" for k, v in numbers.items()))
    assert clean >= 0.85
    # cross-entropy attacks see (almost) no gradient: the distilled model looks robust ...
    assert numbers["fgsm (ce), Linf 0.3"] >= 0.6
    assert numbers["pgd-20 (ce), Linf 0.3"] >= 0.6
    assert numbers["pgd-20 (ce), L2 2.0"] >= 0.6
    # ... where the same PGD breaks an undefended model completely
    assert numbers["undefended lenet5, pgd-20 (ce), Linf 0.3"] <= 0.05
    # attacks on the logits break it
    assert numbers["pgd-20 (margin), Linf 0.3"] <= 0.05
    assert numbers["cw (margin on logits), L2 2.0"] <= 0.25


def test_the_cross_entropy_gradient_vanishes_exactly(distilled, held_out) -> None:
    """The mechanism: at T = 1 the logit gaps are ~T times larger than in training, so softmax saturates and
    d CE / d x is exactly 0 in float32 for most inputs, while the margin loss keeps a gradient."""
    x, y = held_out
    xg = x.clone().requires_grad_(True)
    logits = distilled(xg)
    (grad_ce,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xg, retain_graph=True)
    top2 = logits.detach().topk(2, dim=1).values
    print(f"\nmedian logit gap {float((top2[:, 0] - top2[:, 1]).median()):.0f}")
    zero = (grad_ce.flatten(1).abs().amax(dim=1) == 0).float().mean()
    assert float(zero) >= 0.5
    other = logits.masked_fill(F.one_hot(y, 10).bool(), float("-inf")).amax(dim=1)
    margin = other - logits.gather(1, y[:, None]).squeeze(1)
    (grad_margin,) = torch.autograd.grad(margin.sum(), xg)
    assert bool((grad_margin.flatten(1).abs().amax(dim=1) > 0).all())


def test_distillation_parameters(lenet5_clean) -> None:
    defense = build_defense({"name": "distillation", "temperature": 50}, lenet5_clean)
    assert defense.describe() == "distillation(temperature=50)"
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(defense(x), lenet5_clean(x))  # deployed at T = 1: the student's own logits
    with pytest.raises(ConfigError, match="temperature: expected a number > 0"):
        build_defense({"name": "distillation", "temperature": 0}, lenet5_clean)
    with pytest.raises(ConfigError, match="fit sets temperature itself"):
        defense.fit(x, torch.zeros(3, dtype=torch.long), temperature=2)
