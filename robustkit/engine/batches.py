"""Evaluating one batch of one job: priors from the previous eps, seeding, out-of-memory halving, commit.

Shared by every executor (:mod:`robustkit.engine.executors`): whether a batch runs in the only process or in
rank 5 of 16, it is computed by :meth:`BatchEvaluator.run_step` from the same inputs -- the examples, the
previous eps's verdicts for them, and the seed ``(seed, job id, batch index)`` -- so its numbers do not depend
on where or alongside what it ran.
"""
from __future__ import annotations

import time
from typing import Callable, Mapping

import pandas as pd
import torch
from torch import nn

from robustkit.errors import RobustkitError
from robustkit.identity import batch_seed
from robustkit.predict import NonFiniteOutputError
from robustkit.threat import ThreatModel

from .cascade import SampleState, run_cascade
from .devices import is_out_of_memory, release_cached_memory, seed_everything
from .plan import Step
from .store import ResultStore
from .sweep import Sweep


def _slice(state: SampleState, lo: int, hi: int) -> SampleState:
    return SampleState(state.label[lo:hi], state.clean_pred[lo:hi], state.clean_correct[lo:hi],
                       state.robust_after[lo:hi], state.robust[lo:hi], state.attacked[lo:hi],
                       state.broken_by[lo:hi], state.broken_at_eps[lo:hi], state.adv_pred[lo:hi],
                       state.adv_norm[lo:hi])


class Priors:
    """The verdicts at the previous eps that a step builds on: computed here earlier, or stored before.

    ``stored`` maps (job id, start, stop) to stored per-sample rows (:attr:`robustkit.engine.plan.Work.priors`).
    """

    def __init__(self, stored: Mapping[tuple[str, int, int], pd.DataFrame]) -> None:
        self._pieces: dict[str, list[tuple[int, int, SampleState]]] = {}
        for (job_id, start, stop), frame in stored.items():
            self.add(job_id, start, stop, SampleState.from_frame(frame))

    def add(self, job_id: str, start: int, stop: int, state: SampleState) -> None:
        self._pieces.setdefault(job_id, []).append((start, stop, state))

    def drop(self, job_id: str) -> None:
        self._pieces.pop(job_id, None)

    def get(self, job_id: str, start: int, stop: int) -> SampleState | None:
        """The state of samples [start, stop) of ``job_id``, assembled from the pieces, or None if incomplete."""
        parts, at = [], start
        for lo, hi, state in sorted(self._pieces.get(job_id, []), key=lambda p: p[0]):
            if hi <= at or lo > at:
                continue
            take = min(hi, stop)
            parts.append(_slice(state, at - lo, take - lo))
            at = take
            if at >= stop:
                return SampleState.concat(parts)
        return None


class BatchEvaluator:
    """Runs steps on one device, committing each to ``sink``; halves the chunk on CUDA out-of-memory.

    ``prepare_inputs`` turns a CPU slice of the dataset into the model's input on the device (moving it,
    and converting it to channels_last when the run asks for it).
    """

    def __init__(self, sweep: Sweep, sink: ResultStore, run_id: str, attempt: int, device: torch.device,
                 prepare_inputs: Callable[[torch.Tensor], torch.Tensor], note: Callable[[str], None]) -> None:
        self.sweep, self.sink, self.run_id, self.attempt = sweep, sink, run_id, attempt
        self.device, self.prepare_inputs, self.note = device, prepare_inputs, note
        self.chunk_limit: int | None = None  # lowered after an out-of-memory error, for the rest of the model
        self.computed = 0

    def run_step(self, model: nn.Module, step: Step, priors: Priors) -> SampleState:
        """Evaluate and commit one step; returns its state (the prior of the same samples at the next eps)."""
        job = step.job
        prior = None
        if job.prev_job_id is not None:
            prior = priors.get(job.prev_job_id, step.start, step.stop)
            if prior is None:
                raise RobustkitError(f"results store is missing samples {step.start}..{step.stop - 1} of job "
                                     f"{job.prev_job_id} (eps before {job.eps}); run with --fresh")
        t0 = time.perf_counter()
        state, chunk = self._run_batch(model, step, prior)
        seconds = time.perf_counter() - t0
        self.sink.commit_batch(job_id=job.job_id, batch_index=step.batch_index, start=step.start, stop=step.stop,
                               seed=batch_seed(self.sweep.seed, job.job_id, step.batch_index), chunk_size=chunk,
                               n_attacked=state.n_attacked, seconds=seconds, run_id=self.run_id,
                               attempt=self.attempt, rows=state.rows(step.start), passes=state.passes)
        self.computed += 1
        return state

    def _run_batch(self, model: nn.Module, step: Step, prior: SampleState | None) -> tuple[SampleState, int]:
        """Evaluate examples [start, stop); on out-of-memory, halve the chunk size and redo the whole batch."""
        start, stop = step.start, step.stop
        chunk = min(stop - start, self.chunk_limit or (stop - start))
        while True:
            try:
                parts = []
                for offset in range(0, stop - start, chunk):
                    lo, hi = start + offset, min(stop, start + offset + chunk)
                    parts.append(self._run_chunk(model, step, offset, lo, hi,
                                                 None if prior is None else _slice(prior, lo - start, hi - start)))
                return SampleState.concat(parts), chunk
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
                if not is_out_of_memory(exc):
                    raise
                if chunk <= 1:
                    raise RobustkitError(f"out of memory on {self.device} even with a batch of 1 "
                                         f"({step.job.model}, eps {step.job.eps})") from None
                del exc
                release_cached_memory()
                chunk = max(1, chunk // 2)
                self.chunk_limit = chunk
                self.note(f"out of memory on {self.device}: retrying batch {step.batch_index} of {step.job.model} "
                          f"eps={step.job.eps:.4g} in chunks of {chunk}")

    def _run_chunk(self, model: nn.Module, step: Step, offset: int, lo: int, hi: int,
                   prior: SampleState | None) -> SampleState:
        generator = seed_everything(batch_seed(self.sweep.seed, step.job.job_id, step.batch_index, offset),
                                    self.device)
        x = self.prepare_inputs(self.sweep.dataset.x[lo:hi])
        y = self.sweep.dataset.y[lo:hi].to(self.device)
        try:
            return run_cascade(model, x, y, self.sweep.attacks, ThreatModel(self.sweep.norm, step.job.eps),
                               prior=prior, generator=generator)
        except NonFiniteOutputError as exc:
            raise NonFiniteOutputError(f"model {step.job.model!r} (eps {step.job.eps:.4g}, examples {lo}..{hi - 1}): "
                                       f"{exc}") from None
