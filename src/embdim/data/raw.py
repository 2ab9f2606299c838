"""The hand-over from a reader to the encoder: typed columns, not yet encoded."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from embdim.errors import DataError

__all__ = ["LABEL", "DataError", "RawData"]

LABEL = "label"


@dataclass
class RawData:
    """Rows as read from the source files, before encoding.

    Every frame in ``splits`` has the same columns: each name in ``categorical`` as ``pl.Utf8``
    (null = missing), each name in ``numeric`` as ``pl.Float64`` (null = missing), and ``label``
    as ``pl.Float32`` holding 0.0 / 1.0.

    Attributes:
        splits: ``{"all": df}`` when the caller splits at random, or the given split files as
            ``{"train": df, "valid": df, "test": df}`` (``valid``/``test`` may be absent).
        categorical: categorical column names, in field order.
        numeric: numeric column names.
        skipped: rows the reader dropped on purpose, by reason, e.g. ``{"rating == 3": 120}``.
        sources: the files that were read (they key the cache).
    """

    splits: dict[str, pl.DataFrame]
    categorical: list[str]
    numeric: list[str] = field(default_factory=list)
    label: str = LABEL
    skipped: dict[str, int] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)
