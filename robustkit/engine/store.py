"""The results store: one SQLite file per output folder, written one batch per transaction.

Why SQLite: a sweep can run for hours and be interrupted at any moment (Ctrl-C, a killed job, a crash). With
WAL journaling and one transaction per batch -- the batch row and all its per-sample rows together -- a
batch is either fully stored or not at all, so a re-run can trust whatever it finds and recompute only the
missing batches. See docs/engine.md ("Results store") for the schema.
"""
from __future__ import annotations

import json
import sqlite3
import urllib.parse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from robustkit.errors import RobustkitError
from robustkit.identity import canonical_json

from .store_integrity import CASCADE, DB_NAME, StoreError, failing_batches, one_line_errors
from .store_schema import _SCHEMA, SAMPLE_COLUMNS, SCHEMA_VERSION


@dataclass(frozen=True)
class StoredBatch:
    """A finished batch as recorded (its row id and timestamp show it was not recomputed on resume)."""

    id: int
    batch_index: int
    start: int
    stop: int
    seconds: float
    computed_at: float


def remove_store(out_dir: Path) -> None:
    """Delete the database (and its WAL side files) of an output folder: what ``--fresh`` does."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        path = Path(out_dir) / f"{DB_NAME}{suffix}"
        if path.exists() or path.is_symlink():
            try:
                path.unlink()
            except OSError as exc:
                raise StoreError(f"{path}: cannot delete it for --fresh ({exc.strerror or exc})") from None


def _connect_read_only(path: Path) -> sqlite3.Connection:
    """``mode=ro``; on media where even the WAL index cannot be created, ``immutable=1`` (nothing is written:
    the file is read as it is, which is right for a finished run on read-only media)."""
    if not path.is_file():
        raise StoreError(f"{path}: no results store here; expected the output folder of robustkit eval")
    uri = "file:" + urllib.parse.quote(str(path.resolve()))
    last: Exception | None = None
    for query in ("?mode=ro", "?mode=ro&immutable=1"):
        conn = sqlite3.connect(uri + query, uri=True, timeout=60.0, isolation_level=None)
        try:
            conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            return conn
        except sqlite3.OperationalError as exc:
            conn.close()
            last = exc
    raise last  # type: ignore[misc]  # turned into a one-line StoreError by the class wrapper


@one_line_errors
class ResultStore:
    """Read/write access to ``<out>/results.sqlite``. Use as a context manager so the file is closed."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        if read_only:
            self.conn = _connect_read_only(self.path)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA busy_timeout=60000")
        self.conn.executescript(_SCHEMA)
        self._check_schema_version()
        self._add_provenance_column()
        self._add_passes_column()

    @classmethod
    def open(cls, out_dir: Path, *, fresh: bool = False) -> "ResultStore":
        if fresh:
            remove_store(out_dir)
        return cls(Path(out_dir) / DB_NAME)

    @classmethod
    def open_read_only(cls, out_dir: Path) -> "ResultStore":
        """Open an existing store without writing anything (works on read-only media)."""
        return cls(Path(out_dir) / DB_NAME, read_only=True)

    def _check_schema_version(self) -> None:
        with self._transaction():
            row = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                self.conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise RobustkitError(f"{self.path}: results schema version {row[0]}, this robustkit writes "
                                     f"{SCHEMA_VERSION}; run with --fresh (or use another --out folder)")

    def _add_provenance_column(self) -> None:
        """``runs.provenance`` (JSON, docs/checks.md) was added after schema 1: add it to older stores in place."""
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(runs)").fetchall()}
        if "provenance" not in columns:
            with self._transaction() as c:
                c.execute("ALTER TABLE runs ADD COLUMN provenance TEXT")

    def _add_passes_column(self) -> None:
        """``batches.passes`` (JSON ``{attack label: [forward, backward]}`` sample-passes) was added after
        schema 1: older stores get the column in place; their batches read as "not counted" (NULL)."""
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(batches)").fetchall()}
        if "passes" not in columns:
            with self._transaction() as c:
                c.execute("ALTER TABLE batches ADD COLUMN passes TEXT")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ helpers
    class _Tx:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Connection:
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type: object, *rest: object) -> None:
            self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")

    def _transaction(self) -> "ResultStore._Tx":
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (KeyboardInterrupt included)."""
        return ResultStore._Tx(self.conn)

    # --------------------------------------------------------------------------------------------- runs
    def begin_run(self, run_id: str, config: dict[str, Any], version: str, device: str) -> int:
        """Record that the run starts (again); returns the attempt number (1 for a first start)."""
        now = time.time()
        with self._transaction() as c:
            row = c.execute("SELECT attempts FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                c.execute("INSERT INTO runs (run_id, config, robustkit_version, created_at, started_at, status, "
                          "attempts, device) VALUES (?, ?, ?, ?, ?, 'running', 1, ?)",
                          (run_id, canonical_json(config), version, now, now, device))
                return 1
            attempt = int(row[0]) + 1
            c.execute("UPDATE runs SET started_at = ?, finished_at = NULL, status = 'running', attempts = ?, "
                      "device = ? WHERE run_id = ?", (now, attempt, device, run_id))
            return attempt

    def finish_run(self, run_id: str, status: str = "finished") -> None:
        with self._transaction() as c:
            c.execute("UPDATE runs SET finished_at = ?, status = ? WHERE run_id = ?", (time.time(), status, run_id))

    def set_provenance(self, run_id: str, provenance: dict[str, Any]) -> None:
        """Record the run's provenance (versions, device, data and checkpoint hashes, attack configs)."""
        with self._transaction() as c:
            c.execute("UPDATE runs SET provenance = ? WHERE run_id = ?", (canonical_json(provenance), run_id))

    def run_record(self, run_id: str | None = None) -> dict[str, Any] | None:
        """The runs row of ``run_id`` (default: the most recently started run), JSON columns decoded."""
        query = "SELECT run_id, config, robustkit_version, created_at, started_at, finished_at, status, attempts, " \
                "device, provenance FROM runs"
        row = (self.conn.execute(query + " WHERE run_id = ?", (run_id,)).fetchone() if run_id is not None
               else self.conn.execute(query + " ORDER BY started_at DESC LIMIT 1").fetchone())
        if row is None:
            return None
        keys = ("run_id", "config", "robustkit_version", "created_at", "started_at", "finished_at", "status",
                "attempts", "device", "provenance")
        record = dict(zip(keys, row))
        for key in ("config", "provenance"):
            record[key] = json.loads(record[key]) if record[key] else None
        return record

    def store_checks(self, run_id: str, model: str, mode: str, results: Sequence[Any]) -> None:
        """Replace the check results of (run, model, mode) with ``results`` (CheckResult rows), in order."""
        with self._transaction() as c:
            c.execute("DELETE FROM checks WHERE run_id = ? AND model = ? AND mode = ?", (run_id, model, mode))
            c.executemany("INSERT INTO checks (run_id, model, mode, position, name, eps, fired, applicable, message, "
                          "details) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                          [(run_id, model, mode, i, r.name, r.eps, int(r.fired), int(r.applicable), r.message,
                            canonical_json(r.details)) for i, r in enumerate(results)])

    def checks(self, run_id: str, model: str | None = None, mode: str | None = None) -> pd.DataFrame:
        """Stored check results of a run (optionally of one model / mode), in the order they were run."""
        query = "SELECT model, mode, position, name, eps, fired, applicable, message, details FROM checks " \
                "WHERE run_id = ?"
        params: list[Any] = [run_id]
        if model is not None:
            query += " AND model = ?"
            params.append(model)
        if mode is not None:
            query += " AND mode = ?"
            params.append(mode)
        return pd.read_sql_query(query + " ORDER BY model, mode, position", self.conn, params=params)

    def link_jobs(self, run_id: str, jobs: Sequence[tuple[str, str]]) -> None:
        """Record which jobs (``(job_id, model display name)``, in order) make up the run."""
        with self._transaction() as c:
            c.execute("DELETE FROM run_jobs WHERE run_id = ?", (run_id,))
            c.executemany("INSERT INTO run_jobs (run_id, position, job_id, model) VALUES (?, ?, ?, ?)",
                          [(run_id, i, job, model) for i, (job, model) in enumerate(jobs)])

    # --------------------------------------------------------------------------------------------- jobs
    def ensure_job(self, job_id: str, identity: dict[str, Any], *, model: str, dataset: str, norm: str,
                   eps: float, prev_job_id: str | None, n_examples: int, batch_size: int,
                   attack_labels: Sequence[str]) -> int:
        """Create the job if new; return its batch size (a stored job keeps the batch layout it started with)."""
        n_batches = -(-n_examples // batch_size) if n_examples else 0
        with self._transaction() as c:
            row = c.execute("SELECT batch_size FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is not None:
                return int(row[0])
            c.execute("INSERT INTO jobs (job_id, identity, model, dataset, norm, eps, prev_job_id, n_examples, "
                      "batch_size, n_batches, attack_labels, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      (job_id, canonical_json(identity), model, dataset, norm, float(eps), prev_job_id,
                       int(n_examples), int(batch_size), n_batches, canonical_json(list(attack_labels)),
                       time.time()))
        return int(batch_size)

    def finished_batches(self, job_id: str) -> dict[int, StoredBatch]:
        rows = self.conn.execute("SELECT id, batch_index, start, stop, seconds, computed_at FROM batches "
                                 "WHERE job_id = ? ORDER BY batch_index", (job_id,)).fetchall()
        return {int(r[1]): StoredBatch(int(r[0]), int(r[1]), int(r[2]), int(r[3]), float(r[4]), float(r[5]))
                for r in rows}

    def mark_job_finished(self, job_id: str) -> None:
        with self._transaction() as c:
            c.execute("UPDATE jobs SET finished_at = COALESCE(finished_at, ?) WHERE job_id = ?", (time.time(), job_id))

    def commit_batch(self, *, job_id: str, batch_index: int, start: int, stop: int, seed: int, chunk_size: int,
                     n_attacked: int, seconds: float, run_id: str, attempt: int,
                     rows: Iterable[Sequence[Any]], passes: dict[str, list[int]] | None = None) -> bool:
        """Store a batch and its per-sample rows in ONE transaction. False if it was already stored.

        ``passes``: the batch's ``{attack label: [forward, backward]}`` sample-passes (None: not counted).
        """
        with self._transaction() as c:
            cur = c.execute("INSERT OR IGNORE INTO batches (job_id, batch_index, start, stop, seed, chunk_size, "
                            "n_attacked, seconds, computed_at, run_id, attempt, passes) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (job_id, batch_index, start, stop, seed, chunk_size, n_attacked, float(seconds),
                             time.time(), run_id, attempt, None if passes is None else canonical_json(passes)))
            if cur.rowcount == 0:  # another process stored this batch first: keep theirs
                return False
            placeholders = ", ".join("?" * (len(SAMPLE_COLUMNS) + 1))
            c.executemany(f"INSERT INTO samples (job_id, {', '.join(SAMPLE_COLUMNS)}) VALUES ({placeholders})",
                          [(job_id, *row) for row in rows])
        return True

    def absorb(self, other: Path) -> int:
        """Copy every batch (and its sample rows) of the store file ``other`` -- a distributed rank's shard --
        into this store, in ONE transaction; batches already here are kept. Returns the batches added.

        Only the columns both files have are copied, so a shard written by the same robustkit always merges
        whole. The caller deletes the shard afterwards (:mod:`robustkit.engine.shards`).
        """
        self.conn.execute("ATTACH DATABASE ? AS shard", (str(other),))
        try:
            def columns(table: str, schema: str) -> list[str]:
                return [r[1] for r in self.conn.execute(f"PRAGMA {schema}.table_info({table})").fetchall()]

            batch_cols = [c for c in columns("batches", "main") if c != "id" and c in columns("batches", "shard")]
            sample_cols = [c for c in columns("samples", "main") if c in columns("samples", "shard")]
            with self._transaction() as c:
                before = c.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
                c.execute(f"INSERT OR IGNORE INTO batches ({', '.join(batch_cols)}) SELECT {', '.join(batch_cols)} "
                          f"FROM shard.batches ORDER BY id")
                c.execute(f"INSERT OR IGNORE INTO samples ({', '.join(sample_cols)}) SELECT {', '.join(sample_cols)} "
                          f"FROM shard.samples")
                added = c.execute("SELECT COUNT(*) FROM batches").fetchone()[0] - before
        finally:
            self.conn.execute("DETACH DATABASE shard")
        return int(added)

    # ------------------------------------------------------------------------------------------ reading
    def samples(self, job_id: str, start: int | None = None, stop: int | None = None) -> pd.DataFrame:
        """Per-sample rows of a job (optionally indices ``start <= idx < stop``), ordered by index."""
        query = f"SELECT {', '.join(SAMPLE_COLUMNS)} FROM samples WHERE job_id = ?"
        params: list[Any] = [job_id]
        if start is not None and stop is not None:
            query += " AND idx >= ? AND idx < ?"
            params += [int(start), int(stop)]
        return pd.read_sql_query(query + " ORDER BY idx", self.conn, params=params)

    def job_seconds(self, job_id: str) -> float:
        row = self.conn.execute("SELECT COALESCE(SUM(seconds), 0) FROM batches WHERE job_id = ?", (job_id,)).fetchone()
        return float(row[0])

    def job_passes(self, job_id: str) -> int | None:
        """Forward + backward sample-passes of all of a job's batches; None if any batch was not counted."""
        rows = self.conn.execute("SELECT passes FROM batches WHERE job_id = ?", (job_id,)).fetchall()
        if not rows or any(r[0] is None for r in rows):
            return None
        return sum(int(f) + int(b) for (text,) in rows for f, b in json.loads(text).values())

    def batches(self, job_id: str | None = None) -> pd.DataFrame:
        """The batches table (all jobs, or one), for audits and tests."""
        query = "SELECT * FROM batches"
        params: list[Any] = []
        if job_id is not None:
            query += " WHERE job_id = ?"
            params.append(job_id)
        return pd.read_sql_query(query + " ORDER BY id", self.conn, params=params)

    # ------------------------------------------------------------------------------------ verification
    def verify_job(self, job_id: str, *, n_examples: int, batch_size: int, labels: Sequence[int],
                   n_attacks: int, prev_job_id: str | None = None, offset: int = 0, rules: str = CASCADE,
                   budget: bool = False) -> list[str]:
        """Check a job's stored batches against what they must contain and drop the ones that fail, so that
        the runner recomputes them; return one description per dropped batch.

        A batch passes when: its range is the one the job's batch layout gives; it has exactly one sample
        row per index of that range; each row's label is the dataset's label; ``clean_correct`` equals
        ``clean_pred == label``; ``robust_after`` has one 0/1 bit per attack of the suite, cumulative (once 0,
        always 0), all 0 for a clean error; ``robust`` is the last bit; and (nested balls) no sample is robust
        here but broken at the previous eps, whose rows for the range must exist. Sample rows outside every
        passing batch are deleted with it. Everything happens in one transaction.

        The corruption / patch / universal jobs (:mod:`robustkit.engine.beyond_lp_verify`) evaluate examples
        ``offset..offset + n_examples - 1``; ``rules="corruption"`` checks a corruption job's rows instead of
        the cascade's, and ``budget`` also requires every attack-broken row's stored norm within its budget.
        """
        if batch_size < 1 or n_examples < 0:
            raise StoreError(f"{self.path}: job {job_id} has batch size {batch_size} for {n_examples} examples; "
                             f"the store was changed outside robustkit: move it away or run with --fresh")
        batches = self.finished_batches(job_id)
        frame = self.samples(job_id)
        prev = self.samples(job_id=prev_job_id) if prev_job_id is not None else None
        bad = failing_batches(batches, frame, prev, n_examples=n_examples, batch_size=batch_size,
                              labels=np.asarray(labels, dtype=np.int64), n_attacks=n_attacks, offset=offset,
                              rules=rules, budget=budget)
        covered = np.zeros(max(offset + n_examples, 0), dtype=bool)
        for i, b in batches.items():
            if i not in bad:
                covered[b.start:b.stop] = True
        idx = frame["idx"].to_numpy(dtype=np.int64)
        orphans = [int(i) for i in idx if not (offset <= i < offset + n_examples and covered[i])]
        self.drop_batches(job_id, list(bad), orphans, with_rows=False)  # a bad batch's rows are orphans now
        return [f"batch {i} ({bad[i]})" for i in sorted(bad)]

    def drop_batches(self, job_id: str, batch_indices: Sequence[int], sample_indices: Sequence[int] = (), *,
                     with_rows: bool = True) -> None:
        """Delete batches of a job, the sample rows of their ranges (``with_rows``) and the sample rows
        ``sample_indices``, in one transaction, so that the runner recomputes them."""
        if not batch_indices and not sample_indices:
            return
        ranges = {int(r[0]): (int(r[1]), int(r[2])) for r in self.conn.execute(
            "SELECT batch_index, start, stop FROM batches WHERE job_id = ?", (job_id,)).fetchall()}
        with self._transaction() as c:
            for i in batch_indices:
                if with_rows and i in ranges:
                    c.execute("DELETE FROM samples WHERE job_id = ? AND idx >= ? AND idx < ?", (job_id, *ranges[i]))
                c.execute("DELETE FROM batches WHERE job_id = ? AND batch_index = ?", (job_id, int(i)))
            c.executemany("DELETE FROM samples WHERE job_id = ? AND idx = ?", [(job_id, int(i)) for i in sample_indices])
            c.execute("UPDATE jobs SET finished_at = NULL WHERE job_id = ?", (job_id,))
