"""The runner: turns a :class:`~robustkit.engine.sweep.Sweep` into stored per-sample results and a leaderboard.

Order of work: for each model, for each eps (ascending), for each batch. A (model, eps) pair is a *job*; its
id hashes everything that can change its numbers (:mod:`robustkit.engine.identity`), so re-running a sweep
reuses every stored batch of an unchanged job and recomputes only what is missing. Each batch is seeded from
(seed, job id, batch index) alone, which is what makes a resumed sweep produce the same numbers as an
uninterrupted one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

import robustkit
from robustkit.attacks import eval_mode
from robustkit.errors import RobustkitError
from robustkit.outputs import OutputLock, output_dir
from robustkit.predict import NonFiniteOutputError
from robustkit.threat import ThreatModel

from . import identity
from robustkit.checks import check_mode
from robustkit.checks.report import write_report
from robustkit.checks.sweep_checks import flags_by_row, sweep_checks
from robustkit.provenance import run_provenance
from robustkit.report.stage import write_run_report

from .cascade import SampleState, run_cascade
from .curve_fill import fill_curve, parse_curve
from .devices import (auto_batch_size, is_out_of_memory, on_device as _on_device, release_cached_memory,
                      resolve_device, seed_everything)
from robustkit.defenses.certification import DEFAULT_RADII
from robustkit.defenses.sweep import certify_cached, leaderboard_fields

from .leaderboard import PlannedJob, add_defense_rows, build_leaderboard, build_per_sample, write_outputs
from .preflight import probe_models, verify_jobs
from .progress import JobProgress
from .store import ResultStore
from .sweep import Sweep
from .transfer_grid import run_transfer_grid
from .beyond_lp import ExtraRunner, check_specs, plan_extra_jobs
from .beyond_lp_tables import add_subgroup_columns, corruption_summary, section_tables, write_sections


@dataclass
class RunResult:
    """What a finished sweep produced (the same tables that were written to ``out``)."""

    run_id: str
    leaderboard: pd.DataFrame
    per_sample: pd.DataFrame
    out: Path
    batches_computed: int
    batches_reused: int
    curve: pd.DataFrame | None = None  # curve.csv when the sweep asks for one (robustkit.engine.curve_fill)
    sections: dict[str, pd.DataFrame] | None = None  # corruption / patch / universal tables (beyond_lp_tables)


def plan_jobs(sweep: Sweep) -> list[PlannedJob]:
    """One job per (model, eps), each chained to the job at the previous eps of the same model."""
    attacks = [a.config() for a in sweep.attacks]
    jobs = []
    for entry in sweep.models:
        fingerprint = _fingerprint(entry.model)
        prev: str | None = None
        for eps in sweep.eps:
            ident = identity.job_identity(model=fingerprint, dataset_hash=sweep.dataset.content_hash,
                                          n_examples=len(sweep.dataset), attacks=attacks, norm=sweep.norm, eps=eps,
                                          seed=sweep.seed, version=robustkit.__version__, previous_job=prev)
            jid = identity.job_id(ident)
            jobs.append(PlannedJob(job_id=jid, identity=ident, model=entry.name, eps=eps, prev_job_id=prev))
            prev = jid
    return jobs


def _fingerprint(model: nn.Module) -> dict[str, Any]:
    """The model's fingerprint, plus its defense spec (name and every parameter) when it is a defense."""
    fingerprint = identity.model_fingerprint(model)
    defense = leaderboard_fields(model)
    if defense["defense_config"] is not None:
        fingerprint["defense"] = defense["defense"]
    return fingerprint


def _certify_models(sweep: Sweep, out: Path, device: torch.device, radii: Any) -> dict[str, tuple[list, float]]:
    """Certified rows of every certifiable (defended) model of the sweep, cached in ``out`` (see certify_cached)."""
    results = {}
    for entry in sweep.models:
        if not getattr(entry.model, "certifiable", False):
            continue
        with _on_device(entry.model, device), eval_mode(entry.model):
            results[entry.name] = certify_cached(
                entry.model, sweep.dataset.x, sweep.dataset.y, fingerprint=_fingerprint(entry.model),
                dataset_hash=sweep.dataset.content_hash, seed=sweep.seed, version=robustkit.__version__,
                folder=out / "certified", radii=radii)
    return results


class _JobRunner:
    """Runs the missing batches of the jobs of one model, halving the batch on CUDA out-of-memory."""

    def __init__(self, sweep: Sweep, store: ResultStore, run_id: str, attempt: int, device: torch.device,
                 quiet: bool) -> None:
        self.sweep, self.store, self.run_id, self.attempt = sweep, store, run_id, attempt
        self.device, self.quiet = device, quiet
        self.chunk_limit: int | None = None  # lowered after an out-of-memory error, for the rest of the model
        self.computed = 0
        self.reused = 0

    def run_job(self, model: nn.Module, job: PlannedJob, batch_size: int) -> None:
        n = len(self.sweep.dataset)
        n_batches = -(-n // batch_size)
        done = self.store.finished_batches(job.job_id)
        self.reused += len(done)
        robust_done = 0
        if done:
            stored = self.store.samples(job.job_id)
            robust_done = int(stored["robust"].sum())
        done_samples = sum(b.stop - b.start for b in done.values())
        desc = f"{job.model} {self.sweep.norm} eps={job.eps:.4g}"
        with JobProgress(desc, n, done=done_samples, robust=robust_done, quiet=self.quiet) as bar:
            for b in range(n_batches):
                if b in done:
                    continue
                start, stop = b * batch_size, min(n, (b + 1) * batch_size)
                t0 = time.perf_counter()
                state, chunk = self._run_batch(model, job, b, start, stop, bar)
                seconds = time.perf_counter() - t0
                self.store.commit_batch(job_id=job.job_id, batch_index=b, start=start, stop=stop,
                                        seed=identity.batch_seed(self.sweep.seed, job.job_id, b), chunk_size=chunk,
                                        n_attacked=state.n_attacked, seconds=seconds, run_id=self.run_id,
                                        attempt=self.attempt, rows=state.rows(start), passes=state.passes)
                self.computed += 1
                bar.update(stop - start, int(state.robust.sum()))
        self.store.mark_job_finished(job.job_id)

    def _run_batch(self, model: nn.Module, job: PlannedJob, batch_index: int, start: int, stop: int,
                   bar: JobProgress) -> tuple[SampleState, int]:
        """Evaluate examples [start, stop); on out-of-memory, halve the chunk size and redo the whole batch."""
        prior = None
        if job.prev_job_id is not None:
            frame = self.store.samples(job.prev_job_id, start, stop)
            if len(frame) != stop - start:
                raise RobustkitError(f"results store is missing samples {start}..{stop - 1} of job "
                                     f"{job.prev_job_id} (eps before {job.eps}); run with --fresh")
            prior = SampleState.from_frame(frame)
        chunk = min(stop - start, self.chunk_limit or (stop - start))
        while True:
            try:
                parts = []
                for offset in range(0, stop - start, chunk):
                    lo, hi = start + offset, min(stop, start + offset + chunk)
                    parts.append(self._run_chunk(model, job, batch_index, offset, lo, hi,
                                                 None if prior is None else _slice(prior, lo - start, hi - start)))
                return SampleState.concat(parts), chunk
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
                if not is_out_of_memory(exc):
                    raise
                if chunk <= 1:
                    raise RobustkitError(f"out of memory on {self.device} even with a batch of 1 "
                                         f"({job.model}, eps {job.eps})") from None
                del exc
                release_cached_memory()
                chunk = max(1, chunk // 2)
                self.chunk_limit = chunk
                bar.note(f"out of memory on {self.device}: retrying batch {batch_index} of {job.model} "
                         f"eps={job.eps:.4g} in chunks of {chunk}")

    def _run_chunk(self, model: nn.Module, job: PlannedJob, batch_index: int, offset: int, lo: int, hi: int,
                   prior: SampleState | None) -> SampleState:
        generator = seed_everything(identity.batch_seed(self.sweep.seed, job.job_id, batch_index, offset),
                                    self.device)
        x = self.sweep.dataset.x[lo:hi].to(self.device)
        y = self.sweep.dataset.y[lo:hi].to(self.device)
        try:
            return run_cascade(model, x, y, self.sweep.attacks, ThreatModel(self.sweep.norm, job.eps), prior=prior,
                               generator=generator)
        except NonFiniteOutputError as exc:
            raise NonFiniteOutputError(f"model {job.model!r} (eps {job.eps:.4g}, examples {lo}..{hi - 1}): "
                                       f"{exc}") from None


def _slice(state: SampleState, lo: int, hi: int) -> SampleState:
    return SampleState(state.label[lo:hi], state.clean_pred[lo:hi], state.clean_correct[lo:hi],
                       state.robust_after[lo:hi], state.robust[lo:hi], state.attacked[lo:hi],
                       state.broken_by[lo:hi], state.broken_at_eps[lo:hi], state.adv_pred[lo:hi],
                       state.adv_norm[lo:hi])


def compute_run_id(sweep: Sweep, jobs: list[PlannedJob]) -> str:
    """Same sweep → same run id, so that a resumed or repeated run writes an identical leaderboard."""
    return identity.run_id({"dataset": sweep.dataset.name, "labels": sweep.labels,
                            "jobs": [(j.model, j.job_id) for j in jobs]})


def run_sweep(sweep: Sweep, out: Path | str, *, fresh: bool = False, quiet: bool = True,
              radii: Any = DEFAULT_RADII, checks: str = "cheap", wait: bool = False, report: bool = True) -> RunResult:
    """Run (or resume) a sweep into the folder ``out`` and write leaderboard.csv/.md and per_sample.csv there.

    The folder is locked for the whole run (:class:`robustkit.outputs.OutputLock`; ``wait`` waits for another
    run holding it instead of failing) and every model is probed with one forward pass first
    (:mod:`robustkit.engine.preflight`).

    Certifiable defenses (randomized smoothing) are also certified at the L2 ``radii``; their rows join the
    attacks' empirical rows in the leaderboard (column ``evaluation``).

    ``checks`` (``cheap`` | ``full`` | ``off``): the evaluation checks run afterwards on every model
    (docs/checks.md); they fill the ``flags`` column and ``report.md`` and never change a number.

    ``report``: the finishing stage that writes ``examples/``, ``plots/`` and ``report.html`` (docs/report.md);
    only ``robustkit.evaluate`` without an output folder turns it off (nothing of it would be kept).
    """
    checks = check_mode(checks)
    device = resolve_device(sweep.device)
    probe_models(sweep, device)  # before the output folder is even created: a misfit model costs nothing
    out = output_dir(out)
    check_specs(sweep)
    with OutputLock(out, wait=wait):
        return _run_locked(sweep, out, device, fresh=fresh, quiet=quiet, radii=radii, checks=checks, report=report)


def _run_locked(sweep: Sweep, out: Path, device: torch.device, *, fresh: bool, quiet: bool, radii: Any,
                checks: str, report: bool) -> RunResult:
    jobs = plan_jobs(sweep)
    extra_jobs = plan_extra_jobs(sweep, {e.name: _fingerprint(e.model) for e in sweep.models})
    run_id = compute_run_id(sweep, [*jobs, *extra_jobs])
    requested_batch = sweep.batch_size or auto_batch_size(tuple(sweep.dataset.x.shape[1:]), device)
    with ResultStore.open(out, fresh=fresh) as store:
        config = sweep.config or describe_sweep(sweep)
        attempt = store.begin_run(run_id, {**config, "run_id": run_id}, robustkit.__version__, str(device))
        store.link_jobs(run_id, [(j.job_id, j.model) for j in [*jobs, *extra_jobs]])
        store.set_provenance(run_id, {**run_provenance(sweep, device), "checks": checks})
        runner = _JobRunner(sweep, store, run_id, attempt, device, quiet)
        extra = ExtraRunner(sweep, store, out, run_id, attempt, device, requested_batch, quiet)
        try:
            for entry in sweep.models:
                model_jobs = [j for j in jobs if j.model == entry.name]
                sizes = [_ensure_job(store, sweep, j, requested_batch) for j in model_jobs]
                verify_jobs(store, sweep, model_jobs, sizes)
                if all(_job_complete(store, j, len(sweep.dataset), bs) for j, bs in zip(model_jobs, sizes)):
                    runner.reused += sum(len(store.finished_batches(j.job_id)) for j in model_jobs)
                    continue
                runner.chunk_limit = None
                with _on_device(entry.model, device), eval_mode(entry.model):
                    for job, batch_size in zip(model_jobs, sizes):
                        runner.run_job(entry.model, job, batch_size)
            extra.run(extra_jobs)
        except BaseException:
            store.finish_run(run_id, "interrupted")
            raise
        certified = _certify_models(sweep, out, device, radii)
        per_sample = build_per_sample(store, sweep, jobs)
        check_results = sweep_checks(store, sweep, run_id, per_sample, device, checks)
        store.finish_run(run_id, "finished")
        board = build_leaderboard(store, sweep, jobs, run_id, flags_by_row(check_results, sweep.eps))
        board = add_defense_rows(board, {e.name: leaderboard_fields(e.model)["defense"] for e in sweep.models},
                                 certified)
        board = add_subgroup_columns(board, per_sample, sweep)
        tables = section_tables(store, sweep, extra_jobs)
        summary = corruption_summary(store, sweep, extra_jobs)
    write_outputs(out, board, per_sample)
    write_sections(out, tables, summary)
    write_report(out)
    run_transfer_grid(sweep, out, device, requested_batch)
    curve_spec = parse_curve((sweep.config or {}).get("curve"), sweep.norm)
    curve = fill_curve(sweep, per_sample, curve_spec, out, device) if curve_spec is not None else None
    if report:
        write_run_report(sweep, out, per_sample, device)
    return RunResult(run_id=run_id, leaderboard=board, per_sample=per_sample, out=out,
                     batches_computed=runner.computed + extra.computed, batches_reused=runner.reused + extra.reused,
                     curve=curve, sections=tables)


def _ensure_job(store: ResultStore, sweep: Sweep, job: PlannedJob, batch_size: int) -> int:
    return store.ensure_job(job.job_id, job.identity, model=job.model, dataset=sweep.dataset.name, norm=sweep.norm,
                            eps=job.eps, prev_job_id=job.prev_job_id, n_examples=len(sweep.dataset),
                            batch_size=batch_size, attack_labels=sweep.labels)


def _job_complete(store: ResultStore, job: PlannedJob, n: int, batch_size: int) -> bool:
    return len(store.finished_batches(job.job_id)) == -(-n // batch_size)


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
