"""Frappe CTR set built from the raw log ``Mobile_Frappe.zip`` (the NFM / AFN / BARS recipe).

Every log row is a positive over 10 fields (all columns except ``cnt``). In scoring mode
(:meth:`FrappeReader.for_scoring`) the log's rows are read as they are, unlabelled. For each positive,
``negatives_per_positive`` negatives keep its user and context (daytime, weekday, isweekend,
homework, cost, weather, country, city) and take an item drawn uniformly from all items of the log,
redrawn while the (user, context, item) tuple is a positive. Sampling is vectorised and seeded.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl
from pydantic import NonNegativeInt

from embdim.data.raw import LABEL, DataError, RawData
from embdim.data.readers._common import (
    ALL_SPLIT,
    RowLocator,
    TextFile,
    display_name,
    load_text,
    parse_header,
    reject_repeated_header,
    require_columns,
    split_columns,
)
from embdim.data.readers.base import Reader, ReaderOptions, scoring_path
from embdim.data.readers.libfm import FRAPPE_FIELDS
from embdim.errors import shorten
from embdim.registry import READERS

FRAPPE_SEPARATOR = "\t"
USER = "user"
ITEM = "item"
CONTEXT_FIELDS = [name for name in FRAPPE_FIELDS if name not in (USER, ITEM)]
DEFAULT_NEGATIVES_PER_POSITIVE = 2
DEFAULT_SEED = 2026
MAX_REDRAW_ROUNDS = 1000
"""Give up redrawing colliding negatives after this many rounds (only reachable with tiny logs)."""


class FrappeOptions(ReaderOptions):
    """Where the log is and how negatives are drawn.

    Attributes:
        path: the zip (or a plain / gzipped ``frappe.csv``), relative to the data root unless absolute.
        member: the log inside the zip.
        negatives_per_positive: negatives drawn per log row.
        seed: seed of the negative sampling (same seed, same rows).
    """

    SOURCE_OPTIONS: ClassVar[frozenset[str]] = frozenset({"path"})  # not member: it picks what is read

    path: str = "frappe/Mobile_Frappe.zip"
    member: str = "Mobile_Frappe/frappe/frappe.csv"
    negatives_per_positive: NonNegativeInt = DEFAULT_NEGATIVES_PER_POSITIVE
    seed: int = DEFAULT_SEED


@READERS.register("frappe")
class FrappeReader(Reader):
    """Frappe positives from the log plus sampled negatives, as one pool ``{"all": df}``."""

    Options = FrappeOptions
    options: FrappeOptions

    def source_files(self) -> dict[str, Path]:
        return {"log": self.path(self.options.path)}

    def sources(self) -> list[Path]:
        return list(self.source_files().values())

    def for_scoring(self, path: Path) -> Reader:
        """The log at ``path`` (the zip, or a plain / gzipped ``frappe.csv``), one row per log line and no
        negatives sampled: the rows a deployed model would score."""
        return self.scoring_copy(path=scoring_path(path))

    def read(self) -> RawData:
        positives, text = self.read_log()
        if self.scoring:  # the log's lines as they are, unlabelled
            frame = positives.with_columns(pl.lit(None, dtype=pl.Float32).alias(LABEL))
            return RawData(splits={ALL_SPLIT: frame}, categorical=list(FRAPPE_FIELDS), sources=self.sources())
        negatives = sample_negatives(positives, self.options.negatives_per_positive, self.options.seed, text)
        frame = pl.concat(
            [
                positives.with_columns(pl.lit(1.0, dtype=pl.Float32).alias(LABEL)),
                negatives.with_columns(pl.lit(0.0, dtype=pl.Float32).alias(LABEL)),
            ]
        )
        return RawData(splits={ALL_SPLIT: frame}, categorical=list(FRAPPE_FIELDS), sources=self.sources())

    def read_log(self) -> tuple[pl.DataFrame, TextFile]:
        """The log's rows over the 10 fields (``cnt`` dropped), all as strings, and the text they came from."""
        path = self.path(self.options.path)
        display = display_name(path, self.root)
        member = self.options.member if path.suffix == ".zip" else None
        text = load_text(path, display, member=member)
        header = parse_header(text, FRAPPE_SEPARATOR, None)
        require_columns(f"{text.display} line {text.first_line}", {"field": FRAPPE_FIELDS}, header)
        rows = text.without_first_line()
        frame = split_columns(rows, header, FRAPPE_SEPARATOR)
        reject_repeated_header(frame, rows)
        return frame.select(FRAPPE_FIELDS), rows


def _dense_codes(frame: pl.DataFrame, columns: list[str]) -> np.ndarray:
    """Integer codes [N, len(columns)] of each column's values (sorted order, null -> 0)."""
    ranks = frame.select([pl.col(name).rank("dense").fill_null(0).cast(pl.Int64) for name in columns])
    return ranks.to_numpy()


def _is_member(sorted_keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    position = np.searchsorted(sorted_keys, queries)
    position = np.minimum(position, len(sorted_keys) - 1)
    return sorted_keys[position] == queries


def sample_negatives(
    positives: pl.DataFrame, per_positive: int, seed: int, locator: RowLocator | None = None
) -> pl.DataFrame:
    """``per_positive`` negatives for every positive row: same user and context, an unused item.

    Items are drawn uniformly from the distinct items of ``positives``; a draw that hits a positive
    (user, context, item) tuple is redrawn, all collisions of a round at once.

    Raises:
        DataError: a (user, context) group has used every item, so no negative exists for it; the
            message names the group's first row through ``locator`` when given.
    """
    if per_positive == 0 or positives.height == 0:
        return positives.clear()
    items = positives[ITEM].unique().sort()
    n_items = len(items)
    item_code = positives.select(pl.col(ITEM).rank("dense").cast(pl.Int64) - 1).to_series().to_numpy()
    _, group = np.unique(_dense_codes(positives, [USER, *CONTEXT_FIELDS]), axis=0, return_inverse=True)
    group = group.reshape(-1).astype(np.int64)
    positive_keys = np.unique(group * n_items + item_code)
    used_items_per_group = np.bincount(positive_keys // n_items)
    full = np.flatnonzero(used_items_per_group[group] >= n_items)
    if full.size:
        row = int(full[0])
        where = f"{locator.where(row)}: " if locator is not None else ""
        user = shorten(repr(positives[USER][row]))
        raise DataError(
            f"{where}user {user} has used all {n_items} items of the log in this row's context, so no negative "
            "can be drawn for it (a larger log, or negatives_per_positive: 0)"
        )

    rng = np.random.default_rng(seed)
    source_row = np.repeat(np.arange(positives.height), per_positive)
    negative_group = group[source_row]
    negative_item = rng.integers(0, n_items, size=source_row.size)
    pending = np.flatnonzero(_is_member(positive_keys, negative_group * n_items + negative_item))
    for _ in range(MAX_REDRAW_ROUNDS):
        if pending.size == 0:
            break
        negative_item[pending] = rng.integers(0, n_items, size=pending.size)
        collides = _is_member(positive_keys, negative_group[pending] * n_items + negative_item[pending])
        pending = pending[collides]
    else:
        raise DataError(f"negative sampling did not converge in {MAX_REDRAW_ROUNDS} rounds")
    return positives[source_row].with_columns(items.gather(negative_item).alias(ITEM))
