"""A small name → factory registry shared by attacks, defenses, datasets and architectures.

Built-in plugins register themselves with a decorator when their module is imported; third-party packages
add plugins through a setuptools entry-point group (e.g. ``robustkit.attacks``) that is read lazily the
first time a name is looked up, so that installing a plugin package is enough to make its names known.
"""
from __future__ import annotations

from importlib import metadata
from typing import Callable, Generic, Iterator, TypeVar

from .errors import RobustkitError, unknown_name

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps lower-case names to objects (classes or factory functions)."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._entry_points_loaded = False

    def register(self, name: str | None = None, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("pgd")``. The name defaults to the object's ``name`` attribute."""

        def deco(obj: T) -> T:
            key = (name or getattr(obj, "name", None) or getattr(obj, "__name__")).lower()
            for k in (key, *[a.lower() for a in aliases]):
                existing = self._items.get(k)
                if existing is not None and existing is not obj:
                    raise RobustkitError(f"{self.kind} name {k!r} is registered twice")
                self._items[k] = obj
            return obj

        return deco

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded or not self.entry_point_group:
            return
        self._entry_points_loaded = True
        for ep in metadata.entry_points(group=self.entry_point_group):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break robustkit
                raise RobustkitError(
                    f"{self.kind} plugin {ep.name!r} (entry point {ep.value}) failed to load: {exc}"
                ) from exc
            self._items.setdefault(ep.name.lower(), obj)

    def get(self, name: str) -> T:
        key = str(name).lower()
        if key not in self._items:
            self._load_entry_points()
        if key not in self._items:
            raise RobustkitError(unknown_name(self.kind, name, self._items))
        return self._items[key]

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return str(name).lower() in self._items

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        self._load_entry_points()
        return iter(sorted(self._items.items()))
