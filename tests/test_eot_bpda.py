"""EOT and BPDA: randomized and non-differentiable defenses must not look robust because of how they are attacked.

The two end-to-end cases use the real MNIST LeNet5 and real MNIST images:

* a random-phase dithering defense, ``x + a * sin(w * x + phase)`` with a fresh uniform phase per pixel and
  pass: its value barely moves the input (|a| = 0.1), but its single-sample Jacobian ``1 + a w cos(.)`` has
  a random factor of standard deviation ~7 per pixel, so one-sample gradients point nowhere while their
  expectation is exactly the undefended gradient. PGD with ``eot_iter=1`` calls it robust; PGD with EOT
  (detected, not declared) breaks it;
* bit-depth reduction ``round(7 x) / 7`` in front of the model: its gradient is zero, so plain PGD stays
  where its random start put it; with the BPDA identity substitute PGD -- robustkit's and torchattacks' --
  breaks it.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustkit.attacks import Attack, build_attack
from robustkit.attacks.bpda import BPDA, NonDifferentiableModelError, bpda, bpda_parts, uses_bpda
from robustkit.randomness import detect_randomized, refresh_randomized
from robustkit.errors import ConfigError, RobustkitError
from robustkit.predict import NO_MAJORITY, declared_randomized, detected_randomized, is_randomized, predict
from robustkit.threat import ThreatModel

N_IMAGES = 64
LINF_03 = ThreatModel("Linf", 0.3)


# ------------------------------------------------------------------------------------------- helpers
class RandomPhaseDither(nn.Module):
    """A randomized input transformation that does NOT declare ``randomized`` (so detection must find it)."""

    def __init__(self, base: nn.Module, amplitude: float = 0.1, frequency: float = 100.0) -> None:
        super().__init__()
        self.base, self.amplitude, self.frequency = base, amplitude, frequency

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phase = torch.rand_like(x) * (2 * torch.pi)
        return self.base(x + self.amplitude * torch.sin(self.frequency * x + phase))


class Quantize(nn.Module):
    """Bit-depth reduction to ``levels + 1`` grey levels: piecewise constant, so its gradient is zero."""

    def __init__(self, levels: int = 7) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * self.levels) / self.levels


class TinyNet(nn.Module):
    """A deterministic 4x4 -> 3 class model; optionally with always-on or train-mode dropout."""

    def __init__(self, dropout: str | None = None) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(1)
            self.fc = nn.Linear(16, 3)
        self.drop = nn.Dropout(0.5) if dropout == "module" else None
        self.always_on = dropout == "always"
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        h = x.flatten(1)
        if self.drop is not None:
            h = self.drop(h)
        if self.always_on:  # dropout-in-train-mode-style noise that eval() does not switch off
            h = F.dropout(h, 0.5, training=True)
        return self.fc(h)


class Identity(Attack):
    """An attack that returns its input: isolates the base class's detection and verdict logic."""

    name = "identity-test"
    supports_targeted = True

    def perturb(self, model, x, y, eps, norm, *, target, generator):
        return x.clone()


def first_images(mnist_test, n: int = N_IMAGES) -> tuple[torch.Tensor, torch.Tensor]:
    return mnist_test.x[:n], mnist_test.y[:n]


def robust_accuracy(attack_spec: dict, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    torch.manual_seed(0)
    result = build_attack(attack_spec)(model, x, y, LINF_03, generator=torch.Generator().manual_seed(0))
    return 1.0 - result.success.float().mean().item(), result


# ------------------------------------------------------------------------------------------------ EOT
def test_eot_breaks_randomized_defense_that_plain_pgd_calls_robust(mnist_test, lenet5_clean):
    x, y = first_images(mnist_test)
    defended = RandomPhaseDither(lenet5_clean)
    torch.manual_seed(0)
    clean = (predict(defended, x) == y).float().mean().item()
    assert not hasattr(defended, "randomized")  # nothing declared: only detection can find the randomness
    assert clean >= 0.95

    plain, plain_result = robust_accuracy({"name": "pgd", "steps": 5, "step_size": 0.08, "eot_iter": 1},
                                          defended, x, y)
    eot, eot_result = robust_accuracy({"name": "pgd", "steps": 5, "step_size": 0.08}, defended, x, y)
    print(f"random-phase dither: clean {clean:.3f}, PGD eot_iter=1 {plain:.3f}, PGD + detected EOT {eot:.3f}")

    assert plain_result.info["eot_iter"] == 1 and plain_result.info["vote_passes"] == 10
    assert eot_result.info["randomized"] is True and eot_result.info["eot_iter"] == 20
    # measured on 64 images: 0.92 without EOT, 0.06 with it
    assert plain >= 0.75
    assert eot <= 0.30
    assert plain - eot >= 0.5


def test_loss_and_grad_averages_the_gradients_of_the_passes():
    class Alternating(nn.Module):
        """Pass k scales its (linear) logits by 1 or 3 alternately: the mean gradient is 2x the base one."""

        randomized = True

        def __init__(self) -> None:
            super().__init__()
            with torch.random.fork_rng():
                torch.manual_seed(0)
                self.fc = nn.Linear(4, 3)
            self.k = 0

        def forward(self, x):
            scale = 1.0 if self.k % 2 == 0 else 3.0
            self.k += 1
            return scale * self.fc(x)

    model = Alternating()
    x, y = torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1])
    _, grad, logits = Identity(eot_iter=2).loss_and_grad(model, x, y, "margin")
    # margin loss is linear in the logits, so the gradient at scale s is s * W[other] - s * W[y]
    expected = torch.zeros_like(x)
    for scale in (1.0, 3.0):
        z = scale * model.fc(x)
        masked = z.detach().clone()
        masked[torch.arange(5), y] = float("-inf")
        other = masked.argmax(dim=1)
        expected += scale * (model.fc.weight[other] - model.fc.weight[y]).detach()
    torch.testing.assert_close(grad, expected / 2)
    torch.testing.assert_close(logits, 2.0 * model.fc(x).detach())
    assert Identity().eot_samples(model) == 20  # declared randomized: default EOT count
    assert Identity(eot_iter=3).eot_samples(model) == 3


@pytest.mark.parametrize("bad", [0, -2, 2.5, "many", True])
def test_eot_iter_must_be_a_positive_integer(bad):
    with pytest.raises(ConfigError, match="eot_iter") as err:
        Identity(eot_iter=bad)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------ majority verdict
class Cyclic(nn.Module):
    """Declared randomized; over any 10 consecutive passes exactly ``correct`` of them predict y.

    The wrong passes are spread over three other classes (2 each for correct=4), so the plurality label is
    still y at 40% -- exactly the case where a label vote and "most passes are correct" disagree.
    """

    randomized = True

    def __init__(self, y: torch.Tensor, correct: int, wrong_labels: int = 3) -> None:
        super().__init__()
        self.y, self.correct, self.wrong_labels, self.k = y, correct, wrong_labels, 0

    def forward(self, x):
        p = self.k % 10
        self.k += 1
        label = self.y if p < self.correct else (self.y + 1 + (p - self.correct) % self.wrong_labels) % 10
        return F.one_hot(label, 10).float() * 5.0


@pytest.mark.parametrize("correct, wrong_labels, robust", [
    (6, 3, True),    # 60% of the passes correct: robust
    (4, 3, False),   # 40% correct, though y is the most frequent label: broken
    (5, 1, False),   # a 5/5 tie is no majority: broken
    (10, 1, True),
    (0, 1, False),
])
def test_majority_of_passes_decides_robustness(correct, wrong_labels, robust):
    y = torch.tensor([3, 7, 0, 9])
    x = torch.rand(4, 1, 2, 2)
    model = Cyclic(y, correct, wrong_labels)
    pred = predict(model, x)
    assert bool((pred == y).all()) is robust
    if not robust and correct > 0:
        assert bool((pred == NO_MAJORITY).all())  # no label has a strict majority
    result = Identity()(model, x, y, ThreatModel("Linf", 0.1))
    assert bool((~result.success).all()) is robust
    assert result.info["vote_passes"] == 10


def test_targeted_success_also_needs_a_majority_of_passes():
    y = torch.tensor([3, 7])
    x = torch.rand(2, 1, 2, 2)
    # 4 passes predict y; the other 6 are spread 2/2/2 over y+1, y+2, y+3: y+1 is never a majority
    model = Cyclic(y, correct=4, wrong_labels=3)
    result = Identity(targeted="given")(model, x, y, ThreatModel("Linf", 0.1), target=(y + 1) % 10)
    assert not bool(result.success.any())
    model = Cyclic(y, correct=4, wrong_labels=1)  # 6/10 passes predict y+1
    result = Identity(targeted="given")(model, x, y, ThreatModel("Linf", 0.1), target=(y + 1) % 10)
    assert bool(result.success.all())


# ------------------------------------------------------------------------------------------- detection
def test_detection_tells_deterministic_from_random_models():
    x = torch.rand(20, 1, 4, 4)
    deterministic = TinyNet().eval()
    assert detect_randomized(deterministic, x) is False
    assert deterministic.calls == [8, 8]  # two passes on at most 8 samples

    train_mode_dropout = TinyNet(dropout="module").train()
    assert detect_randomized(train_mode_dropout, x) is True
    assert detect_randomized(train_mode_dropout.eval(), x) is False  # eval() switches nn.Dropout off

    assert detect_randomized(TinyNet(dropout="always").eval(), x) is True

    class FloatJitter(TinyNet):  # non-determinism at float-rounding level is not randomness
        def forward(self, x):
            out = super().forward(x)
            return out * (1 + 1e-7 * torch.randn_like(out))

    assert detect_randomized(FloatJitter(), x) is False
    with pytest.raises(ValueError):
        detect_randomized(deterministic, x, n_passes=1)


def test_attack_call_detects_once_and_uses_eot_and_votes():
    x, y = torch.rand(16, 1, 4, 4), torch.zeros(16, dtype=torch.long)
    deterministic = TinyNet()
    result = Identity()(deterministic, x, y, ThreatModel("Linf", 0.1))
    assert deterministic.calls == [8, 8, 16]  # detection (2 x 8), then ONE verdict pass
    assert result.info["randomized"] is False and result.info["eot_iter"] == 1
    assert detected_randomized(deterministic) is False

    noisy = TinyNet(dropout="always")
    result = Identity()(noisy, x, y, ThreatModel("Linf", 0.1))
    assert noisy.calls == [8, 8] + [16] * 10  # detection once, then a 10-pass majority vote
    assert result.info["randomized"] is True and result.info["eot_iter"] == 20
    assert is_randomized(noisy) and Identity().eot_samples(noisy) == 20
    assert detected_randomized(noisy) is True and "randomized" not in vars(noisy)  # nothing written on it


def test_predict_probes_an_undeclared_model_before_any_attack():
    noisy = TinyNet(dropout="always")
    x = torch.rand(12, 1, 4, 4)
    predict(noisy, x)
    assert noisy.calls == [8, 8] + [12] * 10
    noisy.calls.clear()
    predict(noisy, x)  # cached: no second probe
    assert noisy.calls == [12] * 10


def test_declarations_win_over_detection():
    noisy = TinyNet(dropout="always")
    noisy.randomized = False  # explicit opt-out on the top-level model
    assert refresh_randomized(noisy, torch.rand(4, 1, 4, 4)) is False
    assert noisy.calls == []  # declared: no probe

    wrapped = nn.Sequential(TinyNet())
    wrapped[0].randomized = True  # a declaring submodule makes the whole model randomized
    assert declared_randomized(wrapped) is True and is_randomized(wrapped)
    assert declared_randomized(TinyNet()) is None


# ------------------------------------------------------------------------------------------------ BPDA
def test_bpda_forward_is_exact_and_backward_is_the_substitute():
    x = torch.rand(3, 1, 4, 4, requires_grad=True)
    quantize = bpda(lambda t: torch.round(t * 7) / 7)
    out = quantize(x)
    assert torch.equal(out, torch.round(x.detach() * 7) / 7)  # bit for bit, not up to rounding
    (out * 2).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.0))  # identity substitute

    x.grad = None
    smooth = bpda(lambda t: torch.round(t * 7) / 7, substitute=torch.sigmoid)
    smooth(x).sum().backward()
    s = torch.sigmoid(x.detach())
    torch.testing.assert_close(x.grad, s * (1 - s))

    x.grad = None
    (torch.round(x * 7) / 7).sum().backward()
    assert float(x.grad.abs().max()) == 0.0  # what attacks see without BPDA


def test_bpda_module_declares_itself_and_checks_shapes():
    model = nn.Sequential(BPDA(Quantize()), nn.Flatten(), nn.Linear(16, 3))
    assert bpda_parts(model) == ["0"] and uses_bpda(model)
    assert bpda_parts(nn.Sequential(nn.Flatten())) == []

    class Declares(nn.Module):
        bpda = ["jpeg"]

        def forward(self, x):
            return x

    assert bpda_parts(nn.Sequential(Declares())) == ["0.jpeg"]

    shrink = BPDA(lambda t: t[:, :, :2, :2])
    with pytest.raises(RobustkitError, match="identity substitute") as err:
        shrink(torch.rand(2, 1, 4, 4))
    assert "\n" not in str(err.value)


def test_a_model_without_any_gradient_path_gets_a_clear_error():
    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            return self.fc(x.detach().flatten(1))

    model, x = Detached(), torch.rand(4, 1, 4, 4)
    y = model(x).argmax(1)  # every sample starts correct, so the attack must ask for a gradient
    with pytest.raises(NonDifferentiableModelError, match="BPDA") as err:
        build_attack({"name": "pgd", "steps": 2})(model, x, y, ThreatModel("Linf", 0.1))
    assert isinstance(err.value, RobustkitError) and "\n" not in str(err.value)


def test_bpda_breaks_bit_depth_reduction_that_plain_pgd_calls_robust(mnist_test, lenet5_clean):
    x, y = first_images(mnist_test)
    plain = nn.Sequential(Quantize(7), lenet5_clean)
    with_bpda = nn.Sequential(BPDA(Quantize(7)), lenet5_clean)
    clean = (predict(plain, x) == y).float().mean().item()
    assert torch.equal(plain(x), with_bpda(x))  # BPDA changes nothing in the forward pass
    assert clean >= 0.95

    numbers = {}
    for attack in ({"name": "pgd", "steps": 10}, {"name": "torchattacks:PGD", "steps": 10, "alpha": 0.04}):
        numbers[attack["name"], "plain"], _ = robust_accuracy(attack, plain, x, y)
        numbers[attack["name"], "bpda"], result = robust_accuracy(attack, with_bpda, x, y)
        assert result.info["bpda_parts"] == ["0"]
    print("bit-depth 7 levels: clean", clean, {f"{a}/{m}": round(v, 3) for (a, m), v in numbers.items()})
    # measured on 64 images: 0.97 without BPDA (zero gradient), 0.00 with it, for both implementations
    for name in ("pgd", "torchattacks:PGD"):
        assert numbers[name, "plain"] >= 0.9
        assert numbers[name, "bpda"] <= 0.1
