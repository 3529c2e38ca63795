"""The attack plugin contract.

An attack is a class registered by name (``@register_attack``) or through the ``robustkit.attacks``
entry-point group. It is configured with keyword parameters (validated against its ``defaults``, so a typo
in a sweep config is a one-line error), and called as ``attack(model, x, y, threat)``.

The base class gives every attack the same guarantees, whatever its implementation does inside
:meth:`Attack.perturb`:

* the model runs in eval mode and fp32 during the attack, and its train/eval state is restored afterwards;
* the returned inputs are projected into [0, 1] and the threat model's ball, then *checked*
  (:func:`robustkit.threat.check_budget`); a violation raises instead of counting;
* success is decided by re-predicting the returned inputs (majority vote for randomized models), never by
  trusting the attack's own bookkeeping;
* targeted modes (``targeted: random | least-likely | given``) are resolved once, here, for every attack;
* gradients go through :meth:`Attack.loss_and_grad`, which averages over ``eot_iter`` forward passes for
  randomized models (Expectation over Transformation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, final

import torch
from torch import nn

from robustkit.errors import ConfigError, did_you_mean, short_repr
from robustkit.predict import DEFAULT_VOTE_PASSES, eval_mode, model_device, predict
from robustkit.randomness import is_randomized, mean_logits, refresh_randomized
from robustkit.registry import Registry
from robustkit.threat import ThreatModel, check_budget, project

from .bpda import NonDifferentiableModelError, bpda_parts
from .losses import get_loss

ATTACKS: Registry[type["Attack"]] = Registry("attack", entry_point_group="robustkit.attacks")

TARGET_MODES = (False, "random", "least-likely", "given")
# Integer parameters (steps, restarts, queries, ...) above this are refused: a million iterations per batch
# is already days of compute, and 10**30 would only look like a hang.
MAX_INT_PARAM = 1_000_000
MAX_LABEL_LENGTH = 64
DEFAULT_EOT_ITER = 20

# Parameters every attack accepts, with their defaults.
COMMON_DEFAULTS: dict[str, Any] = {
    "targeted": False,   # False | "random" | "least-likely" | "given"
    "eot_iter": None,    # None: 1 for deterministic models, DEFAULT_EOT_ITER for randomized ones
    "label": None,       # display name in the leaderboard (acc_<label>); defaults to the attack name
}


def register_attack(name: str | None = None, *, aliases: tuple[str, ...] = ()):
    """Class decorator that registers an :class:`Attack` subclass under ``name`` (default: ``cls.name``)."""
    return ATTACKS.register(name, aliases=aliases)


@dataclass
class AttackResult:
    """What an attack returns for a batch.

    ``success`` is per sample and comes from re-predicting ``x_adv``: untargeted, the prediction differs from
    ``y``; targeted, it equals ``target``. ``norms`` are the float64 perturbation norms of ``x_adv - x``.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    pred: torch.Tensor
    norms: torch.Tensor
    target: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Attack:
    """Base class for attacks. Subclasses set the class attributes and implement :meth:`perturb`.

    :meth:`__call__` is final (as in foolbox 3's ``FixedEpsilonAttack``): it is where the guarantees above are
    enforced, so a subclass that defined its own ``__call__`` could silently skip the re-prediction or the
    budget check. Defining one raises ``TypeError`` when the class is created.
    """

    name: ClassVar[str] = ""
    norms: ClassVar[tuple[str, ...]] = ("Linf", "L2")
    kind: ClassVar[str] = "white-box"  # white-box | score-based | decision-based | transfer | minimum-norm
    supports_targeted: ClassVar[bool] = True
    implementation: ClassVar[str] = "robustkit"
    defaults: ClassVar[dict[str, Any]] = {}
    # True for attacks that read a patch threat model (robustkit.patch): their perturb() then also receives
    # ``mask`` and ``patch_side``; any other attack under a patch threat model is a ConfigError.
    patch_aware: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__call__" in cls.__dict__:
            raise TypeError(
                f"attack class {cls.__qualname__} defines __call__, which is final in robustkit.attacks.Attack "
                "(it re-predicts, projects and checks the budget); implement perturb(model, x, y, eps, norm, *, "
                "target, generator) instead (see docs/write-your-own-attack.md)"
            )

    def __init__(self, **params: Any) -> None:
        allowed = {**COMMON_DEFAULTS, **self.defaults}
        for key in params:
            if key not in allowed:
                raise ConfigError(
                    f"attack {short_repr(self.name)}: unknown parameter {short_repr(key)}{did_you_mean(key, allowed)}; "
                    f"known: {', '.join(sorted(allowed))}"
                )
        merged = {**allowed, **params}
        for key, default in allowed.items():
            merged[key] = self._check_type(key, merged[key], default)
        if merged["targeted"] is True:
            merged["targeted"] = "random"
        if merged["targeted"] not in TARGET_MODES:
            raise ConfigError(
                f"attack {short_repr(self.name)}: targeted: expected false, random, least-likely or given, got {short_repr(merged['targeted'])}"
            )
        if merged["targeted"] and not self.supports_targeted:
            raise ConfigError(f"attack {short_repr(self.name)} has no targeted mode")
        label = merged["label"]
        if label is not None and (not isinstance(label, str) or not label.strip() or len(label) > MAX_LABEL_LENGTH
                                  or not label.isprintable()):
            raise ConfigError(f"attack {short_repr(self.name)}: label: expected a one-line name of 1 to "
                              f"{MAX_LABEL_LENGTH} printable characters (it names the acc_<label> column), got "
                              f"{short_repr(label, 40)}")
        eot_iter = merged["eot_iter"]
        if eot_iter is not None and (isinstance(eot_iter, bool) or not isinstance(eot_iter, int) or eot_iter < 1
                                     or eot_iter > MAX_INT_PARAM):
            raise ConfigError(
                f"attack {short_repr(self.name)}: eot_iter: expected a positive integer (or null for auto), got {short_repr(eot_iter)}"
            )
        if "loss" in merged:
            get_loss(merged["loss"])
        self.params: dict[str, Any] = merged

    def _check_type(self, key: str, value: Any, default: Any) -> Any:
        """Coerce ints given for float parameters; reject values of the wrong type with a one-line error."""
        if default is None or value is None:
            return value
        if isinstance(default, bool):
            if key == "targeted":
                return value
            if not isinstance(value, bool):
                raise ConfigError(f"attack {short_repr(self.name)}: {key}: expected true or false, got {short_repr(value)}")
            return value
        if isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"attack {short_repr(self.name)}: {key}: expected an integer, got {short_repr(value)}")
            if abs(value) > MAX_INT_PARAM:
                raise ConfigError(f"attack {short_repr(self.name)}: {key}: {short_repr(value, 40)} is beyond the sane "
                                  f"upper bound {MAX_INT_PARAM}")
            return value
        if isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"attack {short_repr(self.name)}: {key}: expected a number, got {short_repr(value)}")
            if isinstance(value, int) and abs(value) > MAX_INT_PARAM or not math.isfinite(float(value)):
                raise ConfigError(f"attack {short_repr(self.name)}: {key}: expected a finite number of at most "
                                  f"{MAX_INT_PARAM}, got {short_repr(value, 40)}")
            return float(value)
        if isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"attack {short_repr(self.name)}: {key}: expected a string, got {short_repr(value)}")
        return value

    # ----------------------------------------------------------------------------------------- metadata
    @property
    def label(self) -> str:
        """Name used in leaderboard columns (``acc_<label>``)."""
        return str(self.params.get("label") or self.name)

    def config(self) -> dict[str, Any]:
        """Full, JSON-serialisable configuration: what produced a number (hashed into job identities)."""
        cfg = {k: v for k, v in self.params.items() if k != "label"}
        return {"name": self.name, "implementation": self.implementation, **cfg}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items() if v is not None)
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------------------------------ running
    @final
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                 target: torch.Tensor | None = None, generator: torch.Generator | None = None) -> AttackResult:
        if threat.norm not in self.norms:
            raise ConfigError(f"attack {short_repr(self.name)} supports norms {', '.join(self.norms)}, not {threat.norm}")
        is_patch = threat.mask is not None or threat.patch_side is not None
        if is_patch and not self.patch_aware:
            raise ConfigError(f"attack {short_repr(self.name)} does not support patch threat models")
        extra = {"mask": threat.mask, "patch_side": threat.patch_side} if self.patch_aware else {}
        device = model_device(model)
        x = x.detach().to(device=device, dtype=torch.float32)
        y = y.detach().to(device=device, dtype=torch.long)
        eps = threat.eps_tensor(x.shape[0], device)
        with eval_mode(model):
            # declared-or-detected, once per call; eot_samples() and predict() below read the cached answer
            randomized = refresh_randomized(model, x) if x.shape[0] else is_randomized(model)
            target = self.resolve_target(model, x, y, target, generator)
            if x.shape[0] == 0:
                x_adv = x.clone()
                info: dict[str, Any] = {}
            else:
                out = self.perturb(model, x, y, eps, threat.norm, target=target, generator=generator, **extra)
                x_adv, info = out if isinstance(out, tuple) else (out, {})
                x_adv = project(x, x_adv.detach().to(device=device, dtype=torch.float32), eps, threat.norm,
                                mask=threat.mask)
            norms = check_budget(x, x_adv, eps, threat.norm, who=f"attack {short_repr(self.name)}",
                             mask=threat.mask,
                                 patch_side=threat.patch_side)
            # randomized: robust only if a strict majority of the passes is correct (see robustkit.predict)
            n_votes = DEFAULT_VOTE_PASSES if randomized else 1
            pred = predict(model, x_adv, n_passes=n_votes) if x.shape[0] else y.clone()
            info = {**info, "randomized": randomized, "eot_iter": self.eot_samples(model),
                    "vote_passes": n_votes, "bpda_parts": bpda_parts(model)}
        success = (pred == target) if target is not None else (pred != y)
        return AttackResult(x_adv=x_adv, success=success, pred=pred, norms=norms, target=target, info=info)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, norm: str, *,
                target: torch.Tensor | None, generator: torch.Generator | None
                ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        """Return adversarial inputs for the batch (optionally with an info dict).

        ``eps`` is a float32 tensor of shape (n,); ``target`` is None for untargeted attacks. The model is
        already in eval mode. The base class projects and checks the result, so an implementation may be
        loose about float rounding but must not rely on out-of-budget inputs.
        """
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ helpers
    def resolve_target(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                       generator: torch.Generator | None) -> torch.Tensor | None:
        """Target labels for this batch (None when untargeted), resolved once for every attack.

        ``given``: the caller's labels, verbatim (validated: one per sample, integer class ids, != y, since a
        "target" equal to the true label would count as a success with no perturbation at all).
        ``least-likely``: argmin of the clean logits (averaged over the EOT passes for a randomized model).
        ``random``: uniform over the classes other than y (from ``generator`` when given).
        """
        mode = self.params.get("targeted", False)
        if not mode:
            return None
        if x.shape[0] == 0:
            return torch.zeros(0, dtype=torch.long, device=y.device)
        if mode == "least-likely":
            return mean_logits(model, x, self.eot_samples(model)).argmin(dim=1)
        with torch.no_grad():
            num_classes = int(model(x[:1]).shape[1])
        if mode == "given":
            return self._check_given_target(y, target, num_classes)
        # random: uniform over the classes other than y
        gen_device = generator.device if generator is not None else torch.device("cpu")
        offset = torch.randint(1, num_classes, (y.shape[0],), generator=generator, device=gen_device).to(y.device)
        return (y + offset) % num_classes

    def _check_given_target(self, y: torch.Tensor, target: torch.Tensor | None, num_classes: int) -> torch.Tensor:
        who = f"attack {short_repr(self.name)}: targeted: given"
        if target is None:
            raise ConfigError(f"{who} needs target labels, one per sample (none were passed)")
        target = torch.as_tensor(target)
        if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
            raise ConfigError(f"{who}: target labels must be integer class ids, got dtype {target.dtype}")
        target = target.reshape(-1).to(device=y.device, dtype=torch.long)
        if target.shape[0] != y.shape[0]:
            raise ConfigError(f"{who}: expected one target label per sample ({y.shape[0]}), got {target.shape[0]}")
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
            bad = int(target.min()) if int(target.min()) < 0 else int(target.max())
            raise ConfigError(f"{who}: target labels must be class ids in 0..{num_classes - 1}, got {bad}")
        same = target == y
        if bool(same.any()):
            i = int(same.nonzero()[0])
            raise ConfigError(f"{who}: {int(same.sum())} target label(s) equal the true label (e.g. sample {i}: "
                              f"{int(y[i])}); a target must differ from y")
        return target

    def eot_samples(self, model: nn.Module) -> int:
        """How many forward passes a gradient averages over (EOT).

        ``eot_iter`` when set; otherwise DEFAULT_EOT_ITER for a randomized model (declared, or detected at the
        start of this attack call) and 1 for a deterministic one.
        """
        n = self.params.get("eot_iter")
        if n is None:
            return DEFAULT_EOT_ITER if is_randomized(model) else 1
        return max(1, int(n))

    def loss_and_grad(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str,
                      target: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample loss (to maximise), its input gradient and the logits, averaged over EOT samples.

        Non-differentiable parts of a model take the BPDA substitute they declare (see
        :mod:`robustkit.attacks.bpda`) automatically, because that substitute lives in the autograd graph.
        """
        loss_fn = get_loss(loss)
        n = self.eot_samples(model)
        grad_sum = torch.zeros_like(x)
        loss_sum = torch.zeros(x.shape[0], device=x.device)
        logits_sum = None
        for _ in range(n):
            xr = x.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                logits = model(xr).float()
                per_sample = loss_fn(logits, y, target)
                grad = None
                if per_sample.requires_grad:
                    (grad,) = torch.autograd.grad(per_sample.sum(), xr, allow_unused=True)
                if grad is None:
                    raise NonDifferentiableModelError(
                        f"attack {short_repr(self.name)}: the model's output does not depend on its input through autograd "
                        "(a non-differentiable step?); wrap that step in robustkit.attacks.bpda.BPDA"
                    )
            grad_sum += grad.detach()
            loss_sum += per_sample.detach()
            logits_sum = logits.detach() if logits_sum is None else logits_sum + logits.detach()
        assert logits_sum is not None
        return loss_sum / n, grad_sum / n, logits_sum / n
