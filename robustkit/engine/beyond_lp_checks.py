"""Which evaluation checks apply to the corruption / patch / universal sections, and their flags there.

The decision (docs/checks.md, "Checks per threat model"):

* the checks of the model itself (:data:`robustkit.checks.MODEL_CHECKS`) are run once per model and flag
  every section they concern: ``randomized``, ``dynamic`` and ``batch-dependence`` change any verdict, so
  they apply to all; ``probabilities``, ``zero-grad`` and ``nan-grad`` concern gradient attacks, so they apply
  to the patch and universal sections (white-box attacks) but not to corruptions (nothing is optimised);
* the level check of each section (:mod:`robustkit.checks.levels`): ``severity-nonmonotone`` per corruption,
  ``area-nonmonotone`` per patch section, ``uap-eps-nonmonotone`` per universal section;
* the checks about the Lp suite's results and re-runs (``blackbox-beats-whitebox``, ``eps-nonmonotone`` and
  the ``full`` ones) stay with the Lp rows.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from robustkit.checks import MODEL_CHECKS, CheckResult
from robustkit.checks.levels import check_level_monotone

from .beyond_lp import ExtraJob
from .store import ResultStore
from .sweep import Sweep

APPLIES: dict[str, tuple[str, ...]] = {
    "corruption": ("randomized", "dynamic", "batch-dependence"),
    "patch": MODEL_CHECKS,
    "universal": MODEL_CHECKS,
}
LEVEL_CHECK = {"corruption": "severity-nonmonotone", "patch": "area-nonmonotone", "universal": "uap-eps-nonmonotone"}


def model_checks_needed(sweep: Sweep) -> set[str]:
    """The model checks the sweep's non-Lp sections need (run on their own when the sweep has no Lp entry)."""
    return {name for spec in sweep.extra_threats for name in APPLIES[spec.kind]}


def clean_rows(store: ResultStore, jobs: list[ExtraJob], model: str) -> pd.DataFrame:
    """The model's stored clean verdicts (``index``, ``clean_correct``) from the section job that evaluated the
    most examples: what the model checks pick their correctly classified probe samples from."""
    best = max((j for j in jobs if j.model == model), key=lambda j: -j.start, default=None)
    if best is None:
        return pd.DataFrame(columns=["index", "clean_correct", "eps"])
    s = store.samples(best.job_id)
    return pd.DataFrame({"index": s["idx"].astype("int64"), "clean_correct": s["clean_correct"].astype("int64"),
                         "eps": 0.0})


def level_checks(store: ResultStore, sweep: Sweep, jobs: list[ExtraJob], model: str) -> list[CheckResult]:
    """The level check of every non-Lp section of ``model``: one result per consecutive pair of levels."""
    out: list[CheckResult] = []
    for i, spec in enumerate(sweep.extra_threats):
        mine = [j for j in jobs if j.model == model and j.spec_index == i]
        groups: dict[str, list[tuple[float, np.ndarray]]] = {}
        for job in mine:
            key = job.level[0] if job.kind == "corruption" else ""
            robust = store.samples(job.job_id)["robust"].to_numpy(dtype=bool)
            groups.setdefault(key, []).append((job.eps, robust))
        comparisons = sum(max(0, len(v) - 1) for v in groups.values())
        for key, levels in groups.items():
            levels.sort(key=lambda lv: lv[0])
            what = {"corruption": f"corruption {key} severity", "patch": f"patch ({spec.location}) area",
                    "universal": f"universal {spec.norm} eps"}[spec.kind]
            out += check_level_monotone(LEVEL_CHECK[spec.kind], levels, comparisons=comparisons, where=what,
                                        details={"threat_model": spec.kind, "section": i, "group": key})
    return out


def _concerns(result: CheckResult, job: ExtraJob) -> bool:
    details: dict[str, Any] = result.details or {}
    kind = details.get("threat_model")
    if kind is None:  # a check of the model itself
        return result.name in APPLIES[job.kind] and result.eps is None
    group = job.level[0] if job.kind == "corruption" else ""
    return (kind == job.kind and details.get("section") == job.spec_index and details.get("group") == group
            and result.eps is not None and abs(float(result.eps) - job.eps) <= 1e-12 * max(1.0, job.eps))


def section_row_flags(results: list[CheckResult], job: ExtraJob) -> str:
    """The ``flags`` cell of one section row: fired checks of the model that apply to its threat model, and
    its own level check, ';'-joined, in order."""
    names: list[str] = []
    for r in results:
        if r.fired and r.applicable and _concerns(r, job) and r.name not in names:
            names.append(r.name)
    return ";".join(names)
