"""Leaderboard and per-sample tables, computed from the stored per-sample rows.

The leaderboard is derived from the store alone (never from in-memory counters), so a resumed run and an
uninterrupted one produce it from the same data the same way. Percentages are computed from integer counts
and rounded to 2 decimals once, at the end; ranks use the exact counts (ties share the rank, method "min").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    from .store import ResultStore
    from .sweep import Sweep

LEADERBOARD_CSV = "leaderboard.csv"
LEADERBOARD_MD = "leaderboard.md"
PER_SAMPLE_CSV = "per_sample.csv"
BASE_COLUMNS = ["rank", "model", "dataset", "norm", "eps", "n_examples", "clean_acc", "robust_acc"]
TAIL_COLUMNS = ["seconds", "flags", "attacks", "run_id"]


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


def suite_string(sweep: "Sweep") -> str:
    """``label=implementation`` pairs, in suite order: which code produced each number."""
    return ";".join(f"{a.label}={a.config().get('implementation', 'unknown')}" for a in sweep.attacks)


def build_leaderboard(store: "ResultStore", sweep: "Sweep", jobs: list[PlannedJob], run_id: str) -> pd.DataFrame:
    """One row per (dataset, model, norm, eps), ranked by robust accuracy within (dataset, norm, eps)."""
    labels = sweep.labels
    rows = []
    for job in jobs:
        samples = store.samples(job.job_id)
        n = len(samples)
        bits = samples["robust_after"].tolist()
        row: dict[str, Any] = {
            "model": job.model, "dataset": sweep.dataset.name, "norm": sweep.norm, "eps": float(job.eps),
            "n_examples": n,
            "clean_acc": _percent(int(samples["clean_correct"].sum()), n),
            "robust_acc": _percent(int(samples["robust"].sum()), n),
            "_robust_count": int(samples["robust"].sum()),
        }
        for j, col in enumerate(attack_columns(labels)):
            row[col] = _percent(sum(b[j] == "1" for b in bits), n)
        row["seconds"] = round(store.job_seconds(job.job_id), 2)
        row["flags"] = ""
        row["attacks"] = suite_string(sweep)
        row["run_id"] = run_id
        rows.append(row)
    board = pd.DataFrame(rows)
    if board.empty:
        return pd.DataFrame(columns=BASE_COLUMNS + attack_columns(labels) + TAIL_COLUMNS)
    board["_fraction"] = board["_robust_count"] / board["n_examples"]
    board["rank"] = (board.groupby(["dataset", "norm", "eps"])["_fraction"]
                     .rank(method="min", ascending=False).astype(int))
    board = board.sort_values(["dataset", "norm", "eps", "rank", "model"], kind="mergesort").reset_index(drop=True)
    return board[BASE_COLUMNS + attack_columns(labels) + TAIL_COLUMNS]


def build_per_sample(store: "ResultStore", sweep: "Sweep", jobs: list[PlannedJob]) -> pd.DataFrame:
    """Every sample's verdict at every (model, eps): the data the leaderboard is computed from."""
    labels = sweep.labels
    frames = []
    for job in jobs:
        s = store.samples(job.job_id)
        bits = s["robust_after"].tolist()
        frame = pd.DataFrame({
            "model": job.model, "dataset": sweep.dataset.name, "norm": sweep.norm, "eps": float(job.eps),
            "index": s["idx"].astype("int64"), "label": s["label"].astype("int64"),
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


def to_markdown(board: pd.DataFrame) -> str:
    """The leaderboard as a markdown table (suite and run id below it, as they are the same on every row)."""
    shown = [c for c in board.columns if c not in ("attacks", "run_id", "flags") or
             (c == "flags" and board[c].astype(str).str.len().any())]
    lines = ["| " + " | ".join(shown) + " |",
             "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(board[c]) else "---" for c in shown) + "|"]
    for _, row in board.iterrows():
        cells = []
        for c in shown:
            v = row[c]
            if c == "eps":
                cells.append(format_eps(float(v)))
            elif isinstance(v, float):
                cells.append(f"{v:.2f}")
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    if len(board):
        lines.append("")
        lines.append(f"attacks: {board['attacks'].iloc[0]} · run_id: {board['run_id'].iloc[0]}")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, board: pd.DataFrame, per_sample: pd.DataFrame) -> None:
    """leaderboard.csv, leaderboard.md and per_sample.csv in ``out`` (written whole, then renamed)."""
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / LEADERBOARD_CSV, board.to_csv(index=False))
    _atomic_write(out / LEADERBOARD_MD, to_markdown(board))
    _atomic_write(out / PER_SAMPLE_CSV, per_sample.to_csv(index=False))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
