"""Finishing stages: what runs after every batch of a sweep is stored, registered instead of hard-wired.

The runner is a pipeline -- plan (jobs, batches) → execute (local or distributed) → store → finishing
stages -- and it knows no finishing stage by name. Each stage is a function ``fn(ctx: RunContext) -> None``
registered with :func:`finishing_stage`; the runner calls them in ``order`` (ties by name) on the main
process (rank 0) once all results are in the results store. A stage reads what earlier stages left in the
context (``ctx.certified``, ``ctx.check_results``, ``ctx.leaderboard``, ``ctx.artifacts``) and adds its own.

The built-in stages (``robustkit/engine/finishing.py`` registers them when ``robustkit.engine`` is imported):

======  ==================  =====================================================================
order   name                does
======  ==================  =====================================================================
20      ``certified``       certified rows of certifiable defenses → ``ctx.certified``
30      ``checks``          evaluation checks (docs/checks.md) → ``ctx.check_results`` (stored)
40      ``leaderboard``     leaderboard.csv/.md and per_sample.csv → ``ctx.leaderboard``
45      ``sections``        corruption / patch / universal tables, threat_models.md → ``artifacts["sections"]``
50      ``report``          report.md (provenance, leaderboard, sections, check explanations)
55      ``transfer-grid``   transfer_grid.csv (+ heatmap, report section) with a transfer-grid attack
60      ``curve``           curve.csv (+ curve.png) when ``options.curve`` is set → ``ctx.curve``
70      ``html-report``     examples/, plots/ and report.html (docs/report.md)
======  ==================  =====================================================================

Adding one is one decorated function in your own module (the example and the full contract are in
docs/engine.md, "Finishing stages"): ``@finishing_stage("html-report", order=55)`` above
``def html_report(ctx: RunContext) -> None``, which writes its file in ``ctx.out`` and records it with
``ctx.wrote(path)``.

Import the module before the sweep runs (a plugin package does it in its ``__init__``). A stage must not
change stored verdicts; whatever it computes goes to its own file or table.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import torch

from robustkit.checks import CheckResult
from robustkit.registry import Registry

from .leaderboard import PlannedJob
from .options import RunOptions
from .store import ResultStore
from .sweep import Sweep

StageFn = Callable[["RunContext"], None]


@dataclass
class RunContext:
    """Everything a finishing stage may read, and where stages leave their results for the next ones."""

    sweep: Sweep
    options: RunOptions
    out: Path
    store: ResultStore                       # the run's merged results store, open
    run_id: str
    device: torch.device
    jobs: list[PlannedJob]
    per_sample: pd.DataFrame                 # every sample's verdict at every (model, eps), from the store
    leaderboard: pd.DataFrame | None = None  # set by the leaderboard stage
    check_results: dict[str, list[CheckResult]] = field(default_factory=dict)      # model -> check rows
    certified: dict[str, tuple[list[dict[str, Any]], float]] = field(default_factory=dict)  # model -> rows, s
    curve: pd.DataFrame | None = None        # set by the curve stage
    files: list[Path] = field(default_factory=list)       # every file a stage wrote, in order
    artifacts: dict[str, Any] = field(default_factory=dict)  # anything else a stage wants to hand on

    def wrote(self, path: Path | None) -> Path | None:
        """Record a file a stage wrote (the CLI lists them at the end); None (nothing written) is ignored."""
        if path is not None and Path(path) not in self.files:
            self.files.append(Path(path))
        return path


@dataclass(frozen=True)
class FinishingStage:
    name: str
    order: int
    run: StageFn


FINISHING_STAGES: Registry[FinishingStage] = Registry("finishing stage")


def finishing_stage(name: str, *, order: int) -> Callable[[StageFn], StageFn]:
    """Decorator: register ``fn(ctx) -> None`` as the finishing stage ``name``, run at position ``order``."""
    def deco(fn: StageFn) -> StageFn:
        FINISHING_STAGES.register(name)(FinishingStage(name, int(order), fn))
        return fn
    return deco


def stages_in_order() -> list[FinishingStage]:
    return sorted((stage for _, stage in FINISHING_STAGES.items()), key=lambda s: (s.order, s.name))


def run_finishing_stages(ctx: RunContext) -> None:
    """Every registered stage, in order."""
    for stage in stages_in_order():
        stage.run(ctx)
