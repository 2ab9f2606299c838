"""Criteo Kaggle Display Advertising Challenge text: ``label I1..I13 C1..C26``, tab-separated, no header.

In scoring mode a file may also be Kaggle's unlabelled ``test.txt`` layout: the same lines without
the label (39 columns); its label is null.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import polars as pl

from embdim.data.raw import LABEL, RawData
from embdim.data.readers._common import (
    UNLABELLED_HINT,
    SplitFileOptions,
    SplitFileReader,
    TextFile,
    binary_label,
    count_lines,
    iter_text_chunks,
    load_text,
    null_label,
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
CRITEO_UNLABELLED_COLUMNS = CRITEO_COLUMNS[1:]
"""The columns of Kaggle's ``test.txt`` (no label), read in scoring mode."""
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
        text = load_text(path, self.display(path), max_lines=self.options.nrows)
        return self.parse(text, self.labelled(text))

    def chunked(self, chunk_rows: int) -> ChunkedData:
        def chunks(path: Path) -> Iterator[pl.DataFrame]:
            labelled, nrows = True, self.options.nrows
            for k, text in enumerate(iter_text_chunks(path, self.display(path), chunk_rows, max_lines=nrows)):
                if k == 0:  # the file's first line says whether its lines have a label
                    labelled = self.labelled(text)
                yield self.parse(text, labelled)

        def source(split: str, path: Path) -> ChunkedSource:
            display, nrows = self.display(path), self.options.nrows
            return ChunkedSource(split, lambda: chunks(path), lambda: count_lines(path, display, max_lines=nrows))

        sources = [source(split, path) for split, path in self.split_paths().items()]
        return ChunkedData(sources, list(CRITEO_CATEGORICAL), list(CRITEO_NUMERIC), self.sources())

    def labelled(self, text: TextFile) -> bool:
        """Whether the lines of a file that starts with ``text`` have a label: always in training; in
        scoring mode unless its first line has the 39 columns of Kaggle's ``test.txt``."""
        columns = text.first_line_text().count(CRITEO_SEPARATOR.encode()) + 1
        return not self.scoring or columns != len(CRITEO_UNLABELLED_COLUMNS)

    def parse(self, text: TextFile, labelled: bool = True) -> pl.DataFrame:
        """Criteo lines (a whole file or a chunk of one) as a frame with the contract's columns and dtypes;
        without ``labelled``, lines without the label column, and a null label."""
        if labelled:
            frame = split_columns(text, CRITEO_COLUMNS, CRITEO_SEPARATOR, hint="label, 13 integer and 26 categorical")
        else:
            hint = f"13 integer and 26 categorical, {UNLABELLED_HINT}"
            frame = split_columns(text, CRITEO_UNLABELLED_COLUMNS, CRITEO_SEPARATOR, hint=hint)
        frame = parse_numeric(frame, CRITEO_NUMERIC, text)
        label = binary_label(frame, LABEL, text) if labelled else null_label(frame.height)
        return frame.select([*CRITEO_CATEGORICAL, *CRITEO_NUMERIC]).with_columns(label)
