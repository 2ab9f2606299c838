"""libFM / libSVM one-hot rows with one ``index:1`` pair per field, fields in a fixed order.

A row is ``label idx:1 idx:1 ...`` separated by single spaces. The field of a pair is its position;
its value is the index, kept as a string (``"204"``). ``libfm`` is the generic reader,
``frappe_libfm`` reads the NFM / AFN / BARS Frappe splits with the Frappe field names.

In scoring mode a file may lack the label: its lines are the pairs alone (the first token of its
first line is a pair), and its label is null.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import polars as pl
from pydantic import Field, field_validator

from embdim.data.raw import LABEL, DataError, RawData
from embdim.data.readers._common import (
    UNLABELLED_HINT,
    SplitFileOptions,
    SplitFileReader,
    TextFile,
    binary_label,
    count_lines,
    first_true,
    iter_text_chunks,
    load_text,
    null_label,
    split_columns,
)
from embdim.data.readers.base import ChunkedData, ChunkedSource
from embdim.errors import shorten
from embdim.registry import READERS

LIBFM_SEPARATOR = " "
PAIR_SEPARATOR = ":"
POSITIVE_LABELS = ("1", "+1")
NEGATIVE_LABELS = ("0", "-1")
ONE_HOT_VALUE = 1.0
"""The only feature value a categorical libFM row may carry."""
FRAPPE_FIELDS = [
    "user",
    "item",
    "daytime",
    "weekday",
    "isweekend",
    "homework",
    "cost",
    "weather",
    "country",
    "city",
]


@dataclass
class LibFMRows:
    """One parsed libFM file: the label and, per field position, the feature index of every row."""

    label: pl.Series
    indices: list[pl.Series]
    text: TextFile


def count_pairs(text: TextFile, labelled: bool = True) -> int:
    """Number of ``index:value`` pairs on the first line (the rest of the file must match); the first
    token is the label when ``labelled``."""
    first = text.first_line_text().decode("utf-8", errors="replace")
    if not first.strip():
        raise DataError(f"{text.display} line {text.first_line}: empty line")
    return first.count(LIBFM_SEPARATOR) + (0 if labelled else 1)


def has_label(text: TextFile) -> bool:
    """Whether the first line of ``text`` starts with a label rather than an ``index:value`` pair."""
    first_token = text.first_line_text().split(LIBFM_SEPARATOR.encode(), 1)[0]
    return PAIR_SEPARATOR.encode() not in first_token


def parse_libfm(text: TextFile, n_pairs: int, labelled: bool = True) -> LibFMRows:
    """Parse rows of exactly ``n_pairs`` ``index:1`` pairs; the label may be 1/0 or 1/-1. Without
    ``labelled`` the rows are the pairs alone and the label is null (scoring mode).

    Raises:
        DataError: wrong pair count, a pair that is not ``<non-negative integer>:1``, a bad label;
            the message names the file and line.
    """
    pair_columns = [f"pair_{position}" for position in range(1, n_pairs + 1)]
    if labelled:
        hint = f"label and {n_pairs} index:value pairs"
        frame = split_columns(text, [LABEL, *pair_columns], LIBFM_SEPARATOR, hint=hint)
        label = binary_label(frame, LABEL, text, positive=POSITIVE_LABELS, negative=NEGATIVE_LABELS)
    else:
        hint = f"{n_pairs} index:value pairs, {UNLABELLED_HINT}"
        frame = split_columns(text, pair_columns, LIBFM_SEPARATOR, hint=hint)
        label = null_label(frame.height)
    indices = []
    for position, column in enumerate(pair_columns, start=1):
        parts = frame[column].str.splitn(PAIR_SEPARATOR, 2).struct.unnest()
        index_text, value_text = parts.to_series(0), parts.to_series(1)
        index = index_text.cast(pl.Int64, strict=False)
        value = value_text.str.strip_chars().cast(pl.Float64, strict=False)
        bad = index.is_null() | (index < 0) | (value != ONE_HOT_VALUE).fill_null(True)
        row = first_true(bad)
        if row is not None:
            raise DataError(
                f"{text.where(row)}: pair {position} is {shorten(repr(frame[column][row]))}, expected '<index>:1' "
                "with a non-negative integer index"
            )
        indices.append(index.alias(column))
    return LibFMRows(label=label, indices=indices, text=text)


class LibFMOptions(SplitFileOptions):
    """libFM files with one ``index:1`` pair per field.

    Attributes:
        fields: field names, one per pair position. ``None``: ``field_1..field_n`` with ``n`` taken
            from the first line of the first file.
    """

    fields: list[str] | None = None

    @field_validator("fields")
    @classmethod
    def _check_fields(cls, fields: list[str] | None) -> list[str] | None:
        if fields is None:
            return None
        if not fields:
            raise ValueError("'fields' is empty")
        if len(set(fields)) != len(fields):
            raise ValueError(f"'fields' repeats a name: {fields}")
        if LABEL in fields:
            raise ValueError(f"{LABEL!r} is reserved for the label")
        return fields


@READERS.register("libfm")
class LibFMReader(SplitFileReader):
    """Generic positional libFM reader: field = pair position, value = the index as a string."""

    Options = LibFMOptions
    options: LibFMOptions

    def read(self) -> RawData:
        fields = self.options.fields
        splits = {}
        for name, path in self.split_paths().items():
            n_pairs = None if fields is None else len(fields)
            rows = read_libfm_file(path, self.display(path), n_pairs, self.options.nrows, scoring=self.scoring)
            if fields is None:
                fields = [f"field_{position}" for position in range(1, len(rows.indices) + 1)]
            splits[name] = _frame(rows, fields)
        return RawData(splits=splits, categorical=list(fields or []), sources=self.sources())

    def chunked(self, chunk_rows: int) -> ChunkedData:
        paths = self.split_paths()
        fields = self.options.fields
        if fields is None:  # positional names, counted on the first line of the first file
            first_path = next(iter(paths.values()))
            first = next(iter_text_chunks(first_path, self.display(first_path), 1))
            n_pairs = count_pairs(first, not self.scoring or has_label(first))
            fields = [f"field_{position}" for position in range(1, n_pairs + 1)]

        def chunks(path: Path, names: list[str]) -> Iterator[pl.DataFrame]:
            labelled, nrows = True, self.options.nrows
            for k, text in enumerate(iter_text_chunks(path, self.display(path), chunk_rows, max_lines=nrows)):
                if k == 0:  # the file's first line says whether its lines have a label
                    labelled = not self.scoring or has_label(text)
                yield _frame(parse_libfm(text, len(names), labelled), names)

        def source(split: str, path: Path) -> ChunkedSource:
            display, nrows = self.display(path), self.options.nrows
            return ChunkedSource(
                split, lambda: chunks(path, fields), lambda: count_lines(path, display, max_lines=nrows)
            )

        return ChunkedData([source(s, p) for s, p in paths.items()], list(fields), files=self.sources())


class FrappeLibFMOptions(LibFMOptions):
    """The NFM/AFN/BARS Frappe libFM splits (default: the shared valid and test files)."""

    fields: list[str] | None = Field(default_factory=lambda: list(FRAPPE_FIELDS))


@READERS.register("frappe_libfm")
class FrappeLibFMReader(LibFMReader):
    """Frappe in libFM form: 10 fields ``user,item,daytime,...,city``; the train split is not shared."""

    Options = FrappeLibFMOptions
    DEFAULT_FILES: ClassVar[dict[str, str]] = {
        "valid": "frappe/nfm.frappe.validation.libfm.gz",
        "test": "frappe/nfm.frappe.test.libfm.gz",
    }


def _frame(rows: LibFMRows, fields: list[str]) -> pl.DataFrame:
    """Parsed libFM rows as a frame: one Utf8 column per field (the index as text) and the label."""
    columns = [index.cast(pl.Utf8).alias(field) for field, index in zip(fields, rows.indices, strict=True)]
    return pl.DataFrame([*columns, rows.label])


def read_libfm_file(
    path: Path, display: str, n_pairs: int | None, nrows: int | None, *, scoring: bool = False
) -> LibFMRows:
    """Load and parse one libFM file; ``n_pairs=None`` takes the count from its first line. With
    ``scoring``, a file whose first line starts with a pair has no labels (its label is null)."""
    text = load_text(path, display, max_lines=nrows)
    labelled = not scoring or has_label(text)
    return parse_libfm(text, count_pairs(text, labelled) if n_pairs is None else n_pairs, labelled)
