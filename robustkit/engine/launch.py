"""``robustkit eval --workers N``: start N local worker processes through torchrun's own launcher.

The command line re-runs itself under :func:`torch.distributed.run.run` (what ``torchrun`` calls): the elastic
agent starts the workers, restarts them all on a failure up to ``max_restarts`` times (each restart resumes
from the stored batches and the shards), and for several machines runs the c10d rendezvous at
``rdzv_endpoint``. Nothing here schedules work; the workers plan and share it themselves
(:mod:`robustkit.engine.distributed`).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Sequence

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.elastic.rendezvous.api import RendezvousError
from torch.distributed.run import parse_args, run

from robustkit.errors import ConfigError, RobustkitError

DEFAULT_RDZV_TIMEOUT = 60


@dataclass(frozen=True)
class Launch:
    """How to start the workers: per node, how many nodes, where they meet, how often to restart."""

    workers: int
    nnodes: int = 1
    rdzv_endpoint: str | None = None     # HOST:PORT of the c10d rendezvous (needed with nnodes > 1)
    rdzv_timeout: int = DEFAULT_RDZV_TIMEOUT
    max_restarts: int = 0

    def torchrun_args(self, module_args: Sequence[str]) -> list[str]:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ConfigError("--rdzv-endpoint: required with --nnodes > 1 (HOST:PORT of the first node)")
        if self.rdzv_endpoint:
            meet = ["--rdzv-backend=c10d", f"--rdzv-endpoint={self.rdzv_endpoint}",
                    f"--rdzv-conf=join_timeout={self.rdzv_timeout},read_timeout={self.rdzv_timeout}"]
        else:
            meet = ["--standalone"]  # one machine: torchrun picks a free port itself
        return [f"--nnodes={self.nnodes}", f"--nproc-per-node={self.workers}", f"--max-restarts={self.max_restarts}",
                *meet, "--module", "robustkit", *module_args]


def launch(spec: Launch, module_args: Sequence[str]) -> None:
    """Run ``python -m robustkit <module_args>`` in ``spec.workers`` processes per node; one-line errors."""
    args = parse_args(spec.torchrun_args(module_args))
    try:
        run(args)
    except RendezvousError as exc:
        where = spec.rdzv_endpoint or "this machine"
        raise RobustkitError(f"cannot reach the rendezvous at {where} within {spec.rdzv_timeout} s "
                             f"({type(exc).__name__}); is the first node started and the port open? "
                             f"(--rdzv-timeout to wait longer)") from None
    except ChildFailedError as exc:
        first = min(exc.failures.items()) if exc.failures else None
        which = f"rank {first[0]} exited with code {first[1].exitcode}" if first else "a worker failed"
        raise RobustkitError(f"distributed sweep stopped: {which} (its own error is printed above); finished "
                             f"batches are kept, run the same command again to resume") from None
    finally:
        sys.stdout.flush()
