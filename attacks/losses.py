"""Per-sample attack objectives (to be maximised by the attacker).

``ce``: cross-entropy of the true class (untargeted) or minus cross-entropy of the target (targeted).
``margin``: the Carlini–Wagner logit margin ``max_{j != y} z_j - z_y`` (untargeted) or ``z_t - max_{j != t} z_j``
(targeted); positive exactly when the attack succeeds, and it does not vanish when softmax saturates.
``dlr``: the Difference-of-Logits-Ratio of Croce & Hein (2020), scale invariant.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from robustkit.errors import ConfigError, did_you_mean

LossFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def _other_max(logits: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    masked = logits.clone()
    masked.scatter_(1, cls[:, None], float("-inf"))
    return masked.amax(dim=1)


def ce_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    if target is None:
        return F.cross_entropy(logits, y, reduction="none")
    return -F.cross_entropy(logits, target, reduction="none")


def margin_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    if target is None:
        return _other_max(logits, y) - logits.gather(1, y[:, None]).squeeze(1)
    return logits.gather(1, target[:, None]).squeeze(1) - _other_max(logits, target)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    srt, _ = logits.sort(dim=1)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    if target is None:
        denom = srt[:, -1] - srt[:, -3] + 1e-12
        return (_other_max(logits, y) - z_y) / denom
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    denom = srt[:, -1] - 0.5 * (srt[:, -3] + srt[:, -4]) + 1e-12
    return (z_t - z_y) / denom


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "margin": margin_loss, "dlr": dlr_loss}


def get_loss(name: str) -> LossFn:
    key = str(name).lower()
    if key not in LOSSES:
        raise ConfigError(f"loss: expected one of {', '.join(LOSSES)}, got {name!r}{did_you_mean(key, LOSSES)}")
    return LOSSES[key]
