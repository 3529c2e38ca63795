"""The engine's accounting rules on a model whose decision boundaries are known exactly.

``BandModel`` predicts class k when pixel (0, 0) lies in [k/10, (k+1)/10). Every sample sits at a known
distance ``margin`` below its upper boundary, so an attack that raises that pixel by ``s`` breaks exactly the
samples with ``margin < s``: the expected per-sample outcome of every cascade and eps list is computable by
hand. Pixel (1, 1) carries the sample's index so that test attacks can record which samples they saw.
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import pytest
import torch
from torch import nn

from robustkit.attacks import Attack, AttackResult
from robustkit.data import Dataset
from robustkit.engine.cascade import run_cascade
from robustkit.engine.devices import auto_batch_size, is_out_of_memory
from robustkit.engine.runner import run_sweep
from robustkit.engine.store import DB_NAME
from robustkit.engine.sweep import ModelEntry, Sweep
from robustkit.errors import BudgetViolationError, ConfigError
from robustkit.threat import ThreatModel

N = 40
INDEX_SCALE = 64.0


class BandModel(nn.Module):
    """Class k for pixel (0, 0) in [k/10, (k+1)/10): logits are minus squared distances to band centres."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("centres", torch.arange(10, dtype=torch.float32) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, 0, 0, 0] * 10
        return -(v[:, None] - self.centres[None]) ** 2


def band_data(n: int = N, clean_errors: tuple[int, ...] = (3, 17)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x, y and each sample's margin (distance of pixel (0, 0) to its upper class boundary)."""
    k = torch.arange(n) % 9  # classes 0..8, so that moving up always reaches another class
    # distinct margins in [0.0031, 0.0458), each at least 5e-5 away from every shift the tests use
    margin = 0.0031 + 0.0437 * torch.arange(n, dtype=torch.float64).mul(7).remainder(n) / n
    x = torch.zeros(n, 1, 2, 2)
    x[:, 0, 0, 0] = ((k.double() + 1) / 10 - margin).float()
    x[:, 0, 1, 1] = torch.arange(n, dtype=torch.float32) / INDEX_SCALE
    y = k.clone()
    for i in clean_errors:
        y[i] = (k[i] + 4) % 9
    return x, y, margin


def indices(x: torch.Tensor) -> list[int]:
    return [int(round(v)) for v in (x[:, 0, 1, 1] * INDEX_SCALE).tolist()]


class ShiftUp(Attack):
    """Raises pixel (0, 0) by ``fraction * eps`` and records (eps, indices) of every batch it sees."""

    name: ClassVar[str] = "test-shift"
    norms: ClassVar[tuple[str, ...]] = ("Linf",)
    implementation: ClassVar[str] = "tests"
    defaults: ClassVar[dict[str, Any]] = {"fraction": 1.0}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.calls: list[tuple[float, list[int]]] = []

    def perturb(self, model, x, y, eps, norm, *, target, generator):
        self.calls.append((float(eps[0]), indices(x)))
        x_adv = x.clone()
        x_adv[:, 0, 0, 0] += eps * self.params["fraction"]
        return x_adv

    def seen(self, eps: float | None = None) -> set[int]:
        return {i for e, idx in self.calls if eps is None or abs(e - eps) < 1e-9 for i in idx}


class Jitter(ShiftUp):
    """A random shift drawn from BOTH the generator and the global RNG (as torchattacks-based attacks do)."""

    name: ClassVar[str] = "test-jitter"

    def perturb(self, model, x, y, eps, norm, *, target, generator):
        self.calls.append((float(eps[0]), indices(x)))
        u = torch.rand(x.shape[0], generator=generator) * torch.rand(x.shape[0])
        x_adv = x.clone()
        x_adv[:, 0, 0, 0] += eps * (0.3 + 0.7 * u)
        return x_adv


class Rogue(Attack):
    """Skips the base class's projection and returns a perturbation of 2 * eps (or outside [0, 1]).

    ``Attack.__call__`` is final, so a plugin cannot skip the base class by overriding it; this test class
    swaps it in after the class is made (below) to simulate one that gets around it anyway: the engine must
    still refuse its results.
    """

    name: ClassVar[str] = "test-rogue"
    norms: ClassVar[tuple[str, ...]] = ("Linf",)
    defaults: ClassVar[dict[str, Any]] = {"mode": "budget"}

    def rogue_call(self, model, x, y, threat, *, target=None, generator=None):
        x_adv = x.clone()
        if self.params["mode"] == "budget":
            x_adv[:, 0, 0, 0] += 2 * float(threat.eps)
        else:
            x_adv[:, 0, 0, 1] = -0.5
        ok = torch.ones(x.shape[0], dtype=torch.bool)
        return AttackResult(x_adv=x_adv, success=ok, pred=y, norms=torch.zeros(x.shape[0], dtype=torch.float64))


class Liar(Attack):
    """Claims success on every sample but returns the clean input: the engine must re-predict (see Rogue)."""

    name: ClassVar[str] = "test-liar"
    norms: ClassVar[tuple[str, ...]] = ("Linf",)

    def rogue_call(self, model, x, y, threat, *, target=None, generator=None):
        ok = torch.ones(x.shape[0], dtype=torch.bool)
        return AttackResult(x_adv=x.clone(), success=ok, pred=(y + 1) % 10,
                            norms=torch.zeros(x.shape[0], dtype=torch.float64))


# Installed after class creation, past Attack.__init_subclass__'s refusal of a __call__ override.
Rogue.__call__ = Rogue.rogue_call
Liar.__call__ = Liar.rogue_call


class FakeOOM(ShiftUp):
    """ShiftUp that raises a CUDA-style out-of-memory error for batches larger than ``limit``."""

    name: ClassVar[str] = "test-oom"
    limit: ClassVar[int] = 8

    def perturb(self, model, x, y, eps, norm, *, target, generator):
        if x.shape[0] > self.limit:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (fake, injected by the test)")
        return super().perturb(model, x, y, eps, norm, target=target, generator=generator)


def make_sweep(attacks, eps, *, seed: int = 0, batch_size: int | None = 16, n: int = N, models=None) -> Sweep:
    x, y, _ = band_data(n)
    ds = Dataset("bands", x, y, None, 10, {"name": "bands"})
    models = models or [ModelEntry("band", BandModel())]
    return Sweep(dataset=ds, models=models, attacks=list(attacks), norm="Linf", eps=eps, seed=seed, device="cpu",
                 batch_size=batch_size)


def expected_robust(margin: torch.Tensor, y_ok: torch.Tensor, strength: float) -> set[int]:
    return {i for i in range(len(margin)) if bool(y_ok[i]) and float(margin[i]) >= strength}


def strip_seconds(csv: Path) -> pd.DataFrame:
    return pd.read_csv(csv).drop(columns=["seconds"])


# ----------------------------------------------------------------------------------------------------- tests
def test_cascade_later_attacks_see_only_survivors(tmp_path):
    weak, strong = ShiftUp(fraction=0.5, label="weak"), ShiftUp(fraction=1.0, label="strong")
    eps = 0.04
    res = run_sweep(make_sweep([weak, strong], [eps]), tmp_path)
    x, y, margin = band_data()
    clean_ok = torch.tensor([i not in (3, 17) for i in range(N)])
    after_weak = expected_robust(margin, clean_ok, 0.5 * eps)
    after_strong = expected_robust(margin, clean_ok, eps)
    # the weak attack saw every clean-correct sample, the strong one only the weak one's survivors
    assert weak.seen() == {i for i in range(N) if clean_ok[i]}
    assert strong.seen() == after_weak
    assert 0 < len(after_strong) < len(after_weak) < int(clean_ok.sum())
    ps = res.per_sample.set_index("index")
    assert set(ps.index[ps["robust_after_weak"] == 1]) == after_weak
    assert set(ps.index[ps["robust"] == 1]) == after_strong
    assert (ps.loc[[3, 17], "broken_by"] == "clean").all()
    broken_weak = set(range(N)) - after_weak - {3, 17}
    assert set(ps.index[ps["broken_by"] == "weak"]) == broken_weak
    row = res.leaderboard.iloc[0]
    assert row["clean_acc"] == round(100 * 38 / N, 2)
    assert row["acc_weak"] == round(100 * len(after_weak) / N, 2)
    assert row["robust_acc"] == row["acc_strong"] == round(100 * len(after_strong) / N, 2)


def test_nested_eps_carries_broken_samples_and_does_not_reattack(tmp_path):
    attack = ShiftUp(label="shift")
    eps_list = [0.04, 0.01, 0.025]  # deliberately unsorted: the engine sorts
    res = run_sweep(make_sweep([attack], eps_list), tmp_path)
    _, _, margin = band_data()
    clean_ok = torch.tensor([i not in (3, 17) for i in range(N)])
    robust = {e: expected_robust(margin, clean_ok, e) for e in (0.01, 0.025, 0.04)}
    assert attack.seen(0.01) == {i for i in range(N) if clean_ok[i]}
    assert attack.seen(0.025) == robust[0.01]          # only the survivors of the smaller eps
    assert attack.seen(0.04) == robust[0.025]
    board = res.leaderboard
    assert board["eps"].tolist() == [0.01, 0.025, 0.04]
    assert board["robust_acc"].tolist() == [round(100 * len(robust[e]) / N, 2) for e in (0.01, 0.025, 0.04)]
    ps = res.per_sample
    first = ps[ps.eps == 0.01].set_index("index")
    last = ps[ps.eps == 0.04].set_index("index")
    broken_small = sorted(set(first.index[(first.robust == 0) & (first.broken_by == "shift")]))
    assert broken_small
    # per-sample eps unaffected: a sample broken at 0.01 keeps eps, attack, norm and prediction at 0.04
    for col in ("broken_by", "broken_at_eps", "adv_norm", "adv_pred"):
        assert last.loc[broken_small, col].tolist() == first.loc[broken_small, col].tolist()
    assert (last.loc[broken_small, "broken_at_eps"] == 0.01).all()
    assert (last.loc[broken_small, "attacked"] == 0).all()
    # ...and counts as broken from the first attack on (acc_<attack> columns)
    assert (last.loc[broken_small, "robust_after_shift"] == 0).all()
    newly = set(last.index[(last.robust == 0) & (last.broken_at_eps == 0.04)])
    assert newly == robust[0.025] - robust[0.04]
    assert (last.loc[sorted(newly), "adv_norm"].sub(0.04).abs() < 1e-6).all()


def test_adding_a_larger_eps_leaves_smaller_eps_results_and_batches_untouched(tmp_path):
    res1 = run_sweep(make_sweep([ShiftUp(label="shift")], [0.01, 0.025]), tmp_path)
    with sqlite3.connect(tmp_path / DB_NAME) as c:
        before = c.execute("SELECT id, job_id, batch_index, computed_at FROM batches ORDER BY id").fetchall()
    res2 = run_sweep(make_sweep([ShiftUp(label="shift")], [0.01, 0.025, 0.04]), tmp_path)
    with sqlite3.connect(tmp_path / DB_NAME) as c:
        after = c.execute("SELECT id, job_id, batch_index, computed_at FROM batches ORDER BY id").fetchall()
    assert after[:len(before)] == before and len(after) > len(before)
    assert res2.batches_reused == len(before)
    old = res1.per_sample.drop(columns=["job_id"])
    new = res2.per_sample[res2.per_sample.eps < 0.03].drop(columns=["job_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(old, new)


def test_engine_repredicts_instead_of_trusting_the_attack(tmp_path):
    res = run_sweep(make_sweep([Liar(label="liar")], [0.03]), tmp_path)
    assert res.leaderboard.loc[0, "robust_acc"] == res.leaderboard.loc[0, "clean_acc"] == 95.0


@pytest.mark.parametrize("mode,needle", [("budget", "exceeded its Linf budget"), ("range", "left the input range")])
def test_budget_violation_is_an_error_not_a_success(tmp_path, mode, needle):
    sweep = make_sweep([ShiftUp(fraction=0.5, label="ok"), Rogue(mode=mode, label="rogue")], [0.03])
    with pytest.raises(BudgetViolationError) as info:
        run_sweep(sweep, tmp_path)
    msg = str(info.value)
    assert "rogue" in msg and needle in msg and "\n" not in msg
    with sqlite3.connect(tmp_path / DB_NAME) as c:  # the failing batch was not stored as a result
        assert c.execute("SELECT COUNT(*) FROM batches").fetchone()[0] == 0
        assert c.execute("SELECT COUNT(*) FROM samples").fetchone()[0] == 0


def test_run_cascade_checks_budget_directly():
    x, y, _ = band_data(8, clean_errors=())
    with pytest.raises(BudgetViolationError):
        run_cascade(BandModel(), x, y, [Rogue()], ThreatModel("Linf", 0.02))


def test_two_fresh_runs_give_identical_csvs_and_the_seed_matters(tmp_path):
    outs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run_sweep(make_sweep([Jitter(label="jitter")], [0.01, 0.03], seed=seed), tmp_path / name)
        outs.append(tmp_path / name)
    a, b, c = (strip_seconds(o / "leaderboard.csv") for o in outs)
    pd.testing.assert_frame_equal(a, b)
    assert (outs[0] / "per_sample.csv").read_bytes() == (outs[1] / "per_sample.csv").read_bytes()
    # the attack really is random: another seed gives other per-sample results
    pa = pd.read_csv(outs[0] / "per_sample.csv")
    pc = pd.read_csv(outs[2] / "per_sample.csv")
    assert not pa["robust"].equals(pc["robust"]) or not pa["adv_norm"].equals(pc["adv_norm"])


class Interrupting(Jitter):
    """Jitter that raises KeyboardInterrupt on its n-th call (like Ctrl-C in the middle of a sweep)."""

    fail_on_call: ClassVar[int] = 3

    def perturb(self, model, x, y, eps, norm, *, target, generator):
        if len(self.calls) + 1 >= self.fail_on_call:
            raise KeyboardInterrupt
        return super().perturb(model, x, y, eps, norm, target=target, generator=generator)


def test_interrupted_run_resumes_without_recomputing_and_matches_a_fresh_run(tmp_path):
    # Interrupting has the same config() as Jitter except its name, so give both the same job identity by
    # patching the name of the interrupting instance's class to Jitter's.
    class Stop(Interrupting):
        name = "test-jitter"

    with pytest.raises(KeyboardInterrupt):
        run_sweep(make_sweep([Stop(label="jitter")], [0.01, 0.03]), tmp_path / "resumed")
    with sqlite3.connect(tmp_path / "resumed" / DB_NAME) as c:
        done = c.execute("SELECT id, job_id, batch_index, computed_at FROM batches ORDER BY id").fetchall()
    assert len(done) == 2  # calls 1 and 2 finished their batches; call 3 was interrupted
    resumed = run_sweep(make_sweep([Jitter(label="jitter")], [0.01, 0.03]), tmp_path / "resumed")
    fresh = run_sweep(make_sweep([Jitter(label="jitter")], [0.01, 0.03]), tmp_path / "fresh")
    assert resumed.batches_reused == 2 and resumed.batches_computed == fresh.batches_computed - 2
    with sqlite3.connect(tmp_path / "resumed" / DB_NAME) as c:
        after = c.execute("SELECT id, job_id, batch_index, computed_at FROM batches ORDER BY id").fetchall()
    assert after[:2] == done
    pd.testing.assert_frame_equal(strip_seconds(tmp_path / "resumed" / "leaderboard.csv"),
                                  strip_seconds(tmp_path / "fresh" / "leaderboard.csv"))
    assert ((tmp_path / "resumed" / "per_sample.csv").read_bytes()
            == (tmp_path / "fresh" / "per_sample.csv").read_bytes())


def test_fresh_discards_previous_results(tmp_path):
    run_sweep(make_sweep([ShiftUp(label="shift")], [0.02]), tmp_path)
    again = run_sweep(make_sweep([ShiftUp(label="shift")], [0.02]), tmp_path)
    assert again.batches_computed == 0 and again.batches_reused == 3
    fresh = run_sweep(make_sweep([ShiftUp(label="shift")], [0.02]), tmp_path, fresh=True)
    assert fresh.batches_computed == 3 and fresh.batches_reused == 0


def test_out_of_memory_halves_the_batch_and_loses_nothing(tmp_path):
    plain = run_sweep(make_sweep([ShiftUp(label="shift")], [0.02, 0.04], batch_size=32), tmp_path / "plain")
    oom_attack = FakeOOM(label="shift")
    res = run_sweep(make_sweep([oom_attack], [0.02, 0.04], batch_size=32), tmp_path / "oom")
    assert max(len(idx) for _, idx in oom_attack.calls) <= FakeOOM.limit
    cols = [c for c in plain.per_sample.columns if c != "job_id"]
    pd.testing.assert_frame_equal(plain.per_sample[cols], res.per_sample[cols])
    # passes: the halved chunks are counted as computed (per-call probes on smaller chunks), not the lost attempt
    keep = [c for c in plain.leaderboard.columns if c not in ("seconds", "passes", "attacks", "run_id")]
    pd.testing.assert_frame_equal(plain.leaderboard[keep], res.leaderboard[keep])
    with sqlite3.connect(tmp_path / "oom" / DB_NAME) as c:
        rows = c.execute("SELECT batch_index, start, stop, chunk_size FROM batches ORDER BY id").fetchall()
    assert [r[:3] for r in rows] == [(0, 0, 32), (1, 32, 40)] * 2  # logical batches unchanged
    assert all(r[3] == 8 for r in rows)


def test_non_memory_runtime_errors_are_not_retried(tmp_path):
    class Broken(ShiftUp):
        name = "test-broken"

        def perturb(self, *a, **k):
            self.calls.append((0.0, []))
            raise RuntimeError("shape mismatch in the attack")

    attack = Broken()
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_sweep(make_sweep([attack], [0.02], batch_size=32), tmp_path)
    assert len(attack.calls) == 1


def test_oom_detection():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("expected scalar type Float"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_auto_batch_size_is_deterministic_and_bounded():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert auto_batch_size((1, 28, 28), cpu) == 256
    assert auto_batch_size((3, 32, 32), cpu) == 64
    assert auto_batch_size((1, 8, 8), cpu) == 512
    assert auto_batch_size((3, 224, 224), cpu) == 16
    assert auto_batch_size((3, 32, 32), cuda) == 1024


def test_job_identity_changes_with_what_changes_numbers(tmp_path):
    def run(**kw) -> Any:
        args = {"attacks": [ShiftUp(label="shift")], "eps": [0.02], "seed": 0}
        args.update(kw)
        return run_sweep(make_sweep(args.pop("attacks"), args.pop("eps"), **args), tmp_path)

    first = run()
    assert run().batches_computed == 0                                   # unchanged: reused
    assert run(seed=1).batches_computed == 3                             # seed
    assert run(attacks=[ShiftUp(fraction=0.9, label="shift")]).batches_computed == 3   # attack config
    assert run(eps=[0.021]).batches_computed == 3                        # threat model
    assert run(batch_size=8).batches_computed == 0                       # batch size is not part of it
    other = BandModel()
    other.centres += 0.01
    assert run(models=[ModelEntry("band", other)]).batches_computed == 3  # weights/buffers
    assert run(n=39).batches_computed == 3                               # dataset
    renamed = run(models=[ModelEntry("renamed", BandModel())])           # display name only: reused
    assert renamed.batches_computed == 0 and renamed.leaderboard.loc[0, "model"] == "renamed"
    assert first.per_sample["job_id"].iloc[0] == run().per_sample["job_id"].iloc[0]


def test_sweep_validation_before_any_compute():
    with pytest.raises(ConfigError, match="two attacks are labelled"):
        make_sweep([ShiftUp(), ShiftUp()], [0.02])
    with pytest.raises(ConfigError, match="supports norms"):
        x, y, _ = band_data()
        Sweep(dataset=Dataset("bands", x, y, None, 10), models=[ModelEntry("band", BandModel())],
              attacks=[ShiftUp()], norm="L2", eps=[0.5])
    with pytest.raises(ConfigError, match="eps > 0"):
        make_sweep([ShiftUp()], [0.0])
    with pytest.raises(ConfigError, match="<= 1"):
        make_sweep([ShiftUp()], [8])
    with pytest.raises(ConfigError, match="two models are named"):
        make_sweep([ShiftUp()], [0.02], models=[ModelEntry("m", BandModel()), ModelEntry("m", BandModel())])


def test_leaderboard_ranks_ties_with_min_and_sorts_deterministically(tmp_path):
    class Shifted(BandModel):
        """Same bands moved down by 0.004: every margin shrinks, so fewer samples survive."""

        def forward(self, x):
            return super().forward(x + 0.004)

    models = [ModelEntry("b-twin", BandModel()), ModelEntry("a-twin", BandModel()), ModelEntry("weaker", Shifted())]
    res = run_sweep(make_sweep([ShiftUp(label="shift")], [0.02, 0.03], models=models), tmp_path)
    board = res.leaderboard
    assert list(board.columns) == ["rank", "model", "defense", "evaluation", "dataset", "norm", "eps", "n_examples",
                                   "clean_acc", "robust_acc", "acc_shift", "clean_acc_ci_low", "clean_acc_ci_high",
                                   "robust_acc_ci_low", "robust_acc_ci_high", "p_vs_next", "tied_with_next",
                                   "seconds", "passes", "flags", "attacks", "run_id"]
    for eps in (0.02, 0.03):
        part = board[board.eps == eps]
        assert part["model"].tolist() == ["a-twin", "b-twin", "weaker"]
        assert part["rank"].tolist() == [1, 1, 3]
        assert part.iloc[2]["robust_acc"] < part.iloc[0]["robust_acc"]
    assert (board["attacks"] == "shift=tests").all()
    assert board["flags"].fillna("").eq("").all()
    assert board["run_id"].nunique() == 1
    md = (tmp_path / "leaderboard.md").read_text()
    assert md.startswith("| rank | model |") and "a-twin" in md
