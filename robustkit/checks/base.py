"""What a check is, what it gets to look at, and what it reports.

A check inspects one model of a finished sweep -- the model itself, a small subset of the evaluated
samples, the attack suite and the stored per-sample results -- and reports :class:`CheckResult` rows. A row
that ``fired`` becomes a flag on the leaderboard rows it concerns (all eps of the model when ``eps`` is None,
else the row at that eps). A check that does not apply (e.g. "iterative vs single-step" without both kinds of
attack in the suite) reports ``applicable=False`` and is never a flag. Checks only read: they never change a
stored verdict, so robust accuracy is the same with checks on, cheap or off.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd
import torch
from torch import nn

from robustkit.attacks import Attack

CHEAP = "cheap"
FULL = "full"
OFF = "off"
MODES = (CHEAP, FULL, OFF)

CHEAP_SUBSET = 32     # samples the cheap probes use (a few forward/backward passes on them)
FULL_SUBSET = 100     # clean-correct samples the re-running checks attack


@dataclass
class CheckResult:
    """One finding of one check on one model (``eps`` None: about the model as a whole)."""

    name: str
    fired: bool
    message: str
    eps: float | None = None
    applicable: bool = True
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class CheckContext:
    """What the checks of one model may look at. Attack re-runs draw from generators seeded by :meth:`generator`."""

    model: nn.Module
    model_name: str
    x: torch.Tensor                 # the evaluated samples (CPU)
    y: torch.Tensor
    attacks: list[Attack]
    norm: str
    eps: list[float]
    per_sample: pd.DataFrame        # this model's rows of per_sample.csv (all eps)
    seed: int
    device: torch.device
    cache: dict[Any, Any] = field(default_factory=dict)

    def generator(self, purpose: str) -> torch.Generator:
        """A generator seeded from (sweep seed, model, purpose): the checks are as reproducible as the sweep."""
        key = f"{self.seed}:{self.model_name}:{purpose}".encode()
        seed = int(hashlib.sha256(key).hexdigest()[:15], 16)
        return torch.Generator(device=self.device).manual_seed(seed)

    def head(self, n: int = CHEAP_SUBSET) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` samples, on the device."""
        return self.x[:n].to(self.device), self.y[:n].to(self.device)

    def subset_indices(self, n: int = FULL_SUBSET) -> torch.Tensor:
        """Dataset indices of the first ``n`` samples the model classifies correctly (stored clean verdicts)."""
        # without an Lp entry the per-sample rows are one section's clean verdicts (robustkit.engine.beyond_lp_checks)
        first_eps = self.per_sample[self.per_sample["eps"] == min(self.eps)] if self.eps else self.per_sample
        idx = first_eps.loc[first_eps["clean_correct"] == 1, "index"].to_numpy().copy()[:n]
        return torch.as_tensor(idx, dtype=torch.long)

    def clean_correct_subset(self, n: int = FULL_SUBSET) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples of :meth:`subset_indices`, on the device."""
        idx = self.subset_indices(n)
        return self.x[idx].to(self.device), self.y[idx].to(self.device)


Check = Callable[[CheckContext], list[CheckResult]]


@dataclass(frozen=True)
class CheckSpec:
    """A registered check: its flag name(s), family, mode (cheap or full) and function."""

    flags: tuple[str, ...]
    family: str
    mode: str
    run: Check
