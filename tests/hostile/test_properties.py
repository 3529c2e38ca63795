"""Property-based tests (hypothesis) of the threat model and the accounting (issue 12, "Done means").

* projection lands inside the ball and [0, 1] for any norm, eps, shape and dtype;
* ``check_budget`` accepts exactly the points within eps (relative tolerance), in particular every
  projection, and projection is idempotent;
* the leaderboard computed from random per-sample tables (that follow the cascade and nested-ball rules)
  has robust <= clean, is monotone in eps and along the suite, and passes the store's verification.
"""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robustkit.engine.leaderboard import PlannedJob, build_leaderboard
from robustkit.engine.store import ResultStore
from robustkit.errors import BudgetViolationError, ConfigError
from robustkit.threat import RTOL, check_budget, perturbation_norm, project

NORMS = ("Linf", "L2", "L1")
DTYPES = (torch.float32, torch.float64)
LOW_PRECISION = (torch.float16, torch.bfloat16)


@st.composite
def batches(draw):
    n = draw(st.integers(1, 4))
    shape = (n, draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    norm = draw(st.sampled_from(NORMS))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    high = 1.0 if norm == "Linf" else 20.0
    eps = draw(st.floats(1e-4, high, allow_nan=False, allow_infinity=False))
    per_sample = draw(st.booleans())
    spread = draw(st.sampled_from([0.0, 1e-7, 1e-3, 0.5, 5.0]))
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g).to(dtype)
    if draw(st.booleans()):  # pixels exactly on the box boundary
        x = (x > 0.5).to(dtype)
    x_adv = x + spread * torch.randn(shape, generator=g).to(dtype)
    eps_arg = (torch.rand(n, generator=g).to(dtype) * eps + 1e-4) if per_sample else eps
    return x, x_adv, eps_arg, norm


def _eps_tensor(eps, n: int) -> torch.Tensor:
    return eps.double() if isinstance(eps, torch.Tensor) else torch.full((n,), float(eps), dtype=torch.float64)


@settings(max_examples=300, deadline=None)
@given(batches())
def test_projection_lands_in_the_ball_and_the_box(case):
    x, x_adv, eps, norm = case
    out = project(x, x_adv, eps, norm)
    assert out.dtype == x.dtype and out.shape == x.shape
    assert torch.isfinite(out).all()
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    norms = perturbation_norm(x, out, norm)
    assert (norms <= _eps_tensor(eps, x.shape[0]) * (1 + RTOL)).all()
    check_budget(x, out, eps, norm)  # never raises on a projection


@pytest.mark.parametrize("x,x_adv,norm", [
    ([0.7576], [0.7578], "L2"),                                   # eps of a few float32 ulps of the pixel
    ([0.4963, 0.7682, 0.0885, 0.1320], [-10.3977, 3.6104, -5.3341, -6.8609], "L1"),  # L1 cancellation
])
def test_projection_regressions_found_by_hypothesis(x, x_adv, norm):
    """Both used to land outside the ball (by 4.6e-8 on eps 1e-4): found by the property test above."""
    xt = torch.tensor(x).reshape(1, 1, 1, -1)
    out = project(xt, torch.tensor(x_adv).reshape(1, 1, 1, -1), 1e-4, norm)
    check_budget(xt, out, 1e-4, norm)


@settings(max_examples=300, deadline=None)
@given(batches())
def test_check_budget_accepts_exactly_the_points_within_eps(case):
    x, x_adv, eps, norm = case
    candidate = x_adv.clamp(0, 1)
    d = (candidate.double() - x.double()).reshape(x.shape[0], -1).numpy()
    ref = {"Linf": np.abs(d).max(axis=1), "L2": np.sqrt((d ** 2).sum(axis=1)), "L1": np.abs(d).sum(axis=1)}[norm]
    inside = bool((ref <= _eps_tensor(eps, x.shape[0]).numpy() * (1 + RTOL)).all())
    if inside:
        check_budget(x, candidate, eps, norm)
    else:
        with pytest.raises(BudgetViolationError):
            check_budget(x, candidate, eps, norm)


@settings(max_examples=200, deadline=None)
@given(batches())
def test_projection_is_idempotent(case):
    x, x_adv, eps, norm = case
    once = project(x, x_adv, eps, norm)
    twice = project(x, once, eps, norm)
    assert torch.allclose(once.double(), twice.double(), rtol=0, atol=float(_eps_tensor(eps, 1).max()) * 1e-4 + 1e-6)


@settings(max_examples=20, deadline=None)
@given(batches(), st.sampled_from(LOW_PRECISION))
def test_projection_refuses_half_precision_instead_of_leaving_the_ball(case, dtype):
    """Decision: half-precision rounding cannot keep a point provably inside the ball; project says so."""
    x, x_adv, eps, norm = case
    with pytest.raises(ConfigError, match="float32 or float64"):
        project(x.to(dtype), x_adv.to(dtype), eps, norm)


# ------------------------------------------------------------------------------------------ accounting
@st.composite
def per_sample_tables(draw):
    """Per-sample outcomes following the engine's rules: clean errors never attacked; each other sample is
    broken at some (eps, attack) or never; once broken, broken at every larger eps."""
    n = draw(st.integers(1, 25))
    n_eps = draw(st.integers(1, 4))
    n_attacks = draw(st.integers(1, 3))
    clean = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    breaks = draw(st.lists(st.one_of(st.none(), st.tuples(st.integers(0, n_eps - 1), st.integers(0, n_attacks - 1))),
                           min_size=n, max_size=n))
    batch_size = draw(st.integers(1, 8))
    return n, n_eps, n_attacks, clean, breaks, batch_size


def _rows(k: int, n_attacks: int, clean, breaks, labels, eps_list, lo: int, hi: int) -> list[tuple]:
    rows = []
    for i in range(lo, hi):
        label = int(labels[i])
        if not clean[i]:
            rows.append((i, label, (label + 1) % 10, 0, "0" * n_attacks, 0, "clean", 0.0, None, 0.0, 0))
            continue
        brk = breaks[i]
        if brk is None or brk[0] > k:
            rows.append((i, label, label, 1, "1" * n_attacks, 1, None, None, None, None, 1))
        elif brk[0] == k:
            bits = "1" * brk[1] + "0" * (n_attacks - brk[1])
            rows.append((i, label, label, 1, bits, 0, f"a{brk[1]}", eps_list[k], (label + 1) % 10, 0.5, 1))
        else:
            rows.append((i, label, label, 1, "0" * n_attacks, 0, f"a{brk[1]}", eps_list[brk[0]], (label + 1) % 10,
                         0.5, 0))
    return rows


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(per_sample_tables())
def test_leaderboard_accounting_on_random_tables(tmp_path_factory, table):
    n, n_eps, n_attacks, clean, breaks, batch_size = table
    labels = np.arange(n) % 10
    eps_list = [0.1 * (k + 1) for k in range(n_eps)]
    attacks = [types.SimpleNamespace(label=f"a{j}", config=lambda: {"implementation": "test"})
               for j in range(n_attacks)]
    sweep = types.SimpleNamespace(labels=[a.label for a in attacks], attacks=attacks, norm="Linf",
                                  dataset=types.SimpleNamespace(name="random"))
    jobs, prev = [], None
    with ResultStore.open(tmp_path_factory.mktemp("acc")) as store:
        for k, eps in enumerate(eps_list):
            job = PlannedJob(job_id=f"job{k}", identity={"k": k}, model="m", eps=eps, prev_job_id=prev)
            store.ensure_job(job.job_id, job.identity, model="m", dataset="random", norm="Linf", eps=eps,
                             prev_job_id=prev, n_examples=n, batch_size=batch_size, attack_labels=sweep.labels)
            for b, lo in enumerate(range(0, n, batch_size)):
                hi = min(n, lo + batch_size)
                store.commit_batch(job_id=job.job_id, batch_index=b, start=lo, stop=hi, seed=0, chunk_size=hi - lo,
                                   n_attacked=0, seconds=0.0, run_id="r", attempt=1,
                                   rows=_rows(k, n_attacks, clean, breaks, labels, eps_list, lo, hi))
            # the store's verification accepts every table the engine's rules can produce
            assert store.verify_job(job.job_id, n_examples=n, batch_size=batch_size, labels=labels,
                                    n_attacks=n_attacks, prev_job_id=prev) == []
            jobs.append(job)
            prev = job.job_id
        board = build_leaderboard(store, sweep, jobs, "r").sort_values("eps")
    acc_cols = [f"acc_{a.label}" for a in attacks]
    assert (board["robust_acc"] <= board["clean_acc"]).all()
    assert board["robust_acc"].is_monotonic_decreasing
    for _, row in board.iterrows():
        chain = [row["clean_acc"]] + [row[c] for c in acc_cols]
        assert all(a >= b for a, b in zip(chain, chain[1:]))
        assert row[acc_cols[-1]] == row["robust_acc"]
        assert row["robust_acc_ci_low"] <= row["robust_acc"] <= row["robust_acc_ci_high"]
    expected_clean = round(100.0 * sum(clean) / n, 2)
    assert set(board["clean_acc"]) == {expected_clean}
    last = sum(1 for c, b in zip(clean, breaks) if c and b is None)
    assert board["robust_acc"].iloc[-1] == round(100.0 * last / n, 2)
