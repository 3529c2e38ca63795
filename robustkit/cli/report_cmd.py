"""``robustkit report RUN_DIR``: print a run's provenance, leaderboard and check explanations (docs/checks.md);
with ``--html``, (re)build its ``report.html`` and ``plots/`` from the output folder alone (docs/report.md)."""
from __future__ import annotations

from pathlib import Path

import click

from robustkit.engine.report import report_for_folder
from robustkit.report.html import write_html
from robustkit.report.run_folder import load_run


@click.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--run-id", help="Which run of the folder (default: the run of its leaderboard.csv).")
@click.option("--html", "html", is_flag=True,
              help="Rebuild RUN_DIR/report.html and RUN_DIR/plots/ from the stored results instead of printing.")
def report(run_dir: Path, run_id: str | None, html: bool) -> None:
    """Print the report of the evaluation in RUN_DIR (the output folder of robustkit eval)."""
    if html:
        click.echo(str(write_html(load_run(run_dir, run_id))))
        return
    click.echo(report_for_folder(run_dir, run_id), nl=False)
