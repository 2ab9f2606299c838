"""Reader interface: a registered class that turns source files into :class:`RawData`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import polars as pl

from embdim.data.raw import DataError, RawData
from embdim.options import Options

DATA_ROOT_HINT = "$EMBDIM_DATA_ROOT or the config key data_root sets it"
"""How a user changes the data root, quoted in every message about a missing source."""


class ReaderOptions(Options):
    """Base of every reader's options; unknown keys are an error that names the key.

    ``SOURCE_OPTIONS`` names the options that say where source files are (``path``, ``files``, a side
    table's path). The cache key leaves them out and fingerprints the files they name instead (see
    :meth:`Reader.source_files`), so every spelling of one file finds one cache. An option left off
    this list stays in the key as spelled: a needless miss at worst, never a wrong hit.
    """

    SOURCE_OPTIONS: ClassVar[frozenset[str]] = frozenset()


class NotStreamable(Exception):
    """Raised (while rows are counted, before anything is written) by a source that turns out to need
    a whole read after all, e.g. a quoted CSV field that may span lines; the caller reads it in memory."""


@dataclass
class ChunkedSource:
    """One source file of a streamed read.

    Attributes:
        split: ``all`` (one pool the caller splits) or ``train`` / ``valid`` / ``test``.
        chunks: yields the file's rows as frames in the :class:`~embdim.data.raw.RawData` contract,
            in file order, each at most the requested number of rows; errors name the file's line.
        count_rows: the number of rows ``chunks`` will give, read without parsing (a line count).
    """

    split: str
    chunks: Callable[[], Iterator[pl.DataFrame]]
    count_rows: Callable[[], int]


@dataclass
class ChunkedData:
    """A reader's rows as chunks (what :func:`embdim.data.stream.prepare_streaming` reads twice at most)."""

    sources: list[ChunkedSource]
    categorical: list[str]
    numeric: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)


class Reader(ABC):
    """Reads one dataset format.

    Subclasses set ``Options`` (a :class:`ReaderOptions` subclass) and implement :meth:`read`.
    Relative paths in the options are resolved against ``root`` (the data root, by default
    ``../shared/datasets``).

    A reader made by :meth:`for_scoring` has ``scoring`` set: its parsers then take files without
    a label (the label column is all null) and keep every data row in file order.
    """

    Options: ClassVar[type[ReaderOptions]] = ReaderOptions
    scoring: bool = False
    """Scoring mode (set by :meth:`for_scoring`): the label is optional, no data row is dropped."""

    def __init__(self, options: ReaderOptions, root: Path) -> None:
        self.options = options
        self.root = Path(root)

    def path(self, name: str | Path) -> Path:
        p = Path(name).expanduser()
        return p if p.is_absolute() else self.root / p

    @abstractmethod
    def sources(self) -> list[Path]:
        """The files :meth:`read` will read, relative options joined to the data root (no reading here)."""

    def source_files(self) -> dict[str, Path]:
        """What each source is for (a split name, a side table) -> its file, in reading order.

        The cache key fingerprints each file under its role, so that the same files in other roles
        (train and test swapped) make another key. The default names them by position in
        :meth:`sources`; readers whose options list ``SOURCE_OPTIONS`` give the roles those options set.
        """
        return {f"source{i}": path for i, path in enumerate(self.sources())}

    def check_sources(self) -> None:
        """Raise :class:`DataError` for the first source that does not exist, naming the data root in use.

        Relative paths in the options are read below the data root, so a missing file there most often
        means the root is not the folder that holds the datasets; the message says which root was used
        and how to set it.
        """
        for path in self.sources():
            if path.exists():
                continue
            if not path.is_relative_to(self.root):
                raise DataError(f"{path}: file not found")
            root = str(self.root)
            resolved = self.root.resolve()
            if str(resolved) != root:
                root = f"{root} (= {resolved})"
            shown = path.relative_to(self.root).as_posix()
            if not self.root.is_dir():
                raise DataError(
                    f"the data root {root} does not exist; relative data paths such as {shown!r} are read "
                    f"below it ({DATA_ROOT_HINT})"
                )
            raise DataError(f"{shown}: file not found below the data root {root} ({DATA_ROOT_HINT})")

    def chunked(self, chunk_rows: int) -> ChunkedData | None:
        """The rows in chunks of at most ``chunk_rows``, giving exactly what :meth:`read` gives; ``None``
        for a reader (or a file) that can only be read whole."""
        return None

    @abstractmethod
    def read(self) -> RawData:
        """Read the files; raise :class:`~embdim.data.raw.DataError` naming file and line on bad input."""

    def for_scoring(self, path: Path) -> Reader | None:
        """A reader of the same format and options that reads only ``path`` as one pool of rows (split ``all``),
        in scoring mode; ``None`` when this format cannot read a single file of rows (e.g. ``frappe`` builds its rows
        from a log with sampled negatives, ``synthetic`` generates them).

        Scoring mode: a file without the label gives a label column of nulls (``Float32``), one with
        labels gives them as in training; one output row per input data row, in file order (a row
        limit of the options does not apply). A relative ``path`` is relative to the working
        directory, not the data root. :meth:`read` and :meth:`chunked` give the same rows.
        """
        return None

    def scoring_copy(self, **changes: object) -> Reader:
        """This reader's class in scoring mode, with ``changes`` made to its options (validated again)."""
        options = type(self.options).model_validate({**self.options.model_dump(), **changes})
        reader = type(self)(options, self.root)
        reader.scoring = True
        return reader


def scoring_path(path: Path | str) -> str:
    """A scoring input as an absolute path: relative to the working directory, not the data root."""
    return str(Path(path).expanduser().absolute())
