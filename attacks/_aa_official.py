"""Running the official AutoAttack package (github.com/fra31/auto-attack) one component at a time.

The official ``AutoAttack`` takes a single eps at construction, so one object is made per distinct eps value
in the batch. Each component is run through the official ``run_standard_evaluation`` with
``attacks_to_run = [component]`` on the points that are still robust: that is exactly what the official loop
does internally, but it lets us record which component broke each sample (the official call only returns
the final adversarial batch). The objects are kept across components, so state the official loop carries
from one component to the next (FAB-T setting ``fab.n_restarts = 1``) carries over here too.

The official code logs its sanity checks (randomized or dynamic defense, probabilities instead of logits,
zero gradients) by printing ``Warning: ...``; those lines are collected, de-duplicated and re-issued as
Python warnings instead of being printed once per component.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import torch
from torch import nn

from robustkit.errors import ConfigError

from ._aa_reference import ComponentPlan
from ._aa_torchattacks import INSTALL_OFFICIAL


class OfficialAutoAttackWarning(UserWarning):
    """A sanity-check warning printed by the official AutoAttack code."""


def load_official() -> Any | None:
    """The official ``AutoAttack`` class, or None where the package is missing or broken."""
    try:
        from autoattack import AutoAttack  # the official package (top-level name ``autoattack``)
    except Exception:  # a broken install is as unusable as a missing one
        return None
    return AutoAttack


def official_version() -> str:
    """The installed distribution's version ("0.1" for a git install), or "" when it is not installed as one
    (e.g. a source checkout on PYTHONPATH)."""
    try:
        from importlib.metadata import version

        return version("autoattack")
    except Exception:
        return ""


def require_official() -> Any:
    cls = load_official()
    if cls is None:
        raise ConfigError(f"attack 'autoattack': implementation: official needs the official AutoAttack package, "
                          f"which is not importable; install it with: {INSTALL_OFFICIAL}")
    return cls


class OfficialEnsemble:
    """Official AutoAttack objects (one per eps) that run one named component on a batch."""

    def __init__(self, model: nn.Module, norm: str, version: str, plan: list[ComponentPlan], seed: int,
                 device: torch.device) -> None:
        self._cls = require_official()
        self._model = model
        self._norm = norm
        self._version = version
        self._plan = {c.name: c for c in plan}
        self._seed = int(seed)
        self._device = device
        self._by_eps: dict[float, Any] = {}
        self.messages: list[str] = []

    def _adversary(self, eps: float) -> Any:
        if eps not in self._by_eps:
            custom = self._version == "custom"
            adversary = self._cls(self._model, norm=self._norm, eps=float(eps), seed=self._seed, verbose=False,
                                  attacks_to_run=list(self._plan) if custom else [], version=self._version,
                                  device=self._device)
            self._apply_plan(adversary)
            self._by_eps[eps] = adversary
        return self._by_eps[eps]

    def _apply_plan(self, adversary: Any) -> None:
        """Settings where our plan may differ from the official object: capped targets, user eot_iter."""
        if "apgd-t" in self._plan:
            adversary.apgd_targeted.n_target_classes = self._plan["apgd-t"].n_target_classes
            adversary.apgd_targeted.eot_iter = self._plan["apgd-t"].eot_iter
        if "fab-t" in self._plan:
            adversary.fab.n_target_classes = self._plan["fab-t"].n_target_classes
        for name in ("apgd-ce", "apgd-dlr"):
            if name in self._plan:
                adversary.apgd.eot_iter = self._plan[name].eot_iter

    def run(self, name: str, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        adversary = self._adversary(eps)
        adversary.attacks_to_run = [name]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            x_adv = adversary.run_standard_evaluation(x, y, bs=x.shape[0])
        for line in out.getvalue().splitlines():
            line = line.strip()
            if line.startswith("Warning:") and line not in self.messages:
                self.messages.append(line)
                warnings.warn(f"official AutoAttack: {line[len('Warning:'):].strip()}", OfficialAutoAttackWarning,
                              stacklevel=2)
        return x_adv.detach()
