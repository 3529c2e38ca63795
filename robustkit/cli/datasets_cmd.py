"""``robustkit datasets list``: every dataset a sweep can name, with the options its loader takes.

A sweep's ``dataset: {name: cifar10, root: data/cifar10, split: test, n_examples: 1000}`` passes everything
but ``name``, ``root`` and ``n_examples`` to the loader as options; this list shows them with their defaults
(the loader's signature), so nobody has to read the source to find ``corruption`` or ``severity``.
"""
from __future__ import annotations

import inspect

import click

from robustkit.data import DATASETS
from robustkit.data.catalog import canonical_name

from .listing import list_command

COLUMNS = ("name", "aliases", "root", "options", "description")
_NOT_OPTIONS = ("root", "n_examples")


def _option(param: inspect.Parameter) -> str:
    if param.default is inspect.Parameter.empty:
        return f"{param.name} (required)"
    return f"{param.name}={param.default!r}"


def dataset_rows() -> list[dict[str, str]]:
    """One row per dataset loader: canonical name, aliases, whether it reads a folder, options, first doc line."""
    by_name: dict[str, dict[str, object]] = {}
    for key, loader in DATASETS.items():
        name = canonical_name(key, loader)
        entry = by_name.setdefault(name, {"loader": loader, "aliases": []})
        if key != name:
            entry["aliases"].append(key)  # type: ignore[union-attr]
    rows = []
    for name, entry in sorted(by_name.items()):
        params = inspect.signature(entry["loader"]).parameters  # type: ignore[arg-type]
        doc = (inspect.getdoc(entry["loader"]) or "").split("\n\n")[0].replace("\n", " ").strip()
        rows.append({"name": name, "aliases": ", ".join(entry["aliases"]),  # type: ignore[arg-type]
                     "root": "yes" if "root" in params else "no",
                     "options": ", ".join(_option(p) for p in params.values() if p.name not in _NOT_OPTIONS
                                          and p.kind is not inspect.Parameter.VAR_KEYWORD),
                     "description": doc})
    return rows


@click.group("datasets")
def datasets() -> None:
    """The datasets a sweep can use."""


list_command(datasets, dataset_rows, COLUMNS,
             "List every dataset with its aliases, whether it needs a root folder, its options and defaults.")
