"""Name -> class registries for searchers, models and dataset readers (timm-style).

This module imports nothing of embdim: a plug-in module registers itself with a decorator when it is
imported, and :mod:`embdim.plugins` (the factory above) imports every built-in one, so look plug-ins
up through it::

    @SEARCHERS.register("full")      # in embdim/searchers/full.py, or in a user's module
    class FullSearcher(Searcher): ...

    from embdim.plugins import SEARCHERS
    SEARCHERS.names()                # ['amtl', 'dml', 'full', ...]
    SEARCHERS.get("full")            # the class
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of plug-ins of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items and self._items[name] is not item:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            if isinstance(item, type):
                item.registered_name = name  # lets a plug-in name itself in plans and reports
            return item

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


SEARCHERS: Registry = Registry("searcher")
MODELS: Registry = Registry("model")
READERS: Registry = Registry("dataset reader")
