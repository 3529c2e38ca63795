"""Every torchattacks attack as a robustkit attack: ``torchattacks:<Class>`` (e.g. ``torchattacks:PGD``).

Why a wrapper and not a re-implementation: torchattacks is a well-kept library with ~40 attacks, and a
number computed with it is comparable with the many papers that use it. What it does not give is what a
published robustness number needs, so the robustkit :class:`~robustkit.attacks.Attack` base adds it around
every call: eval mode with the train state restored, projection onto the threat model and a budget check,
success decided by re-predicting the returned inputs, and targeted modes resolved once.

What this module decides, per torchattacks class, lives in one table (:data:`TORCHATTACKS_TABLE`):

* which threat-model norms the class can run under, and which constructor argument receives the threat
  model's eps (``eps``, or ``max_epsilon`` for PIFGSM/PIFGSMPP) -- eps and norm always come from the threat
  model, never from the attack config, so a sweep cannot silently attack a different ball than it reports;
* *unbounded* classes (CW, DeepFool, EAD, JSMA, OnePixel, Pixle, SparseFool, GN, VANILA) have no eps: an
  example they return outside the ball must not count, and rescaling it into the ball would be a different,
  un-published attack. Such samples are returned unchanged (``x``) instead, so they count as robust; the
  number discarded is reported as ``info["discarded_over_eps"]``;
* the ``kind`` (white-box, score-based, minimum-norm, baseline) shown by ``robustkit attacks list``.

Other behaviour:

* per-sample eps: torchattacks takes one eps per call, so the batch is grouped by eps value and each group
  attacked with its own instance;
* targeted modes: the base class has already chosen the target labels (``random``/``least-likely``/
  ``given``); the wrapper hands *exactly those* to torchattacks with ``set_mode_targeted_by_function`` (true
  labels stay in ``labels``), or ``set_mode_targeted_by_label`` for the two classes that read the target
  from ``labels`` (SPSA, PIFGSMPP). Letting torchattacks draw its own random/least-likely target would make
  the attack aim at a different class than success is judged against; and ``targeted(label)`` mode for all
  classes would break FAB, which also reads ``labels`` as the true class;
* randomness: torchattacks draws from the global torch RNG (the engine seeds it per batch). When a
  ``generator`` is given, a seed drawn from it seeds the global RNG inside ``torch.random.fork_rng``, so the
  result depends only on the generator and the caller's RNG state is left untouched (also by classes such as
  APGD/FAB/Square that call ``torch.manual_seed`` themselves). AutoAttack's ``seed=None`` (wall-clock time in
  torchattacks) is replaced by a seed drawn the same way, so it is deterministic too;
* randomized models: classes with their own ``eot_iter`` (APGD, APGDT, EOTPGD, UPGD) get robustkit's EOT count;
  the others attack the mean logits over that many forward passes (gradient of the average = average of the
  gradients), so a noise-injection defense is not flattered by single-sample gradients;
* ``n_classes`` (APGDT, FAB, AutoAttack; torchattacks default 10) is read from the model's output unless set.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import io
from dataclasses import dataclass
from importlib import metadata
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from robustkit.errors import ConfigError, did_you_mean
from robustkit.threat import perturbation_norm

from .base import Attack

PREFIX = "torchattacks:"
ALL_NORMS = ("Linf", "L2", "L1")


@dataclass(frozen=True)
class TorchattacksSpec:
    """What robustkit needs to know about one torchattacks class (not introspectable from torchattacks)."""

    norms: tuple[str, ...]
    kind: str
    eps_arg: str | None = "eps"       # constructor argument receiving the threat model's eps; None: unbounded
    norm_arg: bool = False            # the class takes norm='Linf'|'L2' and gets the threat model's norm
    target_in_labels: bool = False    # targeted mode reads the target from `labels` instead of get_target_label
    rgb_only: bool = False            # grouped 3-channel convolutions inside: needs 3-channel inputs
    note: str = ""

    @property
    def bounded(self) -> bool:
        return self.eps_arg is not None


_L0 = "L0 attack: judged under the threat model's norm"
_RGB = "3-channel inputs only"

# One row per torchattacks 3.5.1 attack class. Norms follow torchattacks' own grouping (its __init__ and
# docstrings); FAB's L1 mode is left out because it crashes in torchattacks 3.5.1 (UnboundLocalError).
TORCHATTACKS_TABLE: dict[str, TorchattacksSpec] = {
    # Linf-bounded gradient attacks
    "FGSM": TorchattacksSpec(("Linf",), "white-box"),
    "BIM": TorchattacksSpec(("Linf",), "white-box"),
    "RFGSM": TorchattacksSpec(("Linf",), "white-box"),
    "PGD": TorchattacksSpec(("Linf",), "white-box"),
    "EOTPGD": TorchattacksSpec(("Linf",), "white-box"),
    "FFGSM": TorchattacksSpec(("Linf",), "white-box"),
    "TPGD": TorchattacksSpec(("Linf",), "white-box", note="TRADES KL loss; ignores labels"),
    "MIFGSM": TorchattacksSpec(("Linf",), "white-box"),
    "UPGD": TorchattacksSpec(("Linf",), "white-box"),
    "DIFGSM": TorchattacksSpec(("Linf",), "white-box"),
    "TIFGSM": TorchattacksSpec(("Linf",), "white-box", rgb_only=True, note=_RGB),
    "Jitter": TorchattacksSpec(("Linf",), "white-box"),
    "NIFGSM": TorchattacksSpec(("Linf",), "white-box"),
    "PGDRS": TorchattacksSpec(("Linf",), "white-box"),
    "SINIFGSM": TorchattacksSpec(("Linf",), "white-box"),
    "VMIFGSM": TorchattacksSpec(("Linf",), "white-box"),
    "VNIFGSM": TorchattacksSpec(("Linf",), "white-box"),
    "PIFGSM": TorchattacksSpec(("Linf",), "white-box", eps_arg="max_epsilon", rgb_only=True, note=_RGB),
    "PIFGSMPP": TorchattacksSpec(("Linf",), "white-box", eps_arg="max_epsilon", target_in_labels=True,
                                 rgb_only=True, note=_RGB),
    "SPSA": TorchattacksSpec(("Linf",), "score-based", target_in_labels=True),
    # L2-bounded
    "PGDL2": TorchattacksSpec(("L2",), "white-box"),
    "PGDRSL2": TorchattacksSpec(("L2",), "white-box"),
    # the norm is an argument
    "APGD": TorchattacksSpec(("Linf", "L2"), "white-box", norm_arg=True),
    "APGDT": TorchattacksSpec(("Linf", "L2"), "white-box", norm_arg=True,
                              note="targeted over the top classes internally"),
    "AutoAttack": TorchattacksSpec(("Linf", "L2"), "white-box", norm_arg=True,
                                   note="ensemble incl. score-based Square"),
    "FAB": TorchattacksSpec(("Linf", "L2"), "minimum-norm", norm_arg=True),
    "Square": TorchattacksSpec(("Linf", "L2"), "score-based", norm_arg=True),
    # unbounded: examples outside the ball are returned as x (do not count)
    "CW": TorchattacksSpec(("L2",), "minimum-norm", eps_arg=None),
    "DeepFool": TorchattacksSpec(("L2",), "minimum-norm", eps_arg=None),
    "EADEN": TorchattacksSpec(("L2",), "minimum-norm", eps_arg=None),
    "EADL1": TorchattacksSpec(("L1",), "minimum-norm", eps_arg=None),
    "SparseFool": TorchattacksSpec(ALL_NORMS, "minimum-norm", eps_arg=None, note=_L0),
    "JSMA": TorchattacksSpec(ALL_NORMS, "white-box", eps_arg=None,
                             note=_L0 + "; untargeted aims at (y+1) mod 10"),
    "OnePixel": TorchattacksSpec(ALL_NORMS, "score-based", eps_arg=None, note=_L0),
    "Pixle": TorchattacksSpec(ALL_NORMS, "score-based", eps_arg=None, note=_L0),
    "GN": TorchattacksSpec(ALL_NORMS, "baseline", eps_arg=None, note="Gaussian noise; does not query the model"),
    "VANILA": TorchattacksSpec(ALL_NORMS, "baseline", eps_arg=None, note="returns the input unchanged"),
}

# torchattacks classes that are not attacks on one model with config-file parameters.
NOT_WRAPPED: dict[str, str] = {
    "MultiAttack": "it combines already-built torchattacks objects; list the attacks in the sweep instead "
                   "(robustkit takes the worst case over them per sample)",
    "LGV": "it needs a training DataLoader and trains surrogate models; use the 'transfer' attack with "
           "surrogate models instead",
}

# Constructor arguments whose torchattacks default is an int but whose value is a real number.
_REAL_VALUED = {"c", "kappa", "scale", "lam", "nsig"}


def torchattacks_version() -> str:
    """The installed torchattacks version, read without importing it (the import takes ~1 s)."""
    try:
        return metadata.version("torchattacks")
    except metadata.PackageNotFoundError:  # pragma: no cover - torchattacks is a dependency
        return "unknown"


IMPLEMENTATION = f"torchattacks-{torchattacks_version()}"


def _import_torchattacks():
    try:
        import torchattacks
    except Exception as exc:  # a broken install must be one line, not a traceback
        raise ConfigError(f"torchattacks attacks need the torchattacks package, which failed to import: {exc}") from exc
    return torchattacks


def _canonical_class_name(class_name: str) -> str:
    """'pgd' → 'PGD'; unknown or unwrapped names raise a one-line ConfigError."""
    known = {**{k: k for k in TORCHATTACKS_TABLE}, **{k: k for k in NOT_WRAPPED}}
    by_lower = {k.lower(): k for k in known}
    canonical = by_lower.get(class_name.strip().lower())
    if canonical is None:
        hint = did_you_mean(class_name.strip().lower(), [k.lower() for k in TORCHATTACKS_TABLE])
        for k in TORCHATTACKS_TABLE:  # suggest the class's own spelling
            hint = hint.replace(f'"{k.lower()}"', f'"{k}"')
        raise ConfigError(
            f"unknown attack {PREFIX + class_name!r}{hint}; "
            f"torchattacks attacks: {', '.join(sorted(TORCHATTACKS_TABLE, key=str.lower))}"
        )
    if canonical in NOT_WRAPPED:
        raise ConfigError(f"attack {PREFIX + canonical!r} is not available: {NOT_WRAPPED[canonical]}")
    return canonical


def torchattacks_attack_names() -> list[str]:
    """``torchattacks:<Class>`` for every wrapped class, sorted case-insensitively."""
    return [PREFIX + k for k in sorted(TORCHATTACKS_TABLE, key=str.lower)]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torchattacks prints when it is constructed (e.g. 'Failed to set device automatically' for a model
    without parameters); keep the evaluator's output clean. Attacks run unmuted, so ``verbose: true`` works."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _dummy_model() -> nn.Module:
    return nn.Linear(1, 1)


def _constructor_defaults(ta_cls: type, spec: TorchattacksSpec) -> dict[str, Any]:
    """The torchattacks constructor's keyword arguments and defaults, minus what robustkit supplies."""
    supplied = {"self", "model", "eot_iter"}  # eot_iter is robustkit's common parameter (same meaning)
    if spec.eps_arg:
        supplied.add(spec.eps_arg)
    if spec.norm_arg:
        supplied.add("norm")
    defaults: dict[str, Any] = {}
    for p in inspect.signature(ta_cls.__init__).parameters.values():
        if p.name in supplied or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = None if p.default is inspect.Parameter.empty else p.default
        if p.name in _REAL_VALUED and isinstance(default, int) and not isinstance(default, bool):
            default = float(default)
        defaults[p.name] = default
    return defaults


def _constructor_params(ta_cls: type) -> set[str]:
    return set(inspect.signature(ta_cls.__init__).parameters)


class _MeanLogits(nn.Module):
    """Logits averaged over ``n`` forward passes: EOT for torchattacks classes that have no ``eot_iter``."""

    def __init__(self, model: nn.Module, n: int) -> None:
        super().__init__()
        self.model = model
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = self.model(x).float()
        for _ in range(self.n - 1):
            total = total + self.model(x).float()
        return total / self.n


class TorchattacksAttack(Attack):
    """Base of the generated ``torchattacks:<Class>`` attacks; see the module docstring for the rules."""

    name: ClassVar[str] = "torchattacks"
    implementation: ClassVar[str] = IMPLEMENTATION
    ta_class_name: ClassVar[str] = ""
    spec: ClassVar[TorchattacksSpec]

    def __init__(self, **params: Any) -> None:
        for key in params:
            if key == "model":
                raise ConfigError(f"attack {self.name!r}: 'model' is not a parameter; the model is the one evaluated")
            if key in ("eps", "norm", self.spec.eps_arg):
                raise ConfigError(
                    f"attack {self.name!r}: {key!r} comes from the threat model (threat_model.{'norm' if key == 'norm' else 'eps'}),"
                    f" not from the attack parameters; remove it"
                )
        super().__init__(**params)
        self._given = set(params)
        for key, default in self.defaults.items():  # YAML gives lists where torchattacks defaults are tuples
            if isinstance(default, tuple) and isinstance(self.params.get(key), list):
                self.params[key] = tuple(self.params[key])
        # Fail at configuration time, not in the middle of a sweep, if torchattacks rejects the parameters.
        default_eps = 8 / 255 if "Linf" in self.spec.norms else 0.5
        self.build_torchattacks(_dummy_model(), default_eps, self.spec.norms[0], n_classes=10)

    # ------------------------------------------------------------------------------- torchattacks object
    def _ta_class(self) -> type:
        return getattr(_import_torchattacks(), self.ta_class_name)

    def constructor_kwargs(self, eps: float, norm: str, *, n_classes: int | None = None,
                           eot_iter: int | None = None, seed: int | None = None) -> dict[str, Any]:
        """Keyword arguments for the torchattacks constructor (everything but the model)."""
        ctor = _constructor_params(self._ta_class())
        kwargs = {k: self.params[k] for k in self.defaults}
        if self.spec.eps_arg:
            kwargs[self.spec.eps_arg] = float(eps)
        if self.spec.norm_arg:
            kwargs["norm"] = norm
        if "n_classes" in ctor and "n_classes" not in self._given and n_classes is not None:
            kwargs["n_classes"] = int(n_classes)
        if "eot_iter" in ctor and eot_iter is not None:
            kwargs["eot_iter"] = int(eot_iter)
        if "seed" in ctor and kwargs.get("seed") is None and seed is not None:
            kwargs["seed"] = int(seed)  # AutoAttack's seed=None means wall-clock time in torchattacks
        return kwargs

    def build_torchattacks(self, model: nn.Module, eps: float, norm: str, *, n_classes: int | None = None,
                           eot_iter: int | None = None, seed: int | None = None) -> Any:
        """The configured torchattacks object for ``model`` at one eps (targeted mode not yet set)."""
        ta_cls = self._ta_class()
        kwargs = self.constructor_kwargs(eps, norm, n_classes=n_classes, eot_iter=eot_iter, seed=seed)
        try:
            with _quiet():
                atk = ta_cls(model, **kwargs)
        except (TypeError, ValueError, AssertionError, KeyError, IndexError) as exc:
            raise ConfigError(f"attack {self.name!r}: torchattacks rejected the parameters {kwargs}: {exc}") from exc
        return atk

    # ---------------------------------------------------------------------------------------- running
    def _eot_setting(self, model: nn.Module) -> tuple[nn.Module, int | None]:
        """(model to attack, eot_iter for the constructor) following robustkit's EOT rule."""
        n = self.eot_samples(model)
        native = "eot_iter" in _constructor_params(self._ta_class())
        if native:
            explicit = self.params.get("eot_iter") is not None
            return model, (n if (explicit or n > 1) else None)
        if n > 1:
            return _MeanLogits(model, n).eval(), None
        return model, None

    @contextlib.contextmanager
    def _rng_scope(self, generator: torch.Generator | None, device: torch.device) -> Iterator[None]:
        if generator is None:
            yield
            return
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(seed)
            yield

    def _set_target_mode(self, atk: Any, target: torch.Tensor) -> None:
        if self.spec.target_in_labels:
            atk.set_mode_targeted_by_label(quiet=True)
            return

        def fixed_target(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            if images.shape[0] != target.shape[0]:  # torchattacks asks once, for the whole batch it was given
                raise RuntimeError(f"{self.name}: target requested for {images.shape[0]} inputs, have {target.shape[0]}")
            return target.to(images.device)

        atk.set_mode_targeted_by_function(fixed_target, quiet=True)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor, norm: str, *,
                target: torch.Tensor | None, generator: torch.Generator | None
                ) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.spec.rgb_only and (x.dim() != 4 or x.shape[1] != 3):
            raise ConfigError(f"attack {self.name!r} works on 3-channel images only, got inputs of shape {tuple(x.shape)}")
        with torch.no_grad():
            n_classes = int(model(x[:1]).shape[1])
        attacked, eot_iter = self._eot_setting(model)
        x_adv = x.clone()
        with self._rng_scope(generator, x.device), torch.enable_grad():
            for eps_value, idx in self._eps_groups(eps):
                seed = int(torch.randint(0, 2**31 - 1, (1,))) if self._needs_seed() else None
                atk = self.build_torchattacks(attacked, eps_value, norm, n_classes=n_classes, eot_iter=eot_iter,
                                              seed=seed)
                atk.set_device(x.device)
                labels = y[idx]
                if target is not None:
                    self._set_target_mode(atk, target[idx])
                    if self.spec.target_in_labels:
                        labels = target[idx]
                out = atk(x[idx], labels)
                x_adv[idx] = out.detach().to(device=x.device, dtype=x.dtype)
        info: dict[str, Any] = {"implementation": self.implementation}
        if not self.spec.bounded:
            over = perturbation_norm(x, x_adv, norm) > eps.double()
            x_adv[over] = x[over]
            info["discarded_over_eps"] = int(over.sum())
        return x_adv, info

    def _eps_groups(self, eps: torch.Tensor) -> list[tuple[float, torch.Tensor]]:
        """(eps value, sample indices) per distinct eps; one group for unbounded classes (eps is unused)."""
        if not self.spec.bounded:
            return [(float(eps[0]), torch.arange(eps.shape[0], device=eps.device))]
        return [(float(v), (eps == v).nonzero().squeeze(1)) for v in torch.unique(eps)]

    def _needs_seed(self) -> bool:
        """AutoAttack-style ``seed`` left at None: torchattacks would use wall-clock time."""
        return "seed" in _constructor_params(self._ta_class()) and self.params.get("seed") is None


@functools.lru_cache(maxsize=None)
def _attack_class(canonical: str) -> type[TorchattacksAttack]:
    ta_cls = getattr(_import_torchattacks(), canonical)
    spec = TORCHATTACKS_TABLE[canonical]
    with _quiet():
        modes = list(getattr(ta_cls(_dummy_model()), "supported_mode", ["default"]))
    attrs = {
        "name": PREFIX + canonical,
        "ta_class_name": canonical,
        "spec": spec,
        "norms": spec.norms,
        "kind": spec.kind,
        "supports_targeted": "targeted" in modes,
        "defaults": _constructor_defaults(ta_cls, spec),
        "__doc__": f"torchattacks.{canonical} with robustkit's guarantees ({spec.kind}, {'/'.join(spec.norms)}).",
        "__module__": __name__,
    }
    return type(f"Torchattacks{canonical}", (TorchattacksAttack,), attrs)


def torchattacks_attack_class(class_name: str) -> type[TorchattacksAttack]:
    """The robustkit attack class for a torchattacks class name (case-insensitive, without the prefix)."""
    return _attack_class(_canonical_class_name(class_name))

