"""The built-in finishing stages (see :mod:`robustkit.engine.stages` for the contract and the order).

Each is one registered function of the run context; ``robustkit.engine`` imports this module, so they are
registered whenever the engine is. Nothing here changes a stored verdict.
"""
from __future__ import annotations

import pandas as pd

import robustkit
from robustkit.attacks import eval_mode
from robustkit.defenses.sweep import certify_cached, leaderboard_fields
from robustkit.report.html import PLOTS_DIR
from robustkit.report.stage import write_run_report

from .beyond_lp_checks import section_row_flags
from .checks_stage import flags_by_row, sweep_checks
from .beyond_lp_tables import CORRUPTION_PNG, SECTION_FILES, SECTIONS_MD, SUMMARY_CSV, add_subgroup_columns, \
    corruption_summary, section_per_sample, section_tables, write_sections
from .curve_fill import fill_curve
from .devices import on_device
from .leaderboard import LEADERBOARD_CSV, LEADERBOARD_MD, PER_SAMPLE_CSV, add_defense_rows, build_leaderboard, \
    write_outputs
from .plan import model_fingerprint
from .report import write_report
from .stages import RunContext, finishing_stage
from .transfer_grid import run_transfer_grid


@finishing_stage("certified", order=20)
def certified_rows(ctx: RunContext) -> None:
    """Certified rows of every certifiable (defended) model, cached in ``out/certified`` (see certify_cached)."""
    sweep = ctx.sweep
    for entry in sweep.models:
        if not getattr(entry.model, "certifiable", False):
            continue
        with on_device(entry.model, ctx.device), eval_mode(entry.model):
            ctx.certified[entry.name] = certify_cached(
                entry.model, sweep.dataset.x, sweep.dataset.y, fingerprint=model_fingerprint(entry.model),
                dataset_hash=sweep.dataset.content_hash, seed=sweep.seed, version=robustkit.__version__,
                folder=ctx.out / "certified", radii=ctx.options.certified_radii)


@finishing_stage("checks", order=30)
def evaluation_checks(ctx: RunContext) -> None:
    """The evaluation checks of ``options.checks`` on every model (docs/checks.md), stored with the run."""
    ctx.check_results = sweep_checks(ctx.store, ctx.sweep, ctx.run_id, ctx.per_sample, ctx.device,
                                     ctx.options.checks, ctx.artifacts.get("extra_jobs") or [])


@finishing_stage("leaderboard", order=40)
def leaderboard(ctx: RunContext) -> None:
    """leaderboard.csv/.md (with the checks' flags and the certified rows) and per_sample.csv."""
    sweep = ctx.sweep
    board = build_leaderboard(ctx.store, sweep, ctx.jobs, ctx.run_id, flags_by_row(ctx.check_results, sweep.eps))
    board = add_defense_rows(board, {e.name: leaderboard_fields(e.model)["defense"] for e in sweep.models},
                             ctx.certified)
    ctx.leaderboard = add_subgroup_columns(board, ctx.per_sample, sweep)
    sections = section_per_sample(ctx.store, sweep, ctx.artifacts.get("extra_jobs") or [])
    write_outputs(ctx.out, ctx.leaderboard, pd.concat([ctx.per_sample, sections], ignore_index=True)
                  if len(sections) else ctx.per_sample)
    for name in (LEADERBOARD_CSV, LEADERBOARD_MD, PER_SAMPLE_CSV):
        ctx.wrote(ctx.out / name)


@finishing_stage("sections", order=45)
def threat_model_sections(ctx: RunContext) -> None:
    """The corruption / patch / universal sections' CSVs and threat_models.md (before the report, which
    includes them); their tables are handed on as ``ctx.artifacts["sections"]``."""
    extra_jobs = ctx.artifacts.get("extra_jobs") or []
    flags = {job.job_id: section_row_flags(ctx.check_results.get(job.model, []), job) for job in extra_jobs}
    tables = section_tables(ctx.store, ctx.sweep, extra_jobs, flags)
    ctx.artifacts["sections"] = tables
    write_sections(ctx.out, tables, corruption_summary(ctx.store, ctx.sweep, extra_jobs))
    if tables:
        for name in [*(SECTION_FILES[k] for k in tables if k in SECTION_FILES), SUMMARY_CSV, CORRUPTION_PNG,
                     SECTIONS_MD]:
            if (ctx.out / name).is_file():
                ctx.wrote(ctx.out / name)


@finishing_stage("report", order=50)
def report(ctx: RunContext) -> None:
    """report.md: provenance, leaderboard and check explanations."""
    ctx.wrote(write_report(ctx.out))


@finishing_stage("transfer-grid", order=55)
def transfer_grid(ctx: RunContext) -> None:
    """transfer_grid.csv (+ heatmap, report section) when the suite has a transfer-grid attack."""
    run_transfer_grid(ctx.sweep, ctx.out, ctx.device, ctx.artifacts.get("batch_size") or 1)


@finishing_stage("curve", order=60)
def curve(ctx: RunContext) -> None:
    """curve.csv (+ curve.png) from one minimum-norm run per model, when the options ask for a curve."""
    if ctx.options.curve is None:
        return
    ctx.curve = fill_curve(ctx.sweep, ctx.per_sample, ctx.options.curve, ctx.out, ctx.device)
    for name in ("curve.csv", "curve.png"):
        if (ctx.out / name).is_file():
            ctx.wrote(ctx.out / name)


@finishing_stage("html-report", order=70)
def html_report(ctx: RunContext) -> None:
    """examples/, plots/ and report.html (docs/report.md); skipped when the run keeps no output folder."""
    if not ctx.artifacts.get("html_report", True):
        return
    ctx.wrote(write_run_report(ctx.sweep, ctx.out, ctx.per_sample, ctx.device))
    if (ctx.out / PLOTS_DIR).is_dir():
        ctx.wrote(ctx.out / PLOTS_DIR)
