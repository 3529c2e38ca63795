"""Shared output of the ``... list`` commands (attacks, defenses, datasets): an aligned table or CSV.

Researchers read the table; scripts read the CSV (``--format csv``). One formatter, so every list looks the
same and a new list command is three lines.
"""
from __future__ import annotations

import csv
import io
from typing import Callable, Sequence

import click

Rows = list[dict[str, str]]


def format_table(rows: Rows, columns: Sequence[str]) -> str:
    """Plain left-aligned columns separated by two spaces, with a header and a rule."""
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns).rstrip(),
             "  ".join("-" * widths[c] for c in columns)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns).rstrip() for r in rows]
    return "\n".join(lines)


def format_csv(rows: Rows, columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().rstrip("\n")


def list_command(group: click.Group, rows: Callable[[], Rows], columns: Sequence[str], help_text: str) -> None:
    """Add ``GROUP list [--format table|csv]`` printing ``rows()``."""

    @group.command("list", help=help_text)
    @click.option("--format", "fmt", type=click.Choice(["table", "csv"]), default="table", show_default=True,
                  help="Aligned table for reading, CSV for scripts.")
    def _list(fmt: str) -> None:
        data = rows()
        click.echo(format_csv(data, columns) if fmt == "csv" else format_table(data, columns))
