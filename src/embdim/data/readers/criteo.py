"""Criteo Kaggle Display Advertising Challenge text: ``label I1..I13 C1..C26``, tab-separated, no header."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import polars as pl

from embdim.data.raw import LABEL, RawData
from embdim.data.readers._common import (
    SplitFileOptions,
    SplitFileReader,
    TextFile,
    binary_label,
    count_lines,
    iter_text_chunks,
    load_text,
    parse_numeric,
    split_columns,
)
from embdim.data.readers.base import ChunkedData, ChunkedSource
from embdim.registry import READERS

NUM_INTEGER_FEATURES = 13
NUM_CATEGORICAL_FEATURES = 26
CRITEO_NUMERIC = [f"I{i}" for i in range(1, NUM_INTEGER_FEATURES + 1)]
CRITEO_CATEGORICAL = [f"C{i}" for i in range(1, NUM_CATEGORICAL_FEATURES + 1)]
CRITEO_COLUMNS = [LABEL, *CRITEO_NUMERIC, *CRITEO_CATEGORICAL]
CRITEO_SEPARATOR = "\t"


class CriteoOptions(SplitFileOptions):
    """Criteo files: ``path`` or ``files`` (``{all: ...}`` or train/valid/test), optional ``nrows``.

    Without either, the shared sample ``criteo-kaggle-sample/{train,dev,test}.csv.gz`` is read
    (``dev`` becomes ``valid``).
    """


@READERS.register("criteo")
class CriteoReader(SplitFileReader):
    """Kaggle DAC rows: ``I*`` are numeric (``Float64``), ``C*`` categorical; empty values are null."""

    Options = CriteoOptions
    DEFAULT_FILES: ClassVar[dict[str, str]] = {
        "train": "criteo-kaggle-sample/train.csv.gz",
        "valid": "criteo-kaggle-sample/dev.csv.gz",
        "test": "criteo-kaggle-sample/test.csv.gz",
    }

    def read(self) -> RawData:
        splits = {name: self.read_file(path) for name, path in self.split_paths().items()}
        return RawData(
            splits=splits,
            categorical=list(CRITEO_CATEGORICAL),
            numeric=list(CRITEO_NUMERIC),
            sources=self.sources(),
        )

    def read_file(self, path: Path) -> pl.DataFrame:
        """One Criteo file as a frame with the contract's columns and dtypes."""
        return self.parse(load_text(path, self.display(path), max_lines=self.options.nrows))

    def chunked(self, chunk_rows: int) -> ChunkedData:
        def source(split: str, path: Path) -> ChunkedSource:
            display, nrows = self.display(path), self.options.nrows
            return ChunkedSource(
                split,
                lambda: map(self.parse, iter_text_chunks(path, display, chunk_rows, max_lines=nrows)),
                lambda: count_lines(path, display, max_lines=nrows),
            )

        sources = [source(split, path) for split, path in self.split_paths().items()]
        return ChunkedData(sources, list(CRITEO_CATEGORICAL), list(CRITEO_NUMERIC), self.sources())

    def parse(self, text: TextFile) -> pl.DataFrame:
        """Criteo lines (a whole file or a chunk of one) as a frame with the contract's columns and dtypes."""
        frame = split_columns(text, CRITEO_COLUMNS, CRITEO_SEPARATOR, hint="label, 13 integer and 26 categorical")
        frame = parse_numeric(frame, CRITEO_NUMERIC, text)
        label = binary_label(frame, LABEL, text)
        return frame.select([*CRITEO_CATEGORICAL, *CRITEO_NUMERIC]).with_columns(label)
