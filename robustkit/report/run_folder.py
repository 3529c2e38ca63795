"""A finished run's output folder, read back: the one input of the plots, the HTML report, compare and export.

Everything here comes from files the run wrote (``leaderboard.csv``, ``per_sample.csv``, ``curve.csv``,
``examples/*.npz``) and from its results store (the run record with config and provenance, the check
results), never from in-memory state, so ``robustkit report RUN_DIR --html`` rebuilds exactly what the run
wrote, and ``compare``/``export`` work on any folder, also one copied from another machine.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from robustkit.engine.report import folder_run
from robustkit.engine.curve_fill import CURVE_CSV
from robustkit.engine.leaderboard import LEADERBOARD_CSV, PER_SAMPLE_CSV, SECTION_COLUMNS
from robustkit.errors import RobustkitError

EMPIRICAL = "empirical"
CERTIFIED = "certified"


@dataclass
class RunFolder:
    """The tables and records of one run, as written to its output folder."""

    path: Path
    record: dict[str, Any]            # the results store's runs row: run_id, config, provenance, status, ...
    leaderboard: pd.DataFrame
    per_sample: pd.DataFrame
    checks: pd.DataFrame              # the stored check results of the run's check mode
    curve: pd.DataFrame | None = None
    attack_labels: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return str(self.record["run_id"])

    @property
    def provenance(self) -> dict[str, Any]:
        return self.record.get("provenance") or {}

    @property
    def empirical(self) -> pd.DataFrame:
        """The attack rows of the leaderboard (certified rows of smoothed models excluded)."""
        return self.leaderboard[self.leaderboard["evaluation"] == EMPIRICAL]

    @property
    def certified(self) -> pd.DataFrame:
        return self.leaderboard[self.leaderboard["evaluation"] == CERTIFIED]

    @property
    def models(self) -> list[str]:
        """Model names in the order the sweep listed them (the per-sample table keeps the job order)."""
        return list(dict.fromkeys(self.per_sample["model"].tolist())) or \
            list(dict.fromkeys(self.leaderboard["model"].tolist()))

    @property
    def dataset(self) -> str:
        return str(self.leaderboard["dataset"].iloc[0]) if len(self.leaderboard) else ""

    @property
    def norm(self) -> str:
        return str(self.empirical["norm"].iloc[0]) if len(self.empirical) else ""

    @property
    def dataset_hash(self) -> str | None:
        return (self.provenance.get("dataset") or {}).get("content_hash")

    def model_source(self, model: str) -> dict[str, Any]:
        """The model's entry in the stored sweep config: its resolved ``card`` and the ``spec`` the user wrote
        (YAML sweeps), or the name and class (Python API). Entries are in the sweep's model order."""
        entries = [e for e in (self.record.get("config") or {}).get("models", []) or [] if isinstance(e, dict)]
        for entry in entries:
            spec = entry.get("spec") if isinstance(entry.get("spec"), dict) else {}
            if model in (entry.get("name"), spec.get("name")):
                return entry
        models = self.models
        if len(entries) == len(models) and model in models:
            return entries[models.index(model)]
        return {}

    def model_provenance(self, model: str) -> dict[str, Any]:
        for entry in self.provenance.get("models", []) or []:
            if entry.get("name") == model:
                return entry
        return {}


def _attack_labels(per_sample: pd.DataFrame) -> list[str]:
    prefix = "robust_after_"
    return [c[len(prefix):] for c in per_sample.columns if c.startswith(prefix)]


def load_run(run_dir: Path | str, run_id: str | None = None) -> RunFolder:
    """Read the output folder of ``robustkit eval`` (one-line error when it is not one)."""
    run_dir = Path(run_dir)
    for name in (LEADERBOARD_CSV, PER_SAMPLE_CSV):
        if not (run_dir / name).is_file():
            raise RobustkitError(f"{run_dir}: no {name} here; expected the output folder of a finished robustkit eval")
    record, checks = folder_run(run_dir, run_id)
    board = pd.read_csv(run_dir / LEADERBOARD_CSV)
    if "evaluation" not in board.columns:
        board["evaluation"] = EMPIRICAL
    for column in ("defense", "flags"):  # empty text columns are read back as NaN floats
        board[column] = board[column].astype(object).fillna("").astype(str) if column in board.columns else ""
    per_sample = pd.read_csv(run_dir / PER_SAMPLE_CSV, dtype={"broken_by": str}, keep_default_na=False,
                             na_values={"broken_at_eps": [""], "adv_pred": [""], "adv_norm": [""], "eps": [""]})
    if "threat_model" in per_sample.columns:  # the pictures are of the Lp rows; the other sections have tables
        per_sample = per_sample[per_sample["threat_model"] == "lp"].reset_index(drop=True)
        per_sample = per_sample.drop(columns=[c for c in SECTION_COLUMNS if c in per_sample.columns])
    curve = pd.read_csv(run_dir / CURVE_CSV) if (run_dir / CURVE_CSV).is_file() else None
    return RunFolder(path=run_dir, record=record, leaderboard=board, per_sample=per_sample, checks=checks,
                     curve=curve, attack_labels=_attack_labels(per_sample))


def safe_name(model: str) -> str:
    """A model name as a file or HTML id: letters, digits, '-', '_', '+' and '.' kept, the rest '_'."""
    out = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in model).strip(".") or "model"
    if out != model:  # two names that differ only in replaced characters must not share a file
        out += "-" + hashlib.sha256(model.encode()).hexdigest()[:6]
    return out
