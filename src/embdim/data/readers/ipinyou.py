"""iPinYou (FNN / deep-ctr demo data): libFM rows decoded to field values with ``featindex.fm.txt``.

``featindex`` maps ``field:value<TAB>index``, one feature per line; the fields are taken in order
of first appearance, and pair ``k`` of every data row must be an index of field ``k``. Each field
becomes a categorical column holding the value string (``field:other``, the original encoding's
bucket for rare values, stays the value ``"other"``). In scoring mode a data file may lack the
label (its lines are the pairs alone); its label is null.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl

from embdim.data.raw import DataError, RawData
from embdim.data.readers._common import (
    SplitFileOptions,
    SplitFileReader,
    first_true,
    load_text,
    split_columns,
)
from embdim.data.readers.libfm import LibFMRows, read_libfm_file
from embdim.errors import shorten
from embdim.registry import READERS

FEATINDEX_SEPARATOR = "\t"
FIELD_VALUE_SEPARATOR = ":"
NO_FIELD = -1
"""Field code of an index that featindex does not define."""


@dataclass
class FeatureIndex:
    """Decoded ``featindex``, sorted by index (not a dense table: indices may be large and sparse).

    Attributes:
        fields: field names in order of first appearance.
        index: int64 [K] the defined indices, ascending.
        field_code: int64 [K] the field (position in ``fields``) of each index.
        value: Utf8 [K] the value of each index.
        display: the file's name in error messages.
    """

    fields: list[str]
    index: np.ndarray
    field_code: np.ndarray
    value: pl.Series
    display: str

    def decode(self, rows: LibFMRows) -> list[pl.Series]:
        """One value column per field; raises on an unknown index or one of the wrong field."""
        if len(rows.indices) != len(self.fields):
            raise DataError(
                f"{rows.text.display}: rows have {len(rows.indices)} pairs but {self.display} "
                f"defines {len(self.fields)} fields"
            )
        columns = []
        for position, (field, index) in enumerate(zip(self.fields, rows.indices, strict=True), start=1):
            indices = index.to_numpy()
            position_in_map = np.minimum(np.searchsorted(self.index, indices), len(self.index) - 1)
            known = self.index[position_in_map] == indices
            codes = np.where(known, self.field_code[position_in_map], NO_FIELD)
            row = first_true(pl.Series(codes == NO_FIELD))
            if row is not None:
                raise DataError(
                    f"{rows.text.where(row)}: index {indices[row]} (pair {position}) is not in {self.display}"
                )
            row = first_true(pl.Series(codes != position - 1))
            if row is not None:
                raise DataError(
                    f"{rows.text.where(row)}: index {indices[row]} (pair {position}) belongs to field "
                    f"{self.fields[codes[row]]!r}, expected {field!r}"
                )
            columns.append(self.value.gather(position_in_map).alias(field))
        return columns


def read_featindex(path: Path, display: str) -> FeatureIndex:
    """Parse ``field:value<TAB>index`` lines.

    Raises:
        DataError: a malformed line, an index that is not a non-negative integer, a repeated index.
    """
    text = load_text(path, display)
    frame = split_columns(text, ["feature", "index"], FEATINDEX_SEPARATOR, hint="field:value and index")
    parts = frame["feature"].str.splitn(FIELD_VALUE_SEPARATOR, 2).struct.unnest()
    field, value = parts.to_series(0), parts.to_series(1)
    row = first_true(value.is_null() | (field.str.len_bytes() == 0).fill_null(True))
    if row is not None:
        raise DataError(f"{text.where(row)}: {shorten(repr(frame['feature'][row]))} is not 'field:value'")
    index = frame["index"].str.strip_chars().cast(pl.Int64, strict=False)
    row = first_true(index.is_null() | (index < 0))
    if row is not None:
        shown = shorten(repr(frame["index"][row]))
        raise DataError(f"{text.where(row)}: index {shown} is not a non-negative integer")
    row = first_true(index.is_duplicated() & ~index.is_first_distinct())
    if row is not None:
        raise DataError(f"{text.where(row)}: index {index[row]} is defined a second time")
    fields = field.unique(maintain_order=True).to_list()
    code_of_field = {name: code for code, name in enumerate(fields)}
    table = pl.DataFrame(
        {"index": index, "code": field.replace_strict(code_of_field, return_dtype=pl.Int64), "value": value}
    ).sort("index")
    return FeatureIndex(
        fields=fields,
        index=table["index"].to_numpy(),
        field_code=table["code"].to_numpy(),
        value=table["value"],
        display=display,
    )


class IPinYouOptions(SplitFileOptions):
    """iPinYou libFM files plus their feature map (default: the shared ``ipinyou-sample``).

    Attributes:
        featindex: the ``field:value<TAB>index`` map (relative to the data root unless absolute).
    """

    SOURCE_OPTIONS: ClassVar[frozenset[str]] = SplitFileOptions.SOURCE_OPTIONS | {"featindex"}

    featindex: str = "ipinyou-sample/featindex.fm.txt.gz"


@READERS.register("ipinyou")
class IPinYouReader(SplitFileReader):
    """iPinYou rows as 16 categorical fields (weekday, hour, useragent, IP, ...); train and test given."""

    Options = IPinYouOptions
    options: IPinYouOptions
    DEFAULT_FILES: ClassVar[dict[str, str]] = {
        "train": "ipinyou-sample/train.fm.txt.gz",
        "test": "ipinyou-sample/test.fm.txt.gz",
    }

    def featindex_path(self) -> Path:
        return self.path(self.options.featindex)

    def source_files(self) -> dict[str, Path]:
        return {**super().source_files(), "featindex": self.featindex_path()}

    def read(self) -> RawData:
        featindex = read_featindex(self.featindex_path(), self.display(self.featindex_path()))
        splits = {}
        for name, path in self.split_paths().items():
            n_pairs, nrows = len(featindex.fields), self.options.nrows
            rows = read_libfm_file(path, self.display(path), n_pairs, nrows, scoring=self.scoring)
            splits[name] = pl.DataFrame([*featindex.decode(rows), rows.label])
        return RawData(splits=splits, categorical=list(featindex.fields), sources=self.sources())
