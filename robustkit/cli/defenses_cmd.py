"""``robustkit defenses list``: every defense a model entry can name, with its options and what it needs.

A sweep entry ``{name: ..., model: ..., defense: {name: jpeg, quality: 75}}`` takes exactly the options
listed here (each defense's ``defaults``); ``certifiable`` defenses also get certified rows, ``randomized``
ones are attacked with EOT, ``members`` ones take a list of models (docs/defenses.md).
"""
from __future__ import annotations

import inspect
import json

import click
from torch import nn

from robustkit.defenses import DEFENSES
from robustkit.errors import RobustkitError

from .listing import list_command

COLUMNS = ("name", "options", "randomized", "certifiable", "members", "description")


def _doc_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def _randomized(cls: type) -> str:
    """Whether a default instance's forward pass is random: a defense may declare it on a part it builds (the
    noise module of gaussian-noise), so the class alone cannot say."""
    try:
        models = [nn.Identity() for _ in range(cls.min_members)] if cls.takes_members else nn.Identity()
        return "yes" if cls(models).randomized else "no"
    except (RobustkitError, TypeError, ValueError):
        return "?"


def defense_rows() -> list[dict[str, str]]:
    """One row per registered defense (aliases folded into their row)."""
    rows: dict[int, dict[str, str]] = {}
    for key, cls in DEFENSES.items():
        if id(cls) in rows:
            continue
        rows[id(cls)] = {
            "name": str(getattr(cls, "name", "") or key),
            "options": ", ".join(f"{k}={json.dumps(v)}" for k, v in getattr(cls, "defaults", {}).items()),
            "randomized": _randomized(cls),
            "certifiable": "yes" if getattr(cls, "certifiable", False) else "no",
            "members": "yes" if getattr(cls, "takes_members", False) else "no",
            "description": _doc_line(cls),
        }
    return sorted(rows.values(), key=lambda r: r["name"])


@click.group("defenses")
def defenses() -> None:
    """The defenses a model entry can use."""


list_command(defenses, defense_rows, COLUMNS,
             "List every defense with its options (and defaults), randomness, certification and member models.")
