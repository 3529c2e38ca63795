"""Ensembles: each aggregation rule against a direct implementation, CrossMax's robustness properties, BPDA for
the vote, and attacks that go end to end through the whole ensemble."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustkit.attacks import build_attack
from robustkit.attacks.bpda import bpda_parts
from robustkit.defenses import build_defense, crossmax
from robustkit.defenses.transforms import GaussianNoise
from robustkit.errors import ConfigError
from robustkit.predict import is_randomized
from robustkit.threat import ThreatModel


class FixedLogits(nn.Module):
    """Returns logits ``scale * (A x_flat + c)``: a differentiable member whose outputs the test controls."""

    def __init__(self, seed: int, d: int = 4, classes: int = 3, scale: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.linear = nn.Linear(d, classes)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(classes, d, generator=g))
            self.linear.bias.copy_(torch.randn(classes, generator=g))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.linear(x.flatten(1))


class Constant(nn.Module):
    """Always the same logits (plus 0 * x so that it stays in the autograd graph)."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1) + 0 * x.flatten(1).sum(dim=1, keepdim=True)


def crossmax_reference(z: np.ndarray, k: int) -> np.ndarray:
    """Algorithm 1 of Fort & Lakshminarayanan (2024), written with explicit loops."""
    b, n, c = z.shape
    out = np.zeros((b, c))
    for i in range(b):
        zi = z[i].copy()
        for m in range(n):
            zi[m] -= zi[m].max()
        for j in range(c):
            zi[:, j] -= zi[:, j].max()
        for j in range(c):
            out[i, j] = sorted(zi[:, j], reverse=True)[k - 1]
    return out


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_crossmax_matches_the_papers_algorithm(k: int) -> None:
    z = torch.randn(6, 5, 10, generator=torch.Generator().manual_seed(k)) * 3
    assert np.allclose(crossmax(z, k).numpy(), crossmax_reference(z.numpy(), k), atol=1e-6)


def test_crossmax_is_invariant_to_member_offsets_and_resists_one_loud_member() -> None:
    z = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(0))
    shifted = z + torch.randn(4, 5, 1, generator=torch.Generator().manual_seed(1)) * 100
    assert torch.allclose(crossmax(z, 3), crossmax(shifted, 3), atol=1e-4)
    # four members mildly prefer class 0; one compromised member screams class 2
    members = [Constant([2.0, 0.0, 0.0]) for _ in range(4)] + [Constant([0.0, 0.0, 1000.0])]
    x = torch.rand(2, 1, 2, 2)
    assert build_defense({"name": "ensemble", "aggregation": "logits"}, members)(x).argmax(1).tolist() == [2, 2]
    assert build_defense({"name": "ensemble", "aggregation": "crossmax"}, members)(x).argmax(1).tolist() == [0, 0]


def test_mean_logits_and_mean_probabilities() -> None:
    members = [FixedLogits(i) for i in range(3)]
    x = torch.rand(7, 1, 2, 2)
    z = torch.stack([m(x) for m in members], dim=1)
    logits = build_defense({"name": "ensemble", "aggregation": "logits"}, members)(x)
    assert torch.allclose(logits, z.mean(dim=1), atol=1e-6)
    probs_out = build_defense({"name": "ensemble", "aggregation": "probs"}, members)(x)
    assert torch.allclose(probs_out.softmax(dim=1), z.softmax(dim=2).mean(dim=1), atol=1e-6)
    assert torch.allclose(probs_out.exp().sum(dim=1), torch.ones(7), atol=1e-5)


def test_vote_takes_the_plurality_breaks_ties_by_mean_probability_and_uses_bpda() -> None:
    x = torch.rand(3, 1, 2, 2)
    votes = [Constant([3.0, 0.0, 0.0]), Constant([0.0, 0.1, 0.0]), Constant([0.0, 0.1, 0.0])]
    vote = build_defense({"name": "ensemble", "aggregation": "vote"}, votes)
    assert vote(x).argmax(1).tolist() == [1, 1, 1]  # 2 votes beat 1 confident vote (mean probs prefer 0)
    tie = [Constant([3.0, 0.0, 0.0]), Constant([0.0, 0.1, 0.0])]
    assert build_defense({"name": "ensemble", "aggregation": "vote"}, tie)(x).argmax(1).tolist() == [0, 0, 0]
    assert bpda_parts(vote) == ["vote"]
    # backward pass = gradient of the mean probabilities
    members = [FixedLogits(i) for i in range(3)]
    ens = build_defense({"name": "ensemble", "aggregation": "vote"}, members)
    xg = torch.rand(5, 1, 2, 2, requires_grad=True)
    weights = torch.randn(5, 3)
    (grad_vote,) = torch.autograd.grad((ens(xg) * weights).sum(), xg)
    xs = xg.detach().clone().requires_grad_(True)
    mean_probs = torch.stack([m(xs).softmax(1) for m in members], dim=1).mean(dim=1)
    (grad_sub,) = torch.autograd.grad((mean_probs * weights).sum(), xs)
    assert torch.allclose(grad_vote, grad_sub, atol=1e-6)
    # forward is exactly the vote, bit for bit
    with torch.no_grad():
        z = torch.stack([m(xg) for m in members], dim=1)
        expected = (F.one_hot(z.argmax(2), 3).sum(1) + 0.5 * z.softmax(2).mean(1)) / 3
    assert torch.equal(ens(xg.detach()), expected)


def test_ensemble_parameters_are_validated() -> None:
    members = [FixedLogits(i) for i in range(2)]
    with pytest.raises(ConfigError, match="k must be between 1 and 2, got 3"):
        build_defense({"name": "ensemble", "aggregation": "crossmax"}, members)
    with pytest.raises(ConfigError, match="aggregation: expected one of logits, probs, vote, crossmax"):
        build_defense({"name": "ensemble", "aggregation": "median"}, members)
    with pytest.raises(ConfigError, match="needs at least 2 member models, got 1"):
        build_defense("ensemble", members[0])
    ens = build_defense({"name": "ensemble", "aggregation": "crossmax", "k": 2}, members)
    assert ens.describe() == "ensemble(aggregation=crossmax, k=2, members=2)"
    assert build_defense("ensemble", members).describe() == "ensemble(aggregation=logits, members=2)"


def test_ensemble_is_randomized_when_a_member_is() -> None:
    plain = [FixedLogits(0), FixedLogits(1)]
    assert build_defense("ensemble", plain).randomized is None  # nothing declared: detection decides
    assert is_randomized(build_defense("ensemble", plain)) is False
    noisy = nn.Sequential(GaussianNoise(0.1), FixedLogits(2))
    ens = build_defense("ensemble", plain + [noisy])
    assert ens.randomized is True and is_randomized(ens)


@pytest.mark.parametrize("aggregation", ["logits", "probs", "vote", "crossmax"])
def test_pgd_attacks_the_whole_ensemble_end_to_end(aggregation: str) -> None:
    """The input gradient reaches every member (for the differentiable rules, each member's weights get a
    gradient through the aggregation), and PGD fools the aggregated prediction, not just one member."""
    torch.manual_seed(0)
    members = [FixedLogits(i, scale=2.0) for i in range(3)]
    ens = build_defense({"name": "ensemble", "aggregation": aggregation, "k": 2}, members)
    x = torch.rand(32, 1, 2, 2)
    with torch.no_grad():
        y = ens(x).argmax(1)
    xg = x.clone().requires_grad_(True)
    (grad_x,) = torch.autograd.grad(F.cross_entropy(ens(xg), y), xg)
    assert float(grad_x.abs().sum()) > 0
    if aggregation != "vote":  # BPDA substitutes pass gradients to the input only, by design
        for m in members:
            (g,) = torch.autograd.grad(F.cross_entropy(ens(x), y), m.linear.weight, allow_unused=True)
            assert g is not None and float(g.abs().sum()) > 0, f"a member gets no gradient under {aggregation}"
    result = build_attack({"name": "pgd", "steps": 20})(ens, x, y, ThreatModel("Linf", 0.5))
    assert float(result.success.float().mean()) >= 0.9
    with torch.no_grad():
        assert torch.equal(ens(result.x_adv).argmax(1)[result.success], result.pred[result.success])
    if aggregation == "vote":
        assert result.info["bpda_parts"] == ["vote"]


def test_fit_trains_each_member_with_its_own_seed() -> None:
    torch.manual_seed(0)
    members = [nn.Sequential(nn.Flatten(), nn.Linear(4, 3)) for _ in range(2)]
    for m in members[1:]:
        m.load_state_dict(members[0].state_dict())
    ens = build_defense({"name": "ensemble", "aggregation": "vote"}, members)
    x, y = torch.rand(64, 1, 2, 2), torch.randint(0, 3, (64,))
    ens.fit(x, y, epochs=2, batch_size=16, seed=5)
    assert len(ens.training_history) == 2
    assert not torch.equal(members[0][1].weight, members[1][1].weight)  # different data orders
