"""The evaluation engine: sweeps of models x eps x attack suites, a resumable results store, leaderboards.

Entry points: :func:`robustkit.engine.api.evaluate` (Python), ``robustkit eval`` (CLI, a thin layer over the
same :func:`robustkit.engine.runner.run_sweep`). The accounting rules, store schema and config reference are
in ``docs/engine.md``.
"""
from __future__ import annotations

from . import finishing  # noqa: F401  (registers the built-in finishing stages)
from .api import EvaluationResult, evaluate
from .config import SweepConfig, load_config, parse_config, resolve_config
from .options import RunOptions, parse_options
from .quickstart import DEFAULT_ATTACKS, QUICKSTART_ATTACKS, quickstart_sweep
from .runner import RunResult, run_sweep
from .sweep import ModelEntry, Sweep

__all__ = ["DEFAULT_ATTACKS", "EvaluationResult", "ModelEntry", "QUICKSTART_ATTACKS", "RunOptions", "RunResult",
           "Sweep", "SweepConfig", "evaluate", "load_config", "parse_config", "parse_options", "quickstart_sweep",
           "resolve_config", "run_sweep"]
