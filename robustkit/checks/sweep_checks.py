"""Running the checks after a sweep: one :class:`CheckContext` per model, results stored with the run.

Called by the runner once every job is stored. Results are kept in the store's ``checks`` table per
(run, model, mode), so a resumed or repeated run with the same mode reuses them (like the batches) and
``robustkit report`` can print them later. The checks draw their random numbers from generators seeded by
the sweep seed and run inside ``torch.random.fork_rng``, so they neither change nor depend on the global RNG.
"""
from __future__ import annotations

import contextlib
import json
from typing import TYPE_CHECKING, Iterator

import pandas as pd
import torch
from torch import nn

from robustkit.attacks import eval_mode
from robustkit.predict import model_device

from . import OFF, CheckContext, CheckResult, check_mode, row_flags, run_checks

if TYPE_CHECKING:  # pragma: no cover
    from robustkit.engine.store import ResultStore
    from robustkit.engine.sweep import Sweep


@contextlib.contextmanager
def _prepared(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    original = model_device(model)
    model.to(device)
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), eval_mode(model):
            yield model
    finally:
        model.to(original)


def _from_frame(frame: pd.DataFrame) -> list[CheckResult]:
    return [CheckResult(name=r.name, fired=bool(r.fired), message=r.message,
                        eps=None if pd.isna(r.eps) else float(r.eps), applicable=bool(r.applicable),
                        details=json.loads(r.details)) for r in frame.itertuples()]


def sweep_checks(store: "ResultStore", sweep: "Sweep", run_id: str, per_sample: pd.DataFrame,
                 device: torch.device, mode: str) -> dict[str, list[CheckResult]]:
    """Check results per model name (computed, or read back from the store for this run and mode)."""
    mode = check_mode(mode)
    if mode == OFF:
        return {}
    out: dict[str, list[CheckResult]] = {}
    for entry in sweep.models:
        stored = store.checks(run_id, entry.name, mode)
        if len(stored):
            out[entry.name] = _from_frame(stored)
            continue
        rows = per_sample[per_sample["model"] == entry.name] if len(per_sample) else per_sample
        with _prepared(entry.model, device) as model:
            ctx = CheckContext(model=model, model_name=entry.name, x=sweep.dataset.x, y=sweep.dataset.y,
                               attacks=list(sweep.attacks), norm=sweep.norm, eps=list(sweep.eps), per_sample=rows,
                               seed=sweep.seed, device=device)
            results = run_checks(ctx, mode)
        store.store_checks(run_id, entry.name, mode, results)
        out[entry.name] = results
    return out


def flags_by_row(results: dict[str, list[CheckResult]], eps: list[float]) -> dict[tuple[str, float], str]:
    """(model, eps) -> the leaderboard's ``flags`` cell."""
    return {(model, float(e)): row_flags(rs, float(e)) for model, rs in results.items() for e in eps}
