"""Each check on a tiny synthetic model built to trigger it, and the same check quiet on a plain model."""
from __future__ import annotations

from typing import Any, ClassVar

import pandas as pd
import pytest
import torch
from torch import nn

from robustkit.attacks import Attack, build_attack
from robustkit.checks import CHEAP, CheckContext, check_mode, row_flags, run_checks
from robustkit.checks.autoattack_flags import (check_blackbox_beats_whitebox, check_dynamic, check_probabilities,
                                               check_randomized)
from robustkit.checks.attack_failure import check_nan_grad, check_unconstrained, check_zero_grad
from robustkit.checks.batch_dependence import check_batch_dependence
from robustkit.checks.checklist import check_eps_monotone
from robustkit.engine.config import parse_config
from robustkit.errors import ConfigError

N = 40


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).eval()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(N, 1, 4, 4, generator=g), torch.randint(0, 5, (N,), generator=g)


def _per_sample(model: nn.Module, x, y, eps=(0.1,), robust=None, broken_by=None) -> pd.DataFrame:
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).long().tolist()
    frames = []
    for k, e in enumerate(eps):
        frames.append(pd.DataFrame({"model": "m", "eps": e, "index": range(N), "clean_correct": correct,
                                    "robust": robust[k] if robust else correct,
                                    "broken_by": broken_by[k] if broken_by else [""] * N,
                                    "broken_at_eps": e, "attacked": correct}))
    return pd.concat(frames, ignore_index=True)


def _ctx(model: nn.Module, attacks: list[Any] | None = None, **kw: Any) -> CheckContext:
    x, y = _data()
    eps = kw.pop("eps", (0.1,))
    per_sample = kw.pop("per_sample", None)
    if per_sample is None:
        per_sample = _per_sample(model, x, y, eps)
    return CheckContext(model=model, model_name="m", x=x, y=y,
                        attacks=[build_attack(a) if not isinstance(a, Attack) else a for a in (attacks or ["fgsm"])],
                        norm="Linf", eps=list(eps), per_sample=per_sample, seed=0, device=torch.device("cpu"))


def _fired(results) -> bool:
    return any(r.fired and r.applicable for r in results)


def test_plain_model_passes_every_cheap_check() -> None:
    results = run_checks(_ctx(_linear()), CHEAP)
    assert {r.name for r in results} >= {"randomized", "probabilities", "dynamic", "zero-grad", "nan-grad",
                                          "batch-dependence"}
    assert not _fired(results), [r.message for r in results if r.fired]
    assert row_flags(results, 0.1) == ""


def test_probabilities() -> None:
    assert _fired(check_probabilities(_ctx(nn.Sequential(_linear(), nn.Softmax(dim=1)))))
    assert not _fired(check_probabilities(_ctx(_linear())))


class Noisy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = _linear()

    def forward(self, x):
        return self.inner(x + 0.05 * torch.randn_like(x))


def test_randomized_undeclared_and_declared() -> None:
    assert _fired(check_randomized(_ctx(Noisy())))
    declared = _linear()
    declared.randomized = True
    assert _fired(check_randomized(_ctx(declared)))


class Adaptive(nn.Module):
    """Shifts its bias by the mean of each batch it sees (a caricature of test-time adaptation)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _linear()
        self.register_buffer("shift", torch.zeros(()))

    def forward(self, x):
        out = self.inner(x) + self.shift
        self.shift += x.mean()
        return out


def test_dynamic_by_state_and_by_declaration() -> None:
    results = check_dynamic(_ctx(Adaptive()))
    assert _fired(results) and results[0].details["state_changed"]
    declared = _linear()
    declared.dynamic = True
    assert _fired(check_dynamic(_ctx(declared)))
    assert not _fired(check_dynamic(_ctx(_linear())))


def test_batch_dependence_with_batch_statistics() -> None:
    torch.manual_seed(0)
    bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.Flatten(),
                       nn.Linear(16, 5)).eval()
    assert _fired(check_batch_dependence(_ctx(bn)))
    assert not _fired(check_batch_dependence(_ctx(_linear())))


class Rounded(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = _linear()

    def forward(self, x):
        return self.inner(torch.round(x * 7) / 7)


def test_zero_and_nan_gradients() -> None:
    assert _fired(check_zero_grad(_ctx(Rounded())))
    assert not _fired(check_zero_grad(_ctx(_linear())))

    class NaNGrad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = _linear()

        def forward(self, x):
            return self.inner(torch.sqrt(x - 2.0).nan_to_num(0.0) + x)  # sqrt of negatives: NaN gradient

    assert _fired(check_nan_grad(_ctx(NaNGrad())))
    assert not _fired(check_nan_grad(_ctx(_linear())))

    class Detached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = _linear()

        def forward(self, x):
            return self.inner(x.detach())

    assert _fired(check_nan_grad(_ctx(Detached())))


def test_unconstrained_attack_failure_on_rounded_model() -> None:
    ctx = _ctx(Rounded(), attacks=[{"name": "pgd", "steps": 10}])
    assert _fired(check_unconstrained(ctx))
    assert not _fired(check_unconstrained(_ctx(_linear(), attacks=[{"name": "pgd", "steps": 10}])))
    # a step size tuned for a small eps (10 x 0.005 reaches only 0.05) must not make the unbounded run fail
    small_steps = _ctx(_linear(), attacks=[{"name": "pgd", "steps": 10, "step_size": 0.005}])
    assert not _fired(check_unconstrained(small_steps))


class FakeSquare(Attack):
    name: ClassVar[str] = "fake-square"
    kind: ClassVar[str] = "score-based"
    implementation: ClassVar[str] = "tests"

    def perturb(self, model, x, y, eps, norm, *, target, generator):
        return x


def test_blackbox_after_whitebox_from_per_sample_results() -> None:
    model = _linear()
    x, y = _data()
    attacks = [build_attack("fgsm"), FakeSquare()]
    broken = ["fake-square"] + [""] * (N - 1)
    per_sample = _per_sample(model, x, y, broken_by=[broken])
    results = check_blackbox_beats_whitebox(_ctx(model, attacks, per_sample=per_sample))
    assert _fired(results) and results[0].details["samples"] == 1 and row_flags(results, 0.1) == \
        "blackbox-beats-whitebox"
    quiet = check_blackbox_beats_whitebox(_ctx(model, attacks))
    assert not _fired(quiet)
    not_applicable = check_blackbox_beats_whitebox(_ctx(model, ["fgsm"]))
    assert not not_applicable[0].applicable


def test_eps_monotone() -> None:
    model = _linear()
    x, y = _data()
    ok = _per_sample(model, x, y, eps=(0.1, 0.2), robust=[[1] * N, [0] * N])
    assert not _fired(check_eps_monotone(_ctx(model, per_sample=ok, eps=(0.1, 0.2))))
    bad = _per_sample(model, x, y, eps=(0.1, 0.2), robust=[[0] * N, [1] * N])
    results = check_eps_monotone(_ctx(model, per_sample=bad, eps=(0.1, 0.2)))
    assert _fired(results) and row_flags(results, 0.2) == "eps-nonmonotone" and row_flags(results, 0.1) == ""


def test_full_mode_on_a_plain_model_through_the_engine(tmp_path) -> None:
    """The re-running checks read the stored cascade: a plain linear model gets none of their flags."""
    import robustkit
    from robustkit.engine.store import DB_NAME, ResultStore

    x, y = _data()
    res = robustkit.evaluate({"m": _linear()}, dataset=(x, y), attacks=["fgsm", {"name": "pgd", "steps": 10}],
                             eps=[0.05, 0.1], checks="full", out=tmp_path)
    assert res.leaderboard["flags"].fillna("").eq("").all()
    with ResultStore(tmp_path / DB_NAME) as store:
        stored = store.checks(res.run_id, "m", "full")
    assert {"unconstrained-failure", "fgsm-beats-pgd", "more-steps-help", "silent-success",
            "incomplete-optimization"} <= set(stored["name"])
    assert stored.loc[stored["name"] == "unconstrained-failure", "applicable"].eq(1).all()


def test_check_mode_validation() -> None:
    assert check_mode(None) == "cheap" and check_mode(False) == "off" and check_mode("FULL") == "full"
    with pytest.raises(ConfigError, match="expected cheap, full or off"):
        check_mode("fulll")
    raw = {"dataset": "digits", "models": ["m"], "threat_model": {"eps": 0.1}, "attacks": ["fgsm"], "checks": "al"}
    with pytest.raises(ConfigError, match=r"^sweep.yaml: checks: expected cheap, full or off"):
        parse_config(raw, source="sweep.yaml", base_dir=__import__("pathlib").Path("."))
    assert parse_config({**raw, "checks": "full"}, source="s.yaml", base_dir=__import__("pathlib").Path(".")).options.checks \
        == "full"


def test_autoattack_square_after_its_gradient_components_is_flagged() -> None:
    """AutoAttack's own Square breaking what its APGD/FAB could not is AutoAttack's masking flag."""
    model = _linear()
    x, y = _data()
    broken = ["autoattack:square", "autoattack:apgd-ce"] + [""] * (N - 2)
    per_sample = _per_sample(model, x, y, broken_by=[broken])
    results = check_blackbox_beats_whitebox(_ctx(model, ["autoattack"], per_sample=per_sample))
    assert _fired(results) and results[0].details["samples"] == 1


def test_engine_stores_which_autoattack_component_broke_a_sample() -> None:
    """Through the cascade: a step-function model (no gradient anywhere) falls only to Square."""
    from robustkit.engine.cascade import run_cascade
    from robustkit.threat import ThreatModel

    class Staircase(nn.Module):  # logits of a quantised input: zero gradient almost everywhere
        def __init__(self) -> None:
            super().__init__()
            self.inner = _linear()

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.inner(torch.round(z * 2) / 2)  # torch.round has a zero gradient

    model = Staircase().eval()
    x, y = _data()
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample clean-correct
    aa = build_attack({"name": "autoattack", "version": "custom", "attacks_to_run": ["apgd-ce", "square"],
                       "seed": 0})
    state = run_cascade(model, x[:12], y[:12], [aa], ThreatModel("Linf", 0.3), generator=torch.Generator().manual_seed(0))
    parts = {b for b in state.broken_by if b}
    assert parts and parts <= {"autoattack:square", "autoattack:apgd-ce"}
    assert "autoattack:square" in parts
