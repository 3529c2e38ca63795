"""Randomized smoothing: the certification statistics, the exact-radius check on a linear classifier, and a
real certification run on MNIST with a noise-trained base classifier."""
from __future__ import annotations

import math

import pytest
import torch
from scipy import integrate, stats
from torch import nn

from robustkit.attacks import build_attack
from robustkit.defenses import (ABSTAIN, RandomizedSmoothing, build_defense, certified_accuracy, certified_rows,
                                clopper_pearson_lower, sample_counts)
from robustkit.defenses.certification import CertifyResult, abstaining_prediction
from robustkit.errors import ConfigError
from robustkit.threat import ThreatModel


class LinearBinary(nn.Module):
    """Logits (0, w.x + b) on 1x1x2 inputs: class 1 exactly where w.x + b > 0."""

    def __init__(self, w: tuple[float, float], b: float) -> None:
        super().__init__()
        self.register_buffer("w", torch.tensor(w, dtype=torch.float64))
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x.reshape(x.shape[0], 2).double() @ self.w + self.b).float()
        return torch.stack([torch.zeros_like(score), score], dim=1)


# --------------------------------------------------------------------------------------- statistics
@pytest.mark.parametrize("k,n,alpha", [(0, 100, 0.001), (1, 100, 0.001), (57, 100, 0.01), (99990, 100000, 0.001),
                                       (100, 100, 0.05)])
def test_clopper_pearson_matches_scipy_exact_interval(k: int, n: int, alpha: float) -> None:
    expected = stats.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
    assert float(clopper_pearson_lower(k, n, alpha)) == pytest.approx(expected, abs=1e-12)


def test_abstaining_prediction_uses_two_sided_binomial_test() -> None:
    counts = torch.tensor([[60, 40, 0], [0, 30, 70], [50, 50, 0], [0, 0, 12]])
    # p-values: binomtest(60, 100) = 0.057, binomtest(70, 100) = 7.9e-5, (50, 100) = 1, (12, 12) = 4.9e-4
    assert abstaining_prediction(counts, alpha=0.05).tolist() == [ABSTAIN, 2, ABSTAIN, 2]
    assert abstaining_prediction(counts, alpha=0.06).tolist() == [0, 2, ABSTAIN, 2]
    assert abstaining_prediction(counts, alpha=1e-4).tolist() == [ABSTAIN, 2, ABSTAIN, ABSTAIN]


def test_certified_accuracy_counts_correct_certificates_at_each_radius() -> None:
    result = CertifyResult(prediction=torch.tensor([0, 1, ABSTAIN, 2, 1]),
                           radius=torch.tensor([0.1, 0.6, 0.0, 1.2, 0.3], dtype=torch.float64),
                           p_lower=torch.zeros(5, dtype=torch.float64), count=torch.zeros(5, dtype=torch.long),
                           settings={"sigma": 0.5, "n0": 10, "n": 100, "alpha": 0.001})
    y = torch.tensor([0, 1, 2, 2, 0])  # the last one is certified but wrong
    acc = certified_accuracy(result, y)
    assert acc == {0.0: 3 / 5, 0.25: 2 / 5, 0.5: 2 / 5, 0.75: 1 / 5, 1.0: 1 / 5}
    rows = certified_rows(result, y, radii=(0.0, 0.5))
    assert rows[0] == {"radius": 0.0, "n_examples": 5, "certified_count": 3, "certified_acc": 60.0, "abstained": 1,
                       "kind": "certified", "sigma": 0.5, "n0": 10, "n": 100, "alpha": 0.001}


# ----------------------------------------------------------------------------- linear classifier
def test_certified_radius_approaches_exact_distance_on_a_linear_classifier() -> None:
    """For f(x) = [w.x + b > 0], P(f(x + N(0, s^2 I)) = f(x)) = Phi(dist / s): the certified radius
    s * Phi^-1(p_lower) is below the exact distance |w.x + b| / |w| and converges to it as n grows."""
    sigma = 0.5
    w, b = (0.6, -0.8), 0.1  # unit normal
    base = LinearBinary(w, b)
    smoothed = RandomizedSmoothing(base, sigma=sigma, batch_size=100_000)
    distances = torch.tensor([0.3, -0.15, 0.6])
    normal = torch.tensor(w)
    anchor = torch.tensor([0.5, 0.5])
    anchor = anchor - (anchor @ normal + b) * normal  # on the boundary
    x = (anchor[None, :] + distances[:, None] * normal[None, :]).reshape(-1, 1, 1, 2)
    assert torch.all((x >= 0) & (x <= 1))
    exact = distances.abs().double()
    truth = (distances > 0).long()
    gaps = []
    for i, n in enumerate((100, 1_000, 10_000, 100_000, 1_000_000)):
        gen = torch.Generator().manual_seed(i)
        result = smoothed.certify(x, n0=100, n=n, alpha=0.001, generator=gen)
        certified = result.prediction != ABSTAIN
        assert torch.equal(result.prediction[certified], truth[certified])
        assert torch.all(result.radius <= exact + 1e-9)  # sound (holds with prob >= 1 - alpha; seeds fixed)
        gaps.append(float((exact - result.radius).max()))
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
    # n = 1e6: p_lower is within ~3.1 standard errors of p, i.e. the radius within ~0.003 of the distance
    assert gaps[-1] < 0.005, gaps


def test_sample_counts_follow_the_gaussian_probability_and_boundary_points_abstain() -> None:
    base = LinearBinary((1.0, 0.0), -0.5)  # boundary x0 = 0.5
    x = torch.tensor([[0.5 + 0.25, 0.3], [0.5, 0.7]]).reshape(2, 1, 1, 2)
    counts = sample_counts(base, x, 200_000, 0.5, batch_size=50_000, generator=torch.Generator().manual_seed(0))
    assert counts.sum(dim=1).tolist() == [200_000, 200_000]
    p = counts[0, 1].item() / 200_000
    assert p == pytest.approx(stats.norm.cdf(0.5), abs=0.005)
    smoothed = RandomizedSmoothing(base, sigma=0.5)
    pred = smoothed.predict(x, n=10_000, alpha=0.001, generator=torch.Generator().manual_seed(1))
    assert pred.tolist() == [1, ABSTAIN]
    cert = smoothed.certify(x[1:], n0=100, n=10_000, alpha=0.001, generator=torch.Generator().manual_seed(2))
    assert cert.prediction.tolist() == [ABSTAIN] and cert.radius.tolist() == [0.0]


def test_smoothing_parameters_are_validated() -> None:
    base = LinearBinary((1.0, 0.0), 0.0)
    with pytest.raises(ConfigError, match="sigma: expected a number > 0"):
        RandomizedSmoothing(base, sigma=0)
    with pytest.raises(ConfigError, match="alpha: expected a number in"):
        RandomizedSmoothing(base, alpha=1.5)
    with pytest.raises(ConfigError, match="unknown parameter 'sigm'.*did you mean \"sigma\""):
        build_defense({"name": "smoothing", "sigm": 0.5}, base)
    with pytest.raises(ConfigError, match="n: expected an integer >= 1"):
        RandomizedSmoothing(base).certify(torch.zeros(1, 1, 1, 2), n=0)
    defaults = RandomizedSmoothing(base).params
    assert (defaults["n0"], defaults["n"], defaults["alpha"]) == (100, 100_000, 0.001)  # Cohen et al.


def test_forward_is_the_soft_smoothed_classifier_and_declares_randomness() -> None:
    base = LinearBinary((1.0, 0.0), -0.5)
    smoothed = RandomizedSmoothing(base, sigma=0.5, samples=4000)
    x = torch.tensor([[0.75, 0.3]]).reshape(1, 1, 1, 2)
    probs = smoothed(x).softmax(dim=1)
    # E[softmax((0, s))] with s = x0 - 0.5 + 0.5 z, z ~ N(0, 1), by quadrature
    expected, _ = integrate.quad(lambda z: stats.norm.pdf(z) / (1 + math.exp(-(0.25 + 0.5 * z))), -12, 12)
    assert float(probs[0, 1]) == pytest.approx(expected, abs=0.02)
    assert smoothed.randomized is True
    result = build_attack({"name": "pgd", "steps": 2, "eot_iter": 2})(smoothed, x, torch.tensor([1]),
                                                                      ThreatModel("L2", 0.1))
    assert result.info["randomized"] is True


# ----------------------------------------------------------------------------------- real MNIST
@pytest.fixture(scope="module")
def mnist_smoothed(mnist_test):
    """kw-small trained with Gaussian noise (sigma 0.25) on the first 5000 MNIST test images, via fit()."""
    from robustkit.zoo import build_arch

    torch.manual_seed(0)
    smoothed = RandomizedSmoothing(build_arch("kw-small"), sigma=0.25)
    smoothed.fit(mnist_test.x[:5000], mnist_test.y[:5000], epochs=5, batch_size=64, lr=3e-3, seed=0)
    return smoothed


def test_certified_accuracy_on_mnist(mnist_smoothed, mnist_test) -> None:
    x, y = mnist_test.x[-100:], mnist_test.y[-100:]
    result = mnist_smoothed.certify(x, n0=100, n=1000, alpha=0.001, generator=torch.Generator().manual_seed(0))
    acc = certified_accuracy(result, y)
    print("certified accuracy (sigma 0.25, n0 100, n 1000, alpha 0.001, 100 MNIST images):", acc)
    values = list(acc.values())
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert acc[0.0] >= 0.8
    assert acc[0.5] >= 0.4
    # with n = 1000 the largest certifiable radius is sigma * Phi^-1(0.001 ** (1 / 1000)) = 0.6
    max_radius = 0.25 * stats.norm.ppf(0.001 ** (1 / 1000))
    assert float(result.radius.max()) <= max_radius + 1e-9
    assert acc[0.75] == 0.0 and acc[1.0] == 0.0


@pytest.mark.slow
def test_certified_accuracy_on_mnist_with_the_papers_sampling(mnist_smoothed, mnist_test) -> None:
    """Cohen et al.'s settings (n0 = 100, n = 100000, alpha = 0.001) on 20 images spread over the last 5000."""
    x, y = mnist_test.x[5000::250], mnist_test.y[5000::250]
    result = mnist_smoothed.certify(x, generator=torch.Generator().manual_seed(0))
    acc = certified_accuracy(result, y)
    print("certified accuracy (sigma 0.25, n0 100, n 100000, alpha 0.001, 20 MNIST images):", acc)
    assert acc[0.0] >= 0.8 and acc[0.5] >= 0.5
