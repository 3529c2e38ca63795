"""Leaderboard and per-sample tables, computed from the stored per-sample rows.

The leaderboard is derived from the store alone (never from in-memory counters), so a resumed run and an
uninterrupted one produce it from the same data the same way. Percentages are computed from integer counts
and rounded to 2 decimals once, at the end; ranks use the exact counts (ties share the rank, method "min").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from robustkit.outputs import output_dir, write_text
from robustkit.stats import clopper_pearson_percent, mcnemar_exact

from .store import ResultStore
from .sweep import Sweep

LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_MD = "leaderboard.md"
PER_SAMPLE_CSV = "per_sample.csv"
BASE_COLUMNS = ["rank", "model", "dataset", "norm", "eps", "n_examples", "clean_acc", "robust_acc"]
STATS_COLUMNS = ["clean_acc_ci_low", "clean_acc_ci_high", "robust_acc_ci_low", "robust_acc_ci_high", "p_vs_next",
                 "tied_with_next"]
TAIL_COLUMNS = ["seconds", "passes", "flags", "attacks", "run_id"]
# per_sample.csv columns of the corruption / patch / universal rows only (docs/engine.md, "per_sample.csv")
SECTION_COLUMNS = ["corruption", "severity", "location", "area", "patch_side", "train_split", "split", "prediction",
                   "fooled"]
SIGNIFICANCE = 0.05  # neighbours whose McNemar p-value is >= this are "tied_with_next"


@dataclass(frozen=True)
class PlannedJob:
    """One (model, eps) job of a sweep: its id, what the id hashes, and the job at the previous eps."""

    job_id: str
    identity: dict[str, Any]
    model: str
    eps: float
    prev_job_id: str | None


def _percent(count: int, n: int) -> float:
    return round(100.0 * count / n, 2) if n else float("nan")


def attack_columns(labels: list[str]) -> list[str]:
    return [f"acc_{label}" for label in labels]


def suite_string(sweep: Sweep) -> str:
    """``label=implementation`` pairs, in suite order: which code produced each number."""
    return ";".join(f"{a.label}={a.config().get('implementation', 'unknown')}" for a in sweep.attacks)


def build_leaderboard(store: ResultStore, sweep: Sweep, jobs: list[PlannedJob], run_id: str,
                      flags: dict[tuple[str, float], str] | None = None) -> pd.DataFrame:
    """One row per (dataset, model, norm, eps), ranked by robust accuracy within (dataset, norm, eps).

    ``flags`` maps (model, eps) to the row's ``flags`` cell (from :mod:`robustkit.checks`). Every accuracy
    gets a 95% Clopper-Pearson interval; consecutive ranks of a group get an exact McNemar p-value on the
    per-sample robust verdicts (``p_vs_next``) and ``tied_with_next`` when it is not significant at 5%.
    """
    labels = sweep.labels
    rows = []
    robust_vectors: dict[str, Any] = {}
    for job in jobs:
        samples = store.samples(job.job_id)
        n = len(samples)
        bits = samples["robust_after"].tolist()
        robust_vectors[job.job_id] = samples["robust"].to_numpy(dtype=bool)
        row: dict[str, Any] = {
            "model": job.model, "dataset": sweep.dataset.name, "norm": sweep.norm, "eps": float(job.eps),
            "n_examples": n,
            "clean_acc": _percent(int(samples["clean_correct"].sum()), n),
            "robust_acc": _percent(int(samples["robust"].sum()), n),
            "_robust_count": int(samples["robust"].sum()),
        }
        for j, col in enumerate(attack_columns(labels)):
            row[col] = _percent(sum(b[j] == "1" for b in bits), n)
        row["clean_acc_ci_low"], row["clean_acc_ci_high"] = clopper_pearson_percent(
            int(samples["clean_correct"].sum()), n)
        row["robust_acc_ci_low"], row["robust_acc_ci_high"] = clopper_pearson_percent(
            int(samples["robust"].sum()), n)
        row["_job_id"] = job.job_id
        row["seconds"] = round(store.job_seconds(job.job_id), 2)
        passes = store.job_passes(job.job_id)  # forward + backward model passes per example (machine-independent)
        row["passes"] = round(passes / n, 1) if passes is not None and n else float("nan")
        row["flags"] = (flags or {}).get((job.model, float(job.eps)), "")
        row["attacks"] = suite_string(sweep)
        row["run_id"] = run_id
        rows.append(row)
    board = pd.DataFrame(rows)
    if board.empty:
        return pd.DataFrame(columns=BASE_COLUMNS + attack_columns(labels) + STATS_COLUMNS + TAIL_COLUMNS)
    board["_fraction"] = board["_robust_count"] / board["n_examples"]
    board["rank"] = (board.groupby(["dataset", "norm", "eps"])["_fraction"]
                     .rank(method="min", ascending=False).astype(int))
    board = board.sort_values(["dataset", "norm", "eps", "rank", "model"], kind="mergesort").reset_index(drop=True)
    _compare_neighbours(board, robust_vectors)
    return board[BASE_COLUMNS + attack_columns(labels) + STATS_COLUMNS + TAIL_COLUMNS]


def _compare_neighbours(board: pd.DataFrame, robust_vectors: dict[str, Any]) -> None:
    """``p_vs_next`` / ``tied_with_next``: exact McNemar test of each row against the next rank of its group
    (same dataset, norm and eps, hence the same samples); empty on a group's last row."""
    p_values: list[float] = [float("nan")] * len(board)
    tied: list[float] = [float("nan")] * len(board)  # 1.0 / 0.0 / NaN: floats survive a CSV round trip
    keys = list(zip(board["dataset"], board["norm"], board["eps"]))
    for i in range(len(board) - 1):
        if keys[i] != keys[i + 1]:
            continue
        a, b = robust_vectors[board.at[i, "_job_id"]], robust_vectors[board.at[i + 1, "_job_id"]]
        if a.shape != b.shape:
            continue
        p = mcnemar_exact(a, b).p_value
        p_values[i] = round(p, 4)
        tied[i] = float(p >= SIGNIFICANCE)
    board["p_vs_next"] = p_values
    board["tied_with_next"] = tied


def add_defense_rows(board: pd.DataFrame, defenses: dict[str, str],
                     certified: dict[str, tuple[list[dict[str, Any]], float]]) -> pd.DataFrame:
    """Add the ``defense`` and ``evaluation`` columns (after ``model``) and the certified-accuracy rows.

    ``defenses``: model name -> its defense's description ("" for a plain model). ``certified``: model name
    -> (rows of :func:`robustkit.defenses.sweep.certify_cached`, seconds). Attack rows are ``empirical``;
    each certified row is an L2 radius (in ``eps``) whose ``robust_acc`` is the certified accuracy (a lower
    bound with probability >= 1 - alpha per example) and whose ``clean_acc`` is the smoothed classifier's
    accuracy (certified at radius 0); its attack columns are empty. Certified rows are ranked among
    themselves per (dataset, norm, radius), after the empirical rows in one table.
    """
    if board.empty:
        return board
    board = board.copy()
    at = list(board.columns).index("model") + 1
    board.insert(at, "evaluation", "empirical")
    board.insert(at, "defense", board["model"].map(lambda m: defenses.get(m, "")))
    rows = []
    dataset = board["dataset"].iloc[0]
    for model, (cert_rows, seconds) in certified.items():
        at_zero = next((r for r in cert_rows if float(r["radius"]) == 0.0), None)
        clean = at_zero["certified_acc"] if at_zero else float("nan")
        clean_ci = (clopper_pearson_percent(int(at_zero["certified_count"]), int(at_zero["n_examples"]))
                    if at_zero else (float("nan"), float("nan")))
        for r in cert_rows:
            n = int(r["n_examples"])
            robust_ci = clopper_pearson_percent(int(r["certified_count"]), n)
            rows.append({"model": model, "defense": defenses.get(model, ""), "evaluation": "certified",
                         "dataset": dataset, "norm": r.get("norm", "L2"), "eps": float(r["radius"]),
                         "n_examples": n, "clean_acc": clean, "robust_acc": r["certified_acc"],
                         "clean_acc_ci_low": clean_ci[0], "clean_acc_ci_high": clean_ci[1],
                         "robust_acc_ci_low": robust_ci[0], "robust_acc_ci_high": robust_ci[1],
                         "_fraction": r["certified_count"] / n if n else 0.0,
                         "seconds": round(seconds, 2),
                         "passes": float("nan"),
                         "flags": "",
                         # The certification settings are the "attack parameters" of a certified row.
                         "attacks": f"certify=smoothing(sigma={r.get('sigma')}) n0={r.get('n0')} n={r.get('n')} "
                                    f"alpha={r.get('alpha')} abstained={r['abstained']}",
                         "run_id": board["run_id"].iloc[0]})
    if not rows:
        return board
    cert = pd.DataFrame(rows)
    cert["rank"] = cert.groupby(["dataset", "norm", "eps"])["_fraction"].rank(method="min", ascending=False).astype(int)
    cert = cert.sort_values(["dataset", "norm", "eps", "rank", "model"], kind="mergesort")
    cert = cert.reindex(columns=board.columns)
    return pd.concat([board, cert], ignore_index=True)


def build_per_sample(store: ResultStore, sweep: Sweep, jobs: list[PlannedJob]) -> pd.DataFrame:
    """Every sample's verdict at every (model, eps): the data the leaderboard is computed from."""
    labels = sweep.labels
    frames = []
    for job in jobs:
        s = store.samples(job.job_id)
        bits = s["robust_after"].tolist()
        frame = pd.DataFrame({
            "model": job.model, "dataset": sweep.dataset.name, "threat_model": "lp", "norm": sweep.norm,
            "eps": float(job.eps), "index": s["idx"].astype("int64"), "label": s["label"].astype("int64"),
            "clean_pred": s["clean_pred"].astype("int64"), "clean_correct": s["clean_correct"].astype("int64"),
        })
        for j, label in enumerate(labels):
            frame[f"robust_after_{label}"] = [int(b[j] == "1") for b in bits]
        frame["robust"] = s["robust"].astype("int64")
        frame["attacked"] = s["attacked"].astype("int64")
        frame["broken_by"] = s["broken_by"].fillna("")
        frame["broken_at_eps"] = s["broken_at_eps"].astype("float64")
        frame["adv_pred"] = s["adv_pred"].astype("Int64")
        frame["adv_norm"] = s["adv_norm"].astype("float64")
        frame["job_id"] = job.job_id
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def format_eps(eps: float) -> str:
    """Short decimals as they are (0.1, 0.3); 0.0313725... → '8/255' where that is what it is."""
    if round(eps, 4) == eps:
        return f"{eps:g}"
    k = eps * 255
    if abs(k - round(k)) < 1e-9 and round(k) >= 1:
        return f"{int(round(k))}/255"
    return f"{eps:.4g}"


def md_cell(value: object) -> str:
    """A value as one markdown table cell: ``|`` and backslashes escaped, line breaks as spaces, so that a
    model name or attack label like ``a|b`` or ``x\ny`` cannot add a column or end the row."""
    text = str(value).replace("\\", "\\\\").replace("|", "\\|")
    return " ".join(text.splitlines())


def to_markdown(board: pd.DataFrame) -> str:
    """The leaderboard as a markdown table (suite and run id below it, as they are the same on every row)."""
    def has_text(c: str) -> bool:
        return bool(board[c].fillna("").astype(str).str.len().any())

    # The CSV keeps every column; the printed table drops the ones that say nothing in this run (no flag
    # fired, no defended model, no certified row) so that the common case stays readable in a terminal.
    hidden = {"attacks", "run_id", "clean_acc_ci_low", "clean_acc_ci_high"}
    if "flags" in board.columns and not has_text("flags"):
        hidden.add("flags")
    if "defense" in board.columns and not has_text("defense"):
        hidden.add("defense")
    if "evaluation" in board.columns and board["evaluation"].fillna("empirical").eq("empirical").all():
        hidden.add("evaluation")
    shown = [c for c in board.columns if c not in hidden]
    lines = ["| " + " | ".join(md_cell(c) for c in shown) + " |",
             "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(board[c]) else "---" for c in shown) + "|"]
    for _, row in board.iterrows():
        cells = []
        for c in shown:
            v = row[c]
            if c == "eps":
                cells.append(format_eps(float(v)))
            elif c == "tied_with_next" and isinstance(v, float):
                cells.append("" if v != v else ("yes" if v else "no"))
            elif c == "p_vs_next" and isinstance(v, float):
                cells.append("" if v != v else f"{v:.4f}")
            elif isinstance(v, float):
                cells.append("" if v != v else f"{v:.2f}")  # NaN: no such number (attack cells of certified rows)
            else:
                cells.append(md_cell(v))
        lines.append("| " + " | ".join(cells) + " |")
    if len(board):
        lines.append("")
        lines.append(f"attacks: {md_cell(board['attacks'].iloc[0])} · run_id: {md_cell(board['run_id'].iloc[0])}")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, board: pd.DataFrame, per_sample: pd.DataFrame) -> None:
    """leaderboard.csv, leaderboard.md and per_sample.csv in ``out`` (each written whole, then renamed:
    :mod:`robustkit.outputs`)."""
    out = output_dir(out)
    write_text(out / LEADERBOARD_CSV, board.to_csv(index=False))
    write_text(out / LEADERBOARD_MD, to_markdown(board))
    write_text(out / PER_SAMPLE_CSV, per_sample.to_csv(index=False))
