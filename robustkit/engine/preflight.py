"""Checks the runner makes before computing: that every model fits the data, and that stored work is sound.

Why here and not later: a model whose output does not fit the data (5 logits on 10-class data, a tuple, a
(N, 1, C) tensor, NaN) does not crash an evaluation -- argmax still returns *a* class -- it silently yields
a wrong number. One forward pass on two examples of the evaluated data catches it before the sweep, as a
one-line error naming the model. Likewise a results store changed outside robustkit (rows deleted, bits
flipped) would otherwise be trusted as finished work: each job's stored batches are verified and the
failing ones recomputed (:meth:`robustkit.engine.store.ResultStore.verify_job`).
"""
from __future__ import annotations

import sys
from typing import Sequence

import torch
from torch import nn

from robustkit.attacks import eval_mode
from robustkit.errors import RobustkitError, short_repr

from robustkit.predict import model_device

from .leaderboard import PlannedJob
from .store import ResultStore
from .sweep import Sweep

PROBE_EXAMPLES = 2
LOW_PRECISION = (torch.float16, torch.bfloat16)

class ModelMismatchError(RobustkitError):
    """A model's input or output does not fit the evaluated data."""

def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return short_repr(text.splitlines()[0], 200).strip("'\"") if text else type(exc).__name__

def _first_conv(model: nn.Module) -> nn.Conv2d | None:
    return next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)

def probe_model(name: str, model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """One forward pass on ``x`` (a few examples of the data, on the model's device); raise
    :class:`ModelMismatchError` naming the model unless the output is a finite float (N, C) tensor with
    C >= ``num_classes``. float64 logits are accepted (argmax and losses are exact in float64); float16 and
    bfloat16 are refused, since attacks run in fp32 and low-precision logits flatten their gradients."""
    where = f"model {name!r}"
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters() if p.is_floating_point()})
    if dtypes and dtypes != ["float32"]:
        raise ModelMismatchError(f"{where}: its parameters are {'/'.join(dtypes)} but inputs are float32 [0, 1] "
                                 f"images (attacks run in fp32); convert it with model.float()")
    conv = _first_conv(model)
    if conv is not None and conv.groups == 1 and conv.in_channels != x.shape[1]:
        raise ModelMismatchError(f"{where}: its first convolution takes {conv.in_channels}-channel images but "
                                 f"the data has {x.shape[1]} channels ({tuple(x.shape[1:])})")
    x = x.to(model_device(model))
    try:
        with torch.no_grad(), eval_mode(model):
            out = model(x)
    except RobustkitError as exc:
        raise ModelMismatchError(f"{where}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any failure of user code is reported as one line
        raise ModelMismatchError(f"{where}: the forward pass on a {tuple(x.shape)} float32 batch of the data "
                                 f"failed ({type(exc).__name__}: {_first_line(exc)})") from None
    if not isinstance(out, torch.Tensor):
        raise ModelMismatchError(f"{where}: returned a {type(out).__name__}; expected a tensor of logits of "
                                 f"shape (N, C) (return only the logits from forward)")
    if out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise ModelMismatchError(f"{where}: returned shape {tuple(out.shape)} for {x.shape[0]} inputs; expected "
                                 f"logits of shape ({x.shape[0]}, C), one row per input")
    if not out.is_floating_point() or out.dtype in LOW_PRECISION:
        raise ModelMismatchError(f"{where}: returned {str(out.dtype).replace('torch.', '')} outputs; expected "
                                 f"float32 (or float64) logits")
    if out.shape[1] < num_classes:
        raise ModelMismatchError(f"{where}: outputs {out.shape[1]} logits but the data has {num_classes} classes; "
                                 f"evaluate it on data with at most {out.shape[1]} classes (check num_classes)")
    if not torch.isfinite(out).all():
        raise ModelMismatchError(f"{where}: returned NaN or infinite logits on the first {x.shape[0]} examples")

def probe_models(sweep: Sweep, device: torch.device) -> None:
    """:func:`probe_model` for every model of the sweep, on ``device``, before anything is computed."""
    x = sweep.dataset.x[:PROBE_EXAMPLES].to(device)
    for entry in sweep.models:
        original = model_device(entry.model)
        entry.model.to(device)
        try:
            probe_model(entry.name, entry.model, x, sweep.dataset.num_classes)
        finally:
            entry.model.to(original)

def verify_jobs(store: ResultStore, sweep: Sweep, jobs: Sequence[PlannedJob], batch_sizes: Sequence[int]) -> None:
    """Verify the stored batches of ``jobs`` (one model's, ascending eps); failing ones are dropped, said on
    stderr, and recomputed by the runner."""
    labels = sweep.dataset.y.numpy()
    for job, batch_size in zip(jobs, batch_sizes):
        dropped = store.verify_job(job.job_id, n_examples=len(sweep.dataset), batch_size=batch_size,
                                   labels=labels, n_attacks=len(sweep.attacks), prev_job_id=job.prev_job_id)
        if dropped:
            print(f"results store: recomputing {len(dropped)} batch(es) of {job.model} eps={job.eps:.4g} that "
                  f"failed verification: {'; '.join(dropped)[:300]}", file=sys.stderr)
