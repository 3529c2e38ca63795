"""Integrity of the results store: SQLite errors as one line, and the checks a stored batch must pass.

Kept apart from :mod:`robustkit.engine.store` (which reads and writes the tables) because these are the
rules of docs/security.md, "The results store is verified when it is read": what counts as a damaged,
tampered or unusable store, and what message the user gets for each.
"""
from __future__ import annotations

import functools
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from robustkit.errors import RobustkitError

if TYPE_CHECKING:  # pragma: no cover
    from .store import StoredBatch

DB_NAME = "results.sqlite"


class StoreError(RobustkitError):
    """The results store cannot be used: unreadable, damaged, tampered with, or on unwritable media."""


def store_error(path: Path, exc: BaseException) -> RobustkitError:
    """One line for any SQLite failure, saying what to do -- and advising ``--fresh`` (which deletes
    results) only when the file itself is damaged, never for a read-only or busy folder."""
    cause = exc.__cause__ if isinstance(exc, pd.errors.DatabaseError) and exc.__cause__ is not None else exc
    text = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]
    low = text.lower()
    if any(k in low for k in ("readonly", "read-only", "unable to open", "permission", "access")):
        return StoreError(f"{path}: cannot write the results store ({text}): the output folder is read-only or "
                          f"not writable; choose another output folder (robustkit report can read this one)")
    if "locked" in low or "busy" in low:
        return StoreError(f"{path}: the results store is locked by another process ({text}); wait for it to "
                          f"finish or choose another output folder")
    if isinstance(cause, sqlite3.IntegrityError):
        return StoreError(f"{path}: the results store is inconsistent ({text}): it was changed outside "
                          f"robustkit; move it away or run with --fresh to start over")
    return StoreError(f"{path}: not a usable robustkit results store ({text}); move it away or run with "
                      f"--fresh to start over")


def one_line_errors(cls: type) -> type:
    """Wrap every public method (and ``__init__``) so that any SQLite error leaves as one :class:`StoreError`
    line naming the file: a corrupt page, a dropped table, an integrity error or read-only media alike."""
    def wrap(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except (sqlite3.Error, pd.errors.DatabaseError) as exc:
                path = getattr(self, "path", None) or (args[0] if args else DB_NAME)
                raise store_error(Path(path), exc) from None
        return wrapper

    for name, value in list(vars(cls).items()):
        if callable(value) and (not name.startswith("_") or name == "__init__") and not isinstance(value, type):
            setattr(cls, name, wrap(value))
    return cls



CASCADE, CORRUPTION = "cascade", "corruption"  # the row rules of an attacked job, and of a corruption job


def _corruption_rows_ok(frame: pd.DataFrame, label: np.ndarray) -> np.ndarray:
    """A corruption row: one bit equal to ``robust`` (the corrupted image classified correctly, whatever the
    clean verdict); a wrong one names the corruption, its severity and a prediction other than the label."""
    bits = frame["robust_after"].astype(str)
    robust = frame["robust"].to_numpy()
    adv = frame["adv_pred"].to_numpy(dtype=float, na_value=np.nan)
    broken = frame["broken_by"].fillna("").astype(str)
    wrong_ok = (~np.isnan(adv)) & (adv != label) & broken.str.startswith("corruption:").to_numpy(dtype=bool) \
        & frame["broken_at_eps"].notna().to_numpy(dtype=bool)
    right_ok = np.isnan(adv) & (broken == "").to_numpy(dtype=bool)
    return (bits.isin(("0", "1")).to_numpy(dtype=bool) & (bits.eq("1").to_numpy(dtype=bool) == (robust == 1))
            & np.where(robust == 1, right_ok, wrong_ok) & (frame["attacked"].to_numpy() == 1))


def _cascade_rows_ok(frame: pd.DataFrame, n_attacks: int, budget: bool) -> np.ndarray:
    """An attacked row: bits well formed and cumulative, ``robust`` the last bit, robust only if clean-correct;
    with ``budget``, a sample broken by an attack has a stored perturbation norm within its budget."""
    bits = frame["robust_after"].astype(str)
    well_formed = bits.str.fullmatch(f"[01]{{{n_attacks}}}").to_numpy(dtype=bool)
    cumulative = ~bits.str.contains("01", regex=False).to_numpy(dtype=bool)
    last = bits.str[-1:].eq("1").to_numpy(dtype=bool)
    first = bits.str[:1].eq("1").to_numpy(dtype=bool)
    clean_correct = frame["clean_correct"].to_numpy()
    robust = frame["robust"].to_numpy()
    ok = well_formed & cumulative & (robust == last) & (robust <= clean_correct) & (first <= (clean_correct == 1))
    if budget:
        attacked = ~frame["broken_by"].fillna("clean").isin(("clean",)).to_numpy(dtype=bool)
        norm = frame["adv_norm"].to_numpy(dtype=float, na_value=np.nan)
        eps = frame["broken_at_eps"].to_numpy(dtype=float, na_value=np.nan)
        ok &= ~attacked | (norm <= eps * (1 + BUDGET_RTOL))
    return ok


BUDGET_RTOL = 1e-6  # robustkit.threat.RTOL: the engine's own budget tolerance


def failing_batches(batches: dict[int, StoredBatch], frame: pd.DataFrame, prev: pd.DataFrame | None, *,
                    n_examples: int, batch_size: int, labels: np.ndarray, n_attacks: int, offset: int = 0,
                    rules: str = CASCADE, budget: bool = False) -> dict[int, str]:
    """batch index -> why it fails (see :meth:`ResultStore.verify_job`). The job evaluates examples
    ``offset..offset + n_examples - 1`` (``labels`` holds the whole dataset's)."""
    idx = frame["idx"].to_numpy(dtype=np.int64)
    in_range = (idx >= offset) & (idx < offset + n_examples)
    row_ok = np.zeros(len(frame), dtype=bool)
    if len(frame):
        safe = np.where(in_range, idx, offset)
        clean_correct = frame["clean_correct"].to_numpy()
        robust = frame["robust"].to_numpy()
        label = frame["label"].to_numpy()
        pred = frame["clean_pred"].to_numpy()
        row_ok = (in_range & (label == labels[safe]) & np.isin(clean_correct, (0, 1)) & np.isin(robust, (0, 1))
                  & (clean_correct == (pred == label)))
        row_ok &= (_corruption_rows_ok(frame, label) if rules == CORRUPTION
                   else _cascade_rows_ok(frame, n_attacks, budget))
        if prev is not None:
            prev_robust = dict(zip(prev["idx"].to_numpy(dtype=np.int64), prev["robust"].to_numpy()))
            before = np.array([prev_robust.get(int(i), -1) for i in idx])
            row_ok &= (before >= 0) & (robust <= np.maximum(before, 0))
    bad: dict[int, str] = {}
    for i, b in batches.items():
        start, stop = offset + i * batch_size, offset + min(n_examples, (i + 1) * batch_size)
        if i < 0 or start >= offset + n_examples or (b.start, b.stop) != (start, stop):
            bad[i] = f"range {b.start}..{b.stop} does not fit the batch layout"
            continue
        mask = (idx >= start) & (idx < stop)
        count = int(mask.sum())
        if count != stop - start:
            bad[i] = f"{count} of {stop - start} sample rows"
        elif not row_ok[mask].all():
            bad[i] = f"{int((~row_ok[mask]).sum())} sample rows contradict the labels, the attack list or the " \
                     f"previous eps" + (" or the budget" if budget else "")
    return bad
