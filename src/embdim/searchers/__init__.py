"""Embedding-size methods. Importing this package registers the built-in searchers."""

from embdim.searchers import full, mde  # noqa: F401
from embdim.searchers.base import Searcher, SearcherConfig

__all__ = ["Searcher", "SearcherConfig"]
