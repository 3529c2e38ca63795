"""Checks for dataset option values, so every loader reports a bad value the same way.

Messages name the dataset and the option (as written in a sweep config) and say what was expected.
"""
from __future__ import annotations

from typing import Any, Sequence

from robustkit.errors import ConfigError, did_you_mean, short_repr


def choice(dataset: str, option: str, value: Any, allowed: Sequence[str]) -> str:
    """``value`` must be one of ``allowed`` (compared as given); returns it."""
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"dataset {short_repr(dataset)} option {option}: expected one of {', '.join(allowed)}, "
                          f"got {short_repr(value)}{did_you_mean(str(value), allowed)}")
    return value


def positive_int(dataset: str, option: str, value: Any, *, maximum: int | None = None) -> int:
    """``value`` must be an int >= 1 (and <= maximum); bools and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or (maximum and value > maximum):
        bound = f" in 1..{maximum}" if maximum else " >= 1"
        raise ConfigError(f"dataset {short_repr(dataset)} option {option}: expected an integer{bound}, got {short_repr(value)}")
    return value


def size_pair(dataset: str, option: str, value: Any) -> int | tuple[int, int] | None:
    """None, an int, or a [height, width] pair of ints >= 1 (YAML lists become tuples)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
        return (int(value[0]), int(value[1]))
    raise ConfigError(f"dataset {short_repr(dataset)} option {option}: expected an int or [height, width], got {short_repr(value)}")


def string_list(dataset: str, option: str, value: Any) -> list[str] | None:
    """None or a list of strings (e.g. class names)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"dataset {short_repr(dataset)} option {option}: expected a list of strings, got {short_repr(value)}")


def optional_str(dataset: str, option: str, value: Any) -> str | None:
    """None or a non-empty string."""
    if value is None or (isinstance(value, str) and value):
        return value
    raise ConfigError(f"dataset {short_repr(dataset)} option {option}: expected a string, got {short_repr(value)}")
