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
            raise ConfigError(f"{prefix}unknown key {short_repr(key)}{did_you_mean(str(key), allowed)}; "
                              f"allowed: {', '.join(allowed)}")


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> str:
    """One-line message for an unknown registry name, listing what exists."""
    choices = sorted(set(choices))
    return f"unknown {kind} {short_repr(name)}{did_you_mean(name, choices)}; known: {', '.join(choices)}"


REPR_LIMIT = 80


def value_count_exceeds(value: Any, limit: int) -> bool:
    """True if ``value`` holds more than ``limit`` values, shared sub-objects counted every time they occur
    (how big it gets when printed or serialized), found without expanding it: stops at ``limit``."""
    stack, seen = [value], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
    return False


def short_repr(value: Any, limit: int = REPR_LIMIT) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages about user values.

    A container with more than 200 values is summarized by type and length before ``repr`` runs, so a
    structure that shares sub-objects exponentially (a YAML alias bomb) is never expanded into a message.
    """
    if isinstance(value, (list, tuple, dict, set, frozenset)) and value_count_exceeds(value, 200):
        return f"<{type(value).__name__} of {len(value)} items>"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a user object whose __repr__ fails
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        return text[: max(0, limit - 20)] + f"... ({len(text)} chars)"
    return text
