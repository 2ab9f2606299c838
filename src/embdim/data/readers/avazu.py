"""Avazu (Kaggle 2014) CSV: ``id,click,hour,C1,...,C21``; a header line is optional in every file.

In scoring mode a file may also lack the ``click`` column (Kaggle's ``test.csv`` layout, with or
without its header); its label is null.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import polars as pl

from embdim.data.raw import LABEL, DataError, RawData
from embdim.data.readers._common import (
    UNLABELLED_HINT,
    SplitFileOptions,
    SplitFileReader,
    TextFile,
    binary_label,
    count_lines,
    expect_header,
    first_true,
    iter_text_chunks,
    load_text,
    null_label,
    split_columns,
)
from embdim.data.readers.base import ChunkedData, ChunkedSource
from embdim.errors import shorten
from embdim.registry import READERS

AVAZU_COLUMNS = [
    "id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id",
    "app_domain", "app_category", "device_id", "device_ip", "device_model", "device_type",
    "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
]  # fmt: skip
AVAZU_LABEL = "click"
AVAZU_UNLABELLED_COLUMNS = [name for name in AVAZU_COLUMNS if name != AVAZU_LABEL]
"""The columns of Kaggle's ``test.csv`` (no ``click``), read in scoring mode."""
AVAZU_HOUR = "hour"
AVAZU_OTHER_FIELDS = AVAZU_COLUMNS[3:]
"""The 21 categorical columns after ``id``, ``click`` and ``hour``."""
HOUR_FIELDS = ["hour_of_day", "weekday", "is_weekend"]
"""What ``hour`` (YYMMDDHH) becomes: ``"00".."23"``, ``"Monday".."Sunday"``, ``"1"``/``"0"``."""
AVAZU_SEPARATOR = ","
HEADER_PREFIX = b"id,click"
"""A first line starting like this is a header."""
UNLABELLED_HEADER_PREFIX = b"id,hour"
"""A first line starting like this is the header of a file without ``click`` (scoring mode only)."""
HOUR_LENGTH = 8
DATE_LENGTH = 6
HOURS_OF_DAY = [f"{hour:02d}" for hour in range(24)]
FIRST_WEEKEND_DAY = 6
"""ISO weekday of Saturday (Monday = 1)."""


class AvazuOptions(SplitFileOptions):
    """Avazu files (default: the shared ``avazu-sample``, ``dev`` as ``valid``).

    Attributes:
        split_hour: turn ``hour`` into ``hour_of_day``, ``weekday`` and ``is_weekend`` (default);
            ``False`` keeps the raw ``hour`` as one categorical field.
    """

    split_hour: bool = True


@READERS.register("avazu")
class AvazuReader(SplitFileReader):
    """Avazu rows: ``click`` is the label, ``id`` is dropped, every other column is categorical."""

    Options = AvazuOptions
    options: AvazuOptions
    DEFAULT_FILES: ClassVar[dict[str, str]] = {
        "train": "avazu-sample/train.csv.gz",
        "valid": "avazu-sample/dev.csv.gz",
        "test": "avazu-sample/test.csv.gz",
    }

    def categorical(self) -> list[str]:
        hour_fields = HOUR_FIELDS if self.options.split_hour else [AVAZU_HOUR]
        return [*hour_fields, *AVAZU_OTHER_FIELDS]

    def read(self) -> RawData:
        splits = {name: self.read_file(path) for name, path in self.split_paths().items()}
        return RawData(splits=splits, categorical=self.categorical(), sources=self.sources())

    def read_file(self, path: Path) -> pl.DataFrame:
        """One Avazu file (with or without header) as a frame with the contract's columns."""
        nrows = self.options.nrows
        text = load_text(path, self.display(path), max_lines=None if nrows is None else nrows + 1)
        columns = self.columns_of(text)
        if has_header(text, columns):
            text = expect_header(text, columns, AVAZU_SEPARATOR)
        if nrows is not None:
            text = text.head(nrows)
        return self.parse(text, columns)

    def chunked(self, chunk_rows: int) -> ChunkedData | None:
        if self.options.nrows is not None:
            return None  # a row limit counts past an optional header: read such files whole

        def chunks(path: Path) -> Iterator[pl.DataFrame]:
            columns = AVAZU_COLUMNS
            for k, text in enumerate(iter_text_chunks(path, self.display(path), chunk_rows)):
                if k == 0:
                    columns = self.columns_of(text)
                    if has_header(text, columns):
                        text = expect_header(text, columns, AVAZU_SEPARATOR)
                        if not text.data:
                            continue
                yield self.parse(text, columns)

        def rows(path: Path) -> int:
            display = self.display(path)
            first = next(iter_text_chunks(path, display, 1))
            rows = count_lines(path, display) - has_header(first, self.columns_of(first))
            if rows <= 0:
                raise DataError(f"{display}: no data rows")
            return rows

        sources = [
            ChunkedSource(split, lambda p=path: chunks(p), lambda p=path: rows(p))
            for split, path in self.split_paths().items()
        ]
        return ChunkedData(sources, self.categorical(), files=self.sources())

    def columns_of(self, text: TextFile) -> list[str]:
        """The columns of a file that starts with ``text``: :data:`AVAZU_COLUMNS`, or in scoring mode
        :data:`AVAZU_UNLABELLED_COLUMNS` when its header or its first line's column count says so."""
        first = text.first_line_text()
        if self.scoring and (
            first.startswith(UNLABELLED_HEADER_PREFIX)
            or first.count(AVAZU_SEPARATOR.encode()) + 1 == len(AVAZU_UNLABELLED_COLUMNS)
        ):
            return AVAZU_UNLABELLED_COLUMNS
        return AVAZU_COLUMNS

    def parse(self, text: TextFile, columns: list[str] | None = None) -> pl.DataFrame:
        """Avazu lines without header (a file or a chunk of one) as a frame with the contract's columns;
        ``columns`` (default :data:`AVAZU_COLUMNS`) without ``click`` (scoring mode) give a null label."""
        columns = AVAZU_COLUMNS if columns is None else columns
        hint = "" if AVAZU_LABEL in columns else f"id, hour and 21 categorical, {UNLABELLED_HINT}"
        frame = split_columns(text, columns, AVAZU_SEPARATOR, hint=hint)
        if AVAZU_LABEL in columns:
            label = binary_label(frame, AVAZU_LABEL, text).alias(LABEL)
        else:
            label = null_label(frame.height)
        if self.options.split_hour:
            frame = frame.with_columns(split_hour(frame[AVAZU_HOUR], text))
        return frame.select(self.categorical()).with_columns(label)


def has_header(text: TextFile, columns: list[str]) -> bool:
    """Whether the first line of ``text`` is a header (it starts with the first two column names)."""
    prefix = HEADER_PREFIX if AVAZU_LABEL in columns else UNLABELLED_HEADER_PREFIX
    return text.first_line_text().startswith(prefix)


def split_hour(hour: pl.Series, text: TextFile) -> list[pl.Series]:
    """``YYMMDDHH`` strings -> ``hour_of_day``, ``weekday`` (English name), ``is_weekend`` ("1"/"0").

    Raises:
        DataError: a value that is not a valid date and hour, naming file and line.
    """
    date = hour.str.slice(0, DATE_LENGTH).str.to_date("%y%m%d", strict=False)
    hour_of_day = hour.str.slice(DATE_LENGTH, 2)
    bad = hour.is_null() | (hour.str.len_bytes() != HOUR_LENGTH) | date.is_null() | ~hour_of_day.is_in(HOURS_OF_DAY)
    row = first_true(bad)
    if row is not None:
        raise DataError(f"{text.where(row)}: hour {shorten(repr(hour[row]))} is not YYMMDDHH")
    return [
        hour_of_day.alias("hour_of_day"),
        date.dt.strftime("%A").alias("weekday"),
        (date.dt.weekday() >= FIRST_WEEKEND_DAY).cast(pl.Int8).cast(pl.Utf8).alias("is_weekend"),
    ]
