"""One registry style for every kind of plug-in certa knows by name.

Confidence methods, graders, datasets, built-in models and test-time-scaling
strategies are each a :class:`Registry`: ``@registry.register("name")`` (or
``registry.add``) makes an object available, ``registry.get("name")`` returns
it and an unknown name is a one-line :class:`~certa.errors.UnknownNameError`
with close-match suggestions. A registry may name a package whose modules hold
its built-in entries (``discover=``): they are imported on the first lookup,
so adding a built-in is one file with a decorator and nothing else to edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")
Obj = TypeVar("Obj")


class Registry(Generic[T]):
    """Name → object for one kind of plug-in (``kind`` names it in error messages)."""

    def __init__(self, kind: str, *, discover: str | None = None):
        self.kind = kind
        self._discover = discover
        self._discovered = discover is None
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[Obj], Obj]:
        """Decorator: ``@registry.register("name")`` over the object to register."""

        def wrap(obj: Obj) -> Obj:
            self.add(name, obj)  # type: ignore[arg-type]
            return obj

        return wrap

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name``; registering a different object under a taken name is an error."""
        if not name:
            raise ValueError(f"a {self.kind} needs a non-empty name")
        if name in self._entries and self._entries[name] is not obj:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = obj

    def get(self, name: str) -> T:
        """The object registered as ``name``; ``UnknownNameError`` (with suggestions) otherwise."""
        self._load_builtins()
        if name not in self._entries:
            raise UnknownNameError(self.kind, name, self._entries)
        return self._entries[name]

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._load_builtins()
        return sorted(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, object) pairs in name order."""
        for name in self.names():
            yield name, self._entries[name]

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        return name in self._entries

    def _load_builtins(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self._discover)  # type: ignore[arg-type]
        for module in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
            importlib.import_module(module.name)
