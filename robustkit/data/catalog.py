"""The dataset registry: names → loader functions.

A loader is a plain function decorated with ``@register_dataset("name")``; third-party packages add
loaders through the ``robustkit.datasets`` entry-point group. The loader's signature *is* its option
schema: :func:`robustkit.data.load_dataset` reads it to reject unknown option keys (with did-you-mean),
to report missing required options and to fill in defaults for the provenance spec. The parameter names
``root``, ``download`` and ``n_examples`` are reserved: a loader declares them only if it uses them
(``root: Path | None``, ``download: bool``, ``n_examples: int | None`` as a hint to read less), e.g.::

    @register_dataset("my-data")
    def load_my_data(root: Path | None, *, split: str = "test") -> LoadedData: ...
"""
from __future__ import annotations

from typing import Callable

from robustkit.registry import Registry

from .dataset import LoadedData

Loader = Callable[..., LoadedData]

DATASETS: Registry[Loader] = Registry("dataset", entry_point_group="robustkit.datasets")

# Attribute under which register_dataset records a loader's canonical name (aliases map to the same loader).
CANONICAL_ATTR = "dataset_name"


def register_dataset(name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[Loader], Loader]:
    """Decorator registering a loader function under ``name`` (and ``aliases``)."""

    def deco(fn: Loader) -> Loader:
        setattr(fn, CANONICAL_ATTR, name.lower())
        return DATASETS.register(name, aliases=aliases)(fn)

    return deco


def canonical_name(key: str, loader: Loader) -> str:
    """The name a dataset is recorded under, whichever alias was used to ask for it."""
    return getattr(loader, CANONICAL_ATTR, key.lower())


def list_datasets() -> list[str]:
    """Canonical names of every known dataset (built-in and from installed plugins), sorted."""
    return sorted({canonical_name(key, fn) for key, fn in DATASETS.items()})
