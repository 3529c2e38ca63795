"""Input normalization as a layer *inside* the model.

robustkit feeds every model images in [0, 1] and measures perturbations there; a model that was trained on
standardized inputs therefore carries its ``(x - mean) / std`` as its first module. Doing it anywhere else
(e.g. in the data loader) would silently rescale the threat model's epsilon.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import nn

from robustkit.errors import ConfigError, short_repr

# Named presets a card may use instead of spelling out the numbers.
NORMALIZATION_PRESETS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
}


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel. mean/std are non-persistent buffers: they follow ``.to(device)``
    but stay out of the state dict, so checkpoints of the bare network still load unchanged."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self._values = (tuple(float(m) for m in mean), tuple(float(s) for s in std))  # exact, for repr
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(list(std), dtype=torch.float32).reshape(1, -1, 1, 1)
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={list(self._values[0])}, std={list(self._values[1])}"


def parse_normalization(value: Any, field: str = "normalization") -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Validate a card's ``normalization``: null, a preset name, or ``{mean: [...], std: [...]}``."""
    if value is None:
        return None
    if isinstance(value, str):
        key = value.strip().lower()
        if key not in NORMALIZATION_PRESETS:
            raise ConfigError(
                f"{field}: unknown preset {short_repr(value)}; expected null, one of {', '.join(NORMALIZATION_PRESETS)} "
                f"or {{mean: [...], std: [...]}}"
            )
        return NORMALIZATION_PRESETS[key]
    if not isinstance(value, dict) or set(value) != {"mean", "std"}:
        raise ConfigError(f"{field}: expected null, a preset name or a mapping with exactly mean and std, got {short_repr(value)}")
    out = []
    for part in ("mean", "std"):
        seq = value[part]
        if isinstance(seq, (int, float)) and not isinstance(seq, bool):
            seq = [seq]
        if not isinstance(seq, (list, tuple)) or not seq or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in seq
        ):
            raise ConfigError(f"{field}.{part}: expected a non-empty list of numbers, got {short_repr(seq)}")
        out.append(tuple(float(v) for v in seq))
    mean, std = out
    if len(mean) != len(std):
        raise ConfigError(f"{field}: mean has {len(mean)} values but std has {len(std)}")
    if any(s <= 0 for s in std):
        raise ConfigError(f"{field}.std: every value must be > 0, got {list(std)}")
    return mean, std


def with_normalization(net: nn.Module, normalization: tuple[Sequence[float], Sequence[float]] | None) -> nn.Module:
    """Return ``net`` itself when there is no normalization, else ``Sequential(normalize, model=net)``."""
    if normalization is None:
        return net
    mean, std = normalization
    return nn.Sequential(OrderedDict([("normalize", Normalize(mean, std)), ("model", net)]))
