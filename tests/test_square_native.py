"""The native Linf Square Attack against the installed official ``SquareAttack``: the same returned tensor bit
for bit, the same random-generator state afterwards and the same sample-forwards, on random CNNs (samples
fooled at different queries, 1 and 3 channels, a non-square image, 2 and 3 restarts), on a model whose every
sample is fooled by the initial stripes, on ties at the start, on a model with infinite logits, and on a real
MNIST model; and the ``autoattack`` attack with and without it."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from robustkit.attacks import _aa_official, _square_native
from robustkit.attacks._aa_reference import ComponentPlan
from robustkit.attacks.autoattack import AutoAttack
from robustkit.passes import PassCounter
from robustkit.threat import ThreatModel

pyautoattack = pytest.importorskip("pyautoattack")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_cnn(c: int, h: int, w: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(c, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * (h - 2) * (w - 2), 10)).eval()


def both(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, n_queries: int, n_restarts: int = 1):
    """(official, native): each the returned tensor, the CPU generator state after, the sample-forwards."""
    out = []
    for native in (False, True):
        torch.manual_seed(1234)  # a stale generator state that perturb must re-seed
        with PassCounter(model) as counter:
            if native:
                adv = _square_native.perturb(model, x, y, eps=eps, n_queries=n_queries, n_restarts=n_restarts,
                                             p_init=0.8, seed=0)
            else:
                official = _aa_official.require_official().square.SquareAttack(
                    model, norm="Linf", n_queries=n_queries, eps=eps, p_init=0.8, n_restarts=n_restarts, seed=0,
                    verbose=False, resc_schedule=False)
                adv = official.perturb(x, y)
        out.append((adv, torch.get_rng_state(), counter.forward))
    return out


def assert_same(official, native) -> None:
    (a, state_a, fwd_a), (b, state_b, fwd_b) = official, native
    assert a.dtype == b.dtype == torch.float32
    assert torch.equal(a.view(torch.int32), b.view(torch.int32))  # bit for bit, signed zeros included
    assert torch.equal(state_a, state_b)
    assert fwd_a == fwd_b


def fooled(model: nn.Module, adv: torch.Tensor, y: torch.Tensor) -> int:
    with torch.no_grad():
        return int((model(adv).argmax(1) != y).sum())


@pytest.mark.parametrize("shape,eps,n_queries,n_restarts", [
    ((1, 12, 12), 0.05, 300, 1),
    ((1, 12, 12), 0.02, 200, 2),
    ((3, 10, 14), 0.03, 200, 3),  # per-channel signs; vh and vw drawn from different ranges
])
def test_native_square_returns_the_official_tensor(shape, eps, n_queries, n_restarts):
    model = random_cnn(*shape)
    x = torch.rand(40, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % 10  # two clean mistakes: never attacked
    official, native = both(model, x, y, eps, n_queries, n_restarts)
    assert_same(official, native)
    assert 2 + 3 < fooled(model, official[0], y) < 40  # several fooled, at different queries; some not at all


class Fragile(nn.Module):
    """Class 0 at ``x0`` by a margin of 0.5, class 1 once the input moves by more than 0.5 in L1."""

    def __init__(self, x0: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("x0", x0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        moved = (x - self.x0).abs().flatten(1).sum(1)
        return torch.stack([0.5 - moved, torch.zeros_like(moved)], dim=1)


def test_every_sample_fooled_by_the_initial_stripes():
    x = 0.2 + 0.6 * torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    model = Fragile(x).eval()
    y = torch.zeros(5, dtype=torch.long)
    official, native = both(model, x, y, 0.1, 100)
    assert_same(official, native)
    assert fooled(model, official[0], y) == 5
    assert official[2] == 5 + 5 + 5  # clean prediction, initial stripes, re-prediction: no query spent


class Tie(nn.Module):
    """Sample 0 at a tie (margin exactly 0: neither attacked nor counted as fooled), the others robust by 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zero = x.flatten(1).sum(1) * 0
        logits = torch.stack([zero, zero, zero - 1], dim=1)
        logits[1:, 0] = 1.0
        return logits


@pytest.mark.parametrize("n", [1, 3])
def test_a_tie_at_the_start(n):
    """n = 1: no live sample, the official loop makes one draw-only query and stops; n = 3: all queries."""
    x = torch.rand(n, 1, 6, 6, generator=torch.Generator().manual_seed(6))
    official, native = both(Tie(), x, torch.zeros(n, dtype=torch.long), 0.1, 30, n_restarts=2)
    assert_same(official, native)


class Overflowing(nn.Module):
    """A random CNN whose logits overflow to +-inf on some inputs (margins inf, -inf or NaN)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = random_cnn(1, 12, 12, seed=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        return torch.where(x.mean(dim=(1, 2, 3))[:, None] > 0.5, logits * 1e38 * 1e3, logits)


def test_infinite_logits_keep_the_official_arithmetic(monkeypatch):
    calls = []
    blend = _square_native._official_blend
    monkeypatch.setattr(_square_native, "_official_blend", lambda *a: calls.append(1) or blend(*a))
    model = Overflowing().eval()
    x = torch.rand(30, 1, 12, 12, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        logits = model(x)
    assert not torch.isfinite(logits).all()
    official, native = both(model, x, logits.argmax(1), 0.05, 150)
    assert_same(official, native)
    assert calls  # the iterations with a non-finite margin went through the official arithmetic


def test_native_square_on_real_data(lenet5_clean, mnist_test):
    x, y = mnist_test.x[:12], mnist_test.y[:12]
    official, native = both(lenet5_clean, x, y, 0.15, 300)
    assert_same(official, native)
    assert 0 < fooled(lenet5_clean, official[0], y) < 12


def test_inputs_it_cannot_reproduce_run_the_official_class():
    x = torch.rand(2, 1, 4, 4)
    assert _square_native.can_reproduce(x, 0.1)
    assert not _square_native.can_reproduce(x, 0.0)
    assert not _square_native.can_reproduce(x, 1e-50)  # 0 in float32
    assert not _square_native.can_reproduce(x, float("inf"))
    assert not _square_native.can_reproduce(x + 1.5, 0.1)  # outside [0, 1]: the two clamps are not one
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    assert not _square_native.can_reproduce(bad, 0.1)


def test_square_sizes_follow_the_official_schedule():
    official = _aa_official.require_official().square.SquareAttack(lambda t: t, p_init=0.8, n_queries=10000,
                                                                   resc_schedule=False)
    sizes = _square_native.square_sizes(0.8, 10000, 3, 32, 32)
    for i in (0, 10, 11, 50, 51, 200, 201, 500, 501, 1000, 1001, 2000, 2001, 4000, 4001, 6000, 6001, 8000, 8001):
        assert _square_native.p_selection(0.8, i) == official.p_selection(i)
    assert sizes[0] == 29 and sizes[-1] == 1 and sorted(sizes, reverse=True) == sizes


def test_autoattack_with_native_square_keeps_the_official_square(lenet5_clean, mnist_test, monkeypatch):
    """AutoAttack's Square (400 queries) through the attack's cascade with early exit and without: the same
    verdicts, the same points, the same passes."""
    full_plan = AutoAttack.plan
    monkeypatch.setattr(AutoAttack, "plan", lambda self, norm, n_classes, randomized=False: [
        replace(c, n_queries=400) for c in full_plan(self, norm, n_classes, randomized)])
    x, y = mnist_test.x[:16], mnist_test.y[:16]
    threat = ThreatModel("Linf", 0.15)
    runs = [AutoAttack(version="custom", attacks_to_run=["square"], seed=0, early_exit=early_exit)(
        lenet5_clean, x, y, threat) for early_exit in (True, False)]
    fast, full = runs
    assert torch.equal(fast.success, full.success)
    assert fast.info["broken_by"] == full.info["broken_by"]
    by_square = torch.tensor([b == "square" for b in full.info["broken_by"]])
    assert by_square.any()
    assert torch.equal(fast.x_adv[by_square], full.x_adv[by_square])
    assert fast.info["passes"]["square"] == full.info["passes"]["square"]


def test_ensemble_runs_native_square_only_where_it_reproduces_the_official(monkeypatch):
    model = random_cnn(1, 12, 12)
    plan = [ComponentPlan("square", n_queries=20, p_init=0.8, loss="margin")]

    def ensemble(norm: str = "Linf", **kw) -> _aa_official.OfficialEnsemble:
        return _aa_official.OfficialEnsemble(model, norm, plan, 0, torch.device("cpu"), **kw)

    assert ensemble().uses_native("square")
    assert not ensemble("L2").uses_native("square")
    assert not ensemble(early_exit=False).uses_native("square")
    assert not ensemble(deterministic=False).uses_native("square")  # its draws would interleave differently
    calls = []
    real = _square_native.perturb
    monkeypatch.setattr(_square_native, "perturb", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    x = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = model(x).argmax(1)
    ensemble().run("square", x, y, 0.05)
    assert calls == [1]
    ensemble().run("square", x * 1.5, y, 0.05)  # outside [0, 1]: the official class
    assert calls == [1]
