"""Threat models beyond Lp balls in a sweep config: parsing and validation (docs/engine.md, "Beyond Lp").

``threat_model`` may be a list. Its one entry without ``name`` (or ``name: lp``) is the Lp ball of the
top-level ``attacks``; every other entry is one of

* ``{name: corruption, corruptions: [...], severities: [1, 3, 5], baseline: <model name>}`` -- the 15
  common corruptions (all when ``corruptions`` is absent) at the given severities (all five when absent);
  ``baseline`` names the model mCE is relative to;
* ``{name: patch, area: [0.02, 0.05], location: fixed | random | searched, position: [r, c], attacks: [...],
  train_examples: N}`` -- a square patch of each area fraction; attacks must be patch attacks;
* ``{name: universal, norm: Linf, eps: [...], attacks: [...], train_examples: N}`` -- universal
  perturbations (``uap``) fitted on the first N examples and evaluated on the rest.

``train_examples`` makes the split explicit: examples ``0..N-1`` train the universal attacks, ``N..end`` are
evaluated (and recorded as such). Everything here is checked before any data or model is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from robustkit.attacks import Attack
from robustkit.corruptions import check_corruptions
from robustkit.errors import ConfigError, check_keys
from robustkit.patch import LOCATIONS, check_location
from robustkit.threat import canonical_norm

from .sweep import build_suite, eps_list

KINDS = ("lp", "corruption", "patch", "universal")
KEYS = {
    "corruption": ("name", "corruptions", "severities", "baseline"),
    "patch": ("name", "area", "location", "position", "attacks", "train_examples"),
    "universal": ("name", "norm", "eps", "attacks", "train_examples"),
}


@dataclass
class ThreatSpec:
    """One non-Lp section of a sweep: its kind, its levels and (for patch/universal) its attack suite."""

    kind: str
    levels: list[Any]                     # corruption: [(name, severity)], patch: areas, universal: eps
    attacks: list[Attack] = field(default_factory=list)
    norm: str = "Linf"
    location: str = "random"
    position: list[int] | None = None
    train_examples: int = 0
    baseline: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return [a.label for a in self.attacks] if self.attacks else [self.kind]

    def describe(self) -> dict[str, Any]:
        """JSON-able description (job identities and the stored config)."""
        return {"kind": self.kind, "norm": self.norm, "location": self.location, "position": self.position,
                "train_examples": self.train_examples, "attacks": [a.config() for a in self.attacks]}


def is_universal(attack: Attack) -> bool:
    """A universal attack (fitted on the training split): ``uap``, or a patch with ``universal: true``."""
    return bool(getattr(attack, "universal", False)) and (attack.name == "uap" or attack.params.get("universal"))


def _train_examples(value: Any, where: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}.train_examples: expected a positive integer (examples 0..N-1 train), "
                          f"got {value!r}")
    return value


def _areas(value: Any, where: str) -> list[float]:
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items or any(isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a <= 1 for a in items):
        raise ConfigError(f"{where}.area: expected patch fractions of the image area in (0, 1], got {value!r}")
    return sorted({float(a) for a in items})


def _suite(value: Any, where: str, kind: str) -> list[Attack]:
    if value is None:
        raise ConfigError(f"{where}.attacks: required for a {kind} threat model")
    suite = build_suite(value, f"{where}.attacks")
    labels = [a.label for a in suite]
    for i, attack in enumerate(suite):
        if kind == "patch" and not attack.patch_aware:
            raise ConfigError(f"{where}.attacks[{i}]: attack {attack.name!r} does not support patch threat models")
        if kind == "universal" and attack.name != "uap":
            raise ConfigError(f"{where}.attacks[{i}]: a universal threat model takes uap attacks, got {attack.name!r}")
        if labels.count(attack.label) > 1:
            raise ConfigError(f"{where}.attacks[{i}]: two attacks are labelled {attack.label!r}")
        if attack.params.get("targeted") == "given":
            raise ConfigError(f"{where}.attacks[{i}]: targeted: given needs target labels, which a sweep does not have")
    return suite


def parse_threat_spec(value: Mapping[str, Any], where: str) -> ThreatSpec:
    """Validate one non-Lp ``threat_model`` entry."""
    kind = value.get("name")
    if kind not in KINDS[1:]:
        raise ConfigError(f"{where}.name: expected one of {', '.join(KINDS)}, got {kind!r}")
    check_keys(value, KEYS[kind], f"{where}: ")
    if kind == "corruption":
        names, severities = check_corruptions(value.get("corruptions"), value.get("severities"), where)
        baseline = value.get("baseline")
        if baseline is not None and (not isinstance(baseline, str) or not baseline.strip()):
            raise ConfigError(f"{where}.baseline: expected the name of one of the sweep's models, got {baseline!r}")
        return ThreatSpec("corruption", [(c, s) for c in names for s in severities], baseline=baseline,
                          raw=dict(value))
    train = _train_examples(value.get("train_examples"), where)
    suite = _suite(value.get("attacks"), where, kind)
    needs_split = any(is_universal(a) for a in suite)
    if needs_split and not train:
        raise ConfigError(f"{where}.train_examples: required with a universal attack (the first N examples train "
                          f"it, the rest are evaluated)")
    if kind == "patch":
        location = check_location(value.get("location", "random"), f"{where}.location")
        position = value.get("position")
        if position is not None and location != "fixed":
            raise ConfigError(f"{where}.position: only for location: fixed (got location: {location})")
        return ThreatSpec("patch", _areas(value.get("area"), where), suite, location=location, position=position,
                          train_examples=train, raw=dict(value))
    if "eps" not in value:
        raise ConfigError(f"{where}.eps: required (a number, a fraction like 8/255, or a list)")
    norm = canonical_norm(value.get("norm", "Linf"))
    return ThreatSpec("universal", eps_list(value["eps"], norm, f"{where}.eps"), suite, norm=norm,
                      train_examples=train, raw=dict(value))


def split_threat_models(value: Any, source: str) -> tuple[Mapping[str, Any] | None, list[ThreatSpec]]:
    """(the Lp entry or None, the other entries parsed) of a ``threat_model`` mapping or list."""
    entries = value if isinstance(value, list) else [value]
    lp: Mapping[str, Any] | None = None
    extra = []
    for i, entry in enumerate(entries):
        where = f"threat_model[{i}]" if isinstance(value, list) else "threat_model"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{source}: {where}: expected a mapping, got {entry!r}")
        if entry.get("name", "lp") == "lp":
            if lp is not None:
                raise ConfigError(f"{source}: {where}: only one Lp entry (norm, eps) per sweep")
            lp = {k: v for k, v in entry.items() if k != "name"}
            continue
        try:
            extra.append(parse_threat_spec(entry, where))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return lp, extra


__all__ = ["KINDS", "LOCATIONS", "ThreatSpec", "is_universal", "parse_threat_spec", "split_threat_models"]
