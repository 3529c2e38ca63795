"""Predictions that count: the final verdict on an (adversarial) input.

A deterministic model is asked once. A randomized model (one that declares ``randomized = True``, like a
noise-injection defense, or one whose repeated forward passes were seen to disagree -- see
:mod:`robustkit.randomness`) is asked ``n_passes`` times, and its prediction is the label that a strict
MAJORITY of the passes return. When no label gets more than half of the passes the prediction is
:data:`NO_MAJORITY` (-1), which equals no class: such an input is counted as misclassified (not robust) and
as not reaching any target. So "robust" means exactly "most passes predict the true label" -- a plurality
label vote would differ (4/10 correct with the other 6 passes split three ways would count as robust, and
a 5/5 tie would be decided by label order), and it would let a lucky noise draw flatter a defense.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from robustkit.errors import RobustkitError
# declared_randomized / detected_randomized / is_randomized are also importable from here: whether a model
# is random decides how its verdict is reached (they live in robustkit.randomness, below this module)
from robustkit.randomness import (declared_randomized, detected_randomized, is_randomized,  # noqa: F401
                                  refresh_randomized)

DEFAULT_VOTE_PASSES = 10
NO_MAJORITY = -1


class NonFiniteOutputError(RobustkitError):
    """A model returned NaN or infinite logits for an input a verdict depends on."""


def finite_logits(logits: torch.Tensor) -> torch.Tensor:
    """``logits``, after checking they are finite: argmax of a NaN row is class 0, so a model that returns NaN
    would otherwise be counted as predicting class 0 -- a silent wrong number, not a flag."""
    bad = ~torch.isfinite(logits)
    if bad.any():
        rows = int(bad.reshape(bad.shape[0], -1).any(dim=1).sum()) if bad.dim() else 1
        raise NonFiniteOutputError(f"the model returned NaN or infinite logits for {rows} of {logits.shape[0]} "
                                   f"inputs; no prediction can be made from them (fix the model, e.g. a division "
                                   f"by zero or an overflow in its forward pass)")
    return logits


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (or buffer; CPU for a model with neither).

    Attacks, training, checks and the engine all move inputs to where the model already is, rather than
    taking a device argument that could disagree with it.
    """
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put the model (all submodules) in eval mode and restore every submodule's previous state after.

    Attacks, verdicts, training's inner attacks and certification all run the model this way (BatchNorm
    statistics are not polluted by attack iterates; dropout is off).
    """
    states = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, was_training in states:
            m.training = was_training


@torch.no_grad()
def vote_counts(model: nn.Module, x: torch.Tensor, n_passes: int) -> torch.Tensor:
    """How many of ``n_passes`` forward passes predict each class: int64, shape (n, num_classes)."""
    votes: torch.Tensor | None = None
    for _ in range(max(1, n_passes)):
        logits = finite_logits(model(x))
        one_hot = torch.nn.functional.one_hot(logits.argmax(dim=1), num_classes=logits.shape[1])
        votes = one_hot if votes is None else votes + one_hot
    assert votes is not None
    return votes


def majority_label(votes: torch.Tensor) -> torch.Tensor:
    """The label with more than half of the votes in each row, else :data:`NO_MAJORITY`."""
    top_count, top_label = votes.max(dim=1)
    total = votes.sum(dim=1)
    return torch.where(2 * top_count > total, top_label, torch.full_like(top_label, NO_MAJORITY))


def _randomized_for_verdict(model: nn.Module, x: torch.Tensor) -> bool:
    """Declared, else cached detection, else detect now on ``x`` (and cache), so that a clean prediction made
    before any attack call already treats an undeclared random model as random."""
    declared = declared_randomized(model)
    if declared is not None:
        return declared
    cached = detected_randomized(model)
    if cached is not None:
        return bool(cached)
    return refresh_randomized(model, x)


def verdict_is_randomized(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`predict` treats ``model`` as randomized, probing it on ``x`` now if it was never probed
    (so that a caller can pay the one-time probe before it starts counting passes)."""
    return _randomized_for_verdict(model, x)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, n_passes: int | None = None) -> torch.Tensor:
    """Predicted labels (int64, shape (n,)).

    Deterministic models: the argmax of one pass. Randomized models (or ``n_passes > 1``): the label a
    strict majority of ``n_passes`` passes (default 10) agree on, :data:`NO_MAJORITY` (-1) where none does.
    With ``n_passes=None`` a model that declares nothing is probed once for randomness (two passes on up
    to 8 samples, cached per module by weak reference; attack calls refresh it).
    """
    if n_passes is None:
        n_passes = DEFAULT_VOTE_PASSES if _randomized_for_verdict(model, x) else 1
    if n_passes <= 1:
        return finite_logits(model(x)).argmax(dim=1)
    return majority_label(vote_counts(model, x, n_passes))
