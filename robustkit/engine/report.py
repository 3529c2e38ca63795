"""The run report (``report.md`` in the output folder, and ``robustkit report RUN_DIR``).

One markdown document: the provenance of the run (versions, device, seed, data and checkpoint hashes, the
full attack configs), the leaderboard, and for every model each fired flag with its explanation, followed
by the checks that passed or did not apply -- so a reader of a published number sees what was verified.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from robustkit.errors import RobustkitError
from robustkit.outputs import write_text
from robustkit.provenance import REPORTED_ENVIRONMENT

from .leaderboard import LEADERBOARD_CSV, LEADERBOARD_MD, format_eps
from .store import DB_NAME, ResultStore

REPORT_MD = "report.md"


THREAT_SECTIONS_MD = "threat_models.md"


def _eps_text(eps: Any) -> str:
    return "all eps" if eps is None or (isinstance(eps, float) and eps != eps) else f"eps {format_eps(float(eps))}"


def _provenance_lines(record: dict[str, Any]) -> list[str]:
    prov = record.get("provenance") or {}
    env = prov.get("environment", {})
    lines = ["## Provenance", "", f"* run id: `{record['run_id']}` (status {record['status']}, "
             f"attempts {record['attempts']})"]
    for key in REPORTED_ENVIRONMENT:
        if key in env:
            lines.append(f"* {key}: {env[key]}")
    if prov:
        data = prov.get("dataset", {})
        lines.append(f"* seed: {prov.get('seed')}")
        lines.append(f"* checks: {prov.get('checks', 'cheap')}")
        ranks = (prov.get("distributed") or {}).get("devices") or []
        if len(ranks) > 1:
            where = ", ".join(f"rank {r.get('rank')} {r.get('device')}@{r.get('host')}" for r in ranks)
            lines.append(f"* distributed: world size {len(ranks)} ({where})")
        lines.append(f"* dataset: {data.get('name')}, n = {data.get('n_examples')}, content sha256 "
                     f"`{data.get('content_hash')}`")
        tm = prov.get("threat_model", {})
        lines.append(f"* threat model: {tm.get('norm')}, eps {tm.get('eps')}" if tm.get("eps")
                     else "* threat model: no Lp entry (only the sections below)")
        for m in prov.get("models", []):
            lines.append(f"* model `{m['name']}` ({m.get('class')}): checkpoint sha256 "
                         f"`{m.get('checkpoint_sha256') or 'none (not loaded from a file)'}`, tensors sha256 "
                         f"`{m.get('tensors_sha256')}`")
        lines += ["", "Attacks (full configs, in cascade order):", "", "```json",
                  json.dumps(prov.get("attacks", []), indent=1, sort_keys=True), "```"]
    else:
        lines.append("* (no provenance recorded: the run was made by an older robustkit)")
    return lines


def _check_lines(checks: pd.DataFrame) -> list[str]:
    lines = ["## Checks", ""]
    if checks.empty:
        return lines + ["No checks were run (`--checks off`)."]
    lines.append("Flags and what they mean are documented in docs/checks.md.")
    for model, part in checks.groupby("model", sort=False):
        lines += ["", f"### {model}", ""]
        fired = part[(part["fired"] == 1) & (part["applicable"] == 1)]
        if fired.empty:
            lines.append("No flags.")
        for r in fired.itertuples():
            where = json.loads(r.details or "{}").get("threat_model")  # a section's check: its message says where
            lines.append(f"* **{r.name}** ({where + ' section' if where else _eps_text(r.eps)}): {r.message}")
        passed = part[(part["fired"] == 0) & (part["applicable"] == 1)]
        skipped = part[part["applicable"] == 0]
        if len(passed):
            names = sorted(set(passed["name"]) - set(fired["name"]))
            lines.append(f"* passed: {', '.join(names)}")
        if len(skipped):
            why = {r.name: r.message for r in skipped.itertuples()}
            lines.append("* not applicable: " + "; ".join(f"{k} ({v})" for k, v in sorted(why.items())))
    return lines


def render_report(record: dict[str, Any], board_md: str | None, checks: pd.DataFrame) -> str:
    """The report as markdown."""
    lines = [f"# robustkit run report `{record['run_id']}`", ""]
    lines += _provenance_lines(record)
    lines += ["", "## Leaderboard", ""]
    lines.append(board_md.rstrip() if board_md else "(no leaderboard.md in the folder)")
    lines += [""] + _check_lines(checks)
    return "\n".join(lines) + "\n"


def folder_run(run_dir: Path, run_id: str | None = None) -> tuple[dict[str, Any], pd.DataFrame]:
    """The run record (config, provenance) and stored check results of the run in ``run_dir``: the run of its
    leaderboard.csv unless ``run_id`` says otherwise, else the latest run of its results store."""
    if not (run_dir / DB_NAME).is_file():
        raise RobustkitError(f"{run_dir}: no {DB_NAME} here; expected the output folder of robustkit eval")
    if run_id is None and (run_dir / LEADERBOARD_CSV).is_file():
        try:
            ids = pd.read_csv(run_dir / LEADERBOARD_CSV, usecols=["run_id"], dtype=str)["run_id"].dropna().unique()
        except (ValueError, OSError, pd.errors.ParserError):  # an edited CSV: fall back to the latest run
            ids = []
        run_id = str(ids[0]) if len(ids) else None
    with ResultStore.open_read_only(run_dir) as store:  # never writes: works on read-only media
        record = store.run_record(run_id)
        if record is None:
            raise RobustkitError(f"{run_dir / DB_NAME}: no run {run_id!r} recorded" if run_id else
                                 f"{run_dir / DB_NAME}: no run recorded")
        mode = (record.get("provenance") or {}).get("checks")
        checks = store.checks(record["run_id"], mode=mode)
    return record, checks


NO_LP = "No Lp threat model in this sweep: its results are the threat-model sections below.\n"


def report_for_folder(run_dir: Path | str, run_id: str | None = None) -> str:
    """The report of the run in ``run_dir`` (the run of its leaderboard.csv, else the latest run)."""
    run_dir = Path(run_dir)
    record, checks = folder_run(run_dir, run_id)
    md = (run_dir / LEADERBOARD_MD).read_text(encoding="utf-8") if (run_dir / LEADERBOARD_MD).is_file() else None
    if md is not None and len(md.strip().splitlines()) <= 2:  # the header alone: the sweep has no Lp entry
        md = NO_LP
    sections = run_dir / THREAT_SECTIONS_MD  # corruption / patch / universal sections (robustkit.engine.beyond_lp_tables)
    if md is not None and sections.is_file():
        md = md.rstrip() + "\n\n" + sections.read_text(encoding="utf-8")
    return render_report(record, md, checks)


def write_report(run_dir: Path) -> Path:
    """Write ``report.md`` next to the leaderboard (whole, then renamed)."""
    return write_text(Path(run_dir) / REPORT_MD, report_for_folder(run_dir))
