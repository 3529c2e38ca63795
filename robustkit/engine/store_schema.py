"""The results store's SQLite schema (tables, columns, version), apart from the code that reads and writes it.

docs/engine.md ("Results store") describes each table; :mod:`robustkit.engine.store` creates them and adds
the columns that later versions introduced (provenance, passes) to older files in place.
"""
from __future__ import annotations

SCHEMA_VERSION = "1"

SAMPLE_COLUMNS = ("idx", "label", "clean_pred", "clean_correct", "robust_after", "robust", "broken_by",
                  "broken_at_eps", "adv_pred", "adv_norm", "attacked")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    robustkit_version TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    device TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    model TEXT NOT NULL,
    dataset TEXT NOT NULL,
    norm TEXT NOT NULL,
    eps REAL NOT NULL,
    prev_job_id TEXT,
    n_examples INTEGER NOT NULL,
    batch_size INTEGER NOT NULL,
    n_batches INTEGER NOT NULL,
    attack_labels TEXT NOT NULL,
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS run_jobs (
    run_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    job_id TEXT NOT NULL,
    model TEXT NOT NULL,
    PRIMARY KEY (run_id, position)
);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    batch_index INTEGER NOT NULL,
    start INTEGER NOT NULL,
    stop INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    chunk_size INTEGER NOT NULL,
    n_attacked INTEGER NOT NULL,
    seconds REAL NOT NULL,
    computed_at REAL NOT NULL,
    run_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    UNIQUE (job_id, batch_index)
);
CREATE TABLE IF NOT EXISTS checks (
    run_id TEXT NOT NULL,
    model TEXT NOT NULL,
    mode TEXT NOT NULL,
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    eps REAL,
    fired INTEGER NOT NULL,
    applicable INTEGER NOT NULL,
    message TEXT NOT NULL,
    details TEXT NOT NULL,
    PRIMARY KEY (run_id, model, mode, position)
);
CREATE TABLE IF NOT EXISTS samples (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    label INTEGER NOT NULL,
    clean_pred INTEGER NOT NULL,
    clean_correct INTEGER NOT NULL,
    robust_after TEXT NOT NULL,
    robust INTEGER NOT NULL,
    broken_by TEXT,
    broken_at_eps REAL,
    adv_pred INTEGER,
    adv_norm REAL,
    attacked INTEGER NOT NULL,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
"""
