"""Pass counting, the official components (pyautoattack checked file by file), APGD's and FAB-T's early and
fixed-point exits keeping the official verdicts (zero-gradient, normal and real models), and autoattack-fast's
escalation rule."""
from __future__ import annotations

import importlib
import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

import robustkit
from robustkit.attacks import _aa_official, _apgd_native, _fab_native, build_attack
from robustkit.attacks.autoattack import AutoAttack
from robustkit.attacks.autoattack_fast import AutoAttackFast
from robustkit.engine.store import ResultStore
from robustkit.engine.store_schema import _SCHEMA
from robustkit.passes import PassCounter
from robustkit.threat import ThreatModel

pyautoattack = pytest.importorskip("pyautoattack")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


def tiny_batch(model: nn.Module, n: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return x, model(x).argmax(1)


def short_plan(monkeypatch, n_iter: int = 10, n_queries: int = 300) -> None:
    full = AutoAttack.plan
    monkeypatch.setattr(AutoAttack, "plan", lambda self, norm, n_classes, randomized=False: [
        replace(c, n_iter=n_iter, n_queries=n_queries) for c in full(self, norm, n_classes, randomized)])


# ------------------------------------------------------------------------------------------- pass counting
def test_pass_counter_counts_sample_forwards_and_backwards():
    model = tiny_model()
    x = torch.rand(5, 1, 8, 8)
    with PassCounter(model) as outer:
        with torch.no_grad():
            model(x)                       # 5 forwards, no graph: no backward can follow
        with PassCounter(model) as inner:
            xg = x[:3].clone().requires_grad_()
            model(xg).sum().backward()     # 3 forwards + 3 backwards
            model(x[:2])                   # a graph that is never backpropagated: forwards only
    assert outer.snapshot() == (10, 3) and inner.snapshot() == (5, 3) and outer.total == 13
    model(x)
    assert outer.forward == 10, "the hook is removed on exit"


def test_leaderboard_passes_column_and_store_counts(tmp_path):
    model = tiny_model()
    x, y = tiny_batch(model, 10)
    y[0] = (y[0] + 1) % 10  # a clean mistake: never attacked
    res = robustkit.evaluate(model, dataset=(x, y), attacks=["fgsm"], eps=[0.05], norm="Linf", out=tmp_path,
                             quiet=True, checks="off", batch_size=4)
    with ResultStore.open(tmp_path) as store:
        batches = store.batches()
    counts = [json.loads(p) for p in batches["passes"]]
    # one forward per sample (the one-time randomness probe of the model is made before counting starts)
    assert [c["clean"] for c in counts] == [[4, 0], [4, 0], [2, 0]]
    fgsm = [c["fgsm"] for c in counts]
    assert [b for _, b in fgsm] == [3, 4, 2]      # one gradient per attacked sample
    assert all(f >= 2 * b for f, b in fgsm)       # its forward + at least the engine's re-prediction
    total = sum(sum(v) for c in counts for v in c.values())
    assert res.leaderboard["passes"].iloc[0] == round(total / 10, 1)
    board = pd.read_csv(tmp_path / "leaderboard.csv")
    cols = list(board.columns)
    assert cols.index("passes") == cols.index("seconds") + 1


def test_a_store_written_before_pass_counting_still_opens(tmp_path):
    conn = sqlite3.connect(tmp_path / "results.sqlite")  # the schema as it was: batches without ``passes``
    conn.executescript(_SCHEMA)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.execute("INSERT INTO batches (job_id, batch_index, start, stop, seed, chunk_size, n_attacked, seconds, "
                 "computed_at, run_id, attempt) VALUES ('j', 0, 0, 4, 0, 4, 4, 1.0, 0, 'r', 1)")
    conn.commit()
    conn.close()
    with ResultStore.open(tmp_path) as store:
        assert store.job_passes("j") is None      # not counted: the leaderboard shows no figure, not 0
        assert store.job_seconds("j") == 1.0


# ------------------------------------------------------------------------------ the official components
def test_installed_pyautoattack_components_are_the_checked_files():
    """The component files whose diff against fra31/auto-attack a392200 was read (docs/attacks.md)."""
    if importlib.metadata.version("pyautoattack") != _aa_official.PYAUTOATTACK_CHECKED["version"]:
        pytest.skip("another pyautoattack version: rerun benchmarks/check_pyautoattack.py and record it")
    folder = Path(pyautoattack.__file__).parent
    assert _aa_official.file_hashes(folder) == _aa_official.PYAUTOATTACK_CHECKED["files"]


def test_default_autoattack_names_the_official_components_with_their_version():
    attack = build_attack({"name": "autoattack"})
    pkg = _aa_official.load_official()
    assert attack.use_official and pkg is not None
    assert attack.config()["implementation"] == f"{pkg.label} (APGD, FAB-T early exit; native Square)"
    assert pkg.label in ("pyautoattack-" + importlib.metadata.version("pyautoattack"), "autoattack-0.1")
    assert build_attack({"name": "autoattack", "early_exit": False}).implementation == pkg.label
    assert build_attack({"name": "autoattack", "implementation": "torchattacks"}).implementation.startswith(
        "torchattacks-")


def _verdicts(model, adv, y):
    with torch.no_grad():
        return model(adv).argmax(1) != y


def test_early_exit_apgd_keeps_the_official_verdicts_on_real_data(lenet5_clean, mnist_test):
    """Native APGD-CE (Linf, L2) and APGD-T drop broken samples yet break exactly what the official ones break."""
    pkg = _aa_official.require_official()
    x, y = mnist_test.x[:16], mnist_test.y[:16]
    for norm, eps in (("Linf", 0.1), ("L2", 1.5)):
        official = pkg.apgd.APGDAttack(lenet5_clean, n_restarts=1, n_iter=100, eps=eps, norm=norm, seed=0,
                                       device="cpu", loss="ce")
        with PassCounter(lenet5_clean) as off_passes:
            off = _verdicts(lenet5_clean, official.perturb(x, y), y)
        with PassCounter(lenet5_clean) as nat_passes:
            nat = _verdicts(lenet5_clean, _apgd_native.perturb(lenet5_clean, x, y, eps=eps, norm=norm, seed=0), y)
        assert torch.equal(off, nat), norm
        assert 0 < int(off.sum()) < 16
        assert nat_passes.total < off_passes.total
    official_t = pkg.apgd.APGDAttack_targeted(lenet5_clean, n_restarts=1, n_iter=100, eps=0.08, norm="Linf",
                                              seed=3, device="cpu", n_target_classes=1)
    off = _verdicts(lenet5_clean, official_t.perturb(x, y), y)
    nat = _verdicts(lenet5_clean, _apgd_native.perturb_targeted(lenet5_clean, x, y, eps=0.08, norm="Linf",
                                                                n_target_classes=1, seed=3), y)
    assert torch.equal(off, nat) and int(off.sum()) > 0


class Quantize(nn.Module):
    """A 3-bit input quantizer without BPDA: gradients are exactly zero (masking by a non-differentiable step)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 7) / 7


def flat_and_plain_models() -> list[tuple[str, nn.Module, float, float]]:
    """A zero-gradient model and a normal one, with Linf and L2 budgets that leave some samples robust."""
    return [("zero-gradient", nn.Sequential(Quantize(), tiny_model()).eval(), 0.15, 1.0),
            ("plain", tiny_model(), 0.03, 0.15)]


@pytest.mark.parametrize("norm", ["Linf", "L2"])
def test_apgd_fixed_point_exit_returns_the_official_run_results(norm):
    """Per sample, native APGD (early exit + fixed-point exit) ends where the official attack_single_run
    ends: same verdict; for robust samples the same best point and best loss, bit for bit."""
    pkg = _aa_official.require_official()
    for name, model, eps_inf, eps_2 in flat_and_plain_models():
        eps = eps_inf if norm == "Linf" else eps_2
        x, y = tiny_batch(model, 24)
        official = pkg.apgd.APGDAttack(model, n_iter=100, norm=norm, eps=eps, seed=0, device="cpu", loss="ce")
        official.init_hyperparam(x)
        torch.manual_seed(0)
        with PassCounter(model) as off_passes:
            x_best, acc, loss_best, _ = official.attack_single_run(x, y)
        runs = {}
        for skip in (True, False):
            torch.manual_seed(0)
            with PassCounter(model) as passes:
                res = _apgd_native.single_run(model, x, y, eps=eps, norm=norm, n_iter=100, loss="ce",
                                              skip_fixed_points=skip)
            runs[skip] = (res, passes.total)
        res, total = runs[True]
        robust = ~res.broken
        assert torch.equal(acc, robust), name
        assert 0 < int(robust.sum()) < 24, name
        assert torch.equal(x_best[robust], res.x_best[robust]) and torch.equal(loss_best[robust], res.loss_best[robust])
        if name == "zero-gradient":
            # Linf: every robust sample freezes at once; L2: the official L2 projection of a point already in
            # the ball can move it by a rounding error, and such a sample keeps iterating (no tolerance)
            assert int(res.frozen.sum()) >= (int(robust.sum()) if norm == "Linf" else 10)
            assert total < runs[False][1] / 2 and total < off_passes.total / 2
        else:
            assert not bool(res.frozen.any()) and total == runs[False][1], "nothing freezes on a normal model"


def test_fixed_points_need_every_condition_exactly():
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 0.8 + 0.1
    x_adv = x + 0.05
    zero = torch.zeros_like(x)
    base = dict(x=x, x_adv=x_adv, x_adv_old=x_adv.clone(), x_best=x_adv.clone(), grad=zero, grad_best=zero,
                eps=0.1, norm="Linf")
    assert _apgd_native.fixed_points(**base).all()
    tiny = zero.clone()
    tiny[0, 0, 0, 0] = 1e-30                      # one denormal-sized gradient entry still moves a sign step
    moved = x_adv.clone()
    moved[1, 0, 3, 3] -= 1e-7                     # a nonzero momentum term
    best = x_adv.clone()
    best[2, 0, 5, 5] += 1e-7                      # not at the best point: a checkpoint would jump there
    outside = x_adv.clone()
    outside[3] = x[3] + 0.2                       # the projection would move it
    assert _apgd_native.fixed_points(**{**base, "grad": tiny}).tolist() == [False, True, True, True]
    assert _apgd_native.fixed_points(**{**base, "x_adv_old": moved}).tolist() == [True, False, True, True]
    assert _apgd_native.fixed_points(**{**base, "x_best": best}).tolist() == [True, True, False, True]
    assert _apgd_native.fixed_points(**{**base, "grad_best": tiny}).tolist() == [False, True, True, True]
    assert _apgd_native.fixed_points(**{**base, "x_adv": outside, "x_adv_old": outside,
                                        "x_best": outside}).tolist() == [True, True, True, False]
    nan = zero.clone()
    nan[0, 0, 0, 0] = float("nan")
    assert not _apgd_native.fixed_points(**{**base, "grad": nan})[0]


def test_apgd_t_fixed_point_exit_keeps_the_official_verdicts_per_target_class():
    """APGD-T re-draws a random start per target class on the samples still robust: frozen samples stay in
    those draws (they are robust), so every later class sees the official random stream."""
    pkg = _aa_official.require_official()
    for name, model, eps, _ in flat_and_plain_models():
        x, y = tiny_batch(model, 24)
        official = pkg.apgd.APGDAttack_targeted(model, n_iter=100, norm="Linf", eps=eps, seed=0, device="cpu",
                                                n_target_classes=9)
        off = _verdicts(model, official.perturb(x, y), y)
        with PassCounter(model) as on:
            nat = _verdicts(model, _apgd_native.perturb_targeted(model, x, y, eps=eps, norm="Linf", seed=0), y)
        with PassCounter(model) as off_skip:
            _apgd_native.perturb_targeted(model, x, y, eps=eps, norm="Linf", seed=0, skip_fixed_points=False)
        assert torch.equal(off, nat), name
        assert 0 < int(off.sum()) < 24, name
        if name == "zero-gradient":
            assert on.total < off_skip.total / 10


@pytest.mark.parametrize("norm, eps, seed", [("Linf", 0.08, 3), ("L2", 0.4, 2)])
def test_apgd_runs_side_by_side_keep_the_official_random_stream(norm, eps, seed, monkeypatch):
    """APGD-T's target classes and APGD's restarts run side by side on speculative random starts; a run
    that breaks a sample sets the generator back and the later runs are drawn again. With 1, 3 or all 9
    runs per batch: the official verdicts, and the generator ends where the official loop leaves it, on a
    model where later restarts and target classes break samples the first run missed."""
    pkg = _aa_official.require_official()
    model = tiny_model(seed)
    x, y = tiny_batch(model, 24)
    common = dict(n_iter=3, norm=norm, eps=eps, seed=0, device="cpu")

    def official(attack) -> tuple[torch.Tensor, torch.Tensor]:
        adv = attack.perturb(x, y)
        return _verdicts(model, adv, y), torch.get_rng_state()

    off_t, state_t = official(pkg.apgd.APGDAttack_targeted(model, n_target_classes=9, **common))
    first_t, _ = official(pkg.apgd.APGDAttack_targeted(model, n_target_classes=1, **common))
    off_r, state_r = official(pkg.apgd.APGDAttack(model, n_restarts=4, loss="dlr", **common))
    first_r, _ = official(pkg.apgd.APGDAttack(model, n_restarts=1, loss="dlr", **common))
    assert int(first_t.sum()) < int(off_t.sum()) < 24 or int(first_r.sum()) < int(off_r.sum()) < 24
    rollbacks = []
    real_set = torch.set_rng_state
    monkeypatch.setattr(torch, "set_rng_state", lambda state: (rollbacks.append(1), real_set(state)))
    for max_rows in (24, 72, 24 * 9):
        nat = _apgd_native.perturb_targeted(model, x, y, eps=eps, norm=norm, n_iter=3, seed=0, max_rows=max_rows)
        assert torch.equal(off_t, _verdicts(model, nat, y)), max_rows
        assert torch.equal(state_t, torch.get_rng_state()), max_rows
        nat = _apgd_native.perturb(model, x, y, eps=eps, norm=norm, n_iter=3, n_restarts=4, loss="dlr", seed=0,
                                   max_rows=max_rows)
        assert torch.equal(off_r, _verdicts(model, nat, y)), max_rows
        assert torch.equal(state_r, torch.get_rng_state()), max_rows
    assert rollbacks, "a batch of runs was cut short by a break and drawn again"


def _fab_t(pkg, model, x, y, eps, norm, n_restarts=1):
    official = pkg.fab.FABAttack_PT(model, norm=norm, n_restarts=n_restarts, n_iter=100, eps=eps, seed=0,
                                    device="cpu", n_target_classes=9)
    official.targeted = True
    with PassCounter(model) as off_passes:
        off = _verdicts(model, official.perturb(x, y), y)
    projections = importlib.import_module(f"{pkg.distribution}.fab_projections")
    projection = projections.projection_linf if norm == "Linf" else projections.projection_l2
    with PassCounter(model) as nat_passes:
        nat = _verdicts(model, _fab_native.perturb_targeted(model, x, y, eps=eps, norm=norm, projection=projection,
                                                            n_restarts=n_restarts, seed=0), y)
    return off, nat, off_passes.total, nat_passes.total


@pytest.mark.parametrize("norm, eps", [("Linf", 0.05), ("L2", 0.3)])
def test_fab_t_exits_keep_the_official_verdicts(norm, eps):
    pkg = _aa_official.require_official()
    flat = nn.Sequential(Quantize(), tiny_model()).eval()
    x, y = tiny_batch(flat, 24)
    off, nat, off_total, nat_total = _fab_t(pkg, flat, x, y, eps, norm)
    assert torch.equal(off, nat) and not bool(off.any())
    assert nat_total < off_total / 10, "zero gradients: every FAB-T run reaches its fixed point within a few steps"
    if norm == "Linf":  # a random restart starts away from the clean input: some break, the rest iterate on
        off, nat, _, _ = _fab_t(pkg, flat, x, y, 0.15, norm, n_restarts=2)
        assert torch.equal(off, nat) and 0 < int(off.sum()) < 24
    plain = tiny_model()
    x, y = tiny_batch(plain, 24)
    off, nat, off_total, nat_total = _fab_t(pkg, plain, x, y, eps, norm)
    assert torch.equal(off, nat) and 0 < int(off.sum()) < 24
    assert nat_total < off_total, "broken samples leave their runs"


def test_fab_t_target_classes_side_by_side_keep_the_official_verdicts():
    """FAB-T's target classes run as rows of one batch (max_rows permitting): the same verdicts as the
    official target-by-target loop, whether the classes run one at a time, a few or all nine together, on
    a batch where later target classes break samples the first one missed."""
    pkg = _aa_official.require_official()
    model = tiny_model(2)
    x, y = tiny_batch(model, 24)
    projection = importlib.import_module(f"{pkg.distribution}.fab_projections").projection_linf

    def official(n_targets: int) -> torch.Tensor:
        attack = pkg.fab.FABAttack_PT(model, norm="Linf", n_restarts=1, n_iter=100, eps=0.05, seed=0,
                                      device="cpu", n_target_classes=n_targets)
        attack.targeted = True
        return _verdicts(model, attack.perturb(x, y), y)

    off = official(9)
    assert int(off.sum()) > int(official(1).sum()) > 0, "later target classes break more samples"
    assert 0 < int(off.sum()) < 24
    calls = []
    real_step = _fab_native._step

    def step(model_, x1, *args, **kwargs):
        calls.append(x1.shape[0])
        return real_step(model_, x1, *args, **kwargs)

    for max_rows in (None, 60, 24 * 9):
        calls.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_fab_native, "_step", step)
            nat = _verdicts(model, _fab_native.perturb_targeted(model, x, y, eps=0.05, norm="Linf",
                                                                projection=projection, max_rows=max_rows), y)
        assert torch.equal(off, nat), max_rows
        assert max(calls) <= max(max_rows or 0, 24), "never more rows than allowed"
        if max_rows == 24 * 9:
            assert calls[0] == 24 * 9, "all nine target classes in one batch"


def test_fab_t_exits_keep_the_official_verdicts_on_real_data(lenet5_clean, mnist_test):
    pkg = _aa_official.require_official()
    x, y = mnist_test.x[:8], mnist_test.y[:8]
    off, nat, off_total, nat_total = _fab_t(pkg, lenet5_clean, x, y, 0.1, "Linf")
    assert torch.equal(off, nat) and 0 < int(off.sum()) < 8
    assert nat_total < off_total


def test_autoattack_on_a_zero_gradient_model_skips_the_fixed_iterations(monkeypatch):
    """The whole standard AutoAttack with and without the exits: the same per-sample verdicts; the exits cut
    APGD-T's and FAB-T's passes on a model whose input gradients are exactly zero."""
    short_plan(monkeypatch, n_iter=100, n_queries=300)
    model = nn.Sequential(Quantize(), tiny_model()).eval()
    x, y = tiny_batch(model, 12)
    threat = ThreatModel("Linf", 0.15)
    fast = AutoAttack(seed=0)(model, x, y, threat)
    full = AutoAttack(seed=0, early_exit=False)(model, x, y, threat)
    assert torch.equal(fast.success, full.success) and 0 < int(full.success.sum()) < 12
    for name in ("apgd-ce", "apgd-t", "fab-t"):
        assert sum(fast.info["passes"][name]) < sum(full.info["passes"][name]) / 10, name
    assert fast.info["passes"]["square"] == full.info["passes"]["square"]


@pytest.mark.slow
def test_standard_autoattack_matches_official_run_standard_evaluation(lenet5_clean, mnist_test):
    x, y = mnist_test.x[5000:5032], mnist_test.y[5000:5032]
    adversary = pyautoattack.AutoAttack(lenet5_clean, norm="Linf", eps=0.1, seed=0, version="standard")
    off = _verdicts(lenet5_clean, adversary.run_standard_evaluation(x, y, batch_size=32)[0], y)
    ours = AutoAttack(seed=0)(lenet5_clean, x, y, ThreatModel("Linf", 0.1)).success
    assert torch.equal(off, ours)


# --------------------------------------------------------------------------------- autoattack-fast escalation
class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return -g


class ReverseGrad(nn.Module):
    """Identity whose gradient points the wrong way: white-box attacks walk away from the boundary."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Reverse.apply(x)


def test_zero_gradients_escalate_and_end_at_standard_autoattack(monkeypatch):
    short_plan(monkeypatch)
    model = nn.Sequential(Quantize(), tiny_model()).eval()
    x, y = tiny_batch(model, 12)
    threat = ThreatModel("Linf", 0.15)
    fast = build_attack({"name": "autoattack-fast", "seed": 0, "square_queries": 100})(model, x, y, threat)
    standard = AutoAttack(seed=0)(model, x, y, threat)
    esc = fast.info["escalated"]
    assert esc["samples"] == 12 and esc["reasons"] == {"zero gradients": 12}
    assert set(fast.info["passes"]) == {"probe", "escalation"}, "nothing else is spent on a flat model"
    assert torch.equal(fast.success, standard.success)
    assert 0 < int(standard.success.sum()) < 12, "Square breaks some, not all"
    assert all(b.startswith("escalated:") for b, s in zip(fast.info["broken_by"], fast.success) if s)


def test_square_beating_the_white_box_stages_escalates():
    model = nn.Sequential(ReverseGrad(), tiny_model()).eval()
    x, y = tiny_batch(model, 24)
    res = build_attack({"name": "autoattack-fast", "seed": 0, "n_iter": 10, "square_queries": 1000})(
        model, x, y, ThreatModel("Linf", 0.05))
    assert res.info["escalated"]["reasons"] == {"square beat the white-box stages": res.info["escalated"]["samples"]}
    assert res.info["escalated"]["samples"] >= 1
    assert "square" in res.info["broken_by"]
    # the escalated standard AutoAttack breaks samples that the fast stages could not
    assert any(b is not None and b.startswith("escalated:") for b in res.info["broken_by"])


def test_randomized_models_go_to_standard_autoattack(monkeypatch):
    short_plan(monkeypatch, n_iter=5, n_queries=50)
    model = tiny_model()
    model.randomized = True
    x, y = tiny_batch(model, 4)
    res = build_attack({"name": "autoattack-fast", "seed": 0})(model, x, y, ThreatModel("Linf", 0.05))
    assert res.info["escalated"] == {"samples": 4, "reasons": {"randomized model": 4}}


def test_fast_suite_on_an_honest_model_stops_early_and_is_not_weaker(lenet5_clean, mnist_test):
    x, y = mnist_test.x[5000:5010], mnist_test.y[5000:5010]
    threat = ThreatModel("Linf", 0.1)
    with PassCounter(lenet5_clean) as fast_passes:
        fast = build_attack({"name": "autoattack-fast", "seed": 0})(lenet5_clean, x, y, threat)
    apgd_ce = _verdicts(lenet5_clean, _apgd_native.perturb(lenet5_clean, x, y, eps=0.1, norm="Linf", seed=0), y)
    assert bool((fast.success | ~apgd_ce).all()), "everything APGD-CE breaks, the fast suite breaks"
    assert fast.info["escalated"]["samples"] <= 10 - int(fast.success.sum())
    # standard AutoAttack spends > 5000 passes per image here (benchmarks/autoattack_speed.py); the fast suite
    # must not be anywhere near that
    assert fast_passes.total / 10 < 2500


def test_fast_suite_gives_the_full_square_budget_to_the_closest_survivors(monkeypatch):
    """After the short Square check, the top ``deep_square_share`` of its survivors (at least one), ranked by
    how close the white-box stages got them to the boundary, get ``deep_square_queries`` more; share 0: none."""
    model = tiny_model(1)
    x, y = tiny_batch(model, 24)
    threat = ThreatModel("Linf", 0.01)
    calls = []
    real = AutoAttackFast._square

    def square(self, model_, xs, ys, eps, norm, seed, queries):
        calls.append((xs.shape[0], queries))
        return real(self, model_, xs, ys, eps, norm, seed, queries)

    monkeypatch.setattr(AutoAttackFast, "_square", square)
    params = {"name": "autoattack-fast", "seed": 0, "n_iter": 10, "square_queries": 30, "deep_square_queries": 60}
    res = build_attack({**params, "deep_square_share": 0.25})(model, x, y, threat)
    (n_check, q_check), (n_deep, q_deep) = calls
    survivors_after_check = n_check - sum(b == "square" for b in res.info["broken_by"])
    assert (q_check, q_deep) == (30, 60) and 0 < n_deep < n_check
    assert n_deep == min(survivors_after_check, -(-n_check // 4))
    assert res.info["passes"]["square-deep"][0] >= n_deep * 60 - n_deep  # its queries ran (minus fooled rows)
    calls.clear()
    res = build_attack({**params, "deep_square_share": 0})(model, x, y, threat)
    assert len(calls) == 1 and "square-deep" not in res.info["passes"]


@pytest.mark.slow
def test_fast_suite_matches_the_official_robust_accuracy_on_the_pgd_lenet5(lenet5_adv, mnist_test):
    """The 32 images of benchmarks/autoattack_speed.py: one image (5001) survives the 1000-query Square check
    and is broken by the official Square's 5000 queries; the deep Square stage breaks it too."""
    x, y = mnist_test.x[5000:5032], mnist_test.y[5000:5032]
    threat = ThreatModel("Linf", 0.3)
    with_deep = build_attack({"name": "autoattack-fast", "seed": 0})(lenet5_adv, x, y, threat)
    without = build_attack({"name": "autoattack-fast", "seed": 0, "deep_square_share": 0})(lenet5_adv, x, y, threat)
    assert int(with_deep.success.sum()) == 2 and bool(with_deep.success[1]), "the official breaks 2 of 32"
    assert int(without.success.sum()) == 1 and not bool(without.success[1])


def test_fast_suite_parameters_are_checked():
    with pytest.raises(robustkit.errors.ConfigError, match="n_targets"):
        build_attack({"name": "autoattack-fast", "n_targets": 0})
    with pytest.raises(robustkit.errors.ConfigError, match="deep_square_share"):
        build_attack({"name": "autoattack-fast", "deep_square_share": 1.5})
    assert build_attack("aa-fast").name == "autoattack-fast"
