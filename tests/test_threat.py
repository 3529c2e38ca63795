"""Projection onto threat-model balls and the budget check every adversarial example passes through."""
import pytest
import torch

from robustkit.errors import BudgetViolationError, ConfigError
from robustkit.threat import (ThreatModel, canonical_norm, check_budget, parse_eps, perturbation_norm, project,
                              validate_eps)


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
def test_project_always_passes_the_budget_check(norm):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8, generator=g)
    # values right at the edges of [0, 1] are where float32 rounding of x + delta bites
    x[:8] = 1.0
    x[8:16] = 0.999999
    eps = torch.rand(64, generator=g) * {"Linf": 0.1, "L2": 2.0, "L1": 10.0}[norm] + 1e-3
    x_adv = x + 5 * torch.randn(64, 3, 8, 8, generator=g)
    out = project(x, x_adv, eps, norm)
    norms = check_budget(x, out, eps, norm)
    assert out.min() >= 0 and out.max() <= 1
    # a large step lands on (or, after the box clamp, inside) the ball boundary: projection is not a no-op
    assert (norms <= eps.double() * (1 + 1e-6)).all()
    if norm != "L1":  # L1: mass concentrates on few pixels, which the box clamp then cuts
        assert (norms > 0.5 * eps.double()).float().mean() > 0.9


def test_linf_projection_is_exact_clipping():
    x = torch.tensor([[0.5, 0.2, 0.9]]).reshape(1, 3, 1, 1)
    x_adv = torch.tensor([[0.9, 0.0, 0.95]]).reshape(1, 3, 1, 1)
    out = project(x, x_adv, 0.1, "Linf")
    assert torch.allclose(out.flatten(), torch.tensor([0.6, 0.1, 0.95]), atol=1e-7)


def test_l1_projection_matches_a_brute_force_reference():
    # Projection onto the L1 ball: soft-thresholding with the theta that makes the norm exactly eps.
    g = torch.Generator().manual_seed(1)
    d = torch.randn(5, 1, 4, 4, generator=g)
    x = torch.full_like(d, 0.5)
    eps = torch.full((5,), 1.0)
    d = d / d.reshape(5, -1).abs().sum(1).reshape(5, 1, 1, 1) * 1.5  # L1 norm 1.5 > eps
    out = project(x, x + d * 0.1, eps * 0.1, "L1")  # 0.15 > 0.1, and 0.5 +- 0.15 stays inside the box
    delta = (out - x).reshape(5, -1)
    assert torch.allclose(delta.abs().sum(1), torch.full((5,), 0.1 * (1 - 1e-5)), atol=1e-6)
    flat = (d * 0.1).reshape(5, -1)
    # soft thresholding keeps signs and the ordering of magnitudes
    assert ((delta.sign() == flat.sign()) | (delta == 0)).all()


def test_check_budget_rejects_violations_with_one_line():
    x = torch.zeros(2, 1, 2, 2)
    bad = x.clone()
    bad[0, 0, 0, 0] = 0.2
    with pytest.raises(BudgetViolationError, match="exceeded its Linf budget"):
        check_budget(x, bad, 0.1, "Linf")
    with pytest.raises(BudgetViolationError, match=r"left the input range"):
        check_budget(x, x - 0.1, 0.5, "Linf")
    ok = x.clone()
    ok[0, 0, 0, 0] = 0.1
    assert float(check_budget(x, ok, 0.1, "Linf")[0]) == pytest.approx(0.1)


def test_eps_parsing_and_validation():
    assert parse_eps("8/255") == pytest.approx(8 / 255)
    assert parse_eps(0.3) == 0.3 and parse_eps("0.5") == 0.5
    with pytest.raises(ConfigError, match="fraction"):
        parse_eps("eight")
    with pytest.raises(ConfigError, match="eps > 0"):
        validate_eps(0.0, "Linf")
    with pytest.raises(ConfigError, match="must be <= 1"):
        validate_eps(8.0, "Linf")
    assert validate_eps(8.0, "L2") == 8.0
    assert canonical_norm("linf") == "Linf" and canonical_norm("l2") == "L2"
    with pytest.raises(ConfigError, match="Linf, L2, L1"):
        canonical_norm("L3")


def test_per_sample_eps_threat_model():
    tm = ThreatModel("linf", torch.tensor([0.1, 0.2, 0.3]))
    assert tm.norm == "Linf"
    assert torch.allclose(tm.eps_tensor(3), torch.tensor([0.1, 0.2, 0.3]))
    assert torch.allclose(tm.subset(torch.tensor([2])).eps_tensor(1), torch.tensor([0.3]))
    with pytest.raises(ValueError):
        tm.eps_tensor(4)
    x = torch.zeros(3, 1, 1, 1)
    assert torch.allclose(perturbation_norm(x, x + 0.25, "Linf"), torch.full((3,), 0.25, dtype=torch.float64))
