"""Reading the small text files users give robustkit (sweep configs, model cards, inline YAML), bounded.

Why one reader: YAML aliases let a few hundred bytes stand for an exponentially large structure (the
"billion laughs" bomb). PyYAML builds it with shared references, so loading is cheap -- but anything that
walks the result (a type check that prints the value, JSON for provenance, hashing) expands it. Every user
file therefore goes through :func:`load_yaml_text` / :func:`read_yaml_file`, which refuse files above
:data:`MAX_FILE_BYTES` and results with more than :data:`MAX_NODES` values once aliases are expanded, with a
one-line :class:`ConfigError` naming the file. ``yaml.safe_load`` only: no tag constructs an object.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from robustkit.errors import ConfigError, value_count_exceeds

MAX_FILE_BYTES = 1 << 20   # 1 MiB: a sweep config or a model card is a few hundred bytes
MAX_NODES = 100_000        # values after expanding aliases; the largest real config has a few hundred


def check_expanded_size(data: Any, source: str, limit: int = MAX_NODES) -> Any:
    """``data`` if it holds at most ``limit`` values when shared sub-structures are counted every time."""
    if value_count_exceeds(data, limit):
        raise ConfigError(f"{source}: more than {limit} values after expanding YAML aliases (&anchor/*alias); "
                          f"write the values out or use fewer aliases")
    return data


def _yaml_error(exc: yaml.YAMLError, source: str) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    line = f" at line {mark.line + 1}" if mark is not None else ""
    problem = str(getattr(exc, "problem", None) or exc).splitlines()[0][:200]
    return ConfigError(f"{source}: not valid YAML{line}: {problem}")


def load_yaml_text(text: str, source: str) -> Any:
    """Parse YAML ``text`` (safe loader), refusing oversized text and alias bombs."""
    if len(text) > MAX_FILE_BYTES:
        raise ConfigError(f"{source}: {len(text)} characters; robustkit reads at most {MAX_FILE_BYTES}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _yaml_error(exc, source) from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None
    return check_expanded_size(data, source)


def read_text_file(path: str | os.PathLike, source: str) -> str:
    """The UTF-8 text of a small user file (at most :data:`MAX_FILE_BYTES`), or a one-line error."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read it ({exc.strerror or exc})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_FILE_BYTES} bytes; not a robustkit config or card")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_yaml_file(path: str | os.PathLike, source: str) -> Any:
    """A small YAML (or, by suffix, JSON) user file, bounded as described above."""
    text = read_text_file(path, source)
    if str(path).lower().endswith(".json"):
        try:
            return check_expanded_size(json.loads(text), source)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{source}: not valid JSON at line {exc.lineno}: {exc.msg}") from None
        except RecursionError:
            raise ConfigError(f"{source}: nested too deeply") from None
    return load_yaml_text(text, source)
