"""The defense-author contract: a defense turns a model (or several) into a defended classifier.

A defense is an ``nn.Module`` from images in [0, 1] to logits, so every attack, the evaluator and
:func:`robustkit.predict.predict` treat it exactly like any other model. What makes it a *defense* is that
it declares the facts an honest evaluation needs, instead of leaving the evaluator to guess:

* ``randomized`` -- its forward pass draws random numbers, so attacks must average gradients over several
  passes (EOT) and verdicts need a majority vote. The base class reports ``True`` when any part of it
  declares ``randomized = True``; a subclass whose own forward is random sets ``randomized = True``.
* BPDA parts -- a non-differentiable step is wrapped in :class:`robustkit.attacks.bpda.BPDA` (or the
  defense sets ``bpda = [...]``), so that gradient attacks use a differentiable substitute for it and the
  leaderboard can say so.
* ``certifiable`` -- it can prove robustness (:meth:`Defense.certify`), e.g. randomized smoothing; such
  numbers are reported as *certified*, beside the empirical robust accuracy of attacks.
* ``adaptive_attacks`` -- the attacks its paper (or its author) says it must be evaluated with, as attack
  specs. The evaluator (:class:`robustkit.engine.sweep.Sweep`) adds every declared attack the suite lacks,
  so a sweep that names only FGSM still runs the defense's adaptive attack. Together with its gradient path
  (BPDA parts, EOT) this is the whole "how to attack me" declaration of a defense.
* ``held_out`` -- per-sample hashes (:func:`sample_hashes`) of data the defense was fitted or calibrated on;
  the evaluator refuses to evaluate on any of them (a calibration split must stay apart from the test set).

Defenses are registered by name (``@register_defense("my-defense")``) or through the ``robustkit.defenses``
entry-point group, configured with keyword parameters validated against ``defaults`` (so a typo in a sweep
config is a one-line error), and built with :func:`build_defense`. See docs/write-your-own-defense.md.
"""
from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn

from robustkit.errors import ConfigError, RobustkitError, did_you_mean, short_repr
from robustkit.registry import Registry
from robustkit.training import train

DEFENSES: Registry[type["Defense"]] = Registry("defense", entry_point_group="robustkit.defenses")



def register_defense(name: str | None = None, *, aliases: tuple[str, ...] = ()):
    """Class decorator registering a :class:`Defense` subclass under ``name`` (default: ``cls.name``).

    A class that does not set ``name`` itself gets the registered one, so that its errors, ``describe()``
    and leaderboard rows use the name users write in configs.
    """
    register = DEFENSES.register(name, aliases=aliases)

    def deco(cls: type["Defense"]) -> type["Defense"]:
        if name and not cls.__dict__.get("name"):
            cls.name = name
        return register(cls)

    return deco


def check_params(who: str, params: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` overridden by ``params``, type-checked against the defaults; unknown keys are errors.

    Types follow the default: a bool default needs a bool, an int default an int, a float default any
    number (coerced to float), a str default a str; a ``None`` default accepts anything.
    """
    for key in params:
        if key not in defaults:
            known = ", ".join(sorted(defaults)) or "none"
            raise ConfigError(f"{who}: unknown parameter {short_repr(key)}{did_you_mean(key, defaults)}; known: {known}")
    merged = {**defaults, **params}
    for key, default in defaults.items():
        value = merged[key]
        if default is None or value is None:
            continue
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{who}: {key}: expected true or false, got {short_repr(value)}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{who}: {key}: expected an integer, got {short_repr(value)}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{who}: {key}: expected a number, got {short_repr(value)}")
            merged[key] = float(value)
        elif isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{who}: {key}: expected a string, got {short_repr(value)}")
    return merged


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_format_value(v) for v in value) + "]"
    return str(value)


class Defense(nn.Module):
    """Base class: subclasses set ``name``, ``defaults`` (their parameters) and implement ``forward``.

    ``Defense(model, **params)`` stores the model as ``self.model``; a defense with ``takes_members = True``
    (an ensemble) takes a list of models and stores them as ``self.members`` (an ``nn.ModuleList``).
    Validated parameters are in ``self.params``. Override :meth:`validate` to check ranges, :meth:`fit` to
    train the defense, :meth:`certify` (with ``certifiable = True``) to certify it.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    takes_members: ClassVar[bool] = False
    min_members: ClassVar[int] = 2
    certifiable: ClassVar[bool] = False
    # attack specs (as for robustkit.attacks.build_attack) this defense must be evaluated with; see the module doc
    adaptive_attacks: ClassVar[tuple[Any, ...]] = ()

    def __init__(self, model_or_models: "nn.Module | Sequence[nn.Module]", **params: Any) -> None:
        super().__init__()
        self.params: dict[str, Any] = check_params(self.who, params, self.defaults)
        models = _as_model_list(model_or_models, self.who)
        if self.takes_members:
            if len(models) < self.min_members:
                raise ConfigError(f"{self.who}: needs at least {self.min_members} member models, got {len(models)}")
            self.members = nn.ModuleList(models)
        else:
            if len(models) != 1:
                raise ConfigError(f"{self.who}: takes exactly one model, got {len(models)} "
                                  f"(combine several models with the 'ensemble' defense)")
            self.model = models[0]
        self.held_out: frozenset[str] = frozenset()  # sample_hashes of fitting/calibration data
        self.validate()

    # ----------------------------------------------------------------------------------- declarations
    @property
    def who(self) -> str:
        """How error messages name this defense."""
        return f"defense {self.name or type(self).__name__!r}"

    @property
    def randomized(self) -> bool | None:
        """True when this defense or any part of it declares a random forward pass, else None.

        None (not False) means "nothing here is declared random": the attacks' randomness *detection*
        still runs on the whole model then, so an undeclared random member cannot hide. A subclass whose
        own forward pass is random overrides this with the class attribute ``randomized = True``.
        """
        own = self.__dict__.get("_declared_randomized")
        if own is not None:
            return bool(own)
        for module in self.modules():
            if module is not self and getattr(module, "randomized", None) is True:
                return True
        return None

    @randomized.setter
    def randomized(self, value: bool | None) -> None:
        self.__dict__["_declared_randomized"] = value

    def validate(self) -> None:
        """Check parameter values (ranges, combinations); raise ConfigError with a one-line message."""

    # ---------------------------------------------------------------------------------------- behaviour
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement forward(x) -> logits")

    def fit(self, x: torch.Tensor, y: torch.Tensor, **options: Any) -> "Defense":
        """Train the defended classifier end to end on ``(x, y)`` (standard training, through the defense).

        ``options`` are those of :func:`robustkit.training.train` (epochs, lr, batch_size, seed, method, ...).
        Defenses with their own training procedure (smoothing, distillation) override this.
        """
        train(self, x, y, **options)
        return self

    def certify(self, x: torch.Tensor, **options: Any) -> Any:
        """Certified predictions and radii; only for ``certifiable`` defenses."""
        certifiable = [n for n, cls in DEFENSES.items() if getattr(cls, "certifiable", False)]
        raise RobustkitError(f"{self.who} gives no certificates; certifiable defenses: "
                             f"{', '.join(certifiable) or 'none'}")

    # ------------------------------------------------------------------------------------- description
    def config(self) -> dict[str, Any]:
        """JSON-serialisable description (name and every parameter): what produced a number."""
        cfg: dict[str, Any] = {"name": self.name or type(self).__name__}
        cfg.update({k: (list(v) if isinstance(v, tuple) else v) for k, v in self.params.items()})
        if self.takes_members:
            cfg["members"] = len(self.members)
        return cfg

    def provenance(self) -> dict[str, Any]:
        """What a run's provenance records about this defense: its config plus facts of its fitting
        (subclasses add e.g. their calibration split); JSON-serialisable."""
        return self.config()

    def describe(self) -> str:
        """One short line for the leaderboard, e.g. ``smoothing(sigma=0.25, n=100000, alpha=0.001)``."""
        cfg = self.config()
        name = cfg.pop("name")
        return f"{name}(" + ", ".join(f"{k}={_format_value(v)}" for k, v in cfg.items()) + ")"

    def extra_repr(self) -> str:
        # part of repr(model), which the engine hashes into a job's identity: settings change the job
        return ", ".join(f"{k}={v!r}" for k, v in self.params.items())


def _as_model_list(model_or_models: Any, who: str) -> list[nn.Module]:
    if isinstance(model_or_models, nn.ModuleList):
        models = list(model_or_models)
    elif isinstance(model_or_models, nn.Module):
        models = [model_or_models]
    elif isinstance(model_or_models, (list, tuple)):
        models = list(model_or_models)
    else:
        raise ConfigError(f"{who}: expected a torch nn.Module or a list of them, got {type(model_or_models).__name__}")
    for i, m in enumerate(models):
        if not isinstance(m, nn.Module):
            raise ConfigError(f"{who}: model {i} is a {type(m).__name__}, not a torch nn.Module")
    return models


def sample_hashes(x: torch.Tensor) -> list[str]:
    """sha256 (first 16 hex digits) of each image as float32 bytes: identifies samples across datasets and loaders."""
    flat = x.detach().to("cpu", torch.float32).contiguous().reshape(x.shape[0], -1)
    return [hashlib.sha256(row.numpy().tobytes()).hexdigest()[:16] for row in flat]


def declared_adaptive_attacks(model: nn.Module) -> list[tuple[str, Any]]:
    """``(defense name, attack spec)`` for every adaptive attack declared by ``model`` or a defense inside it."""
    found: list[tuple[str, Any]] = []
    for module in model.modules():
        if isinstance(module, Defense):
            found.extend((module.name or type(module).__name__, spec) for spec in module.adaptive_attacks)
    return found


def held_out_overlap(model: nn.Module, x: torch.Tensor) -> tuple[str, int] | None:
    """``(defense name, count)`` when some of ``x`` was used to fit/calibrate a defense inside ``model``, else None."""
    held = [(m.name or type(m).__name__, m.held_out) for m in model.modules() if isinstance(m, Defense) and m.held_out]
    if not held:
        return None
    hashes = sample_hashes(x)
    for name, held_out in held:
        count = sum(h in held_out for h in hashes)
        if count:
            return name, count
    return None


def get_defense_class(name: str) -> type[Defense]:
    """The defense class registered under ``name`` (built-ins and ``robustkit.defenses`` entry points)."""
    cls = DEFENSES.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Defense)):
        raise RobustkitError(f"defense {short_repr(name)} is registered as {short_repr(cls)}, which is not a robustkit Defense subclass")
    return cls


def _split_spec(spec: Any, where: str) -> tuple[type[Defense], dict[str, Any]]:
    if isinstance(spec, str):
        if not spec.strip():
            raise ConfigError(f"{where}: expected a defense name, got an empty string")
        return _lookup(spec.strip(), where), {}
    if isinstance(spec, Mapping):
        name = spec.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}: each defense needs a 'name', got {short_repr(dict(spec))}")
        return _lookup(name.strip(), where), {str(k): v for k, v in spec.items() if k != "name"}
    raise ConfigError(f"{where}: expected a defense name or a mapping with 'name', got {short_repr(spec)}")


def _lookup(name: str, where: str) -> type[Defense]:
    try:
        return get_defense_class(name)
    except RobustkitError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _spec_list(spec: Any) -> list[Any]:
    return list(spec) if isinstance(spec, (list, tuple)) else [spec]


def check_defense_spec(spec: Any, where: str = "defense") -> None:
    """Validate a spec (name, mapping or list of them) without any model: names and parameter types.

    For config validation before anything is loaded; :func:`build_defense` repeats these checks.
    """
    specs = _spec_list(spec)
    if not specs:
        raise ConfigError(f"{where}: expected a defense name, a mapping with 'name', or a list of them")
    for i, item in enumerate(specs):
        here = f"{where}[{i}]" if len(specs) > 1 else where
        cls, params = _split_spec(item, here)
        try:
            check_params(f"defense {cls.name or cls.__name__!r}", params, cls.defaults)
        except ConfigError as exc:
            raise ConfigError(f"{here}: {exc}") from None


def build_defense(spec: Any, model_or_models: "nn.Module | Sequence[nn.Module]") -> Defense:
    """A defended model from a spec and the model(s) it defends.

    ``spec``: a name (``"jpeg"``), a mapping (``{"name": "smoothing", "sigma": 0.25}``), a :class:`Defense`
    subclass, or a list of these applied in order, each wrapping the previous result
    (``[{"name": "jpeg"}, {"name": "gaussian-noise"}]`` = noise(jpeg(model)): the noise is applied first
    to the input). ``model_or_models``: one model, or a list for defenses that take members (ensembles).
    """
    if isinstance(spec, type) and issubclass(spec, Defense):
        return spec(model_or_models)
    specs = _spec_list(spec)
    if not specs:
        raise ConfigError("defense: expected a defense name, a mapping with 'name', or a list of them")
    current: Any = model_or_models
    for i, item in enumerate(specs):
        where = f"defense[{i}]" if len(specs) > 1 else "defense"
        if isinstance(item, type) and issubclass(item, Defense):
            current = item(current)
            continue
        cls, params = _split_spec(item, where)
        try:
            current = cls(current, **params)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    assert isinstance(current, Defense)
    return current


def list_defenses() -> list[str]:
    """Registered defense names (built-ins and plugins)."""
    return DEFENSES.names()
