"""Generic tables (CSV, TSV, Parquet): the options name the categorical, numeric and label columns."""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import Field, field_validator, model_validator

from embdim.data.raw import LABEL, DataError, RawData
from embdim.data.readers._common import (
    GZIP_SUFFIX,
    UNLABELLED_HINT,
    ParquetRows,
    RowLocator,
    SplitFileOptions,
    SplitFileReader,
    TextFile,
    count_lines,
    equals_any,
    iter_text_chunks,
    load_text,
    null_label,
    parse_header,
    parse_numeric,
    positive_label,
    reject_repeated_header,
    require_columns,
    split_columns,
    threshold_label,
)
from embdim.data.readers.base import ChunkedData, ChunkedSource, NotStreamable
from embdim.errors import shorten
from embdim.registry import READERS

TableFormat = Literal["csv", "tsv", "parquet"]
FORMAT_OF_SUFFIX: dict[str, TableFormat] = {
    ".csv": "csv",
    ".txt": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
DEFAULT_SEPARATOR = {"csv": ",", "tsv": "\t"}
SCALAR_KINDS = {
    "categorical": "a string, number, boolean, date or time",
    "numeric": "a number, boolean or numeric string",
    "label": "a number, boolean or numeric string",
}
"""What a Parquet column of each role must hold (named in the error for any other type)."""
MAX_SHOWN_LABELS = 5
"""A warning about ``label_positive`` shows at most this many of the label values read."""

log = logging.getLogger("embdim")


def _parquet_type_fits(role: str, dtype: pl.DataType) -> bool:
    """Whether a Parquet column of ``dtype`` can be read in ``role`` (nested and binary types never)."""
    if dtype == pl.Null or dtype == pl.Boolean or dtype.is_numeric() or dtype == pl.Utf8:
        return True
    if role == "categorical":
        return dtype.is_temporal() or isinstance(dtype, pl.Categorical | pl.Enum)
    return False


LabelValue = str | float
"""A label or missing-value token as a config writes it: text compares as stripped text, a number as a number."""


def _as_list(value: object) -> object:
    """One value as a list of one; a boolean is refused (YAML reads ``yes`` and ``true`` as one)."""
    values = value if isinstance(value, list) else [value]
    for item in values:
        if isinstance(item, bool):
            shown = str(item).lower()
            raise ValueError(f"{shown} is a boolean here; quote it ('{shown}', 'yes') to match text, or write 1 or 0")
    return values


class TableOptions(SplitFileOptions):
    """A table with named columns (CSV, TSV or Parquet; every key is documented in the README).

    Attributes:
        categorical: columns read as categorical fields (strings).
        numeric: columns read as numbers (``Float64``; empty = null).
        label: the label column; it is renamed ``label``.
        label_threshold: label = ``value >= threshold``; ``None``: the column must already be 0/1
            (unless ``label_positive`` is given).
        label_positive: the label values that mean 1 (one value or a list); every other value is 0.
            Text compares as stripped text (``">50K"``), a number as a number (``1`` matches
            ``"1.0"``). Excludes ``label_threshold``. An empty label is still an error.
        missing_values: tokens that mean "missing" (e.g. ``["?", "NA"]``): a list for every
            categorical and numeric column, or a mapping column -> list for some of them. A cell
            equal to a token (compared as in ``label_positive``) is read as null, exactly like an
            empty field: the missing category of a categorical field, a missing number. The label
            is never affected.
        format: ``csv``, ``tsv`` or ``parquet``; ``None``: from the file name (``.gz`` ignored).
        separator: one character; ``None``: ``,`` for CSV, tab for TSV.
        has_header: the first line holds the column names (CSV/TSV).
        columns: the column names of a file without header.
        quote_char: the CSV quote character, ``None`` to treat quotes as text.
        encoding: text encoding of CSV/TSV files (converted to UTF-8).
    """

    categorical: list[str] = Field(default_factory=list)
    numeric: list[str] = Field(default_factory=list)
    label: str
    label_threshold: float | None = None
    label_positive: list[LabelValue] | None = None
    missing_values: list[LabelValue] | dict[str, list[LabelValue]] | None = None
    format: TableFormat | None = None
    separator: str | None = None
    has_header: bool = True
    columns: list[str] | None = None
    quote_char: str | None = '"'
    encoding: str = "utf-8"

    @field_validator("separator", "quote_char")
    @classmethod
    def _one_character(cls, value: str | None) -> str | None:
        if value is not None and len(value) != 1:
            raise ValueError(f"must be one character, got {value!r}")
        return value

    @field_validator("label_positive", mode="before")
    @classmethod
    def _positive_as_list(cls, value: object) -> object:
        return None if value is None else _as_list(value)

    @field_validator("missing_values", mode="before")
    @classmethod
    def _missing_as_lists(cls, value: object) -> object:
        if isinstance(value, dict):
            return {column: _as_list(tokens) for column, tokens in value.items()}
        return None if value is None else _as_list(value)

    @model_validator(mode="after")
    def _check_columns(self) -> TableOptions:
        if not self.categorical and not self.numeric:
            raise ValueError("name at least one 'categorical' or 'numeric' column")
        roles = [*self.categorical, *self.numeric, self.label]
        repeated = sorted({name for name in roles if roles.count(name) > 1})
        if repeated:
            raise ValueError(f"columns named in more than one role (categorical, numeric, label): {repeated}")
        if LABEL in roles[:-1]:
            raise ValueError(f"a feature column may not be called {LABEL!r}; that name is the label's")
        if not self.has_header and self.columns is None:
            raise ValueError("a file without header needs 'columns' (the names of its columns)")
        if self.has_header and self.columns is not None:
            raise ValueError("'columns' names the columns of a file without header; set has_header: false")
        if self.label_positive is not None and self.label_threshold is not None:
            raise ValueError("give either 'label_threshold' or 'label_positive', not both")
        if self.label_positive is not None and not self.label_positive:
            raise ValueError("'label_positive' is empty; name the label values that mean 1")
        if isinstance(self.missing_values, dict):
            features = {*self.categorical, *self.numeric}
            for column in self.missing_values:
                if column not in features:
                    raise ValueError(f"'missing_values' names {column!r}, which is not a categorical or numeric column")
        return self

    def missing_tokens(self, column: str) -> list[LabelValue]:
        """The tokens that mean missing in a feature ``column`` (empty: none besides an empty field)."""
        if isinstance(self.missing_values, dict):
            return list(self.missing_values.get(column, []))
        return list(self.missing_values or [])


class _LabelTally:
    """What ``label_positive`` made of one file's labels: the rows of 1 and of 0, and a few values read.

    Logged once per file (INFO); a file whose rows all became one class gets a warning, since that
    most often means a value spelt otherwise in the file (Adult's test file writes ``>50K.``).
    """

    def __init__(self, display: str, positive: list[LabelValue]) -> None:
        self.display, self.positive = display, positive
        self.ones = self.zeros = 0
        self.seen: list[str] = []

    def add(self, values: pl.Series, label: pl.Series) -> None:
        ones = int(label.sum())
        self.ones += ones
        self.zeros += label.len() - ones
        if len(self.seen) < MAX_SHOWN_LABELS:
            read = values.cast(pl.Utf8).str.strip_chars().unique(maintain_order=True).head(MAX_SHOWN_LABELS)
            self.seen += [value for value in read.to_list() if value not in self.seen]
            del self.seen[MAX_SHOWN_LABELS:]

    def report(self) -> None:
        if not self.ones and not self.zeros:
            return  # a file without labels (scoring mode)
        positive = ", ".join(shorten(repr(value)) for value in self.positive)
        log.info("%s: label_positive [%s]: rows labelled 1: %s, labelled 0: %s", self.display, positive,
                 f"{self.ones:,}", f"{self.zeros:,}")  # fmt: skip
        if self.ones and self.zeros:
            return
        what = f"no label is one of label_positive [{positive}] (all {self.zeros:,} rows are 0)"
        if not self.zeros:
            what = f"every label is one of label_positive [{positive}] (all {self.ones:,} rows are 1)"
        seen = ", ".join(shorten(repr(value)) for value in self.seen)
        log.warning("%s: %s; labels read include %s", self.display, what, seen)


def _field_count(text: TextFile, separator: str, quote_char: str | None) -> int:
    """The number of fields on the text's first line."""
    line = text.first_line_text().decode("utf-8", errors="replace")
    if quote_char is None:
        return line.count(separator) + 1
    return len(next(csv.reader([line], delimiter=separator, quotechar=quote_char), [""]))


@READERS.register("table")
class TableReader(SplitFileReader):
    """CSV / TSV / Parquet with the columns named in the options; unknown names are an error.

    In scoring mode a file may lack the label column (its header does not name it, a file without
    header has one column fewer than ``columns``, a Parquet file has no such column): its label is null.
    """

    Options = TableOptions
    options: TableOptions

    def read(self) -> RawData:
        splits = {name: self.read_file(path) for name, path in self.split_paths().items()}
        return RawData(
            splits=splits,
            categorical=list(self.options.categorical),
            numeric=list(self.options.numeric),
            sources=self.sources(),
        )

    def file_format(self, path: Path) -> TableFormat:
        if self.options.format is not None:
            return self.options.format
        suffixes = path.suffixes
        if suffixes and suffixes[-1] == GZIP_SUFFIX:
            suffixes = suffixes[:-1]
        found = FORMAT_OF_SUFFIX.get(suffixes[-1].lower()) if suffixes else None
        if found is None:
            raise DataError(
                f"{self.display(path)}: cannot tell the format from the name; set dataset.options.format "
                f"to one of {', '.join(DEFAULT_SEPARATOR)}, parquet"
            )
        return found

    def read_file(self, path: Path) -> pl.DataFrame:
        """One table file as a frame with the contract's columns and dtypes."""
        if self.file_format(path) == "parquet":
            frame, locator = self._read_parquet(path)
        else:
            frame, locator = self._read_delimited(path)
        tally = self._tally(path)
        typed = self._typed(frame, locator, tally)
        if tally is not None:
            tally.report()
        return typed

    def chunked(self, chunk_rows: int) -> ChunkedData | None:
        options = self.options
        if options.nrows is not None or options.encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
            return None  # row limits past a header, and other encodings, are read whole
        sources = []
        for split, path in self.split_paths().items():
            if self.file_format(path) == "parquet":
                sources.append(
                    ChunkedSource(
                        split, lambda p=path: self._parquet_chunks(p, chunk_rows), lambda p=path: self._parquet_rows(p)
                    )
                )
            else:
                sources.append(
                    ChunkedSource(
                        split, lambda p=path: self._text_chunks(p, chunk_rows), lambda p=path: self._text_rows(p)
                    )
                )
        return ChunkedData(sources, list(options.categorical), list(options.numeric), self.sources())

    def _typed(self, frame: pl.DataFrame, locator: RowLocator, tally: _LabelTally | None = None) -> pl.DataFrame:
        """Parsed columns in the contract's dtypes: numbers, the label (null without a label column), text."""
        options = self.options
        missing = [
            pl.when(equals_any(pl.col(name), frame.schema[name], tokens)).then(None).otherwise(pl.col(name)).alias(name)
            for name in [*options.categorical, *options.numeric]
            if (tokens := options.missing_tokens(name))
        ]
        if missing:  # declared missing tokens become null before anything reads the values
            frame = frame.with_columns(missing)
        frame = parse_numeric(frame, options.numeric, locator)
        if options.label not in frame.columns:  # scoring a file without labels (training requires the column)
            label = null_label(frame.height)
        elif options.label_positive is not None:
            label = positive_label(frame, options.label, options.label_positive, locator)
            if tally is not None:
                tally.add(frame[options.label], label)
        else:
            label = threshold_label(frame, options.label, options.label_threshold, locator)
        categorical = [pl.col(name).cast(pl.Utf8) for name in options.categorical]
        return frame.select(*categorical, *options.numeric).with_columns(label.alias(LABEL))

    def _tally(self, path: Path) -> _LabelTally | None:
        positive = self.options.label_positive
        return None if positive is None else _LabelTally(self.display(path), positive)

    def _text_rows(self, path: Path) -> int:
        """Data lines of a CSV/TSV file; a quote anywhere may join lines into one row: then whole."""
        quote = self.options.quote_char
        display = self.display(path)
        for text in iter_text_chunks(path, display, 1 << 16):
            if quote is not None and quote.encode() in text.data:
                raise NotStreamable(f"{display}: quoted fields may span lines")
        rows = count_lines(path, display) - (1 if self.options.has_header else 0)
        if rows <= 0:
            raise DataError(f"{display}: no data rows")
        return rows

    def _text_chunks(self, path: Path, chunk_rows: int) -> Iterator[pl.DataFrame]:
        options = self.options
        separator = options.separator or DEFAULT_SEPARATOR[self.file_format(path)]
        names: list[str] = []
        hint = ""
        rows = 0
        tally = self._tally(path)
        for k, text in enumerate(iter_text_chunks(path, self.display(path), chunk_rows)):
            if k == 0:
                names, hint, text = self._columns(text, separator)
            if not text.data or text.data.isspace():
                continue  # the header alone, or blank lines that end the file
            frame = split_columns(text, names, separator, quote_char=options.quote_char, hint=hint)
            if options.has_header:
                reject_repeated_header(frame, text)
            rows += frame.height
            yield self._typed(frame, text, tally)
        if rows == 0:
            raise DataError(f"{self.display(path)}: no data rows")
        if tally is not None:
            tally.report()

    def _columns(self, text: TextFile, separator: str) -> tuple[list[str], str, TextFile]:
        """The column names of a CSV/TSV file whose text starts with ``text`` (checked against the
        options), a hint for column-count errors, and the text without its header."""
        options = self.options
        hint = ""
        if options.has_header:
            names = parse_header(text, separator, options.quote_char)
            where = f"{text.display} line {text.first_line} (the header)"
            text = text.without_first_line()
        else:
            names = list(options.columns or [])
            where = f"{text.display} (dataset.options.columns)"
            unlabelled = [name for name in names if name != options.label]
            fields = _field_count(text, separator, options.quote_char) if self.scoring else len(names)
            if len(unlabelled) < len(names) and fields == len(unlabelled):
                names, hint = unlabelled, UNLABELLED_HINT
        require_columns(where, self._wanted(labelled=not self.scoring or options.label in names), names)
        return names, hint, text

    def _parquet_rows(self, path: Path) -> int:
        self._read_parquet_schema(path)
        rows = pl.scan_parquet(path).select(pl.len()).collect().item()
        if rows == 0:
            raise DataError(f"{self.display(path)}: no data rows")
        return rows

    def _parquet_chunks(self, path: Path, chunk_rows: int) -> Iterator[pl.DataFrame]:
        display = self.display(path)
        wanted = self._read_parquet_schema(path)
        total = self._parquet_rows(path)
        tally = self._tally(path)
        for start in range(0, total, chunk_rows):
            try:
                frame = pl.scan_parquet(path).select(wanted).slice(start, chunk_rows).collect()
            except (OSError, pl.exceptions.PolarsError) as error:
                raise DataError(f"{display}: cannot read as Parquet: {shorten(str(error).splitlines()[0])}") from error
            yield self._typed(frame, ParquetRows(display, start), tally)
        if tally is not None:
            tally.report()

    def _wanted(self, labelled: bool = True) -> dict[str, list[str]]:
        """The columns a file must have, by role; the label only when ``labelled``."""
        options = self.options
        wanted = {"categorical": options.categorical, "numeric": options.numeric}
        return {**wanted, "label": [options.label]} if labelled else wanted

    def _read_delimited(self, path: Path) -> tuple[pl.DataFrame, RowLocator]:
        options = self.options
        separator = options.separator or DEFAULT_SEPARATOR[self.file_format(path)]
        header_lines = 1 if options.has_header else 0
        max_lines = None if options.nrows is None else options.nrows + header_lines
        text = load_text(path, self.display(path), encoding=options.encoding, max_lines=max_lines)
        names, hint, text = self._columns(text, separator)
        frame = split_columns(text, names, separator, quote_char=options.quote_char, hint=hint)
        if options.has_header:
            reject_repeated_header(frame, text)
        return frame, text

    def _read_parquet(self, path: Path) -> tuple[pl.DataFrame, RowLocator]:
        display = self.display(path)
        wanted = self._read_parquet_schema(path)  # missing file, not a file, unreadable, wrong columns
        try:
            frame = pl.read_parquet(path, columns=wanted, n_rows=self.options.nrows)
        except (OSError, pl.exceptions.PolarsError) as error:
            raise DataError(f"{display}: cannot read as Parquet: {shorten(str(error).splitlines()[0])}") from error
        if frame.height == 0:
            raise DataError(f"{display}: no data rows")
        return frame, ParquetRows(display)

    def _read_parquet_schema(self, path: Path) -> list[str]:
        """Check that the Parquet file has the wanted columns in types their roles can read; return
        the columns to read (without the label in scoring mode when the file has none)."""
        display = self.display(path)
        if not path.exists():
            raise DataError(f"{display}: file not found ({path})")
        if not path.is_file():
            raise DataError(f"{display}: not a file ({path})")
        try:
            schema = pl.scan_parquet(path).collect_schema()
        except (OSError, pl.exceptions.PolarsError) as error:
            raise DataError(f"{display}: cannot read as Parquet: {shorten(str(error).splitlines()[0])}") from error
        wanted = self._wanted(labelled=not self.scoring or self.options.label in schema)
        require_columns(display, wanted, list(schema))
        self._check_parquet_types(display, schema, wanted)
        return [name for names in wanted.values() for name in names]

    def _check_parquet_types(self, display: str, schema: pl.Schema, wanted: dict[str, list[str]]) -> None:
        """Raise naming the first wanted column whose type cannot be read in its role (list, struct, binary)."""
        for role, names in wanted.items():
            for name in names:
                if not _parquet_type_fits(role, schema[name]):
                    raise DataError(
                        f"{display}: column {shorten(repr(name))} (dataset.options.{role}) has type {schema[name]}; "
                        f"a {role} column must hold {SCALAR_KINDS[role]}"
                    )
