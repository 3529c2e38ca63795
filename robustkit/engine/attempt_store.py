"""A c10d store namespace that belongs to this attempt of a torchrun job alone (what makes ``--max-restarts`` work).

Why: by default torchrun's agent hosts one TCPStore for the workers (``TORCHELASTIC_USE_AGENT_STORE=True``) and,
in torch 2.13, keeps that same store for every restart of the job, while ``init_process_group("env://")`` no
longer puts the attempt into its keys. Restarted workers then find the keys the previous, dead workers wrote:
gloo's full-mesh rendezvous reads a dead peer's address and fails with "Connection refused" or hangs, depending
on which rank reads first (pytorch/pytorch#135712, #167288). Our own barrier keys would be stale the same way.

``TORCHELASTIC_RESTART_COUNT`` cannot serve as the namespace: each node's agent counts its own restarts (a node
whose workers were healthy restarts them without counting), so on several nodes the counts differ. Instead,
rank 0 draws a generation number that the store has never handed out (``add`` on one counter) and gives it to
each other rank in answer to a random nonce that the rank posted; neither a fresh nonce nor a fresh generation
can be confused with a leftover of an earlier attempt. With ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` rank 0
hosts a new store every attempt; the handshake then simply yields generation 1.
"""
from __future__ import annotations

import time
import uuid
from datetime import timedelta

import torch.distributed as dist

from robustkit.errors import RobustkitError

ROOT = "robustkit/attempt"
POLL_SECONDS = 0.05


def attempt_store(base: dist.Store, rank: int, world_size: int) -> tuple[dist.Store, int]:
    """``(store, generation)``: ``base`` seen through a prefix unique to this attempt, agreed by every rank.

    ``generation`` is 1 on the first attempt of a job whose store outlives its attempts (torchrun's default).
    """
    if rank == 0:
        generation = int(base.add(f"{ROOT}/generation", 1))
        _answer_every_rank(base, generation, world_size)
    else:
        nonce = uuid.uuid4().hex
        base.set(f"{ROOT}/hello/{rank}", nonce)
        base.wait([f"{ROOT}/reply/{nonce}"])
        generation = int(base.get(f"{ROOT}/reply/{nonce}"))
        base.add(f"{ROOT}/{generation}/joined", 1)
    return dist.PrefixStore(f"{ROOT}/{generation}/", base), generation


def _answer_every_rank(base: dist.Store, generation: int, world_size: int) -> None:
    """Rank 0: answer whatever nonce each rank has posted (an earlier attempt's one too: nobody waits for that
    answer) until every rank has joined ``generation``."""
    answered: set[str] = set()
    timeout: timedelta = base.timeout  # the store's own wait limit (torchrun: 30 min by default)
    deadline = time.monotonic() + timeout.total_seconds()
    while int(base.add(f"{ROOT}/{generation}/joined", 0)) < world_size - 1:
        for rank in range(1, world_size):
            hello = f"{ROOT}/hello/{rank}"
            if base.check([hello]):
                nonce = base.get(hello).decode()
                if nonce not in answered:
                    base.set(f"{ROOT}/reply/{nonce}", str(generation))
                    answered.add(nonce)
        if time.monotonic() > deadline:
            joined = int(base.add(f"{ROOT}/{generation}/joined", 0))
            raise RobustkitError(f"only {joined + 1} of {world_size} ranks joined the job within "
                                 f"{timeout.total_seconds():.0f} s")
        time.sleep(POLL_SECONDS)
