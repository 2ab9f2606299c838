"""Embedding-size methods. Importing this package registers the built-in searchers (one line per method)."""

from embdim.searchers import (
    full,  # noqa: F401
    mde,  # noqa: F401
)
from embdim.searchers.base import Searcher, SearcherConfig

__all__ = ["Searcher", "SearcherConfig"]
