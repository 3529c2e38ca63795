"""``robustkit export RUN_DIR --format robustbench``: RobustBench-style model_info JSON files of a run."""
from __future__ import annotations

from pathlib import Path

import click

from robustkit.report.export import FORMATS, export_robustbench
from robustkit.report.run_folder import load_run
from robustkit.threat import parse_eps


@click.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="robustbench", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for <dataset>/<norm>/<model>.json (default: RUN_DIR/robustbench).")
@click.option("--eps", help="The eps the files are for (default: the run's largest), e.g. 0.3 or 8/255.")
def export(run_dir: Path, fmt: str, out: Path | None, eps: str | None) -> None:
    """Write one model_info JSON per model of the run in RUN_DIR, and print their paths."""
    written = export_robustbench(load_run(run_dir), out, None if eps is None else parse_eps(eps, "--eps"))
    for path in written:
        click.echo(str(path))
