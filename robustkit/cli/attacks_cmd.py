"""``robustkit attacks list``: every attack a sweep can name, with what it is and who implemented it.

Researchers pick attacks by threat model (norm), access (white-box, score-based, decision-based, transfer,
minimum-norm) and targeted support, and must be able to say which implementation produced a number; the
table shows exactly the class attributes the engine and the leaderboard use. It lists robustkit's registry
(built-ins, aliases and entry-point plugins) and every ``torchattacks:<Class>`` from the wrapper's table.
"""
from __future__ import annotations

from typing import Any

import click

from .listing import list_command

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


@click.group("attacks")
def attacks() -> None:
    """The attacks a sweep can use."""


list_command(attacks, attack_rows, COLUMNS,
             "List every attack with its kind, norms, targeted support and implementation.")
