"""Generic tables (CSV, TSV, Parquet): the options name the categorical, numeric and label columns."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import polars as pl
from pydantic import Field, field_validator, model_validator

from embdim.data.raw import LABEL, DataError, RawData
from embdim.data.readers._common import (
    GZIP_SUFFIX,
    ParquetRows,
    RowLocator,
    SplitFileOptions,
    SplitFileReader,
    count_lines,
    iter_text_chunks,
    load_text,
    parse_header,
    parse_numeric,
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


def _parquet_type_fits(role: str, dtype: pl.DataType) -> bool:
    """Whether a Parquet column of ``dtype`` can be read in ``role`` (nested and binary types never)."""
    if dtype == pl.Null or dtype == pl.Boolean or dtype.is_numeric() or dtype == pl.Utf8:
        return True
    if role == "categorical":
        return dtype.is_temporal() or isinstance(dtype, pl.Categorical | pl.Enum)
    return False


class TableOptions(SplitFileOptions):
    """A table with named columns.

    Attributes:
        categorical: columns read as categorical fields (strings).
        numeric: columns read as numbers (``Float64``; empty = null).
        label: the label column; it is renamed ``label``.
        label_threshold: label = ``value >= threshold``; ``None``: the column must already be 0/1.
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
        return self


@READERS.register("table")
class TableReader(SplitFileReader):
    """CSV / TSV / Parquet with the columns named in the options; unknown names are an error."""

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
        return self._typed(frame, locator)

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

    def _typed(self, frame: pl.DataFrame, locator: RowLocator) -> pl.DataFrame:
        """Parsed columns in the contract's dtypes: numbers, the label, categorical text."""
        options = self.options
        frame = parse_numeric(frame, options.numeric, locator)
        label = threshold_label(frame, options.label, options.label_threshold, locator).alias(LABEL)
        categorical = [pl.col(name).cast(pl.Utf8) for name in options.categorical]
        return frame.select(*categorical, *options.numeric).with_columns(label)

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
        names: list[str] = list(options.columns or [])
        rows = 0
        for k, text in enumerate(iter_text_chunks(path, self.display(path), chunk_rows)):
            if k == 0:
                if options.has_header:
                    names = parse_header(text, separator, options.quote_char)
                    where = f"{text.display} line {text.first_line} (the header)"
                    text = text.without_first_line()
                else:
                    where = f"{text.display} (dataset.options.columns)"
                require_columns(where, self._wanted(), names)
            if not text.data or text.data.isspace():
                continue  # the header alone, or blank lines that end the file
            frame = split_columns(text, names, separator, quote_char=options.quote_char)
            if options.has_header:
                reject_repeated_header(frame, text)
            rows += frame.height
            yield self._typed(frame, text)
        if rows == 0:
            raise DataError(f"{self.display(path)}: no data rows")

    def _parquet_rows(self, path: Path) -> int:
        self._read_parquet_schema(path)
        rows = pl.scan_parquet(path).select(pl.len()).collect().item()
        if rows == 0:
            raise DataError(f"{self.display(path)}: no data rows")
        return rows

    def _parquet_chunks(self, path: Path, chunk_rows: int) -> Iterator[pl.DataFrame]:
        display = self.display(path)
        self._read_parquet_schema(path)
        wanted = [*self.options.categorical, *self.options.numeric, self.options.label]
        total = self._parquet_rows(path)
        for start in range(0, total, chunk_rows):
            try:
                frame = pl.scan_parquet(path).select(wanted).slice(start, chunk_rows).collect()
            except (OSError, pl.exceptions.PolarsError) as error:
                raise DataError(f"{display}: cannot read as Parquet: {shorten(str(error).splitlines()[0])}") from error
            yield self._typed(frame, ParquetRows(display, start))

    def _wanted(self) -> dict[str, list[str]]:
        options = self.options
        return {"categorical": options.categorical, "numeric": options.numeric, "label": [options.label]}

    def _read_delimited(self, path: Path) -> tuple[pl.DataFrame, RowLocator]:
        options = self.options
        separator = options.separator or DEFAULT_SEPARATOR[self.file_format(path)]
        header_lines = 1 if options.has_header else 0
        max_lines = None if options.nrows is None else options.nrows + header_lines
        text = load_text(path, self.display(path), encoding=options.encoding, max_lines=max_lines)
        if options.has_header:
            names = parse_header(text, separator, options.quote_char)
            where = f"{text.display} line {text.first_line} (the header)"
            text = text.without_first_line()
        else:
            names = list(options.columns or [])
            where = f"{text.display} (dataset.options.columns)"
        require_columns(where, self._wanted(), names)
        frame = split_columns(text, names, separator, quote_char=options.quote_char)
        if options.has_header:
            reject_repeated_header(frame, text)
        return frame, text

    def _read_parquet(self, path: Path) -> tuple[pl.DataFrame, RowLocator]:
        display = self.display(path)
        self._read_parquet_schema(path)  # missing file, not a file, unreadable, wrong columns
        try:
            wanted = [*self.options.categorical, *self.options.numeric, self.options.label]
            frame = pl.read_parquet(path, columns=wanted, n_rows=self.options.nrows)
        except (OSError, pl.exceptions.PolarsError) as error:
            raise DataError(f"{display}: cannot read as Parquet: {shorten(str(error).splitlines()[0])}") from error
        if frame.height == 0:
            raise DataError(f"{display}: no data rows")
        return frame, ParquetRows(display)

    def _read_parquet_schema(self, path: Path) -> None:
        """Check that the Parquet file has the wanted columns in types their roles can read."""
        display = self.display(path)
        if not path.exists():
            raise DataError(f"{display}: file not found ({path})")
        if not path.is_file():
            raise DataError(f"{display}: not a file ({path})")
        try:
            schema = pl.scan_parquet(path).collect_schema()
        except (OSError, pl.exceptions.PolarsError) as error:
            raise DataError(f"{display}: cannot read as Parquet: {shorten(str(error).splitlines()[0])}") from error
        require_columns(display, self._wanted(), list(schema))
        self._check_parquet_types(display, schema)

    def _check_parquet_types(self, display: str, schema: pl.Schema) -> None:
        """Raise naming the first wanted column whose type cannot be read in its role (list, struct, binary)."""
        for role, names in self._wanted().items():
            for name in names:
                if not _parquet_type_fits(role, schema[name]):
                    raise DataError(
                        f"{display}: column {shorten(repr(name))} (dataset.options.{role}) has type {schema[name]}; "
                        f"a {role} column must hold {SCALAR_KINDS[role]}"
                    )
