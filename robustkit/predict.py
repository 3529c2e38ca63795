"""Predictions that count: the final verdict on an (adversarial) input.

A deterministic model is asked once. A randomized model (one that declares ``randomized = True``, like a
noise-injection defense, or one whose repeated forward passes were seen to disagree -- see
:mod:`robustkit.attacks.eot`) is asked ``n_passes`` times, and its prediction is the label that a strict
MAJORITY of the passes return. When no label gets more than half of the passes the prediction is
:data:`NO_MAJORITY` (-1), which equals no class: such an input is counted as misclassified (not robust) and
as not reaching any target. So "robust" means exactly "most passes predict the true label" -- a plurality
label vote would differ (4/10 correct with the other 6 passes split three ways would count as robust, and
a 5/5 tie would be decided by label order), and it would let a lucky noise draw flatter a defense.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

from robustkit.errors import RobustkitError

DEFAULT_VOTE_PASSES = 10
NO_MAJORITY = -1

# What robustkit.attacks.eot detected per model ("repeated passes disagree"), held by weak reference so
# that the cache neither keeps a model alive nor writes anything onto the user's module.
_DETECTED: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()



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

def detected_randomized(model: nn.Module) -> bool | None:
    """The cached detection result for ``model`` (None if it was never probed)."""
    try:
        return _DETECTED.get(model)
    except TypeError:  # an unhashable module: nothing can be cached for it
        return None


def remember_detection(model: nn.Module, randomized: bool) -> None:
    """Cache a detection result for ``model`` (a no-op for modules that cannot be weakly referenced)."""
    try:
        _DETECTED[model] = bool(randomized)
    except TypeError:
        pass


def declared_randomized(model: nn.Module) -> bool | None:
    """What the model says about itself: True/False if declared, None if it says nothing.

    The top-level module's own ``randomized`` attribute wins (so a wrapper can state ``randomized = False``,
    e.g. because it fixes the seed); otherwise any submodule declaring ``randomized = True`` (a noise
    layer inside a ``Sequential``) makes the whole model randomized.
    """
    own = getattr(model, "randomized", None)
    if own is not None:
        return bool(own)
    for module in model.modules():
        if getattr(module, "randomized", None):
            return True
    return None


def is_randomized(model: nn.Module) -> bool:
    """True if the model declares that its forward pass is random, or was detected to be (and declares nothing)."""
    declared = declared_randomized(model)
    if declared is not None:
        return declared
    return bool(detected_randomized(model))


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
    from robustkit.attacks.eot import refresh_randomized  # lazy: the attacks package imports this module

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
