"""``robustkit zoo list`` and ``robustkit zoo show``: what models there are and whether their weights are here."""
from __future__ import annotations

from pathlib import Path

import click
import yaml


def _acc(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def _clip(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


@click.group()
def zoo() -> None:
    """The model zoo: built-in cards, the digits quickstart zoo and your own card folders."""


@zoo.command("list")
@click.option("--zoo", "zoo_dirs", multiple=True, type=click.Path(path_type=Path),
              help="Also list the model cards (*.yaml, *.json) in this folder; repeatable.")
@click.option("--weights-dir", type=click.Path(path_type=Path), default=None, envvar="ROBUSTKIT_WEIGHTS_DIR",
              help="Folder holding checkpoint files named as in the cards' checkpoint.file (env ROBUSTKIT_WEIGHTS_DIR).")
def list_cmd(zoo_dirs: tuple[Path, ...], weights_dir: Path | None) -> None:
    """Table of zoo entries: name, architecture, dataset, training / threat model, reported clean accuracy
    and whether the checkpoint is available here. A card of a --zoo folder named like a built-in (or digits)
    model replaces it everywhere and is marked "(shadows built-in NAME)"."""
    from robustkit.zoo import list_entries

    entries = list_entries(zoo_dirs, weights_dir=weights_dir)
    rows = [[e.card.name + (f" (shadows {e.shadows})" if e.shadows else ""), e.card.arch, e.card.dataset or "-", _clip(e.card.training or "-"), e.card.threat_model or "-",
             _acc(e.card.reported_clean_acc), e.available] for e in entries]
    click.echo(_table(rows, ["name", "arch", "dataset", "training", "threat model", "clean acc", "checkpoint"]))


@zoo.command("show")
@click.argument("name")
@click.option("--zoo", "zoo_dirs", multiple=True, type=click.Path(path_type=Path),
              help="Also search the model cards in this folder; repeatable.")
def show_cmd(name: str, zoo_dirs: tuple[Path, ...]) -> None:
    """Print the model card NAME (a zoo name or a card file) as YAML."""
    from robustkit.zoo import resolve_card

    card = resolve_card(name, zoo_dirs=zoo_dirs)
    click.echo(yaml.safe_dump(card.to_dict(), sort_keys=False).rstrip())
