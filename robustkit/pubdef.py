"""PubDef training (Sitawarin, Chang, Huang, Altoyan & Wagner, "PubDef: Defending Against Transfer Attacks From
Public Models", ICLR 2024): train on transfer examples from a few public (surrogate) models.

The threat is an attacker who only has public models: the defender's game against it is played over the
surrogates' transfer examples. As in the paper's code, the transfer examples are made once, before training
(the surrogates are fixed, so their examples do not depend on the model being trained): one set per
surrogate, by PGD on the surrogate's cross-entropy at the training eps. Every batch then holds the clean
images and each surrogate's transfer examples of the same images, and the loss is the weighted sum of the
per-set mean cross-entropies. The weights are the defender's mixed strategy of the paper's game
(``WeightedExpLoss`` of the official code): the clean set keeps its weight ``1 / (K + 1)``; the K transfer sets
share ``K / (K + 1)`` in proportion to an exponential moving average of their losses (smoothing 0.99, the
official default), so the sources whose examples currently hurt most get the most weight.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustkit.errors import ConfigError
from robustkit.predict import eval_mode, model_device

EMA_SMOOTHING = 0.99  # weight of the newest loss in the moving average (official default)

AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def check_surrogates(surrogates: Sequence[nn.Module] | None) -> list[nn.Module]:
    """The surrogate list of method pubdef: at least one nn.Module."""
    models = list(surrogates or [])
    if not models:
        raise ConfigError("training method pubdef: needs at least one surrogate model (CLI: --surrogate NAME, "
                          "repeatable)")
    for i, m in enumerate(models):
        if not isinstance(m, nn.Module):
            raise ConfigError(f"training method pubdef: surrogate {i} is a {type(m).__name__}, not a torch nn.Module")
    return models


@torch.no_grad()
def stacked_transfer_inputs(x: torch.Tensor, y: torch.Tensor, surrogates: Sequence[nn.Module], attack: AttackFn,
                            batch_size: int) -> torch.Tensor:
    """``(N, 1 + K, C, H, W)``: the clean images, then each surrogate's transfer examples of them (on CPU)."""
    sets = [x.detach().cpu().float()]
    for surrogate in surrogates:
        device = model_device(surrogate)
        parts = []
        with eval_mode(surrogate):
            for start in range(0, x.shape[0], batch_size):
                xb = x[start:start + batch_size].to(device, torch.float32)
                parts.append(attack(surrogate, xb, y[start:start + batch_size].to(device)).cpu())
        sets.append(torch.cat(parts))
    return torch.stack(sets, dim=1)


class DynamicWeights:
    """The defender's mixed strategy over the clean set and the K transfer sets (see the module docstring)."""

    def __init__(self, n_sets: int) -> None:
        self.average = torch.full((n_sets,), 1.0 / n_sets)
        self.clean_weight = 1.0 / n_sets

    def loss(self, model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted loss, clean logits) for a batch ``xb`` of shape (B, 1 + K, C, H, W)."""
        batch, n_sets = xb.shape[:2]
        logits = model(xb.flatten(0, 1)).float().view(batch, n_sets, -1)
        losses = torch.stack([F.cross_entropy(logits[:, k], yb) for k in range(n_sets)])
        self.average = (1 - EMA_SMOOTHING) * self.average + EMA_SMOOTHING * losses.detach().cpu()
        share = self.average[1:] / self.average[1:].sum()
        weights = torch.cat([torch.tensor([self.clean_weight]), (1 - self.clean_weight) * share]).to(losses.device)
        return (weights * losses).sum(), logits[:, 0]
