"""Predictions that count: the final verdict on an (adversarial) input.

A deterministic model is asked once. A randomized model (one that declares ``randomized = True``, like a
noise-injection defense) is asked ``n_passes`` times and the majority label is its prediction, so that a
lucky noise draw cannot make an adversarial example look like it failed (or succeeded).
"""
from __future__ import annotations

import torch
from torch import nn

DEFAULT_VOTE_PASSES = 10


def is_randomized(model: nn.Module) -> bool:
    """True if the model (or a defense wrapping it) declares that its forward pass is random."""
    return bool(getattr(model, "randomized", False))


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, n_passes: int | None = None) -> torch.Tensor:
    """Predicted labels (int64, shape (n,)); majority over ``n_passes`` forward passes for randomized models."""
    if n_passes is None:
        n_passes = DEFAULT_VOTE_PASSES if is_randomized(model) else 1
    if n_passes <= 1:
        return model(x).argmax(dim=1)
    votes: torch.Tensor | None = None
    for _ in range(n_passes):
        logits = model(x)
        one_hot = torch.nn.functional.one_hot(logits.argmax(dim=1), num_classes=logits.shape[1])
        votes = one_hot if votes is None else votes + one_hot
    assert votes is not None
    return votes.argmax(dim=1)
