"""Executors: who computes the missing batches of a planned sweep, behind one interface.

* :class:`LocalExecutor` -- this process computes every unit and commits straight into ``results.sqlite``.
* :class:`robustkit.engine.distributed.DistributedExecutor` -- one process of a torch.distributed job
  (torchrun): rank 0 plans and shares the plan, every rank computes its round-robin share of the units into
  its own shard file, and rank 0 merges the shards into ``results.sqlite`` at the end.

The runner (:func:`robustkit.engine.runner.run_sweep`) only talks to :class:`Executor`; the computation itself
(:func:`compute_units`) is the same code for both, which is why a batch's numbers cannot depend on the
executor or the world size.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import nn

from robustkit.attacks import eval_mode

from .batches import BatchEvaluator, Priors
from .devices import on_device, probe_chunk_size
from .options import RunOptions
from .plan import Work
from .progress import SweepProgress
from .store import ResultStore, remove_store
from .sweep import Sweep


class Progress(Protocol):
    def update(self, n: int, robust: int) -> None: ...
    def note(self, text: str) -> None: ...
    def close(self) -> None: ...


class Executor(Protocol):
    """Where and by whom the missing batches run. ``rank`` 0 is the main process (plans, merges, finishes)."""

    rank: int
    world_size: int
    device: torch.device

    def prepare_folder(self, out: Path, fresh: bool) -> None:
        """Before the main store is opened: discard (``fresh``) or recover what earlier runs left in ``out``."""

    def share(self, value: Any) -> Any:
        """The main process's ``value``, on every process (the plan)."""

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order (on every process)."""

    def sink(self, out: Path, main: ResultStore | None) -> contextlib.AbstractContextManager[ResultStore]:
        """The store this process commits its batches to."""

    def progress(self, work: Work, quiet: bool) -> Progress:
        """The progress display of this process (quiet on every rank but 0)."""

    def finish(self, out: Path, main: ResultStore | None) -> None:
        """After this process's batches: wait for the others; the main process gathers their results."""

    def close(self) -> None:
        """Leave the process group (if any)."""


class LocalExecutor:
    """Everything in this process, committed straight into the main store."""

    rank = 0
    world_size = 1

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def prepare_folder(self, out: Path, fresh: bool) -> None:
        if fresh:
            remove_store(out)

    def share(self, value: Any) -> Any:
        return value

    def gather(self, value: Any) -> list[Any]:
        return [value]

    @contextlib.contextmanager
    def sink(self, out: Path, main: ResultStore | None) -> Iterator[ResultStore]:
        assert main is not None
        yield main

    def progress(self, work: Work, quiet: bool) -> Progress:
        return SweepProgress("sweep", work.total_samples, done=work.done_samples, robust=work.done_robust,
                             quiet=quiet)

    def finish(self, out: Path, main: ResultStore | None) -> None:
        return None

    def close(self) -> None:
        return None


@contextlib.contextmanager
def prepared_model(model: nn.Module, options: RunOptions) -> Iterator[nn.Module]:
    """The model as the attacks should call it: in channels_last and/or compiled when the options say so.

    Neither changes what the model computes (a test compares the verdicts with eager mode); channels_last is
    undone afterwards so that fingerprints and later stages see the model as it was loaded.
    """
    if options.channels_last:
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    try:
        yield torch.compile(model) if options.compile else model  # type: ignore[return-value]
    finally:
        if options.channels_last:
            model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]


def input_preparer(device: torch.device, options: RunOptions) -> Callable[[torch.Tensor], torch.Tensor]:
    """CPU dataset slice → model input on ``device`` (channels_last for 4-d inputs when asked)."""
    def prepare(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device)
        if options.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
    return prepare


def compute_units(executor: Executor, sweep: Sweep, options: RunOptions, work: Work, *, sink: ResultStore,
                  run_id: str, attempt: int, progress: Progress) -> int:
    """Compute this process's share of ``work`` (model by model, each job's batches in eps order) into ``sink``.

    Within a model, steps run eps by eps, so that the step at eps_k finds the verdicts of eps_{k-1} for the
    same samples (computed just before by this process: the whole unit is its own, or stored earlier and
    shipped in ``work.priors``). Returns the number of batches computed.
    """
    mine = set(work.for_rank(executor.rank, executor.world_size))
    priors = Priors(work.priors)
    evaluator = BatchEvaluator(sweep, sink, run_id, attempt, executor.device,
                               input_preparer(executor.device, options), progress.note)
    for entry in sweep.models:
        steps = sorted((s for u in work.units if u in mine and u.model == entry.name for s in work.steps[u]),
                       key=lambda s: (s.job.eps, s.batch_index))
        if not steps:
            continue
        with on_device(entry.model, executor.device), eval_mode(entry.model), \
                prepared_model(entry.model, options) as model:
            largest = max(s.stop - s.start for s in steps)
            fits = probe_chunk_size(entry.model, tuple(sweep.dataset.x.shape[1:]), executor.device, largest)
            evaluator.chunk_limit = fits if fits < largest else None
            for step in steps:
                state = evaluator.run_step(model, step, priors)
                priors.add(step.job.job_id, step.start, step.stop, state)
                progress.update(step.stop - step.start, int(state.robust.sum()))
    return evaluator.computed
