"""Shard files of a distributed sweep: one SQLite file per rank, merged into ``results.sqlite`` by rank 0.

SQLite takes one writer at a time and its locking is not to be trusted on a network filesystem, so the
ranks of a torch.distributed sweep never write the run's store: rank ``r`` commits its batches (one
transaction each, like the single-process runner) into ``<out>/shards/rank-<r>.sqlite``, and rank 0 copies
every shard into ``results.sqlite`` (:meth:`robustkit.engine.store.ResultStore.absorb`) and deletes it

* at the end of the run, once every rank is done, and
* at the start of every run, before planning: the shards an earlier killed or failed run left behind are
  merged first, so their batches count as finished and nothing computed is lost, whatever the new world size.
"""
from __future__ import annotations

from pathlib import Path

from .store import ResultStore

SHARD_DIR = "shards"
_SIDE_FILES = ("", "-wal", "-shm", "-journal")


def shard_path(out: Path, rank: int) -> Path:
    return Path(out) / SHARD_DIR / f"rank-{rank}.sqlite"


def leftover_shards(out: Path) -> list[Path]:
    folder = Path(out) / SHARD_DIR
    return sorted(folder.glob("rank-*.sqlite")) if folder.is_dir() else []


def remove_shard(path: Path) -> None:
    for suffix in _SIDE_FILES:
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.unlink()


def merge_shards(out: Path, store: ResultStore) -> int:
    """Merge every shard file of ``out`` into ``store`` and delete it; returns the number of batches added."""
    added = 0
    for path in leftover_shards(out):
        added += store.absorb(path)
        remove_shard(path)
    folder = Path(out) / SHARD_DIR
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return added


def remove_shards(out: Path) -> None:
    """What ``--fresh`` does to shards: delete them unmerged."""
    for path in leftover_shards(out):
        remove_shard(path)
