"""Counting the forward and backward passes an evaluation spends on a model, per sample.

Seconds depend on the machine; pass counts do not, so the leaderboard reports both. The unit is the
*sample-pass*: a forward pass of a batch of k inputs counts k sample-forwards, and a backward pass through
that batch's output counts k sample-backwards (one per input row that received a gradient). The counter
works through a forward hook on the model itself (no wrapper), so the model keeps its identity, attributes
and declared properties for every attack that inspects it, and third-party attack code (the official
AutoAttack components, torchattacks) is counted exactly like robustkit's own.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class PassCounter:
    """Counts sample-forwards and sample-backwards of ``model`` while it is entered (``with PassCounter(m):``).

    Counters nest: two counters on the same model both count every pass.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.forward = 0
        self.backward = 0
        self._handle: Any = None

    def __enter__(self) -> "PassCounter":
        self._handle = self.model.register_forward_hook(self._on_forward)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @property
    def total(self) -> int:
        return self.forward + self.backward

    def snapshot(self) -> tuple[int, int]:
        return self.forward, self.backward

    def _on_forward(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        first = inputs[0] if inputs else None
        rows = int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() > 0 else 1
        self.forward += rows
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(self._on_backward)

    def _on_backward(self, grad: torch.Tensor) -> None:
        self.backward += int(grad.shape[0]) if grad.dim() > 0 else 1


def add_passes(into: dict[str, list[int]], label: str, forward: int, backward: int) -> None:
    """Accumulate ``[forward, backward]`` sample-passes under ``label`` (the per-attack record of a batch)."""
    counts = into.setdefault(label, [0, 0])
    counts[0] += int(forward)
    counts[1] += int(backward)
