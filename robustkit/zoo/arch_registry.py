"""Architectures by name: ``@register_model("resnet20")`` on a factory ``fn(num_classes=10, **kwargs)``.

A factory returns the *bare* network (no normalization, random weights): which normalization and which
weights go with it is a property of a checkpoint, written in its model card, not of the architecture.
Third-party packages add architectures through the ``robustkit.models`` entry-point group.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from robustkit.errors import ConfigError, did_you_mean
from robustkit.registry import Registry

ModelFactory = Callable[..., nn.Module]

ARCHS: Registry[ModelFactory] = Registry("architecture", entry_point_group="robustkit.models")


def register_model(name: str | None = None, *, aliases: tuple[str, ...] = ()) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering a factory ``fn(num_classes: int = 10, **kwargs) -> nn.Module`` under ``name``."""
    return ARCHS.register(name, aliases=aliases)


def _check_kwargs(name: str, factory: ModelFactory, kwargs: dict[str, Any]) -> None:
    """Reject unknown keyword arguments up front, so a typo in ``arch_kwargs`` is one clear line."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins or C callables: let the call itself complain
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [p for p in params if p != "num_classes"]
    for key in kwargs:
        if key not in accepted:
            raise ConfigError(
                f"arch_kwargs for {name!r}: unknown argument {key!r}{did_you_mean(key, accepted)}; "
                f"accepted: {', '.join(accepted) or 'none'}"
            )


def build_arch(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Instantiate a registered architecture (random weights, no normalization)."""
    factory = ARCHS.get(name)
    _check_kwargs(name, factory, kwargs)
    try:
        model = factory(num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"architecture {name!r} with arch_kwargs {kwargs}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"architecture {name!r}: factory returned {type(model).__name__}, not a torch nn.Module")
    return model


def create_model(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """timm-style alias of :func:`build_arch`, for code written against ``timm.create_model``."""
    return build_arch(name, num_classes=num_classes, **kwargs)
