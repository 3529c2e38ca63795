"""The runner: a pipeline that turns a :class:`~robustkit.engine.sweep.Sweep` into stored results and outputs.

plan → execute → store → finishing stages:

1. **plan** (:mod:`robustkit.engine.plan`): one job per (model, eps), its id hashing everything that can
   change its numbers; the batch layout; the batches still missing, grouped into units of work.
2. **execute** (:mod:`robustkit.engine.executors`): a local executor, or one rank of a torch.distributed job
   (:mod:`robustkit.engine.distributed`), computes the missing batches. Each batch is seeded from
   (seed, job id, batch index) alone, so a resumed or distributed sweep gives the numbers of an uninterrupted
   single-process one.
3. **store** (:mod:`robustkit.engine.store`): every batch is committed in one transaction (by a distributed
   rank to its own shard, merged into ``results.sqlite`` by rank 0); the per-sample table is read back from it.
   The non-Lp threat-model sections (corruption, patch, universal: :mod:`robustkit.engine.beyond_lp`) are
   computed after the Lp jobs, by the main process.
4. **finishing stages** (:mod:`robustkit.engine.stages`): certified rows, checks, leaderboard, sections,
   report, transfer grid, curve -- whatever is registered, in order, on the main process. The runner names
   none of them.

Before any of it, every model is probed with one forward pass (:mod:`robustkit.engine.preflight`) and the
output folder is locked by the main process for the whole run (:class:`robustkit.outputs.OutputLock`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

import robustkit
from robustkit.outputs import OutputLock, output_dir
from robustkit.provenance import run_provenance

from .beyond_lp import ExtraRunner, check_specs, plan_extra_jobs

from .devices import auto_batch_size, resolve_device
from .executors import Executor, LocalExecutor, compute_units
from .leaderboard import build_per_sample
from .options import RunOptions
from .plan import batch_layout, compute_run_id, describe_sweep, model_fingerprint, plan_jobs, plan_work
from .preflight import probe_models
from .stages import RunContext, run_finishing_stages
from .store import ResultStore
from .sweep import Sweep


@dataclass
class RunResult:
    """What a finished sweep produced (the same tables that were written to ``out``).

    On a distributed rank other than 0 only ``run_id``, ``out`` and the batch counts are filled in: the
    tables are rank 0's.
    """

    run_id: str
    leaderboard: pd.DataFrame
    per_sample: pd.DataFrame
    out: Path
    batches_computed: int
    batches_reused: int
    curve: pd.DataFrame | None = None  # curve.csv when the sweep asks for one (robustkit.engine.curve_fill)
    files: list[Path] = field(default_factory=list)  # every output file written, in order
    rank: int = 0
    sections: dict[str, pd.DataFrame] | None = None  # corruption / patch / universal tables (beyond_lp_tables)


def run_sweep(sweep: Sweep, out: Path | str, *, fresh: bool = False, quiet: bool = True,
              options: RunOptions | None = None, executor: Executor | None = None, wait: bool = False,
              report: bool = True) -> RunResult:
    """Run (or resume) a sweep into the folder ``out``: results.sqlite, then what the finishing stages write
    (leaderboard.csv/.md, per_sample.csv, report.md, curve.csv when asked; see :mod:`robustkit.engine.stages`).

    ``options`` (:class:`RunOptions`, default: checks ``cheap``, default certified radii, no curve) say what
    happens after the batches. ``executor`` says who computes them (default: this process alone). ``wait``
    waits for another run holding the folder's lock instead of failing. ``report=False`` skips the
    ``html-report`` stage (examples/, plots/, report.html: docs/report.md); only ``robustkit.evaluate`` without
    an output folder turns it off (nothing of it would be kept).
    """
    options = options or RunOptions()
    executor = executor or LocalExecutor(resolve_device(sweep.device))
    probe_models(sweep, executor.device)  # before the output folder is even created: a misfit model costs nothing
    out = output_dir(out) if executor.rank == 0 else Path(out)
    check_specs(sweep)
    with OutputLock(out, wait=wait) if executor.rank == 0 else contextlib.nullcontext():
        return _run(sweep, out, fresh=fresh, quiet=quiet, options=options, executor=executor, report=report)


def _run(sweep: Sweep, out: Path, *, fresh: bool, quiet: bool, options: RunOptions, executor: Executor,
         report: bool) -> RunResult:
    device = executor.device
    jobs = plan_jobs(sweep)
    extra_jobs = plan_extra_jobs(sweep, {e.name: model_fingerprint(e.model) for e in sweep.models})
    run_id = compute_run_id(sweep, [*jobs, *extra_jobs])
    requested_batch = sweep.batch_size or auto_batch_size(tuple(sweep.dataset.x.shape[1:]), device)
    executor.prepare_folder(out, fresh)
    store = ResultStore.open(out) if executor.rank == 0 else None
    try:
        work = attempt = None
        if store is not None:
            config = sweep.config or describe_sweep(sweep)
            attempt = store.begin_run(run_id, {**config, "run_id": run_id}, robustkit.__version__, str(device))
            store.link_jobs(run_id, [(j.job_id, j.model) for j in [*jobs, *extra_jobs]])
            sizes = batch_layout(store, sweep, jobs, requested_batch)
            work = plan_work(store, sweep, jobs, sizes)
        devices = executor.gather(str(device))
        work, attempt = executor.share((work, attempt))
        if store is not None:
            store.set_provenance(run_id, {**run_provenance(sweep, device), "checks": options.checks,
                                          "options": options.to_json(),
                                          "distributed": {"world_size": executor.world_size, "devices": devices}})
        progress = executor.progress(work, quiet)
        extra = None
        try:
            with executor.sink(out, store) as sink:
                computed = compute_units(executor, sweep, options, work, sink=sink, run_id=run_id, attempt=attempt,
                                         progress=progress)
            executor.finish(out, store)
            if store is not None:  # the non-Lp sections: on the main process, after the Lp jobs
                extra = ExtraRunner(sweep, store, out, run_id, attempt, device, requested_batch, quiet)
                extra.run(extra_jobs)
        except BaseException:
            if store is not None:
                store.finish_run(run_id, "interrupted")
            raise
        finally:
            progress.close()
        if store is None or extra is None:
            return RunResult(run_id=run_id, leaderboard=pd.DataFrame(), per_sample=pd.DataFrame(), out=out,
                             batches_computed=computed, batches_reused=work.reused_batches, rank=executor.rank)
        for job in jobs:
            store.mark_job_finished(job.job_id)
        store.finish_run(run_id, "finished")
        ctx = RunContext(sweep=sweep, options=options, out=out, store=store, run_id=run_id, device=device, jobs=jobs,
                         per_sample=build_per_sample(store, sweep, jobs),
                         artifacts={"extra_jobs": extra_jobs, "batch_size": requested_batch, "html_report": report})
        run_finishing_stages(ctx)
    finally:
        if store is not None:
            store.close()
    missing = sum(len(steps) for steps in work.steps.values())  # every process's batches, now all stored
    return RunResult(run_id=run_id, leaderboard=ctx.leaderboard if ctx.leaderboard is not None else pd.DataFrame(),
                     per_sample=ctx.per_sample, out=out, batches_computed=missing + extra.computed,
                     batches_reused=work.reused_batches + extra.reused, curve=ctx.curve, files=list(ctx.files),
                     sections=ctx.artifacts.get("sections"))
