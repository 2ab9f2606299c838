"""Embedding-size methods. Importing this package registers the built-in searchers (one line per method)."""

from embdim.searchers import (
    amtl,  # noqa: F401
    dml,  # noqa: F401
    full,  # noqa: F401
    hashing,  # noqa: F401
    mde,  # noqa: F401
    mlet,  # noqa: F401
    pep,  # noqa: F401
    qr,  # noqa: F401
)
from embdim.searchers.base import Searcher, SearcherConfig

__all__ = ["Searcher", "SearcherConfig"]
