"""Attacks from names and config entries: the registry's names plus ``torchattacks:<Class>``.

It sits above :mod:`.base` and :mod:`.torchattacks_wrapper` (both import the base class), so that the base
class never has to import the wrapper that subclasses it.
"""
from __future__ import annotations

from typing import Any

from robustkit.errors import ConfigError, short_repr

from .base import ATTACKS, Attack
from .torchattacks_wrapper import PREFIX, torchattacks_attack_class


def get_attack_class(name: str) -> type[Attack]:
    """The attack class for a registered name, or for ``torchattacks:<Class>`` (built on demand, not registered,
    so that importing robustkit does not import torchattacks and the registry lists robustkit's own names)."""
    if str(name).lower().startswith(PREFIX):
        return torchattacks_attack_class(str(name).split(":", 1)[1])
    return ATTACKS.get(name)


def build_attack(spec: "str | dict[str, Any] | Attack") -> Attack:
    """An attack from a name (``"pgd"``), a config dict (``{name: pgd, steps: 40}``) or an instance."""
    if isinstance(spec, Attack):
        return spec
    if isinstance(spec, str):
        return get_attack_class(spec)()
    if isinstance(spec, dict):
        if "name" not in spec:
            raise ConfigError(f"attacks: each entry needs a 'name', got {short_repr(spec)}")
        params = {k: v for k, v in spec.items() if k != "name"}
        return get_attack_class(str(spec["name"]))(**params)
    raise ConfigError(f"attacks: expected a name or a mapping with 'name', got {short_repr(spec)}")
