"""One sweep on many processes with PyTorch's own distributed engine (torchrun / torch.distributed.elastic).

``torchrun --nproc-per-node N -m robustkit eval --config sweep.yaml`` starts N processes; each builds the
same sweep and calls the same runner with a :class:`DistributedExecutor`:

* rank ``r`` computes on ``cuda:LOCAL_RANK`` (nccl) where CUDA is available, else on the CPU (gloo);
* rank 0 merges shards left by an earlier run, plans the missing batches and shares the plan; units of work
  (one model's batch index at every eps, :mod:`robustkit.engine.plan`) are dealt round-robin;
* every rank commits its batches to its own shard file; rank 0 merges them into ``results.sqlite`` when all
  are done (:mod:`robustkit.engine.shards`) and runs the finishing stages alone;
* progress: every rank adds its counts to the job's c10d store; rank 0 draws one bar from them.

No scheduler of our own: starting, stopping and restarting processes (``--max-restarts``), rendezvous and
multi-node are torchrun's. See docs/distributed.md.
"""
from __future__ import annotations

import contextlib
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist

from robustkit.errors import ConfigError, RobustkitError
from robustkit.outputs import write_text

from .attempt_store import attempt_store
from .plan import Work
from .progress import SweepProgress
from .shards import merge_shards, remove_shards, shard_path
from .store import ResultStore, remove_store

POLL_SECONDS = 0.2
_TOKEN = ".robustkit-shared-{}"


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun (or any launcher that sets the torch.distributed env:// variables)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def rank_device(requested: str) -> torch.device:
    """``cuda:LOCAL_RANK`` for ``auto``/``cuda`` where CUDA is available, the CPU for ``cpu`` or without CUDA."""
    text = str(requested).strip().lower()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if text == "cpu":
        return torch.device("cpu")
    if text not in ("auto", "cuda"):
        raise ConfigError(f"device: {requested!r} under torchrun: each rank uses cuda:LOCAL_RANK (device auto or "
                          f"cuda) or the CPU (device cpu); one device per rank cannot be named in the config")
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"device: rank with LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} "
                              f"CUDA device(s) on {socket.gethostname()}; start at most that many processes per node")
        return torch.device("cuda", local_rank)
    if text == "cuda":
        raise ConfigError("device: cuda requested but CUDA is not available (use cpu or auto)")
    return torch.device("cpu")


class SharedProgress:
    """Progress counters in the job's c10d store: every rank adds; rank 0 draws one bar from the totals."""

    def __init__(self, store: Any, prefix: str, rank: int, work: Work, quiet: bool) -> None:
        self.store, self.prefix, self.rank = store, prefix, rank
        self.base_seen, self.base_robust = work.done_samples, work.done_robust
        self.bar = SweepProgress("sweep", work.total_samples, done=work.done_samples, robust=work.done_robust,
                                 quiet=quiet or rank != 0)

    def update(self, n: int, robust: int) -> None:
        self.store.add(f"{self.prefix}/samples", int(n))
        self.store.add(f"{self.prefix}/robust", int(robust))
        if self.rank == 0:
            self.refresh()

    def refresh(self) -> None:
        """Bring rank 0's bar up to the counts of all ranks (one store round trip per counter)."""
        seen = self.base_seen + int(self.store.add(f"{self.prefix}/samples", 0))
        robust = self.base_robust + int(self.store.add(f"{self.prefix}/robust", 0))
        if seen != self.bar.seen:
            self.bar.update(seen - self.bar.seen, robust - self.bar.robust)

    def note(self, text: str) -> None:
        self.bar.note(text)

    def close(self) -> None:
        self.bar.close()


class DistributedExecutor:
    """This process as one rank of a torch.distributed job (see the module docstring)."""

    def __init__(self, requested_device: str = "auto") -> None:
        self.device = rank_device(requested_device)
        endpoint = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        try:
            base, rank, world_size = next(dist.rendezvous("env://"))
            # Not the agent's store as it stands: it keeps an earlier attempt's keys (attempt_store explains).
            self._store, self._generation = attempt_store(base, rank, world_size)
            dist.init_process_group(backend, store=self._store, rank=rank, world_size=world_size)
        except Exception as exc:  # noqa: BLE001 - any failure to join is the same one-line error
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            raise RobustkitError(f"cannot join the torch.distributed job at {endpoint} "
                                 f"({type(exc).__name__}: {first_line})") from None
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.host = socket.gethostname()
        # The first attempt of the job (only it may honour --fresh). A store that outlives the attempts (torchrun's
        # default) counts them in the generation; a store made anew each attempt leaves only the node's restart count.
        self.first_attempt = self._generation == 1 and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        self._round = 0
        self._progress: SharedProgress | None = None

    @property
    def _prefix(self) -> str:
        return f"sweep/{self._round}"  # inside this attempt's namespace (attempt_store)

    def _all_reach(self, name: str, wait: bool = True) -> None:
        """A barrier through the c10d store: no collective timeout, however unequal the ranks' work."""
        key = f"{self._prefix}/{name}"
        self._store.add(key, 1)
        while wait and int(self._store.add(key, 0)) < self.world_size:
            if self._progress is not None and self.rank == 0:
                self._progress.refresh()
            time.sleep(POLL_SECONDS)

    @contextlib.contextmanager
    def rank0_first(self) -> Iterator[None]:
        """Rank 0 runs the body first (e.g. loading data and models, which may download or train and cache
        them), the other ranks after it, so that they find the files complete instead of racing to write them."""
        key = "rank0-first"
        if self.rank != 0:
            while int(self._store.add(key, 0)) < 1:
                time.sleep(POLL_SECONDS)
        yield
        if self.rank == 0:
            self._store.add(key, 1)

    def prepare_folder(self, out: Path, fresh: bool) -> None:
        """Rank 0: ``--fresh`` (first attempt only, so an elastic restart never discards progress) or merge
        the shards an earlier run left; then every rank checks that it sees the same folder."""
        self._round += 1
        out = Path(out)
        if self.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            if fresh and self.first_attempt:
                remove_store(out)
                remove_shards(out)
            else:
                with ResultStore.open(out) as store:
                    merge_shards(out, store)
            token = out / _TOKEN.format(uuid.uuid4().hex)  # a name no earlier (killed) attempt can have left
            write_text(token, self.host)
            self._store.set(f"{self._prefix}/token", token.name)
        self._all_reach("folder")
        token = out / self._store.get(f"{self._prefix}/token").decode()
        if not token.is_file():
            raise RobustkitError(f"{out}: rank {self.rank} on {self.host} does not see the files rank 0 wrote there; "
                                 f"the output folder of a multi-node sweep must be on a filesystem every node shares")
        self._all_reach("folder-seen")
        if self.rank == 0:
            token.unlink()

    def share(self, value: Any) -> Any:
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, {"rank": self.rank, "host": self.host, "device": value})
        return values

    @contextlib.contextmanager
    def sink(self, out: Path, main: ResultStore | None) -> Iterator[ResultStore]:
        with ResultStore(shard_path(out, self.rank)) as shard:
            yield shard

    def progress(self, work: Work, quiet: bool) -> SharedProgress:
        self._progress = SharedProgress(self._store, self._prefix, self.rank, work, quiet)
        return self._progress

    def finish(self, out: Path, main: ResultStore | None) -> None:
        """Wait until every rank has committed its last batch; rank 0 then merges the shards."""
        self._all_reach("done", wait=self.rank == 0)
        if main is not None:
            merge_shards(out, main)
        self._progress = None

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
