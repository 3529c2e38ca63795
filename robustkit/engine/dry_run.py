"""``robustkit eval --dry-run``: the plan of a sweep -- jobs, batches, what is already stored -- computing nothing.

The jobs and their ids are exactly the runner's (:func:`robustkit.engine.plan.plan_jobs`), so "reused"
means what a real run would reuse. The output folder's results store is opened read-only (SQLite
``mode=ro``); a dry run writes nothing, not even an empty store.

The pass estimate is an upper bound: it assumes every sample reaches every attack at every eps, while the
cascade attacks only the samples still robust and the nested eps skip those already broken. One "pass" is
one forward+backward (or forward) pass of the model on one sample.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from robustkit.attacks import Attack

from .devices import auto_batch_size, resolve_device
from .leaderboard import format_eps
from .plan import plan_jobs
from .store import DB_NAME
from .sweep import Sweep

# AutoAttack "standard" (Croce & Hein 2020): APGD-CE 100 steps, APGD-T 9 targets x 100, FAB-T 9 x 100, Square
# 5000 queries; per sample, in passes.
AUTOATTACK_STANDARD_PASSES = 100 + 900 + 900 + 5000


@dataclass(frozen=True)
class PlannedJobRow:
    model: str
    eps: float
    job_id: str
    batch_size: int
    batches: int
    reused: int
    samples_to_compute: int


def attack_passes(attack: Attack) -> int:
    """Upper bound of model passes per sample for one attack (steps x restarts x binary search x EOT, + 1)."""
    p = attack.params
    if attack.name in ("autoattack", "aa"):
        core = AUTOATTACK_STANDARD_PASSES
    else:
        core = int(p.get("steps") or 1) * int(p.get("restarts") or 1) * int(p.get("binary_search_steps") or 1)
    return core * int(p.get("eot_iter") or 1) + 1  # + the engine's re-prediction


def _stored(out: Path, job_ids: list[str]) -> dict[str, tuple[int, int, int]]:
    """job id -> (stored batch size, finished batches, their samples), read-only; empty without a store."""
    path = Path(out) / DB_NAME
    if not path.is_file():
        return {}
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        found = {}
        for jid in job_ids:
            row = conn.execute("SELECT batch_size FROM jobs WHERE job_id = ?", (jid,)).fetchone()
            if row is not None:
                done, samples = conn.execute("SELECT COUNT(*), COALESCE(SUM(stop - start), 0) FROM batches "
                                             "WHERE job_id = ?", (jid,)).fetchone()
                found[jid] = (int(row[0]), int(done), int(samples))
        return found
    finally:
        conn.close()


def plan_sweep(sweep: Sweep, out: Path | str) -> list[PlannedJobRow]:
    """One row per job of the sweep, with what the results store in ``out`` already holds."""
    jobs = plan_jobs(sweep)
    n = len(sweep.dataset)
    requested = sweep.batch_size or auto_batch_size(tuple(sweep.dataset.x.shape[1:]), resolve_device(sweep.device))
    stored = _stored(Path(out), [j.job_id for j in jobs])
    rows = []
    for job in jobs:
        batch_size, done, samples = stored.get(job.job_id, (requested, 0, 0))
        rows.append(PlannedJobRow(job.model, job.eps, job.job_id, batch_size, -(-n // batch_size), done,
                                  max(0, n - samples)))
    return rows


def format_plan(sweep: Sweep, out: Path | str, rows: list[PlannedJobRow]) -> str:
    """The plan as a markdown table and a total line."""
    per_sample = 1 + sum(attack_passes(a) for a in sweep.attacks)  # + the clean prediction
    lines = [f"plan for {out}: {len(sweep.models)} model(s) x {len(sweep.eps)} eps = {len(rows)} jobs on "
             f"{len(sweep.dataset)} {sweep.dataset.name} examples, {sweep.norm}, attacks "
             f"{', '.join(a.label for a in sweep.attacks)}", "",
             "| model | eps | job | batch size | batches | reused | to compute | passes (at most) |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.model} | {format_eps(r.eps)} | {r.job_id[:12]} | {r.batch_size} | {r.batches} | "
                     f"{r.reused} | {r.batches - r.reused} | {r.samples_to_compute * per_sample:.3g} |")
    batches = sum(r.batches for r in rows)
    reused = sum(r.reused for r in rows)
    passes = sum(r.samples_to_compute for r in rows) * per_sample
    lines += ["", f"total: {batches} batches, {reused} reused, {batches - reused} to compute; at most {passes:.3g} "
                  f"model passes ({per_sample} per sample and eps: every sample through every attack; the cascade "
                  f"attacks fewer). Nothing was computed (--dry-run)."]
    if sweep.extra_threats:  # their batches are not planned here (docs/engine.md, "Beyond Lp")
        kinds = ", ".join(dict.fromkeys(spec.kind for spec in sweep.extra_threats))
        n_jobs = len(sweep.models) * sum(len(spec.levels) for spec in sweep.extra_threats)
        lines.append(f"plus {n_jobs} {kinds} job(s) (models x levels), not planned by --dry-run.")
    return "\n".join(lines) + "\n"
