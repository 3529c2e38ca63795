"""Subgroup labels of a dataset: one integer group id per example, read from an array or column file.

A dataset spec may say ``subgroups: groups.npy`` (a 1-D integer ``.npy`` array), ``subgroups: groups.csv``
(a CSV with one column, or ``{file: groups.csv, column: thickness}`` to pick one) or a ``.txt`` file with one
integer per line. Ids are per example in the dataset's order, before ``n_examples`` (the first N are used).
They feed the subgroup metrics (:mod:`robustkit.subgroups`) and never change a computed verdict.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from robustkit.errors import ConfigError, DataError, check_keys

SUFFIXES = (".npy", ".csv", ".txt")


def _as_path(value: Any, base_dir: Any) -> Path:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ConfigError(f"dataset subgroups.file: expected a path to a .npy, .csv or .txt file, got {value!r}")
    path = Path(os.path.expanduser(os.fspath(value)))
    if not path.is_absolute():
        path = (Path(base_dir) if base_dir is not None else Path.cwd()) / path
    return Path(os.path.abspath(path))


def parse_subgroups(value: Any, base_dir: Any) -> dict[str, Any]:
    """The normalized spec ``{file: <absolute path>, column: <name or None>}`` of a ``subgroups`` entry."""
    if isinstance(value, Mapping):
        check_keys(value, ("file", "column"), "dataset subgroups: ")
        spec = {"file": _as_path(value.get("file"), base_dir), "column": value.get("column")}
    else:
        spec = {"file": _as_path(value, base_dir), "column": None}
    if spec["column"] is not None and not isinstance(spec["column"], str):
        raise ConfigError(f"dataset subgroups.column: expected a column name, got {spec['column']!r}")
    if spec["file"].suffix.lower() not in SUFFIXES:
        raise ConfigError(f"dataset subgroups.file: expected a .npy, .csv or .txt file, got {spec['file']}")
    if not spec["file"].is_file():
        raise ConfigError(f"dataset subgroups.file: not found: {spec['file']}")
    return {"file": str(spec["file"]), "column": spec["column"]}


def read_subgroups(spec: dict[str, Any], n_examples: int) -> np.ndarray:
    """Group ids (int64) of the first ``n_examples`` examples; DataError naming the file otherwise."""
    path = Path(spec["file"])
    column = spec.get("column")
    try:
        if path.suffix.lower() == ".npy":
            values = np.load(path, allow_pickle=False)
        elif path.suffix.lower() == ".txt":
            values = np.loadtxt(path, ndmin=1)
        else:
            frame = pd.read_csv(path)
            if column is None and frame.shape[1] != 1:
                raise DataError(f"{path}: {frame.shape[1]} columns; say which holds the subgroups "
                                f"(subgroups: {{file: ..., column: <one of {', '.join(map(str, frame.columns))}>}})")
            if column is not None and column not in frame.columns:
                raise DataError(f"{path}: no column {column!r}; columns: {', '.join(map(str, frame.columns))}")
            values = frame[column if column is not None else frame.columns[0]].to_numpy()
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read subgroup labels ({exc})") from None
    values = np.asarray(values)
    if values.ndim != 1:
        raise DataError(f"{path}: expected one subgroup id per example (a 1-D array), got shape {values.shape}")
    if values.shape[0] < n_examples:
        raise DataError(f"{path}: {values.shape[0]} subgroup ids for {n_examples} examples")
    values = values[:n_examples]
    if not np.issubdtype(values.dtype, np.number) or not np.all(np.isfinite(values)) \
            or not np.all(values == np.round(values)):
        raise DataError(f"{path}: subgroup ids must be integers")
    return values.astype(np.int64)
