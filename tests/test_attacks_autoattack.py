"""AutoAttack: reference parameters, the cascade over still-robust points, the official-package adapter, and
the real check that it is at least as strong as PGD-40 on the adversarially trained MNIST LeNet5."""
from __future__ import annotations

import re
import time
import types
from dataclasses import replace

import pytest
import torch
from torch import nn

from robustkit.attacks import _aa_official, _aa_torchattacks, build_attack
from robustkit.attacks._aa_reference import COMPONENTS, reference_plan
from robustkit.attacks.autoattack import AutoAttack, run_cascade
from robustkit.errors import ConfigError
from robustkit.threat import ThreatModel

INSTALL_HINT = re.escape("pip install pyautoattack")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _no_official(monkeypatch):
    """These tests exercise the torchattacks path unless a test installs a fake official package itself."""
    monkeypatch.setattr(_aa_official, "load_official", lambda: None)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    return model.eval()


def tiny_batch(model: nn.Module, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 10  # one clean mistake: never attacked, reported as "clean"
    return x, y


def _match_rows(sub: torch.Tensor, full: torch.Tensor) -> list[int]:
    """Indices in ``full`` of the rows of ``sub`` (inputs are random, so rows identify samples)."""
    flat = full.reshape(full.shape[0], -1)
    out = []
    for row in sub.reshape(sub.shape[0], -1):
        hits = (flat == row).all(dim=1).nonzero().flatten().tolist()
        assert len(hits) == 1
        out.append(hits[0])
    return out


# ---------------------------------------------------------------------------------- reference parameters
def test_reference_plan_matches_official_set_version():
    std = {c.name: c for c in reference_plan("standard", "Linf")}
    assert list(std) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert (std["apgd-ce"].n_iter, std["apgd-ce"].n_restarts, std["apgd-ce"].loss, std["apgd-ce"].rho) == (100, 1, "ce", .75)
    assert (std["apgd-t"].n_iter, std["apgd-t"].n_restarts, std["apgd-t"].n_target_classes) == (100, 1, 9)
    assert (std["fab-t"].n_iter, std["fab-t"].n_restarts, std["fab-t"].n_target_classes) == (100, 1, 9)
    assert (std["square"].n_queries, std["square"].p_init, std["square"].n_restarts) == (5000, .8, 1)
    assert all(c.eot_iter == 1 and not c.use_largereps for c in std.values())

    l1 = {c.name: c for c in reference_plan("standard", "L1")}
    assert (l1["apgd-ce"].n_restarts, l1["apgd-ce"].use_largereps) == (5, True)
    assert (l1["apgd-t"].n_target_classes, l1["apgd-t"].use_largereps) == (5, True)

    plus = {c.name: c for c in reference_plan("plus", "L2")}
    assert list(plus) == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"]
    assert set(plus) == set(COMPONENTS)
    assert [plus[n].n_restarts for n in plus] == [5, 5, 5, 1, 1, 1]
    assert plus["apgd-dlr"].loss == "dlr" and plus["apgd-t"].n_target_classes == 9

    rand = reference_plan("rand", "Linf")
    assert [(c.name, c.n_restarts, c.eot_iter) for c in rand] == [("apgd-ce", 1, 20), ("apgd-dlr", 1, 20)]

    custom = reference_plan("custom", "Linf", ["square", "apgd-ce"])  # constructor settings, user order
    assert [(c.name, c.n_restarts) for c in custom] == [("square", 1), ("apgd-ce", 5)]
    late_fab = reference_plan("custom", "Linf", ["fab-t", "fab"])  # official leaves fab.n_restarts = 1
    assert [c.n_restarts for c in late_fab] == [1, 1]


@pytest.mark.parametrize("version", ["standard", "plus", "rand"])
@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_torchattacks_components_carry_reference_parameters(version, norm):
    model = tiny_model()
    attack = AutoAttack(version=version, seed=7)
    for comp in attack.plan(norm, n_classes=10):
        ta = _aa_torchattacks.build_component(comp, model, norm, 0.25, 7, torch.device("cpu"))
        assert (ta.norm, ta.eps, ta.seed) == (norm, 0.25, 7)
        kind = type(ta).__name__
        if comp.name in ("apgd-ce", "apgd-dlr"):
            assert kind == "APGD"
            assert (ta.steps, ta.loss, ta.thr_decr) == (100, comp.name.split("-")[1], .75)
            assert ta.n_restarts == {"standard": 1, "plus": 5, "rand": 1}[version]
            assert ta.eot_iter == (20 if version == "rand" else 1)
        elif comp.name == "apgd-t":
            assert kind == "APGDT"
            assert (ta.steps, ta.n_restarts, ta.n_target_classes, ta.eot_iter, ta.thr_decr) == (100, 1, 9, 1, .75)
        elif comp.name in ("fab", "fab-t"):
            assert kind == "FAB"
            assert (ta.steps, ta.alpha_max, ta.eta, ta.beta) == (100, .1, 1.05, .9)
            assert ta.multi_targeted is (comp.name == "fab-t")
            assert ta.n_restarts == (5 if comp.name == "fab" else 1)
            if comp.name == "fab-t":
                assert ta.n_target_classes == 9
        else:
            assert kind == "Square"
            assert (ta.n_queries, ta.p_init, ta.n_restarts, ta.loss, ta.rescale_schedule) == (5000, .8, 1, "margin", False)


def test_target_classes_capped_to_the_model_and_dlr_needs_classes():
    attack = AutoAttack(version="standard")
    plan = {c.name: c for c in attack.plan("Linf", n_classes=5)}
    assert plan["apgd-t"].n_target_classes == 4 and plan["fab-t"].n_target_classes == 4
    with pytest.raises(ConfigError, match="apgd-t needs at least 4 classes"):
        attack.plan("Linf", n_classes=3)
    assert [c.name for c in AutoAttack(version="custom", attacks_to_run=["apgd-ce", "fab"]).plan("L2", 2)] == \
        ["apgd-ce", "fab"]


def test_randomized_models_get_eot_in_apgd_components():
    plan = AutoAttack(version="standard").plan("Linf", 10, randomized=True)
    assert {c.name: c.eot_iter for c in plan} == {"apgd-ce": 20, "apgd-t": 20, "fab-t": 1, "square": 1}
    plan = AutoAttack(version="rand", eot_iter=5).plan("Linf", 10)
    assert [c.eot_iter for c in plan] == [5, 5]


# ---------------------------------------------------------------------------------------- config / errors
def test_config_records_the_implementation_that_runs():
    attack = build_attack({"name": "autoattack", "version": "plus", "seed": 3})
    cfg = attack.config()
    assert cfg["implementation"].startswith("torchattacks-3.") and "reference parameters" in cfg["implementation"]
    assert cfg["implementation_requested"] == "auto" and cfg["version"] == "plus" and cfg["seed"] == 3
    assert build_attack("aa").name == "autoattack"


@pytest.mark.parametrize("params, match", [
    ({"version": "standrad"}, "did you mean"),
    ({"attacks_to_run": ["apgd-ce"]}, "only used with version: custom"),
    ({"version": "custom"}, "needs attacks_to_run"),
    ({"version": "custom", "attacks_to_run": ["apgd-cee"]}, "unknown component 'apgd-cee'"),
    ({"version": "custom", "attacks_to_run": ["fab", "fab"]}, "twice"),
    ({"implementation": "foolbox"}, "implementation: expected"),
    ({"seed": -1}, "seed"),
    ({"targeted": "random"}, "no targeted mode"),
    ({"implementation": "official"}, INSTALL_HINT),
])
def test_bad_parameters_are_one_line_config_errors(params, match):
    with pytest.raises(ConfigError, match=match) as err:
        AutoAttack(**params)
    assert "\n" not in str(err.value)


def test_l1_without_the_official_package_says_how_to_get_it():
    model = tiny_model()
    x, y = tiny_batch(model, 4)
    with pytest.raises(ConfigError, match=INSTALL_HINT):
        AutoAttack()(model, x, y, ThreatModel("L1", 5.0))


# ------------------------------------------------------------------------------------------------ cascade
def _short_plan(monkeypatch, n_iter: int = 10, n_queries: int = 200) -> None:
    """Cut iterations/queries so that cascade tests stay fast (the reference values are tested above)."""
    full = AutoAttack.plan

    def short(self, norm, n_classes, randomized=False):
        return [replace(c, n_iter=n_iter, n_queries=n_queries) for c in full(self, norm, n_classes, randomized)]

    monkeypatch.setattr(AutoAttack, "plan", short)


def test_cascade_runs_each_component_only_on_still_robust_points(monkeypatch):
    _short_plan(monkeypatch)
    model = tiny_model()
    x, y = tiny_batch(model, 16)
    eps = torch.tensor([0.04, 0.06] * 8)
    calls = []
    real_run = _aa_torchattacks.run_component

    def spy(ta, xs, ys):
        out = real_run(ta, xs, ys)
        calls.append((type(ta).__name__, ta.eps, _match_rows(xs, x), out))
        return out

    monkeypatch.setattr(_aa_torchattacks, "run_component", spy)
    result = AutoAttack(version="standard", seed=0)(model, x, y, ThreatModel("Linf", eps))
    broken_by = result.info["broken_by"]

    robust = set(range(16)) - {0}
    for kind, call_eps, idx, out in calls:
        # exactly the points still robust at this component's turn that have this call's eps
        assert set(idx) == {i for i in robust if abs(float(eps[i]) - call_eps) < 1e-7}, kind
        with torch.no_grad():
            fooled = model(out).argmax(1) != y[idx]
        robust -= {i for i, f in zip(idx, fooled.tolist()) if f}
    assert [c[0] for c in calls][:2] == ["APGD", "APGD"]  # one call per eps group
    assert {c[0] for c in calls} == {"APGD", "APGDT", "FAB", "Square"}
    assert broken_by[0] == "clean"
    assert robust == {i for i, b in enumerate(broken_by) if b is None}
    assert result.success.tolist() == [b is not None for b in broken_by]
    assert 0 < len(robust) < 15, "eps should leave some, not all, points robust"
    assert any(b not in (None, "clean", "apgd-ce") for b in broken_by), "later components should break some"


def test_restarts_inside_a_component_only_get_unbroken_points(monkeypatch):
    import torchattacks

    model = tiny_model()
    x, y = tiny_batch(model, 16)
    inputs = []
    real = torchattacks.APGD.attack_single_run

    def spy(self, xs, ys):
        res = real(self, xs, ys)
        inputs.append((_match_rows(xs, x), res[1]))  # res[1]: still correctly classified after this restart
        return res

    monkeypatch.setattr(torchattacks.APGD, "attack_single_run", spy)
    # custom runs the constructor settings: APGD-CE with 5 restarts
    AutoAttack(version="custom", attacks_to_run=["apgd-ce"], seed=0)(model, x, y, ThreatModel("Linf", 0.03))
    assert len(inputs) >= 2
    for (idx, acc), (next_idx, _) in zip(inputs, inputs[1:]):
        assert next_idx == [i for i, a in zip(idx, acc.tolist()) if a]


def test_run_cascade_stops_calling_components_once_everything_is_broken():
    model = tiny_model()
    x, y = tiny_batch(model, 16)
    with torch.no_grad():
        labels = model(x).argmax(1)
    seen = []

    def run(name, xs, ys, e):
        seen.append((name, xs.shape[0]))
        # swap in another sample's image with a different label: inside an Linf ball of radius 1, fools every point
        return torch.stack([x[int((labels != yi).nonzero()[0])] for yi in ys])

    x_adv, broken_by, after, _, passes = run_cascade(model, x, y, torch.full((16,), 1.0), "Linf", ["first", "second"], run)
    assert seen == [("first", 15)]
    assert after == {"first": 0, "second": 0}
    assert broken_by == ["clean"] + ["first"] * 15
    assert torch.equal(x_adv[0], x[0])
    # the run itself made no model pass; the cascade's verdicts did: 15 re-predictions for "first", none after
    assert passes == {"first": [15, 0], "second": [0, 0]}


# ------------------------------------------------------------------------------------------ reproducibility
def test_seeded_runs_are_identical_and_leave_the_global_rng_alone(monkeypatch):
    _short_plan(monkeypatch)
    model = tiny_model()
    x, y = tiny_batch(model, 8)
    threat = ThreatModel("L2", 0.3)
    attack = AutoAttack(version="custom", attacks_to_run=["apgd-ce", "square"], seed=5)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = attack(model, x, y, threat)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = attack(model, x, y, threat)
    assert torch.equal(a.x_adv, b.x_adv) and a.info["seed"] == 5
    unseeded = AutoAttack(version="custom", attacks_to_run=["apgd-ce"])
    r1 = unseeded(model, x, y, threat, generator=torch.Generator().manual_seed(9))
    r2 = unseeded(model, x, y, threat, generator=torch.Generator().manual_seed(9))
    assert r1.info["seed"] == r2.info["seed"] and torch.equal(r1.x_adv, r2.x_adv)


# ----------------------------------------------------------------------------- official package (faked)
def _fake_package(log: list, break_on: str | None = None) -> _aa_official.OfficialPackage:
    """A stand-in for the official component classes, recording how the adapter builds and calls them."""

    def component(kind: str):
        class Fake:
            def __init__(self, model, **kw):
                self.kw, self.seed, self.targeted, self.loss = kw, None, False, None
                log.append(("init", kind, round(kw["eps"], 6), kw["seed"], kw.get("n_target_classes")))

            def perturb(self, x, y):
                name = {"apgd": f"apgd-{self.loss}", "apgdt": "apgd-t", "square": "square",
                        "fab": "fab-t" if self.targeted else "fab"}[kind]
                log.append(("run", name, round(self.kw["eps"], 6), x.shape[0], self.seed))
                if name == break_on:  # the far corner of the box flips the tiny model's labels
                    return (x + self.kw["eps"] * torch.sign(torch.randn_like(x))).clamp(0, 1)
                return x.clone()
        return Fake

    def check_randomized(model, x, y, bs=250, logger=None):
        logger.warning('it seems to be a randomized defense! Please use version="rand".')

    return _aa_official.OfficialPackage(
        "pyautoattack", "0.0-test",
        types.SimpleNamespace(APGDAttack=component("apgd"), APGDAttack_targeted=component("apgdt")),
        types.SimpleNamespace(FABAttack_PT=component("fab")), types.SimpleNamespace(SquareAttack=component("square")),
        types.SimpleNamespace(check_randomized=check_randomized, check_range_output=lambda model, x, logger=None: 10))


def test_official_adapter_groups_by_eps_and_runs_one_component_at_a_time(monkeypatch):
    log: list = []
    monkeypatch.setattr(_aa_official, "load_official", lambda: _fake_package(log))
    attack = AutoAttack(implementation="official", version="standard", seed=11, early_exit=False)
    assert attack.config()["implementation"] == "pyautoattack-0.0-test"
    model = tiny_model()
    x, y = tiny_batch(model, 6)
    eps = torch.tensor([0.1, 0.2, 0.1, 0.2, 0.1, 0.2])
    with pytest.warns(_aa_official.OfficialAutoAttackWarning, match="randomized defense"):
        result = attack(model, x, y, ThreatModel("Linf", eps))
    runs = [e for e in log if e[0] == "run"]
    assert [r[1] for r in runs] == ["apgd-ce", "apgd-ce", "apgd-t", "apgd-t", "fab-t", "fab-t", "square", "square"]
    # sample 0 is a clean mistake: the 0.1 group has 2 robust points, the 0.2 group 3; seed set before each call
    assert sorted((r[2], r[3]) for r in runs[:2]) == [(0.1, 2), (0.2, 3)]
    assert all(r[4] == 11 for r in runs)
    inits = {e[1]: e for e in log if e[0] == "init"}
    assert inits["apgdt"][4] == 9 and inits["fab"][4] == 9 and inits["apgd"][3] == 11
    assert result.info["broken_by"] == ["clean", None, None, None, None, None]
    assert len(result.info["official_warnings"]) == 1
    assert set(result.info["passes"]) == {"apgd-ce", "apgd-t", "fab-t", "square"}


def test_official_adapter_records_the_breaking_component(monkeypatch):
    log: list = []
    monkeypatch.setattr(_aa_official, "load_official", lambda: _fake_package(log, break_on="fab-t"))
    model = tiny_model()
    x, y = tiny_batch(model, 6)
    attack = AutoAttack(version="custom", attacks_to_run=["apgd-ce", "fab-t", "square"], seed=1, early_exit=False)
    assert attack.use_official and attack.implementation == "pyautoattack-0.0-test"
    with pytest.warns(_aa_official.OfficialAutoAttackWarning):
        result = attack(model, x, y, ThreatModel("Linf", 0.9))
    broken = [b for b in result.info["broken_by"][1:] if b is not None]
    assert broken and set(broken) == {"fab-t"}
    assert result.success[1:].tolist() == [b is not None for b in result.info["broken_by"][1:]]
    square_runs = [e for e in log if e[0] == "run" and e[1] == "square"]
    assert sum(e[3] for e in square_runs) == 5 - len(broken)


def test_early_exit_runs_apgd_and_linf_square_natively_and_the_rest_from_the_official_classes(monkeypatch):
    log: list = []
    monkeypatch.setattr(_aa_official, "load_official", lambda: _fake_package(log))
    model = tiny_model()
    x, y = tiny_batch(model, 6)
    attack = AutoAttack(version="custom", attacks_to_run=["apgd-ce", "square"], seed=1)
    assert attack.implementation == "pyautoattack-0.0-test (APGD, FAB-T early exit; native Square)"
    with pytest.warns(_aa_official.OfficialAutoAttackWarning):
        result = attack(model, x, y, ThreatModel("Linf", 0.5))
    assert not [e for e in log if e[0] == "run" and e[1].startswith("apgd")]
    assert "apgd-ce" in result.info["broken_by"]
    assert not [e for e in log if e[0] == "run" and e[1] == "square"]  # Linf Square runs natively too
    result = attack(model, x, y, ThreatModel("L2", 0.2))  # L2 Square: the official class
    robust_left = result.info["broken_by"].count(None)
    assert robust_left > 0
    assert sum(e[3] for e in log if e[0] == "run" and e[1] == "square") == robust_left


# ------------------------------------------------------------------------------------- real model and data
def _autoattack_vs_pgd40(model, data, n: int) -> tuple[float, float]:
    """Robust accuracy under PGD-40 and under standard AutoAttack (torchattacks-based) on the first n images."""
    x, y = data.x[:n], data.y[:n]
    threat = ThreatModel("Linf", 0.3)
    pgd = build_attack({"name": "pgd", "steps": 40, "step_size": 0.01, "random_start": True})
    pgd_res = pgd(model, x, y, threat, generator=torch.Generator().manual_seed(0))
    start = time.time()
    aa = build_attack({"name": "autoattack", "version": "standard", "seed": 0})
    aa_res = aa(model, x, y, threat)
    elapsed = time.time() - start
    pgd_acc = 1 - pgd_res.success.float().mean().item()
    aa_acc = 1 - aa_res.success.float().mean().item()
    print(f"\nLeNet5-adv, first {n} MNIST test images, Linf 0.3: PGD-40 robust acc {pgd_acc:.3f}, AutoAttack "
          f"standard {aa_acc:.3f} ({elapsed:.1f} s; robust after {aa_res.info['robust_after']})")
    assert aa.config()["implementation"].startswith("torchattacks-")
    assert aa_res.norms.max().item() <= 0.3 * (1 + 1e-6)
    assert aa_res.success.tolist() == [b is not None for b in aa_res.info["broken_by"]]
    return pgd_acc, aa_acc


def test_autoattack_is_at_least_as_strong_as_pgd40_on_adv_trained_lenet(lenet5_adv, mnist_test):
    pgd_acc, aa_acc = _autoattack_vs_pgd40(lenet5_adv, mnist_test, 24)
    assert aa_acc <= pgd_acc
    assert 0.5 < aa_acc < 1.0  # an adversarially trained model: mostly robust, but not invulnerable


@pytest.mark.slow
def test_autoattack_vs_pgd40_on_200_images(lenet5_adv, mnist_test):
    pgd_acc, aa_acc = _autoattack_vs_pgd40(lenet5_adv, mnist_test, 200)
    assert aa_acc <= pgd_acc
    assert 0.8 < aa_acc < 0.99
