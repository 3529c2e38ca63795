"""Running the evaluation checks after a sweep: one :class:`CheckContext` per model, results stored with the run.

The ``checks`` finishing stage (:mod:`robustkit.engine.finishing`) calls :func:`sweep_checks` once every job
is stored. Results are kept in the store's ``checks`` table per (run, model, mode), so a resumed or repeated
run with the same mode reuses them (like the batches) and ``robustkit report`` can print them later. The
checks draw their random numbers from generators seeded by the sweep seed and run inside
``torch.random.fork_rng``, so they neither change nor depend on the global RNG.

This glue lives in the engine (which imports :mod:`robustkit.checks`), never the other way round: the checks
package knows nothing of stores or sweeps.
"""
from __future__ import annotations

import contextlib
import json
from typing import Iterator

import pandas as pd
import torch
from torch import nn

from robustkit.attacks import eval_mode
from robustkit.checks import OFF, CheckContext, CheckResult, row_flags, run_checks

from .beyond_lp import ExtraJob
from .beyond_lp_checks import clean_rows, level_checks, model_checks_needed
from .devices import on_device
from .store import ResultStore
from .sweep import Sweep


@contextlib.contextmanager
def _prepared(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    devices = [device] if device.type == "cuda" else []
    with on_device(model, device), torch.random.fork_rng(devices=devices), eval_mode(model):
        yield model


def _from_frame(frame: pd.DataFrame) -> list[CheckResult]:
    return [CheckResult(name=r.name, fired=bool(r.fired), message=r.message,
                        eps=None if pd.isna(r.eps) else float(r.eps), applicable=bool(r.applicable),
                        details=json.loads(r.details)) for r in frame.itertuples()]


def sweep_checks(store: ResultStore, sweep: Sweep, run_id: str, per_sample: pd.DataFrame,
                 device: torch.device, mode: str, extra_jobs: list[ExtraJob] | None = None) -> dict[str, list[CheckResult]]:
    """Check results per model name (computed, or read back from the store for this run and mode).

    ``mode`` is an already validated mode (:attr:`robustkit.engine.options.RunOptions.checks`). The Lp rows
    get every check of the mode; the corruption / patch / universal sections (``extra_jobs``) the model checks
    that apply to them and their level checks (:mod:`robustkit.engine.beyond_lp_checks`).
    """
    extra_jobs = extra_jobs or []
    needed = model_checks_needed(sweep)
    if mode == OFF:
        return {}
    out: dict[str, list[CheckResult]] = {}
    for entry in sweep.models:
        stored = store.checks(run_id, entry.name, mode)
        if len(stored):
            out[entry.name] = _from_frame(stored)
            continue
        if sweep.eps:
            rows = per_sample[per_sample["model"] == entry.name] if len(per_sample) else per_sample
        else:  # no Lp entry: the model checks the sections need, on the clean verdicts they stored
            rows = clean_rows(store, extra_jobs, entry.name)
        results = []
        if sweep.eps or needed:
            with _prepared(entry.model, device) as model:
                ctx = CheckContext(model=model, model_name=entry.name, x=sweep.dataset.x, y=sweep.dataset.y,
                                   attacks=list(sweep.attacks), norm=sweep.norm, eps=list(sweep.eps),
                                   per_sample=rows, seed=sweep.seed, device=device)
                results = run_checks(ctx, mode, only=None if sweep.eps else needed)
        results += level_checks(store, sweep, extra_jobs, entry.name)
        store.store_checks(run_id, entry.name, mode, results)
        out[entry.name] = results
    return out


def flags_by_row(results: dict[str, list[CheckResult]], eps: list[float]) -> dict[tuple[str, float], str]:
    """(model, eps) -> the leaderboard's ``flags`` cell."""
    return {(model, float(e)): row_flags(rs, float(e)) for model, rs in results.items() for e in eps}
