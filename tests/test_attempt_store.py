"""The per-attempt store namespace (robustkit.engine.attempt_store) that makes torchrun's --max-restarts work.

torchrun's agent keeps one store for every attempt of a job; these tests play consecutive attempts of a
3-rank job on one in-memory store (each rank a thread), with the ranks arriving in different orders, and check
that every attempt agrees on a generation no earlier attempt used and sees none of the earlier attempts' keys.
"""
from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import torch.distributed as dist

from robustkit.engine.attempt_store import attempt_store
from robustkit.errors import RobustkitError


def play_attempt(base: dist.Store, world_size: int, delays: list[float]) -> list[tuple[int, dist.Store]]:
    """One attempt: rank r starts after delays[r] seconds; returns each rank's (generation, store)."""
    results: list = [None] * world_size
    errors: list[BaseException] = []

    def rank_main(rank: int) -> None:
        time.sleep(delays[rank])
        try:
            store, generation = attempt_store(base, rank, world_size)
            results[rank] = (generation, store)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(world_size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    assert all(r is not None for r in results)
    return results


def test_consecutive_attempts_get_fresh_namespaces_whoever_arrives_first():
    base = dist.HashStore()
    base.set_timeout(timedelta(seconds=20))
    orders = [[0.0, 0.0, 0.0], [0.3, 0.0, 0.1], [0.0, 0.3, 0.0], [0.2, 0.1, 0.0]]  # rank 0 late, rank 1 late, ...
    for attempt, delays in enumerate(orders, start=1):
        results = play_attempt(base, 3, delays)
        assert [g for g, _ in results] == [attempt] * 3
        stores = [s for _, s in results]
        # what an earlier attempt left under the same key is not visible in this attempt's namespace
        assert not stores[1].check(["peer-address/0"])
        stores[0].set("peer-address/0", f"attempt {attempt}")
        assert stores[2].get("peer-address/0") == f"attempt {attempt}".encode()


def test_a_single_rank_job_needs_no_peer():
    base = dist.HashStore()
    assert [g for g, _ in play_attempt(base, 1, [0.0])] == [1]
    assert [g for g, _ in play_attempt(base, 1, [0.0])] == [2]


def test_rank_zero_gives_up_with_one_line_when_a_rank_never_joins():
    base = dist.HashStore()
    base.set_timeout(timedelta(seconds=1))
    with pytest.raises(RobustkitError, match="only 1 of 2 ranks joined the job within 1 s"):
        attempt_store(base, 0, 2)
