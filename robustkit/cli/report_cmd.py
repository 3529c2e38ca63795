"""``robustkit report RUN_DIR``: print a run's provenance, leaderboard and check explanations (docs/checks.md)."""
from __future__ import annotations

from pathlib import Path

import click

from robustkit.checks.report import report_for_folder


@click.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--run-id", help="Which run of the folder (default: the run of its leaderboard.csv).")
def report(run_dir: Path, run_id: str | None) -> None:
    """Print the report of the evaluation in RUN_DIR (the output folder of robustkit eval)."""
    click.echo(report_for_folder(run_dir, run_id), nl=False)
