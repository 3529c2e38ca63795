"""The settings of a training run (:class:`TrainConfig`), validated when made, and its result record.

Apart from the loops in :mod:`robustkit.training` because model cards, the ``robustkit train`` command
and the defenses build and print configs without running a loop. The text of a config is written verbatim
into the model card's ``training`` field.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from robustkit.errors import ConfigError, did_you_mean
from robustkit.threat import canonical_norm

METHODS = ("standard", "noise", "pgd", "fgsm", "trades", "pubdef")
ATTACKED = ("pgd", "fgsm", "trades", "pubdef")  # methods that train against an eps-ball
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "cosine", "cyclic", "onecycle")
AUGMENTATIONS = ("none", "shift")
DEFAULT_LR = {"adam": 1e-3, "sgd": 0.1}
DEFAULT_STEPS = {"pgd": 10, "trades": 10, "pubdef": 10}
TRADES_INIT_STD = 0.001


@dataclass
class TrainConfig:
    """Every setting of a training run (also written, verbatim, into the model card's ``training`` text)."""

    method: str = "standard"
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float | None = None              # None: 1e-3 for adam, 0.1 for sgd
    momentum: float = 0.9                # sgd only
    weight_decay: float = 0.0
    lr_schedule: str = "constant"        # constant | cosine | cyclic (0 -> lr at 2/5 of training -> 0) | onecycle
    augment: str = "none"                # none | shift (random translation by -1, 0 or +1 pixel per axis)
    seed: int = 0
    norm: str = "Linf"                   # threat model of pgd / fgsm / trades
    eps: float | None = None
    steps: int | None = None             # pgd / trades attack steps (default 10)
    step_size: float | None = None       # default 2.5 * eps / steps (pgd, trades), 1.25 * eps (fgsm)
    beta: float = 6.0                    # trades
    sigma: float | None = None           # noise
    temperature: float = 1.0             # distillation: loss on logits / T
    eps_warmup: int = 0                  # pgd / fgsm / trades: epochs over which eps (and step) ramp up from 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, key: str, expected: str) -> None:
            if not cond:
                raise ConfigError(f"training {key}: expected {expected}, got {getattr(self, key)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        self.method = str(self.method).lower()
        if self.method not in METHODS:
            raise ConfigError(f"training method: expected one of {', '.join(METHODS)}, got {self.method!r}"
                              f"{did_you_mean(self.method, METHODS)}")
        self.optimizer = str(self.optimizer).lower()
        need(self.optimizer in OPTIMIZERS, "optimizer", " or ".join(OPTIMIZERS))
        self.lr_schedule = str(self.lr_schedule).lower()
        need(self.lr_schedule in LR_SCHEDULES, "lr_schedule", ", ".join(LR_SCHEDULES))
        self.augment = str(self.augment).lower()
        need(self.augment in AUGMENTATIONS, "augment", " or ".join(AUGMENTATIONS))
        need(is_int(self.epochs) and self.epochs >= 1, "epochs", "an integer >= 1")
        need(is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "an integer >= 1")
        need(is_int(self.seed), "seed", "an integer")
        need(self.lr is None or (is_num(self.lr) and self.lr > 0), "lr", "a number > 0")
        need(is_num(self.momentum) and 0 <= self.momentum < 1, "momentum", "a number in [0, 1)")
        need(is_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "a number >= 0")
        need(is_num(self.temperature) and self.temperature > 0, "temperature", "a number > 0")
        self.norm = canonical_norm(self.norm)
        adversarial = self.method in ATTACKED
        if adversarial:
            need(self.norm in ("Linf", "L2"), "norm", "Linf or L2")
            need(self.eps is not None and is_num(self.eps) and self.eps > 0, "eps",
                 f"a number > 0 (method {self.method} trains against an eps-ball)")
            if self.norm == "Linf":
                need(self.eps <= 1, "eps", "a number <= 1 for Linf (inputs are in [0, 1])")
        elif self.eps is not None:
            raise ConfigError(f"training eps: only used by methods {', '.join(ATTACKED)}, not {self.method}")
        need(self.steps is None or (is_int(self.steps) and self.steps >= 1), "steps", "an integer >= 1")
        if self.steps is not None and self.method not in ("pgd", "trades", "pubdef"):
            raise ConfigError(f"training steps: only used by methods pgd, trades and pubdef, not {self.method}")
        need(self.step_size is None or (is_num(self.step_size) and self.step_size > 0), "step_size", "a number > 0")
        if self.step_size is not None and not adversarial:
            raise ConfigError(f"training step_size: only used by methods {', '.join(ATTACKED)}, not {self.method}")
        need(is_num(self.beta) and self.beta >= 0, "beta", "a number >= 0")
        need(is_int(self.eps_warmup) and 0 <= self.eps_warmup <= self.epochs, "eps_warmup",
             "an integer number of epochs in [0, epochs]")
        if self.eps_warmup and (not adversarial or self.method == "pubdef"):
            raise ConfigError(f"training eps_warmup: only used by methods pgd, fgsm and trades, not {self.method}")
        if self.method == "noise":
            need(self.sigma is not None and is_num(self.sigma) and self.sigma > 0, "sigma",
                 "a number > 0 (the noise std of method noise)")
        elif self.sigma is not None:
            raise ConfigError(f"training sigma: only used by method noise, not {self.method}")

    # resolved defaults -----------------------------------------------------------------------------
    @property
    def resolved_lr(self) -> float:
        return float(self.lr if self.lr is not None else DEFAULT_LR[self.optimizer])

    @property
    def resolved_steps(self) -> int:
        return int(self.steps if self.steps is not None else DEFAULT_STEPS.get(self.method, 1))

    @property
    def resolved_step_size(self) -> float:
        if self.step_size is not None:
            return float(self.step_size)
        assert self.eps is not None
        if self.method == "fgsm":
            return 1.25 * float(self.eps)
        return 2.5 * float(self.eps) / self.resolved_steps

    @property
    def threat_model(self) -> str | None:
        """The threat model trained against, as a card writes it (``Linf 0.3``); None for non-adversarial methods."""
        if self.method not in ATTACKED:
            return None
        return f"{self.norm} {self.eps:g}"

    def describe(self) -> str:
        """One line for a model card: method, threat model and every setting that shaped the weights."""
        parts = [f"method={self.method}"]
        if self.method in ATTACKED:
            parts.append(f"norm={self.norm} eps={self.eps:g} step_size={self.resolved_step_size:g}")
            if self.method != "fgsm":
                parts.append(f"steps={self.resolved_steps}")
            if self.method == "trades":
                parts.append(f"beta={self.beta:g}")
            if self.eps_warmup:
                parts.append(f"eps_warmup={self.eps_warmup}")
        if self.method == "noise":
            parts.append(f"sigma={self.sigma:g}")
        if self.temperature != 1:
            parts.append(f"temperature={self.temperature:g}")
        parts.append(f"epochs={self.epochs} batch_size={self.batch_size} optimizer={self.optimizer} "
                     f"lr={self.resolved_lr:g} lr_schedule={self.lr_schedule} weight_decay={self.weight_decay:g}")
        if self.augment != "none":
            parts.append(f"augment={self.augment}")
        if self.optimizer == "sgd":
            parts.append(f"momentum={self.momentum:g}")
        parts.append(f"seed={self.seed}")
        return " ".join(parts)


@dataclass
class TrainResult:
    """Per-epoch history (``loss``, ``train_acc`` on the inputs actually trained on, ``lr``, ``seconds``)."""

    config: TrainConfig
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "history": self.history}


def make_config(config: TrainConfig | None = None, **options: Any) -> TrainConfig:
    """A :class:`TrainConfig` from keyword options (unknown names are one-line errors)."""
    known = [f.name for f in fields(TrainConfig)]
    for key in options:
        if key not in known:
            raise ConfigError(f"training: unknown option {key!r}{did_you_mean(key, known)}; known: {', '.join(known)}")
    if config is None:
        return TrainConfig(**options)
    merged = {**asdict(config), **options}
    return TrainConfig(**merged)
