"""``robustkit compare RUN_A RUN_B [RUN_C ...]``: paired McNemar tests between runs on the same samples.

Every later run is compared with RUN_A at each (model, eps) they share (robustkit.report.compare). Runs on
different data or under a different threat model are refused in one line (exit status 2).
"""
from __future__ import annotations

from pathlib import Path

import click

from robustkit.report.compare import load_and_compare, to_markdown


@click.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["markdown", "csv"]), default="markdown", show_default=True,
              help="Markdown table for reading, CSV for scripts.")
def compare(runs: tuple[Path, ...], fmt: str) -> None:
    """Compare the runs in RUNS (output folders of robustkit eval) with the first one: did robust accuracy
    change, or is it noise?"""
    folders, table = load_and_compare(runs)
    click.echo(table.to_csv(index=False) if fmt == "csv" else to_markdown(folders, table), nl=False)
