"""Planning a sweep: its jobs, their batch layout, and which batches are still to compute, for whom.

A (model, eps) pair is a *job*; its id hashes everything that can change its numbers
(:mod:`robustkit.identity`), so a re-run reuses every stored batch of an unchanged job. A job's batches are
the unit of work. Because of the nested-ball rule, batch ``b`` of the job at eps_k needs batch ``b`` of the
job at eps_{k-1} first; work is therefore handed out in *units* -- one model's batch index ``b`` at every
eps -- so that the dependency always stays within one process. Units are dealt round-robin over the list of
units with missing batches (in sweep order), which depends only on the store's contents, never on timing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from torch import nn

import robustkit
from robustkit import identity
from robustkit.defenses.sweep import leaderboard_fields

from .leaderboard import PlannedJob
from .preflight import verify_jobs
from .store import ResultStore
from .sweep import Sweep


def model_fingerprint(model: nn.Module) -> dict[str, Any]:
    """The model's fingerprint, plus its defense spec (name and every parameter) when it is a defense."""
    fingerprint = identity.model_fingerprint(model)
    defense = leaderboard_fields(model)
    if defense["defense_config"] is not None:
        fingerprint["defense"] = defense["defense"]
    return fingerprint


def plan_jobs(sweep: Sweep) -> list[PlannedJob]:
    """One job per (model, eps), each chained to the job at the previous eps of the same model."""
    attacks = [a.config() for a in sweep.attacks]
    jobs = []
    for entry in sweep.models:
        fingerprint = model_fingerprint(entry.model)
        prev: str | None = None
        for eps in sweep.eps:
            ident = identity.job_identity(model=fingerprint, dataset_hash=sweep.dataset.content_hash,
                                          n_examples=len(sweep.dataset), attacks=attacks, norm=sweep.norm, eps=eps,
                                          seed=sweep.seed, version=robustkit.__version__, previous_job=prev)
            jid = identity.job_id(ident)
            jobs.append(PlannedJob(job_id=jid, identity=ident, model=entry.name, eps=eps, prev_job_id=prev))
            prev = jid
    return jobs


def compute_run_id(sweep: Sweep, jobs: list[PlannedJob]) -> str:
    """Same sweep → same run id, so that a resumed or repeated run writes an identical leaderboard."""
    return identity.run_id({"dataset": sweep.dataset.name, "labels": sweep.labels,
                            "jobs": [(j.model, j.job_id) for j in jobs]})


def describe_sweep(sweep: Sweep) -> dict[str, Any]:
    """A JSON-able summary of a sweep built in Python (stored with the run, for audits)."""
    return {
        "dataset": {"name": sweep.dataset.name, "n_examples": len(sweep.dataset),
                    "content_hash": sweep.dataset.content_hash, "spec": sweep.dataset.spec},
        "models": [{"name": m.name, **m.source} for m in sweep.models],
        "threat_model": {"norm": sweep.norm, "eps": sweep.eps},
        "attacks": [{"label": a.label, **a.config()} for a in sweep.attacks],
        "seed": sweep.seed, "device": sweep.device, "batch_size": sweep.batch_size,
    }


@dataclass(frozen=True)
class Step:
    """One batch of one job: samples [start, stop)."""

    job: PlannedJob
    batch_index: int
    start: int
    stop: int


@dataclass(frozen=True)
class Unit:
    """What one process computes as a whole: one model's batch ``batch_index`` at every eps (None: every batch
    of the model, used only when its jobs were stored with different batch layouts)."""

    model: str
    batch_index: int | None


@dataclass
class Work:
    """The missing steps of a sweep, grouped into units, plus stored results the missing steps build on.

    ``priors`` maps (job id, start, stop) of a stored batch range to its per-sample rows: the previous eps's
    verdicts that a missing step at the next eps needs, shipped to whichever process computes it.
    """

    units: list[Unit]
    steps: dict[Unit, list[Step]]                     # in job (eps) order, then batch order
    total_samples: int                                # of the whole sweep (all jobs)
    done_samples: int                                 # already stored
    done_robust: int
    reused_batches: int
    priors: dict[tuple[str, int, int], pd.DataFrame] = field(default_factory=dict)

    def for_rank(self, rank: int, world_size: int) -> list[Unit]:
        """The units of process ``rank``: round-robin over the units, in order."""
        return self.units[rank::world_size]

    @property
    def missing_samples(self) -> int:
        return sum(s.stop - s.start for steps in self.steps.values() for s in steps)


def batch_layout(store: ResultStore, sweep: Sweep, jobs: list[PlannedJob], requested: int) -> dict[str, int]:
    """Each job's batch size: a stored job keeps its own; a new job takes its model's stored size if the model
    has stored jobs (so that one model's jobs share one layout), else ``requested``. The stored batches of
    every job are verified on the way (:func:`robustkit.engine.preflight.verify_jobs`): failing ones are
    dropped and planned again."""
    sizes: dict[str, int] = {}
    for entry in sweep.models:
        model_size = requested
        model_jobs = [j for j in jobs if j.model == entry.name]
        for job in model_jobs:
            model_size = sizes[job.job_id] = store.ensure_job(
                job.job_id, job.identity, model=job.model, dataset=sweep.dataset.name, norm=sweep.norm,
                eps=job.eps, prev_job_id=job.prev_job_id, n_examples=len(sweep.dataset),
                batch_size=model_size if model_size >= 1 else requested,  # a corrupt 0 is refused just below
                attack_labels=sweep.labels)
        verify_jobs(store, sweep, model_jobs, [sizes[j.job_id] for j in model_jobs])
    return sizes


def plan_work(store: ResultStore, sweep: Sweep, jobs: list[PlannedJob], sizes: dict[str, int]) -> Work:
    """The missing steps of every job, as units, with the stored priors they need (read from ``store``)."""
    n = len(sweep.dataset)
    units: list[Unit] = []
    steps: dict[Unit, list[Step]] = {}
    priors: dict[tuple[str, int, int], pd.DataFrame] = {}
    done_samples = done_robust = reused = 0
    for entry in sweep.models:
        model_jobs = [j for j in jobs if j.model == entry.name]
        uniform = len({sizes[j.job_id] for j in model_jobs}) == 1
        by_unit: dict[Unit, list[Step]] = {}
        for job in model_jobs:
            size = sizes[job.job_id]
            finished = store.finished_batches(job.job_id)
            reused += len(finished)
            if finished:
                done_samples += sum(b.stop - b.start for b in finished.values())
                done_robust += int(store.samples(job.job_id)["robust"].sum())
            for b in range(-(-n // size)):
                if b in finished:
                    continue
                step = Step(job, b, b * size, min(n, (b + 1) * size))
                by_unit.setdefault(Unit(entry.name, b if uniform else None), []).append(step)
                if job.prev_job_id is not None:
                    frame = store.samples(job.prev_job_id, step.start, step.stop)
                    if len(frame) == step.stop - step.start:
                        priors[(job.prev_job_id, step.start, step.stop)] = frame
        for unit in sorted(by_unit, key=lambda u: -1 if u.batch_index is None else u.batch_index):
            units.append(unit)
            steps[unit] = by_unit[unit]
    return Work(units=units, steps=steps, total_samples=n * len(jobs), done_samples=done_samples,
                done_robust=done_robust, reused_batches=reused, priors=priors)
