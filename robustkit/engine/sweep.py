"""A fully resolved sweep: loaded data, loaded models, built attacks, the eps list -- ready to run.

The YAML config (:mod:`robustkit.engine.config`), the Python API (:mod:`robustkit.engine.api`) and the
quickstart all produce a :class:`Sweep` and hand it to the same runner, so every entry point follows the
same rules. Everything that can be wrong with a sweep is checked when it is built, before any compute.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from torch import nn

from robustkit.attacks import Attack, build_attack
from robustkit.data import Dataset
from robustkit.defenses.base import declared_adaptive_attacks, held_out_overlap
from robustkit.errors import ConfigError, RobustkitError, short_repr
from robustkit.threat import canonical_norm, parse_eps, validate_eps


@dataclass
class ModelEntry:
    """A model under evaluation and the name it has in the leaderboard."""

    name: str
    model: nn.Module
    source: dict[str, Any] = field(default_factory=dict)  # JSON-able: where it came from (card, class)


@dataclass
class Sweep:
    """dataset x models x threat model (norm, eps list) x attack suite, plus how to run it."""

    dataset: Dataset
    models: list[ModelEntry]
    attacks: list[Attack]
    norm: str
    eps: list[float]
    seed: int = 0
    device: str = "auto"
    batch_size: int | None = None
    config: dict[str, Any] = field(default_factory=dict)  # JSON-able description stored with the run
    # non-Lp sections (corruption, patch, universal): robustkit.engine.threat_specs.ThreatSpec
    extra_threats: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.norm = canonical_norm(self.norm)
        names = [m.name for m in self.models]
        if not names:
            raise ConfigError("models: expected at least one model")
        if not self.eps and not self.attacks and self.extra_threats:
            self.eps = []  # no Lp entry: only the corruption / patch / universal sections run
        else:
            self.eps = eps_list(self.eps, self.norm)
            self.attacks = with_adaptive_attacks(list(self.attacks), self.models)
            check_suite(self.attacks, self.norm)
        for entry in self.models:
            overlap = held_out_overlap(entry.model, self.dataset.x)
            if overlap is not None:
                raise ConfigError(f"models: {entry.name!r}: {overlap[1]} of the {len(self.dataset)} evaluation samples "
                                  f"were used to calibrate/fit its defense {overlap[0]!r}; evaluate on samples apart "
                                  f"from its calibration split")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"models: two models are named {short_repr(dup[0])}; give each a distinct name")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed: expected an integer, got {short_repr(self.seed)}")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            raise ConfigError(f"batch_size: expected a positive integer, got {short_repr(self.batch_size)}")

    @property
    def labels(self) -> list[str]:
        return [a.label for a in self.attacks]


def eps_list(values: Any, norm: str, field_name: str = "threat_model.eps") -> list[float]:
    """A number, a fraction string or a list of them → sorted, de-duplicated, validated floats.

    Sorting is part of the accounting: the nested-ball rule carries results from smaller to larger eps.
    """
    items = list(values) if isinstance(values, (list, tuple)) else [values]
    if not items:
        raise ConfigError(f"{field_name}: expected at least one eps")
    out = []
    for i, v in enumerate(items):
        where = f"{field_name}[{i}]" if isinstance(values, (list, tuple)) else field_name
        out.append(validate_eps(parse_eps(v, where), norm, where))
    return sorted(set(out))


def build_suite(specs: Sequence[Any], field_name: str = "attacks") -> list[Attack]:
    """Attacks from names, ``{name: ..., param: ...}`` mappings or Attack instances, in order."""
    if isinstance(specs, (str, dict, Attack)):
        specs = [specs]
    if not isinstance(specs, (list, tuple)) or not specs:
        raise ConfigError(f"{field_name}: expected a non-empty list of attacks, got {short_repr(specs)}")
    suite = []
    for i, spec in enumerate(specs):
        try:
            suite.append(build_attack(spec))
        except RobustkitError as exc:
            raise ConfigError(f"{field_name}[{i}]: {exc}") from None
    return suite


def with_adaptive_attacks(attacks: list[Attack], models: Sequence[ModelEntry]) -> list[Attack]:
    """The suite plus every adaptive attack a model's defense declares (``Defense.adaptive_attacks``) that the
    suite lacks, appended in declaration order. An attack of the same name already in the suite counts as
    present (the user chose its settings). The suite stays one list for all models: the leaderboard columns
    and the job identities stay comparable across models."""
    present = {a.name for a in attacks if isinstance(a, Attack)}
    for entry in models:
        for defense, spec in declared_adaptive_attacks(entry.model):
            try:
                attack = build_attack(spec)
            except RobustkitError as exc:
                raise ConfigError(f"models: {entry.name!r}: the adaptive attack declared by defense {defense!r}: "
                                  f"{exc}") from None
            if attack.name not in present:
                attacks.append(attack)
                present.add(attack.name)
    return attacks


def check_suite(attacks: Sequence[Attack], norm: str) -> None:
    """Refuse a suite that could not run to the end, before anything is computed."""
    if not attacks:
        raise ConfigError("attacks: expected at least one attack")
    labels = [a.label for a in attacks]
    for i, attack in enumerate(attacks):
        if not isinstance(attack, Attack):
            raise ConfigError(f"attacks[{i}]: expected a robustkit Attack, got {type(attack).__name__}")
        if norm not in attack.norms:
            raise ConfigError(f"attacks[{i}]: attack {short_repr(attack.name)} supports norms {', '.join(attack.norms)}, "
                              f"not {norm}")
        if attack.params.get("targeted") == "given":
            raise ConfigError(f"attacks[{i}]: attack {short_repr(attack.name)}: targeted: given needs target labels, which a "
                              f"sweep does not have; use random or least-likely")
        if labels.count(attack.label) > 1:
            raise ConfigError(f"attacks[{i}]: two attacks are labelled {short_repr(attack.label)}; give each a distinct "
                              f"'label:' (it names the acc_<label> column)")
