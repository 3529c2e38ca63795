"""The zoo index: built-in cards, user card folders (``--zoo DIR``) and the digits quickstart zoo.

Names are looked up case-insensitively. A user folder may shadow a built-in or digits name (e.g. to pin a
local copy of a checkpoint); ``robustkit zoo list`` marks such a card ``(shadows built-in ...)``, so that the
replacement is never silent. But the same name twice among user folders is an error: which one would be evaluated
would otherwise depend on argument order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable

from robustkit.errors import ConfigError, RobustkitError, unknown_name

from .cards import CARD_SUFFIXES, ModelCard, parse_card, read_card_file
from .digits_zoo import DIGITS_MODEL_NAMES, digits_zoo_dir, ensure_digits_zoo, is_complete, placeholder_cards
from .weights import checkpoint_status


def builtin_cards_dir() -> Path:
    """Folder of the model cards shipped with robustkit (package data)."""
    return Path(str(resources.files("robustkit.zoo") / "cards"))


def read_zoo_dir(folder: str | os.PathLike) -> list[ModelCard]:
    """All cards of one folder (non-recursive), sorted by file name; ConfigError if it is not a folder."""
    d = Path(folder).expanduser()
    if not d.is_dir():
        raise ConfigError(f"zoo folder {d}: not found or not a folder")
    cards = [read_card_file(p) for p in sorted(d.iterdir())
             if p.is_file() and p.suffix.lower() in CARD_SUFFIXES and not p.name.startswith(".")]
    seen: dict[str, ModelCard] = {}
    for card in cards:
        if card.name.lower() in seen:
            raise ConfigError(f"zoo name {card.name!r} is defined twice: {seen[card.name.lower()].origin} and {card.origin}")
        seen[card.name.lower()] = card
    return sorted(cards, key=lambda c: c.name.lower())


def collect_cards(zoo_dirs: Iterable[str | os.PathLike] = ()) -> dict[str, ModelCard]:
    """Name (lower case) -> card for the built-in zoo plus ``zoo_dirs`` (user cards shadow built-ins)."""
    cards = {c.name.lower(): c for c in read_zoo_dir(builtin_cards_dir())}
    cards.update({card.name.lower(): card for _, card in _user_cards(zoo_dirs)})
    return cards


def _user_cards(zoo_dirs: Iterable[str | os.PathLike]) -> list[tuple[str | os.PathLike, ModelCard]]:
    """(folder, card) for every card of the user's folders; a name defined twice is a one-line error."""
    seen: dict[str, ModelCard] = {}
    out = []
    for folder in zoo_dirs:
        for card in read_zoo_dir(folder):
            key = card.name.lower()
            if key in seen:
                raise ConfigError(f"zoo name {card.name!r} is defined twice: {seen[key].origin} and {card.origin}")
            seen[key] = card
            out.append((folder, card))
    return out


def find_card(name: str, zoo_dirs: Iterable[str | os.PathLike] = ()) -> ModelCard:
    """The card called ``name``; digits quickstart names train that zoo on first use."""
    zoo_dirs = list(zoo_dirs)
    cards = collect_cards(zoo_dirs)
    key = name.lower()
    if key in cards:
        return cards[key]
    if key in DIGITS_MODEL_NAMES:
        digits = {c.name.lower(): c for c in read_zoo_dir(ensure_digits_zoo())}
        if key in digits:
            return digits[key]
    raise RobustkitError(unknown_name("zoo model", name, [c.name for c in cards.values()] + list(DIGITS_MODEL_NAMES)))


@dataclass(frozen=True)
class ZooEntry:
    """One row of ``robustkit zoo list``: a card and whether its checkpoint is available."""

    card: ModelCard
    available: str
    group: str  # "built-in", "digits", or the user folder
    shadows: str | None = None  # a user card named like a built-in or digits model: which one it replaces


def list_entries(zoo_dirs: Iterable[str | os.PathLike] = (), *, weights_dir: str | os.PathLike | None = None,
                 include_digits: bool = True) -> list[ZooEntry]:
    """Entries of the built-in zoo, the digits quickstart zoo (trained or not) and ``zoo_dirs``, in that order."""
    zoo_dirs = [Path(d).expanduser() for d in zoo_dirs]
    entries = [ZooEntry(c, checkpoint_status(c, weights_dir=weights_dir), "built-in")
               for c in read_zoo_dir(builtin_cards_dir())]
    if include_digits:
        entries += _digits_entries()
    for folder, card in _user_cards(zoo_dirs):
        key = card.name.lower()
        replaced = [e for e in entries if e.card.name.lower() == key and e.group in ("built-in", "digits")]
        entries = [e for e in entries if e not in replaced]
        entries.append(ZooEntry(card, checkpoint_status(card, weights_dir=weights_dir), str(folder),
                                shadows=f"{replaced[0].group} {replaced[0].card.name}" if replaced else None))
    return entries


def _digits_entries() -> list[ZooEntry]:
    folder = digits_zoo_dir()
    if is_complete(folder):
        return [ZooEntry(c, checkpoint_status(c), "digits") for c in read_zoo_dir(folder)]
    return [ZooEntry(parse_card(d, origin="digits quickstart zoo"), "trained on first use", "digits")
            for d in placeholder_cards()]
