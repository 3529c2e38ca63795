"""Errors that reach users as one clear line.

Every problem a user can fix (a bad config value, a missing file, a corrupted checkpoint) is raised as a
:class:`RobustkitError` whose message names the file/field and what was expected. The CLI prints
``error: <message>`` and exits with status 2 instead of showing a traceback.
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable


class RobustkitError(Exception):
    """A user-facing error: its message is one line that says what is wrong and where."""


class ConfigError(RobustkitError):
    """A sweep config or model card has a wrong key, type or value."""


class DataError(RobustkitError):
    """A dataset root, file or layout is missing, wrong or corrupted."""


class CheckpointError(RobustkitError):
    """A checkpoint is missing, unsafe, corrupted or does not fit the architecture."""


class BudgetViolationError(RobustkitError):
    """An attack returned an input outside [0, 1] or outside its perturbation budget.

    This is never turned into a success: an attack that breaks its threat model is a bug to fix.
    """


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean "x"?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def check_keys(data: Iterable[Any], allowed: Iterable[str], prefix: str) -> None:
    """One-line error for the first key of ``data`` not in ``allowed``: "<prefix>unknown key 'x' (did you
    mean ...); allowed: ...". Every config, card and spec parser uses it, so typos read the same everywhere."""
    allowed = tuple(allowed)
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{prefix}unknown key {key!r}{did_you_mean(str(key), allowed)}; "
                              f"allowed: {', '.join(allowed)}")


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> str:
    """One-line message for an unknown registry name, listing what exists."""
    choices = sorted(set(choices))
    return f"unknown {kind} {name!r}{did_you_mean(name, choices)}; known: {', '.join(choices)}"
