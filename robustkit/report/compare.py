"""``robustkit compare RUN_A RUN_B [RUN_C ...]``: did the robust accuracy change, or is it noise?

Runs are joined on the same data: every run must have evaluated the same samples (same dataset content
hash and number of examples) under the same threat model (norm); anything else is refused in one line,
because accuracies on different samples or different balls cannot be paired. Each later run is compared
with the FIRST one (the baseline) at every (model, eps) the two share, empirical rows only:

* ``robust_a`` / ``robust_b``: robust accuracy (%) of the baseline and the other run;
* ``only_a`` / ``only_b``: samples robust in one run and broken in the other (the discordant pairs);
* ``p_value``: exact McNemar test on those pairs (:func:`robustkit.stats.mcnemar_exact`); ``significant``
  when p < 0.05 -- otherwise the change is within what the same model could show on these samples by chance
  of the attack (and of the checks: note that a stronger attack suite lowers robust accuracy by itself);
* ``changed``: what differs between the two rows -- the attack suite, the weights (tensor hash), the
  defense, the flags, the seed, the robustkit version.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from robustkit.engine.leaderboard import SIGNIFICANCE, format_eps
from robustkit.errors import RobustkitError
from robustkit.stats import mcnemar_exact

from .run_folder import RunFolder, load_run

COLUMNS = ["model", "eps", "run_a", "run_b", "n_examples", "robust_a", "robust_b", "delta", "only_a", "only_b",
           "p_value", "significant", "changed"]


def check_comparable(runs: Sequence[RunFolder]) -> None:
    """One-line refusal unless every run evaluated the same samples under the same norm as the first."""
    if len(runs) < 2:
        raise RobustkitError("compare: expected at least two run folders")
    base = runs[0]
    for run in runs[1:]:
        if run.dataset_hash != base.dataset_hash or len(run.per_sample[run.per_sample["model"] == run.models[0]]
                                                       .drop_duplicates("index")) != \
                len(base.per_sample[base.per_sample["model"] == base.models[0]].drop_duplicates("index")):
            raise RobustkitError(f"compare: {run.path} evaluated different data than {base.path} (dataset "
                                 f"{run.dataset} sha256 {str(run.dataset_hash)[:12]} vs {base.dataset} "
                                 f"{str(base.dataset_hash)[:12]}); only runs on the same samples can be paired")
        if run.norm != base.norm:
            raise RobustkitError(f"compare: {run.path} uses threat model {run.norm}, {base.path} {base.norm}; "
                                 f"only runs under the same threat model can be compared")


def _robust_vector(run: RunFolder, model: str, eps: float) -> pd.Series:
    rows = run.per_sample[(run.per_sample["model"] == model) & (run.per_sample["eps"] == eps)]
    return rows.set_index("index")["robust"].astype(bool).sort_index()


def _row(run: RunFolder, model: str, eps: float) -> pd.Series:
    board = run.empirical
    return board[(board["model"] == model) & (board["eps"] == eps)].iloc[0]


def _changes(a: RunFolder, b: RunFolder, model: str, eps: float) -> str:
    ra, rb = _row(a, model, eps), _row(b, model, eps)
    changes = []
    if str(ra.get("attacks")) != str(rb.get("attacks")):
        changes.append(f"attacks {ra.get('attacks')} -> {rb.get('attacks')}")
    ta, tb = a.model_provenance(model).get("tensors_sha256"), b.model_provenance(model).get("tensors_sha256")
    if ta != tb:
        changes.append(f"weights {str(ta)[:8]} -> {str(tb)[:8]}")
    if str(ra.get("defense", "")) != str(rb.get("defense", "")):
        changes.append(f"defense '{ra.get('defense', '')}' -> '{rb.get('defense', '')}'")
    if str(ra.get("flags", "")) != str(rb.get("flags", "")):
        changes.append(f"flags '{ra.get('flags', '')}' -> '{rb.get('flags', '')}'")
    if a.provenance.get("seed") != b.provenance.get("seed"):
        changes.append(f"seed {a.provenance.get('seed')} -> {b.provenance.get('seed')}")
    va = a.provenance.get("environment", {}).get("robustkit")
    vb = b.provenance.get("environment", {}).get("robustkit")
    if va != vb:
        changes.append(f"robustkit {va} -> {vb}")
    return "; ".join(changes) or "nothing recorded"


def compare_runs(runs: Sequence[RunFolder]) -> pd.DataFrame:
    """The comparison table of every later run against the first (see the module docstring)."""
    check_comparable(runs)
    base = runs[0]
    rows = []
    for other in runs[1:]:
        shared = base.empirical.merge(other.empirical, on=["model", "eps"])[["model", "eps"]]
        order = {m: i for i, m in enumerate(base.models)}
        for model, eps in sorted(shared.itertuples(index=False), key=lambda me: (order.get(me[0], 0), me[1])):
            a, b = _robust_vector(base, model, eps), _robust_vector(other, model, eps)
            if not a.index.equals(b.index):
                raise RobustkitError(f"compare: {model} at eps {format_eps(eps)} has different sample indices in "
                                     f"{base.path} and {other.path}")
            test = mcnemar_exact(a.to_numpy(), b.to_numpy())
            n = len(a)
            robust_a, robust_b = round(100.0 * a.sum() / n, 2), round(100.0 * b.sum() / n, 2)
            rows.append({"model": model, "eps": float(eps), "run_a": base.run_id, "run_b": other.run_id,
                         "n_examples": n, "robust_a": robust_a, "robust_b": robust_b,
                         "delta": round(robust_b - robust_a, 2), "only_a": test.only_a, "only_b": test.only_b,
                         "p_value": round(test.p_value, 4), "significant": test.p_value < SIGNIFICANCE,
                         "changed": _changes(base, other, model, eps)})
    if not rows:
        raise RobustkitError(f"compare: the runs share no (model, eps); nothing to pair (models of {base.path}: "
                             f"{', '.join(base.models)})")
    return pd.DataFrame(rows, columns=COLUMNS)


def load_and_compare(paths: Sequence[Path | str]) -> tuple[list[RunFolder], pd.DataFrame]:
    runs = [load_run(p) for p in paths]
    return runs, compare_runs(runs)


def to_markdown(runs: Sequence[RunFolder], table: pd.DataFrame) -> str:
    """The table as markdown, with a legend naming the runs."""
    lines = [f"run {r.run_id}: {r.path} ({'baseline, ' if i == 0 else ''}attacks {_suite(r)})"
             for i, r in enumerate(runs)]
    lines += ["", "| model | eps | run a | run b | n | robust a % | robust b % | delta | only a | only b | "
                  "McNemar p | significant | changed |", "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in table.itertuples(index=False):
        lines.append(f"| {r.model} | {format_eps(r.eps)} | {r.run_a} | {r.run_b} | {r.n_examples} | {r.robust_a:.2f} | "
                     f"{r.robust_b:.2f} | {r.delta:+.2f} | {r.only_a} | {r.only_b} | {r.p_value:.4f} | "
                     f"{'yes' if r.significant else 'no'} | {r.changed} |")
    lines += ["", f"only a / only b: samples robust in that run only; McNemar's exact test on them, significant at "
                  f"p < {SIGNIFICANCE}."]
    return "\n".join(lines) + "\n"


def _suite(run: RunFolder) -> str:
    return str(run.empirical["attacks"].iloc[0]) if len(run.empirical) else "?"
