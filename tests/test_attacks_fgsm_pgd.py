"""Native FGSM and PGD: agreement with torchattacks on real models, and the search semantics of PGD.

Toy models with a known gradient path pin down best-iterate selection, per-sample early stopping and the
treatment of already-misclassified inputs exactly; the real LeNet5s (``../shared``) check the numbers.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustkit.attacks import build_attack
from robustkit.steps import random_start, steepest_direction, unit_l2
from robustkit.attacks.pgd import PGD, compaction_steps
from robustkit.errors import ConfigError
from robustkit.threat import ThreatModel, check_budget

torchattacks = pytest.importorskip("torchattacks")


# ----------------------------------------------------------------------------------------------- toy models
class Scalar2Class(nn.Module):
    """Two classes; logit of class 1 is ``f(s)`` where ``s`` is the mean pixel. Records every forward call."""

    randomized = False  # deterministic: no randomness probe, so the call log is only the attack's own calls

    def __init__(self, f):
        super().__init__()
        self.f = f
        self.calls: list[tuple[int, bool]] = []  # (batch size, grad enabled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.shape[0], torch.is_grad_enabled()))
        s = x.flatten(1).mean(dim=1)
        return torch.stack([torch.zeros_like(s), self.f(s)], dim=1)


def bump(height: float):
    """f peaks at s = 0.75 with value ``height``: sign steps of 0.3 from 0.5 oscillate 0.5 -> 0.8 -> 0.5."""
    return lambda s: height - 40.0 * (s - 0.75) ** 2


def tiny_cnn(seed: int = 0, dropout: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(0.5))
    layers.append(nn.Linear(4 * 8 * 8, 10))
    return nn.Sequential(*layers).eval()


def tiny_batch(n: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def tiny_task(n: int = 32, seed: int = 1) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The tiny CNN with inputs labelled by its own predictions, so that every sample starts correct."""
    model = tiny_cnn()
    x, _ = tiny_batch(n, seed)
    with torch.no_grad():
        return model, x, model(x).argmax(1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def point(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(-1, 1, 1, 1)


# ------------------------------------------------------------------------------------- PGD search semantics
def test_pgd_keeps_the_misclassified_iterate_even_if_a_later_one_is_correct():
    # path without early stop: 0.5 (correct) -> 0.8 (f = 0.4 > 0: misclassified) -> 0.5 (correct again)
    model = Scalar2Class(bump(0.5))
    pgd = build_attack({"name": "pgd", "steps": 2, "step_size": 0.3, "random_start": False})
    res = pgd(model, point([0.5]), torch.tensor([0]), ThreatModel("Linf", 0.5))
    assert bool(res.success[0])
    assert float(res.x_adv[0].mean()) == pytest.approx(0.8, abs=1e-6)


def test_pgd_returns_the_highest_loss_iterate_not_the_last():
    # never misclassified (f <= -1); the last iterate (0.5) has a lower loss than the middle one (0.8)
    model = Scalar2Class(bump(-1.0))
    pgd = build_attack({"name": "pgd", "steps": 2, "step_size": 0.3, "random_start": False})
    res = pgd(model, point([0.5]), torch.tensor([0]), ThreatModel("Linf", 0.5))
    assert not bool(res.success[0])
    assert float(res.x_adv[0].mean()) == pytest.approx(0.8, abs=1e-6)
    expected = nn.functional.softplus(bump(-1.0)(torch.tensor(0.8)))
    assert float(res.info["best_loss"][0]) == pytest.approx(float(expected), rel=1e-4)


def test_pgd_stops_per_sample_and_never_attacks_already_misclassified_inputs():
    # f = 10 (s - 0.6): class 1 once s > 0.6. Sign steps of 0.05 raise s; sample 0 starts misclassified,
    # samples 1-4 cross the threshold after 1, 3, 5 and 7 steps.
    model = Scalar2Class(lambda s: 10.0 * (s - 0.6))
    x = point([0.65, 0.58, 0.48, 0.38, 0.28])
    pgd = build_attack({"name": "pgd", "steps": 10, "step_size": 0.05, "random_start": False})
    res = pgd(model, x, torch.zeros(5, dtype=torch.long), ThreatModel("Linf", 0.5))
    assert res.success.all()
    assert torch.equal(res.x_adv[0], x[0])  # untouched, bit for bit
    assert res.x_adv[1:].flatten() == pytest.approx([0.63, 0.63, 0.63, 0.63], abs=1e-5)
    grad_batches = [n for n, grad in model.calls if grad]
    # samples 1-4 succeed at evaluations 1, 3, 5, 7 and are frozen there; they leave the batch only at the
    # compaction steps (1, 2, 5 for 10 steps: no host sync in between), and no 11th step is taken
    assert compaction_steps(10) == [1, 2, 5]
    assert grad_batches == [4, 4, 3, 3, 3, 2, 2, 2, 2, 2]
    assert res.info["steps_run"] == 10
    assert res.info["loss_tail"] == []  # nothing left unbroken


def test_already_misclassified_inputs_are_returned_unchanged_on_a_cnn():
    model = tiny_cnn()
    x, _ = tiny_batch(16)
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = pred.clone()
    y[::2] = (pred[::2] + 1) % 10  # every other sample is already misclassified
    res = build_attack({"name": "pgd", "steps": 5})(model, x, y, ThreatModel("Linf", 0.1), generator=gen())
    assert torch.equal(res.x_adv[::2], x[::2])
    assert res.success[::2].all()


def test_restarts_only_attack_unbroken_samples_and_never_lose_successes():
    model, x, y = tiny_task(64)
    threat = ThreatModel("Linf", 0.03)
    once = build_attack({"name": "pgd", "steps": 3})(model, x, y, threat, generator=gen(5))
    calls: list[tuple[int, bool]] = []
    hook = model.register_forward_hook(lambda m, i, o: calls.append((i[0].shape[0], torch.is_grad_enabled())))
    try:
        thrice = build_attack({"name": "pgd", "steps": 3, "restarts": 3})(model, x, y, threat, generator=gen(5))
    finally:
        hook.remove()
    broken_once = int(once.success.sum())
    assert 0 < broken_once < 64  # the budget is tight enough for restarts to matter
    assert bool((thrice.success | ~once.success).all())  # restart 1 is the single run, later ones only add
    assert thrice.info["restarts_run"] >= 2
    # each restart is a run of gradient calls ended by judging its last iterate without a gradient
    run_starts = [n for i, (n, g) in enumerate(calls) if g and (i == 0 or not calls[i - 1][1])]
    assert len(run_starts) == thrice.info["restarts_run"]
    assert run_starts[:2] == [64, 64 - broken_once]


def test_pgd_info_is_small_and_consistent():
    model, x, y = tiny_task(32)
    res = build_attack({"name": "pgd", "steps": 8, "loss": "ce"})(model, x, y, ThreatModel("L2", 0.05),
                                                                      generator=gen())
    info = res.info
    assert 1 <= info["steps_run"] <= 8 and info["restarts_run"] == 1
    assert info["best_loss"].shape == (32,)
    unbroken = ~res.success
    assert len(info["loss_tail"]) == (5 if bool(unbroken.any()) else 0)
    # best_loss is the loss of the returned point
    with torch.no_grad():
        loss_at_adv = nn.functional.cross_entropy(model(res.x_adv), y, reduction="none")
    assert torch.allclose(info["best_loss"], loss_at_adv, rtol=1e-4, atol=1e-5)
    # the last tail entry is the mean loss of the unbroken samples at the last iterate, <= their best
    if bool(unbroken.any()):
        assert info["loss_tail"][-1] <= float(info["best_loss"][unbroken].mean()) + 1e-6


# -------------------------------------------------------------------------------------- budgets and steps
@pytest.mark.parametrize("norm, eps_max", [("Linf", 0.1), ("L2", 1.0)])
@pytest.mark.parametrize("spec", [{"name": "fgsm"}, {"name": "pgd", "steps": 6, "rel_step_size": 0.6},
                                  {"name": "pgd", "steps": 4, "loss": "margin", "restarts": 2}])
def test_budget_is_respected_with_per_sample_eps(norm, eps_max, spec):
    model, x, y = tiny_task(24)
    eps = torch.linspace(eps_max / 20, eps_max, 24)
    attack = build_attack(spec)
    res = attack(model, x, y, ThreatModel(norm, eps), generator=gen())
    # the attack's own output (before the base class projects it) is already inside every sample's ball;
    # PGD's iterates are projected exactly, FGSM's single step only up to float32 rounding of x + eps
    raw = attack.perturb(model, x, y, eps, norm, target=None, generator=gen())
    x_raw = raw[0] if isinstance(raw, tuple) else raw
    check_budget(x, x_raw, eps, norm, who="raw output", rtol=1e-6 if attack.name == "pgd" else 2e-5)
    assert bool((res.norms <= eps.double() * (1 + 1e-6)).all())
    # per-sample eps is really used: unbroken samples spend (nearly) all of their own budget
    spent = res.norms[~res.success] / eps[~res.success].double()
    assert spent.numel() and float(spent.median()) > 0.5


def test_fgsm_l2_step_has_length_eps_and_zero_gradient_does_not_move():
    model = tiny_cnn()
    x = torch.full((8, 1, 8, 8), 0.5)  # far from the box edges: no clipping
    y = torch.arange(8)
    eps = torch.linspace(0.05, 0.4, 8)
    res = build_attack("fgsm")(model, x, y, ThreatModel("L2", eps))
    assert torch.allclose(res.norms.float(), eps, rtol=2e-5)

    flat = Scalar2Class(lambda s: 0.0 * s + 1.0)  # gradient exactly zero everywhere
    xs = point([0.3, 0.7])
    for norm in ("Linf", "L2"):
        out = build_attack("fgsm")(flat, xs, torch.zeros(2, dtype=torch.long), ThreatModel(norm, 0.2))
        assert torch.equal(out.x_adv, xs)
        out = build_attack({"name": "pgd", "steps": 3})(flat, xs, torch.zeros(2, dtype=torch.long),
                                                        ThreatModel(norm, 0.2), generator=gen())
        assert torch.isfinite(out.x_adv).all()


def test_step_helpers():
    g = torch.tensor([[[[3.0, -4.0]]], [[[0.0, 0.0]]], [[[1e-30, 0.0]]]])
    assert torch.equal(steepest_direction(g, "Linf"), g.sign())
    u = unit_l2(g)
    assert torch.allclose(u[0].flatten(), torch.tensor([0.6, -0.8]))
    assert torch.equal(u[1], torch.zeros_like(u[1]))  # zero stays zero, no NaN
    assert torch.allclose(u[2].flatten(), torch.tensor([1.0, 0.0]))  # tiny gradients still give a unit step


def test_random_start_distribution():
    n = 20000
    x = torch.full((n, 1, 1, 2), 0.5)
    eps = torch.full((n,), 0.1)
    lin = random_start(x, eps, "Linf", gen(0)) - x
    assert float(lin.abs().max()) <= 0.1 + 1e-6
    assert float(lin.abs().mean()) == pytest.approx(0.05, abs=0.002)  # uniform in [-eps, eps]
    l2 = (random_start(x, eps, "L2", gen(1)) - x).flatten(1).norm(dim=1)
    assert float(l2.max()) <= 0.1 * (1 + 1e-6)
    # radius uniform in [0, eps] (not in the disc's area: see random_start), so the median radius is eps / 2
    assert float(l2.median()) == pytest.approx(0.05, rel=0.03)
    # and the direction is uniform: the angle of a 2-d start is spread evenly over the circle
    d = random_start(x, eps, "L2", gen(2)) - x
    angle = torch.atan2(d[:, 0, 0, 1], d[:, 0, 0, 0])
    counts = torch.histc(angle, bins=8, min=-math.pi, max=math.pi)
    assert float(counts.min()) > 0.9 * n / 8


def test_random_start_is_deterministic_given_the_generator():
    model, x, y = tiny_task(16)
    pgd = build_attack({"name": "pgd", "steps": 3})
    a = pgd(model, x, y, ThreatModel("Linf", 0.05), generator=gen(7)).x_adv
    b = pgd(model, x, y, ThreatModel("Linf", 0.05), generator=gen(7)).x_adv
    c = pgd(model, x, y, ThreatModel("Linf", 0.05), generator=gen(8)).x_adv
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_attacks_run_the_model_in_eval_mode_and_restore_train_mode():
    model = tiny_cnn(dropout=True).train()
    seen: list[bool] = []
    for m in model.modules():
        m.register_forward_hook(lambda mod, i, o: seen.append(mod.training))
    x, y = tiny_batch(8)
    for spec in ("fgsm", {"name": "pgd", "steps": 2}):
        seen.clear()
        build_attack(spec)(model, x, y, ThreatModel("Linf", 0.05), generator=gen())
        assert seen and not any(seen)
        assert all(m.training for m in model.modules())


def test_dlr_and_margin_losses_run():
    model, x, y = tiny_task(16)
    for loss in ("margin", "dlr"):
        res = build_attack({"name": "pgd", "steps": 4, "loss": loss})(model, x, y, ThreatModel("Linf", 0.1),
                                                                      generator=gen())
        assert torch.isfinite(res.info["best_loss"]).all()


def test_step_size_defaults_and_config_errors():
    eps = torch.tensor([0.1, 0.3])
    assert torch.allclose(PGD().step_sizes(eps), 2.5 * eps / 50)
    assert torch.allclose(PGD(steps=10, rel_step_size=0.25).step_sizes(eps), 0.25 * eps)
    assert torch.allclose(PGD(step_size=0.01).step_sizes(eps), torch.full((2,), 0.01))
    bad = [{"step_size": 0.01, "rel_step_size": 0.1}, {"step_size": -1}, {"step_size": "big"},
           {"steps": 0}, {"restarts": 0}, {"restarts": 2, "random_start": False}, {"loss": "hinge"},
           {"stepz": 3}]
    for params in bad:
        with pytest.raises(ConfigError):
            PGD(**params)
    with pytest.raises(ConfigError):
        build_attack({"name": "fgsm", "loss": "nope"})
    with pytest.raises(ConfigError):
        build_attack("pgd")(tiny_cnn(), *tiny_batch(2), ThreatModel("L1", 1.0))


# ----------------------------------------------------------------------------- real models (../shared)
def _first(ds, n):
    return ds.x[:n], ds.y[:n]


@pytest.mark.parametrize("which", ["lenet5_clean", "lenet5_adv"])
@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_fgsm_equals_torchattacks(request, mnist_test, which, eps):
    model = request.getfixturevalue(which)
    x, y = _first(mnist_test, 1000)
    ta_adv = torchattacks.FGSM(model, eps=eps)(x, y)
    with torch.no_grad():
        ta_success = model(ta_adv).argmax(1) != y
    ours = build_attack("fgsm")(model, x, y, ThreatModel("Linf", eps))
    print(f"FGSM {which} eps={eps}: robust acc torchattacks {1 - ta_success.float().mean():.4f}, "
          f"robustkit {1 - ours.success.float().mean():.4f}")
    assert torch.equal(ours.success.cpu(), ta_success.cpu())


def test_pgd_at_least_as_strong_as_torchattacks(lenet5_adv, mnist_test):
    x, y = _first(mnist_test, 500)
    torch.manual_seed(0)  # torchattacks draws its random start from the global generator
    ta_adv = torchattacks.PGD(lenet5_adv, eps=0.3, alpha=0.01, steps=40, random_start=True)(x, y)
    with torch.no_grad():
        ta_acc = float((lenet5_adv(ta_adv).argmax(1) == y).float().mean())
    pgd = build_attack({"name": "pgd", "steps": 40, "step_size": 0.01, "random_start": True})
    res = pgd(lenet5_adv, x, y, ThreatModel("Linf", 0.3), generator=gen(0))
    ours = 1 - float(res.success.float().mean())
    print(f"PGD-40 (0.01) Linf 0.3 adv LeNet5, 500 images: robust acc torchattacks {ta_acc:.4f}, robustkit {ours:.4f}")
    assert ours <= ta_acc + 0.005
    assert 0.5 < ours < 1.0  # sanity: an adversarially trained model keeps most of its accuracy at 0.3


@pytest.mark.parametrize("mode", ["random", "least-likely"])
def test_targeted_pgd_reaches_targets_on_clean_lenet5(lenet5_clean, mnist_test, mode):
    x, y = _first(mnist_test, 200)
    res = build_attack({"name": "pgd", "steps": 20, "targeted": mode})(
        lenet5_clean, x, y, ThreatModel("Linf", 0.3), generator=gen(0))
    assert res.target is not None and bool((res.target != y).all())
    rate = float(res.success.float().mean())
    print(f"targeted ({mode}) PGD-20 Linf 0.3 clean LeNet5: success {rate:.3f}")
    assert rate >= 0.9
    assert torch.equal(res.success, res.pred == res.target)


def test_margin_loss_breaks_the_clean_lenet5(lenet5_clean, mnist_test):
    x, y = _first(mnist_test, 200)
    res = build_attack({"name": "pgd", "steps": 20, "loss": "margin"})(
        lenet5_clean, x, y, ThreatModel("Linf", 0.3), generator=gen(0))
    assert float(res.success.float().mean()) >= 0.95
