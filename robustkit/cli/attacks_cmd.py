"""``robustkit attacks list``: every attack a sweep can name, with what it is and who implemented it.

Researchers pick attacks by threat model (norm), access (white-box, score-based, decision-based, transfer,
minimum-norm) and targeted support, and must be able to say which implementation produced a number; the
table shows exactly the class attributes the engine and the leaderboard use. It lists robustkit's registry
(built-ins, aliases and entry-point plugins) and every ``torchattacks:<Class>`` from the wrapper's table.
"""
from __future__ import annotations

import csv
import io
from typing import Any

import click

COLUMNS = ("name", "kind", "norms", "targeted", "implementation", "notes")


def _row(name: str, cls: Any, notes: str) -> dict[str, str]:
    return {
        "name": name,
        "kind": str(getattr(cls, "kind", "?")),
        "norms": "/".join(getattr(cls, "norms", ())) or "?",
        "targeted": "yes" if getattr(cls, "supports_targeted", False) else "no",
        "implementation": str(getattr(cls, "implementation", "?")),
        "notes": notes,
    }


def attack_rows() -> list[dict[str, str]]:
    """One row per attack: registered ones (aliases folded into their row), then ``torchattacks:<Class>``."""
    from robustkit.attacks import ATTACKS, get_attack_class
    from robustkit.attacks.torchattacks_wrapper import torchattacks_attack_names

    by_class: dict[int, tuple[str, Any, list[str]]] = {}
    for key, cls in ATTACKS.items():
        entry = by_class.setdefault(id(cls), (str(getattr(cls, "name", "") or key).lower(), cls, []))
        if key != entry[0]:
            entry[2].append(key)
    rows = [_row(name, cls, f"aliases: {', '.join(aliases)}" if aliases else "")
            for name, cls, aliases in sorted(by_class.values(), key=lambda e: e[0])]
    for name in torchattacks_attack_names():
        cls = get_attack_class(name)
        spec = cls.spec
        notes = [] if spec.bounded else ["unbounded: examples over eps count as robust"]
        if spec.note:
            notes.append(spec.note)
        rows.append(_row(cls.name, cls, "; ".join(notes)))
    return rows


def format_table(rows: list[dict[str, str]]) -> str:
    """Plain left-aligned columns separated by two spaces, with a header and a rule."""
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS).rstrip(),
             "  ".join("-" * widths[c] for c in COLUMNS)]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS).rstrip() for r in rows]
    return "\n".join(lines)


def format_csv(rows: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().rstrip("\n")


@click.group("attacks")
def attacks() -> None:
    """The attacks a sweep can use."""


@attacks.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "csv"]), default="table", show_default=True,
              help="Aligned table for reading, CSV for scripts.")
def list_attacks(fmt: str) -> None:
    """List every attack with its kind, norms, targeted support and implementation."""
    rows = attack_rows()
    click.echo(format_csv(rows) if fmt == "csv" else format_table(rows))
