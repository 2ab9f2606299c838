"""Name -> class registries for searchers, models and dataset readers (timm-style).

Register with a decorator, list the names, create by name::

    @SEARCHERS.register("full")
    class FullSearcher(Searcher): ...

    SEARCHERS.names()            # ['full', 'mde', ...]
    SEARCHERS.get("full")        # the class
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
        _load_builtin_plugins()
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        _load_builtin_plugins()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        _load_builtin_plugins()
        return name in self._items


SEARCHERS: Registry = Registry("searcher")
MODELS: Registry = Registry("model")
READERS: Registry = Registry("dataset reader")

_loaded = False


def _load_builtin_plugins() -> None:
    """Import the packages whose modules register the built-in plug-ins (once, lazily)."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # set first: the imported modules call register() on this module
    try:
        import embdim.data.readers
        import embdim.data.synthetic
        import embdim.models
        import embdim.searchers  # noqa: F401
    except BaseException:
        _loaded = False
        raise
