"""Dataset readers: source files -> :class:`~embdim.data.raw.RawData`. Importing this package registers them.

Registered names: ``criteo``, ``avazu``, ``movielens_100k``, ``movielens_1m``, ``movielens_latest``,
``frappe`` (CTR set built from the raw log), ``frappe_libfm``, ``ipinyou``, ``libfm`` and ``table``.
"""

from embdim.data.readers import avazu, criteo, frappe, ipinyou, libfm, movielens, table  # noqa: F401
from embdim.data.readers.base import Reader, ReaderOptions

__all__ = ["Reader", "ReaderOptions"]
