"""Pass counting, the official components (pyautoattack checked file by file), APGD's early exit keeping the
official verdicts on real data, and autoattack-fast's escalation rule."""
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
from robustkit.attacks import _aa_official, _apgd_native, build_attack
from robustkit.attacks.autoattack import AutoAttack
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
    assert attack.config()["implementation"] == f"{pkg.label} (APGD early exit)"
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


@pytest.mark.slow
def test_standard_autoattack_matches_official_run_standard_evaluation(lenet5_clean, mnist_test):
    x, y = mnist_test.x[5000:5032], mnist_test.y[5000:5032]
    adversary = pyautoattack.AutoAttack(lenet5_clean, norm="Linf", eps=0.1, seed=0, version="standard")
    off = _verdicts(lenet5_clean, adversary.run_standard_evaluation(x, y, batch_size=32)[0], y)
    ours = AutoAttack(seed=0)(lenet5_clean, x, y, ThreatModel("Linf", 0.1)).success
    assert torch.equal(off, ours)


# --------------------------------------------------------------------------------- autoattack-fast escalation
class Quantize(nn.Module):
    """A 3-bit input quantizer without BPDA: gradients are exactly zero (masking by a non-differentiable step)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 7) / 7


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


def test_fast_suite_parameters_are_checked():
    with pytest.raises(robustkit.errors.ConfigError, match="n_targets"):
        build_attack({"name": "autoattack-fast", "n_targets": 0})
    assert build_attack("aa-fast").name == "autoattack-fast"
