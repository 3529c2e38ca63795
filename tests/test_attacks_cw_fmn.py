"""Tests for the minimum-norm attacks ``cw`` (Carlini-Wagner L2) and ``fmn``, for ``cw-linf`` and for
:mod:`robustkit.curves`.

The expensive runs on the real clean LeNet5 (first 100 MNIST test images) happen once per module in
fixtures and are shared: one CW-L2 run, one PGD-L2 bisection, one FMN-L2 run. Everything else uses a tiny
random CNN on random 8x8 images.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustkit.attacks import build_attack, get_attack_class
from robustkit.attacks.cw import select_within_budget
from robustkit.curves import full_robust_accuracy_curve, merge_min_norms, robust_accuracy_curve
from robustkit.errors import ConfigError, RobustkitError
from robustkit.predict import predict
from robustkit.threat import RTOL, ThreatModel, perturbation_norm

N_MNIST = 100
# CW settings for the test: 5 search steps of 100 Adam steps at lr 0.1 instead of the 9 x 1000 at lr 0.01
# of the defaults, so that the run fits the test budget (a larger lr converges in fewer steps).
FAST_CW = {"steps": 100, "binary_search_steps": 5, "initial_const": 1.0, "lr": 0.1}
CW_BOUND = 1.4  # L2 eps of the bounded evaluation in the CW run: about the median minimal norm


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------- tiny model
@pytest.fixture(scope="module")
def tiny():
    """A random CNN on 8x8 single-channel inputs, with the labels it predicts (so every sample starts correct)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()
    with torch.no_grad():  # logit gaps of order 1, like a trained classifier, instead of 0.01
        model[-1].weight.mul_(20.0)
    x = torch.rand(12, 1, 8, 8, generator=gen(1))
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    return model, x, y


# ----------------------------------------------------------------------------------- MNIST fixtures
@pytest.fixture(scope="module")
def mnist100(mnist_test):
    return mnist_test.x[:N_MNIST], mnist_test.y[:N_MNIST]


@pytest.fixture(scope="module")
def clean_correct(lenet5_clean, mnist100):
    x, y = mnist100
    return predict(lenet5_clean, x) == y


@pytest.fixture(scope="module")
def cw_run(lenet5_clean, mnist100):
    """One CW-L2 run on the clean LeNet5, bounded at L2 eps CW_BOUND (the search itself ignores eps)."""
    x, y = mnist100
    return build_attack({"name": "cw", **FAST_CW})(lenet5_clean, x, y, ThreatModel("L2", CW_BOUND))


@pytest.fixture(scope="module")
def pgd_l2_min_norms(lenet5_clean, mnist100, clean_correct):
    """The smallest L2 norm at which the native PGD (50 steps, default step size 2.5 eps / steps) breaks each
    sample, by a per-sample bisection over eps in [0, 3] (6 halvings, resolution 3/64 < 0.05).

    Each sample's value is the norm of the smallest adversarial PGD returned in any bisection round (<= the
    eps of that round), so PGD gets the benefit of every doubt. eps = 3 breaks every correct sample.
    """
    x, y = mnist100
    pgd = build_attack({"name": "pgd", "steps": 50})
    hi = torch.full((x.shape[0],), 3.0)
    lo = torch.zeros_like(hi)
    first = pgd(lenet5_clean, x, y, ThreatModel("L2", hi), generator=gen(0))
    assert bool(first.success[clean_correct].all()), "PGD-L2 at eps 3 should break every correct sample"
    best = torch.where(first.success, first.norms, torch.full_like(first.norms, math.inf))
    for round_ in range(6):
        mid = (lo + hi) / 2
        res = pgd(lenet5_clean, x, y, ThreatModel("L2", mid), generator=gen(round_ + 1))
        lo = torch.where(res.success, lo, mid)
        hi = torch.where(res.success, mid, hi)
        best = torch.where(res.success, torch.minimum(best, res.norms), best)
    return best


# ------------------------------------------------------------------------------------------- CW-L2
def test_cw_breaks_every_correct_sample_with_smaller_median_l2_than_pgd(cw_run, pgd_l2_min_norms, clean_correct):
    """CW-L2 must find an adversarial example for EVERY correctly classified image, smaller than PGD's.

    Fair comparison: PGD-L2 is an eps-bounded attack, so its perturbations fill whatever ball it is given;
    comparing its norms at one large eps would be meaningless. Instead each sample gets the smallest eps at
    which PGD succeeds (bisection, see ``pgd_l2_min_norms``), i.e. the minimal norm PGD can find. Both
    attacks then succeed on the same samples (all correct ones), and we compare the medians of the minimal
    norms over those samples: CW must be lower.
    """
    cw_norms = cw_run.info["min_norm"][clean_correct]
    pgd_norms = pgd_l2_min_norms[clean_correct]
    assert bool(torch.isfinite(cw_norms).all()), f"CW missed {int((~torch.isfinite(cw_norms)).sum())} samples"
    assert bool(torch.isfinite(pgd_norms).all())
    cw_median, pgd_median = float(cw_norms.median()), float(pgd_norms.median())
    print(f"median L2 over {int(clean_correct.sum())} samples: CW {cw_median:.4f}, PGD-L2 bisection {pgd_median:.4f}")
    assert cw_median < pgd_median
    # minimal norms come from examples that really fool the model
    assert bool((cw_norms > 0).all())


def test_cw_bounded_evaluation_counts_only_examples_within_eps(cw_run, mnist100, clean_correct, lenet5_clean):
    """Samples whose smallest CW perturbation exceeds eps come back UNCHANGED and unbroken; none is rescaled."""
    x, y = mnist100
    min_norm = cw_run.info["min_norm"]
    limit = CW_BOUND * (1 + RTOL)  # the rule: L2 norm <= eps with relative tolerance 1e-6
    over = clean_correct & (min_norm > limit)
    within = clean_correct & (min_norm <= limit)
    assert int(over.sum()) >= 10 and int(within.sum()) >= 10, "CW_BOUND should split the samples"
    assert torch.equal(cw_run.x_adv[over], x[over])
    assert not bool(cw_run.success[over].any())
    assert bool(cw_run.success[within].all())
    # the returned examples are the ones CW found: same norm as reported (projection slack 1e-5 at most)
    assert torch.allclose(cw_run.norms[within], min_norm[within], rtol=2e-5)
    assert bool((cw_run.norms <= limit).all())
    assert torch.equal(cw_run.info["within_budget"], min_norm <= limit)
    # robust accuracy from the bounded run equals the curve read off the minimal norms
    robust = float((clean_correct & ~cw_run.success).double().mean())
    [(eps, acc)] = robust_accuracy_curve(clean_correct, min_norm, [CW_BOUND])
    assert eps == CW_BOUND and acc == pytest.approx(robust, abs=1e-12)


def test_cw_targeted_reaches_the_target(lenet5_clean, mnist_test):
    x, y = mnist_test.x[:20], mnist_test.y[:20]
    attack = build_attack({"name": "cw", **FAST_CW, "targeted": "random"})
    res = attack(lenet5_clean, x, y, ThreatModel("L2", 100.0), generator=gen(3))
    correct = predict(lenet5_clean, x) == y
    assert res.target is not None and bool((res.target != y).all())
    assert bool(torch.isfinite(res.info["min_norm"][correct]).all())
    assert bool(res.success[correct].all())
    assert torch.equal(predict(lenet5_clean, res.x_adv)[correct], res.target[correct])


# ---------------------------------------------------------------------------------------------- FMN
@pytest.fixture(scope="module")
def fmn_l2_run(lenet5_clean, mnist100):
    x, y = mnist100
    return build_attack({"name": "fmn"})(lenet5_clean, x, y, ThreatModel("L2", CW_BOUND))


def test_fmn_minimal_norms_not_above_pgd_adversarials(fmn_l2_run, pgd_l2_min_norms, clean_correct):
    """FMN's minimal norms must not exceed the norms of the known adversarial examples PGD found.

    Per sample, FMN is within 5% of PGD's smallest adversarial for at least 95% of the samples, and its
    median is no larger than PGD's.
    """
    fmn_norms = fmn_l2_run.info["min_norm"][clean_correct]
    pgd_norms = pgd_l2_min_norms[clean_correct]
    assert bool(torch.isfinite(fmn_norms).all())
    print(f"median L2: FMN {float(fmn_norms.median()):.4f}, PGD-L2 bisection {float(pgd_norms.median()):.4f}; "
          f"FMN <= PGD on {float((fmn_norms <= pgd_norms).double().mean()):.2%}")
    assert float(fmn_norms.median()) <= float(pgd_norms.median())
    assert float((fmn_norms <= 1.05 * pgd_norms).double().mean()) >= 0.95


def test_fmn_curve_is_monotone_and_matches_the_bounded_run(fmn_l2_run, clean_correct):
    min_norm = fmn_l2_run.info["min_norm"]
    curve = full_robust_accuracy_curve(clean_correct, min_norm)
    eps_values = [e for e, _ in curve]
    accs = [a for _, a in curve]
    assert eps_values == sorted(eps_values) and len(set(eps_values)) == len(eps_values)
    assert all(a >= b for a, b in zip(accs, accs[1:]))
    assert accs[0] == pytest.approx(float(clean_correct.double().mean()))
    assert accs[-1] == 0.0  # every correct sample was broken
    robust = float((clean_correct & ~fmn_l2_run.success).double().mean())
    assert robust_accuracy_curve(clean_correct, min_norm, [CW_BOUND])[0][1] == pytest.approx(robust)


@pytest.mark.parametrize("norm", ["Linf", "L2", "L1"])
def test_fmn_all_norms_on_tiny_model(tiny, norm):
    """Every sample gets a confirmed minimal norm, and with a huge eps the returned example has exactly it."""
    model, x, y = tiny
    big = 1.0 if norm == "Linf" else 1e3
    res = build_attack({"name": "fmn", "steps": 100})(model, x, y, ThreatModel(norm, big))
    min_norm = res.info["min_norm"]
    assert bool(torch.isfinite(min_norm).all())
    assert bool(res.success.all())
    assert torch.allclose(res.norms, min_norm)
    assert torch.allclose(perturbation_norm(x, res.x_adv, norm), min_norm)


# ------------------------------------------------------------------------------------------ cw-linf
def test_cw_linf_at_least_as_strong_as_fgsm(lenet5_adv, mnist100):
    x, y = mnist100
    threat = ThreatModel("Linf", 0.3)
    fgsm = build_attack("fgsm")(lenet5_adv, x, y, threat)
    cw_linf = build_attack("cw-linf")(lenet5_adv, x, y, threat, generator=gen(0))
    correct = predict(lenet5_adv, x) == y
    robust_fgsm = int((correct & ~fgsm.success).sum())
    robust_cw = int((correct & ~cw_linf.success).sum())
    print(f"robust on {x.shape[0]}: FGSM {robust_fgsm}, cw-linf {robust_cw}")
    assert robust_cw <= robust_fgsm


def test_cw_linf_is_pgd_with_margin_loss(tiny):
    model, x, y = tiny
    cw_linf = build_attack({"name": "cw-linf", "steps": 10})
    pgd = build_attack({"name": "pgd", "steps": 10, "loss": "margin"})
    assert cw_linf.config()["loss"] == "margin"
    a = cw_linf(model, x, y, ThreatModel("Linf", 0.05), generator=gen(5))
    b = pgd(model, x, y, ThreatModel("Linf", 0.05), generator=gen(5))
    assert torch.equal(a.x_adv, b.x_adv)
    with pytest.raises(ConfigError, match="loss"):
        build_attack({"name": "cw-linf", "loss": "ce"})


# ------------------------------------------------------------------------------- determinism, config
@pytest.mark.parametrize("spec, norm", [
    ({"name": "cw", "steps": 30, "binary_search_steps": 3}, "L2"),
    ({"name": "fmn", "steps": 30}, "Linf"),
    ({"name": "cw-linf", "steps": 10}, "Linf"),
])
def test_deterministic_under_generator(tiny, spec, norm):
    model, x, y = tiny
    eps = 0.05 if norm == "Linf" else 0.5
    first = build_attack(spec)(model, x, y, ThreatModel(norm, eps), generator=gen(7))
    second = build_attack(spec)(model, x, y, ThreatModel(norm, eps), generator=gen(7))
    assert torch.equal(first.x_adv, second.x_adv)
    if "min_norm" in first.info:
        assert torch.equal(first.info["min_norm"], second.info["min_norm"])


def test_cw_search_does_not_depend_on_eps_and_accepts_per_sample_eps(tiny):
    """The bound only selects which examples count; the minimal norms are the same for any eps."""
    model, x, y = tiny
    cw = build_attack({"name": "cw", "steps": 30, "binary_search_steps": 3})
    unbounded = cw(model, x, y, ThreatModel("L2", 100.0))
    per_sample_eps = torch.where(torch.arange(x.shape[0]) % 2 == 0, torch.tensor(100.0), torch.tensor(1e-3))
    bounded = cw(model, x, y, ThreatModel("L2", per_sample_eps))
    assert torch.equal(unbounded.info["min_norm"], bounded.info["min_norm"])
    assert all(param.grad is None for param in model.parameters()), "CW must not touch the model's .grad"
    odd = torch.arange(x.shape[0]) % 2 == 1
    assert torch.equal(bounded.x_adv[odd], x[odd]) and not bool(bounded.success[odd].any())
    assert torch.equal(bounded.x_adv[~odd], unbounded.x_adv[~odd])


def test_already_misclassified_samples_have_min_norm_zero(tiny):
    model, x, y = tiny
    wrong = (y + 1) % 5
    for spec in ({"name": "cw", "steps": 5, "binary_search_steps": 1}, {"name": "fmn", "steps": 5}):
        res = build_attack(spec)(model, x[:3], wrong[:3], ThreatModel("L2", 0.1))
        assert torch.equal(res.info["min_norm"], torch.zeros(3, dtype=torch.float64))
        assert torch.equal(res.x_adv, x[:3]) and bool(res.success.all())


def test_within_eps_uses_the_relative_tolerance_not_float32_eps():
    """eps reaches the attack as float32 (0.48 -> 0.4799999893); a norm just above that but within 0.48 (1 + 1e-6)
    counts, one above the tolerance does not, and the curve read at 0.48 agrees with the bounded verdict."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    with torch.no_grad():  # always predicts class 1
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([0.0, 1.0]))
    x = torch.zeros(3, 1, 2, 2)
    y = torch.zeros(3, dtype=torch.long)
    eps32 = torch.tensor(0.48, dtype=torch.float32)
    just_above = torch.nextafter(eps32, torch.tensor(1.0))       # 0.48000002: above float32 eps, within 1e-6
    values = [float(eps32), float(just_above), 0.48 * (1 + 1e-5)]
    adv = x.clone()
    adv[:, 0, 0, 0] = torch.tensor(values, dtype=torch.float32)  # L2 norm = that one pixel
    eps = torch.full((3,), 0.48, dtype=torch.float32)
    _, info = select_within_budget(model, x, y, None, adv, torch.ones(3, dtype=torch.bool), eps, "L2")
    assert info["within_budget"].tolist() == [True, True, False]
    correct = torch.ones(3, dtype=torch.bool)
    assert robust_accuracy_curve(correct, info["min_norm"], [0.48]) == [(0.48, 1 / 3)]


def test_select_within_budget_drops_unconfirmed_examples(tiny):
    """An example that does not fool the model on re-prediction gets no minimal norm, whatever was claimed."""
    model, x, y = tiny
    fake = (x + 0.01).clamp(0, 1)  # almost surely still classified as y by the random CNN
    still_correct = predict(model, fake) == y
    out, info = select_within_budget(model, x, y, None, fake, torch.ones_like(y, dtype=torch.bool),
                                     torch.full((x.shape[0],), 10.0), "L2")
    assert bool(still_correct.any())
    assert bool(torch.isinf(info["min_norm"][still_correct]).all())
    assert torch.equal(out[still_correct], x[still_correct])


def test_registration_and_config_errors():
    assert get_attack_class("cw").kind == "minimum-norm" and get_attack_class("cw").norms == ("L2",)
    assert get_attack_class("fmn").norms == ("Linf", "L2", "L1")
    assert get_attack_class("cw-linf").norms == ("Linf", "L2")
    defaults = get_attack_class("cw").defaults
    assert (defaults["binary_search_steps"], defaults["initial_const"], defaults["lr"], defaults["kappa"]) == \
        (9, 1e-3, 1e-2, 0.0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    with pytest.raises(ConfigError, match="norms L2"):
        build_attack("cw")(model, x, y, ThreatModel("Linf", 0.1))
    for bad in ({"name": "cw", "steps": 0}, {"name": "cw", "kappa": -1.0}, {"name": "cw", "lr": "fast"},
                {"name": "fmn", "gamma_init": 1.5}, {"name": "fmn", "alpha_final": "x"},
                {"name": "fmn", "stepz": 3}):
        with pytest.raises(RobustkitError):
            build_attack(bad)


def test_cw_kappa_demands_a_confident_margin(tiny):
    model, x, y = tiny
    kappa = 1.0
    plain = build_attack({"name": "cw", "steps": 50, "binary_search_steps": 4, "lr": 0.05, "initial_const": 1.0})
    confident = build_attack({"name": "cw", "steps": 50, "binary_search_steps": 4, "lr": 0.05, "initial_const": 1.0,
                              "kappa": kappa})
    res0 = plain(model, x, y, ThreatModel("L2", 100.0))
    res = confident(model, x, y, ThreatModel("L2", 100.0))
    found = torch.isfinite(res.info["min_norm"])
    assert int(found.sum()) >= x.shape[0] // 2
    # a confident example is farther away than a barely-adversarial one
    assert bool((res.info["min_norm"][found] > res0.info["min_norm"][found]).all())
    with torch.no_grad():
        logits = model(res.x_adv[found])
    others = logits.clone()
    others.scatter_(1, y[found][:, None], float("-inf"))
    margin = others.amax(dim=1) - logits.gather(1, y[found][:, None]).squeeze(1)
    assert bool((margin >= kappa - 1e-4).all())


# ------------------------------------------------------------------------------------------- curves
def test_robust_accuracy_curve_by_hand():
    correct = torch.tensor([True, True, False, True, True])
    norms = torch.tensor([0.5, math.inf, 0.0, 0.25, 0.5], dtype=torch.float64)
    assert robust_accuracy_curve(correct, norms, [0.0, 0.25, 0.3, 0.5, 10.0]) == [
        (0.0, 0.8), (0.25, 0.6), (0.3, 0.6), (0.5, 0.2), (10.0, 0.2)]
    assert full_robust_accuracy_curve(correct, norms) == [(0.0, 0.8), (0.25, 0.6), (0.5, 0.2)]
    assert merge_min_norms(norms, torch.tensor([1.0, 2.0, 0.0, 0.1, math.inf], dtype=torch.float64)).tolist() == [0.5, 2.0, 0.0, 0.1, 0.5]


def test_robust_accuracy_curve_rejects_bad_input():
    correct = torch.tensor([True, False])
    with pytest.raises(ConfigError, match="eps"):
        robust_accuracy_curve(correct, torch.tensor([0.1, 0.2]), [-0.1])
    with pytest.raises(ValueError):
        robust_accuracy_curve(correct, torch.tensor([0.1]), [0.1])
    with pytest.raises(ValueError):
        robust_accuracy_curve(correct, torch.tensor([0.1, math.nan]), [0.1])
    assert math.isnan(robust_accuracy_curve(torch.zeros(0, dtype=torch.bool), torch.zeros(0), [0.1])[0][1])


class _NoisyModel(nn.Module):
    """The tiny CNN behind Gaussian input noise: a randomized model (declared). Counts its forward passes."""

    randomized = True

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x + 0.02 * torch.randn_like(x))


@pytest.mark.parametrize("spec, grad_passes", [
    ({"name": "cw", "steps": 20, "binary_search_steps": 2, "lr": 0.05, "abort_early": False}, 40),
    ({"name": "fmn", "steps": 20}, 20),
])
def test_randomized_model_gradients_average_eot_passes(tiny, spec, grad_passes):
    """Each gradient step averages ``eot_iter`` forward passes: going from 1 to 3 adds 2 passes per step."""
    model, x, y = tiny
    noisy = _NoisyModel(model).eval()
    calls = {}
    for eot in (1, 3):
        noisy.calls = 0
        torch.manual_seed(11)
        res = build_attack({**spec, "eot_iter": eot})(noisy, x, y, ThreatModel("L2", 100.0))
        assert res.info["eot_iter"] == eot and res.info["randomized"]
        calls[eot] = noisy.calls
    assert calls[3] - calls[1] == 2 * grad_passes


def test_cw_kappa_gives_examples_that_survive_the_noise_vote(tiny):
    """On a randomized model a minimal-norm example sits on the boundary, where the majority vote is a coin
    flip; a confidence margin kappa makes the examples hold up under a fresh vote (documented advice)."""
    model, x, y = tiny
    noisy = _NoisyModel(model).eval()
    torch.manual_seed(12)
    res = build_attack({"name": "cw", "steps": 50, "binary_search_steps": 4, "lr": 0.05, "initial_const": 1.0,
                        "kappa": 1.0, "eot_iter": 4})(noisy, x, y, ThreatModel("L2", 100.0))
    found = torch.isfinite(res.info["min_norm"])
    assert int(found.sum()) >= x.shape[0] // 2
    assert bool(res.success[found].all())
