"""A corpus of malformed inputs for every reader, each one driven through ``embdim prepare``.

Every case starts from a small valid dataset, written into ``tmp_path`` by the test, and changes one
thing: a cut or extra column, bytes that are not text, a broken archive, a number out of range, a
header, a side table, a bad config key, a split without rows. A case is

* ACCEPTED: exit code 0 and a complete cache with the expected rows, finite dense features and ids
  inside their vocabularies; a change that leaves the content alone (line endings, a byte order
  mark, gzip members, a zip around the file) gives the very arrays of the clean file; or
* REJECTED: exit code 2 and one ``error:`` message naming the file and line (the Parquet row, the
  config key, or the file alone where the whole file is at fault: empty, no data rows, a broken
  archive, missing), with nothing left in the cache root.

No case may print a traceback or an internal error, or take more than :data:`CASE_SECONDS`. The
whole corpus is marked slow; :data:`SAMPLE_IDS`, a few cases of every reader, runs by default.
"""

from __future__ import annotations

import gzip
import io
import math
import re
import signal
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from embdim.cli import app
from embdim.config import load_config
from embdim.data.cache import TEMP_PREFIX, PreparedData, is_complete, load_prepared
from embdim.errors import MAX_SHOWN_CHARS, EmbdimError
from embdim.train.run import prepare_dataset

CASE_SECONDS = 5.0
"""Wall-clock limit of one case (the slowest, a 1 MB line, takes a fraction of it)."""
HANG_SECONDS = 30
"""A case still running after this long is interrupted and fails as hung."""
MB = 1_000_000
LONG = "x" * MB
"""A 1 MB value: messages must not echo it whole."""
MAX_MESSAGE_CHARS = 4 * MAX_SHOWN_CHARS + 400
"""A message that echoes a shortened value or two, the file and the line stays below this."""
MODES = ("dense", "discretize", "both")


# ---------------------------------------------------------------------------------------------------
# the clean datasets


@dataclass(frozen=True)
class Table:
    """One valid text file: header lines and rows of fields joined by ``sep``.

    Attributes:
        name: path below the data root; ``.gz`` names are gzipped, ``member`` puts it in a zip.
        rows: the data rows, one tuple of fields each.
        sep: the field separator.
        header: header lines (already joined).
        encoding: how the text is stored.
        member: the zip member holding the text (the file is then a zip).
        label: column of the label (or rating) in the rows, ``None`` for side tables.
        free: a column that takes any text (where invalid UTF-8, a NUL, a 1 MB value go).
        header_optional: the reader also takes the file without its header.
    """

    name: str
    rows: tuple[tuple[str, ...], ...]
    sep: str
    header: tuple[str, ...] = ()
    encoding: str = "utf-8"
    member: str | None = None
    label: int | None = None
    free: int | None = None
    header_optional: bool = False

    @property
    def display(self) -> str:
        """How messages name a line's file: the path, or ``zip:member``."""
        return f"{self.name}:{self.member}" if self.member else self.name

    def lines(self) -> list[bytes]:
        """Header and data lines, encoded, without line ends."""
        sep = self.sep
        return [line.encode(self.encoding) for line in [*self.header, *(sep.join(row) for row in self.rows)]]

    def line_of(self, row: int) -> int:
        """The 1-based file line of data row ``row``."""
        return len(self.header) + row + 1

    def pack(self, data: bytes, name: str | None = None) -> bytes:
        """``data`` as the file ``name`` (default: this table's) stores it: plain, gzipped or zipped."""
        name = name or self.name
        if self.member is not None and name.endswith(".zip"):
            return zip_bytes({self.member: data})
        if name.endswith(".gz"):
            return gzip.compress(data, mtime=0)
        return data


@dataclass(frozen=True)
class Dataset:
    """A small valid dataset: its tables, how options name their files, what prepare makes of it.

    Attributes:
        key: the first part of every case id.
        reader: the registered reader.
        tables: role -> table (the role keys ``options``).
        options: role -> file name  ->  ``dataset.options``.
        rows: rows of the prepared data over all splits.
        preprocess: ``dataset.preprocess``.
        numeric: role -> columns read as numbers (where the numeric cases go).
        label_kind: ``binary`` (exact tokens), ``libfm`` (also +1/-1), ``threshold`` (a rating),
            ``zero_one`` (a number that must be 0 or 1).
        zip_container: the reader reads a zip holding the file alone (all but Frappe's log reader).
        full: its first file gets every change; otherwise (a variant of another dataset) and on the
            other files only :data:`CORE_CHANGES`.
    """

    key: str
    reader: str
    tables: dict[str, Table]
    options: Callable[[dict[str, str]], dict]
    rows: int
    preprocess: dict = field(default_factory=dict)
    numeric: dict[str, tuple[int, ...]] = field(default_factory=dict)
    label_kind: str = "binary"
    zip_container: bool = True
    full: bool = True

    def files(self, **replaced: tuple[str, bytes] | None) -> dict[str, bytes]:
        """File name -> bytes of every table, with some roles replaced by ``(name, bytes)`` or left out (None)."""
        out = {}
        for role, table in self.tables.items():
            if role in replaced:
                if replaced[role] is not None:
                    name, data = replaced[role]
                    out[name] = data
                continue
            out[table.name] = table.pack(join(table.lines()))
        return out

    def names(self, **renamed: str) -> dict[str, str]:
        return {role: renamed.get(role, table.name) for role, table in self.tables.items()}


def join(lines: list[bytes], end: bytes = b"\n", final: bool = True) -> bytes:
    return end.join(lines) + (end if final and lines else b"")


def zip_bytes(members: dict[str, bytes], directories: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in directories:
            archive.writestr(zipfile.ZipInfo(name), b"")
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


N_ROWS = 40
CRITEO_NUMERIC = [f"I{i}" for i in range(1, 14)]
CRITEO_CATEGORICAL = [f"C{i}" for i in range(1, 27)]


def criteo_rows(n: int = N_ROWS, label: Callable[[int], str] = lambda i: str(i % 2)) -> tuple[tuple[str, ...], ...]:
    rows = []
    for i in range(n):
        numbers = ["" if (i + j) % 7 == 0 else str((i * (j + 3)) % 50 - 2) for j in range(13)]
        categories = ["" if (i + j) % 11 == 0 else f"{j:02x}{(i * (j + 1)) % 5:04x}" for j in range(26)]
        rows.append((label(i), *numbers, *categories))
    return tuple(rows)


CRITEO = Dataset(
    key="criteo",
    reader="criteo",
    tables={"data": Table("criteo/train.txt", criteo_rows(), "\t", label=0, free=14)},
    options=lambda names: {"path": names["data"]},
    rows=N_ROWS,
    numeric={"data": (1,)},
)
CRITEO_SPLITS = Dataset(
    key="criteo_splits",
    reader="criteo",
    tables={
        "train": Table("criteo/train.csv.gz", criteo_rows(), "\t", label=0, free=14),
        "valid": Table("criteo/dev.csv.gz", criteo_rows(12), "\t", label=0, free=14),
        "test": Table("criteo/test.csv.gz", criteo_rows(14), "\t", label=0, free=14),
    },
    options=lambda names: {"files": {"train": names["train"], "valid": names["valid"], "test": names["test"]}},
    rows=N_ROWS + 12 + 14,
    full=False,
)

AVAZU_COLUMNS = (
    "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,device_id,"
    "device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21"
)
AVAZU = Dataset(
    key="avazu",
    reader="avazu",
    tables={
        "data": Table(
            "avazu/train.csv",
            tuple(
                (f"{1000 + i}", str(i % 2), f"141021{i % 24:02d}", *(f"v{(i * (j + 2)) % 4}" for j in range(21)))
                for i in range(N_ROWS)
            ),
            ",",
            header=(AVAZU_COLUMNS,),
            label=1,
            free=5,
            header_optional=True,
        )
    },
    options=lambda names: {"path": names["data"]},
    rows=N_ROWS,
)


def pairs_row(i: int, label: str, n_fields: int, per_field: int) -> tuple[str, ...]:
    return (label, *(f"{field * per_field + (i * (field + 1)) % per_field}:1" for field in range(n_fields)))


LIBFM = Dataset(
    key="libfm",
    reader="libfm",
    tables={
        "data": Table(
            "libfm/train.libfm",
            tuple(pairs_row(i, ("1", "-1", "0", "+1")[i % 4], 3, 5) for i in range(N_ROWS)),
            " ",
            label=0,
        )
    },
    options=lambda names: {"path": names["data"]},
    rows=N_ROWS,
    label_kind="libfm",
)
FRAPPE_LIBFM = Dataset(
    key="frappe_libfm",
    reader="frappe_libfm",
    tables={
        "data": Table(
            "frappe/valid.libfm.gz",
            tuple(pairs_row(i, ("1", "-1")[i % 2], 10, 4) for i in range(N_ROWS)),
            " ",
            label=0,
        )
    },
    options=lambda names: {"path": names["data"]},
    rows=N_ROWS,
    label_kind="libfm",
)

IPINYOU_FIELDS = ("weekday", "hour", "region")
IPINYOU_PER_FIELD = 4
IPINYOU = Dataset(
    key="ipinyou",
    reader="ipinyou",
    tables={
        "featindex": Table(
            "ipinyou/featindex.txt",
            tuple(
                (f"{name}:{'other' if value == 0 else f'v{value}'}", str(f * IPINYOU_PER_FIELD + value))
                for f, name in enumerate(IPINYOU_FIELDS)
                for value in range(IPINYOU_PER_FIELD)
            ),
            "\t",
        ),
        "train": Table(
            "ipinyou/train.txt.gz",
            tuple(pairs_row(i, str(i % 2), 3, IPINYOU_PER_FIELD) for i in range(N_ROWS)),
            " ",
            label=0,
        ),
        "test": Table(
            "ipinyou/test.txt",
            tuple(pairs_row(i, str(i % 3 % 2), 3, IPINYOU_PER_FIELD) for i in range(16)),
            " ",
            label=0,
        ),
    },
    options=lambda names: {
        "files": {"train": names["train"], "test": names["test"]},
        "featindex": names["featindex"],
    },
    rows=N_ROWS + 16,
    label_kind="libfm",
)

ML_USERS = 8
ML_MOVIES = 6
ML100K_GENRES = 19
ML100K = Dataset(
    key="ml100k",
    reader="movielens_100k",
    tables={
        "ratings": Table(
            "ml-100k/u.data",
            tuple(
                (str(1 + i % ML_USERS), str(1 + i % ML_MOVIES), str(1 + i % 5), str(881250949 + i))
                for i in range(N_ROWS)
            ),
            "\t",
            label=2,
            free=3,
        ),
        "users": Table(
            "ml-100k/u.user.gz",
            tuple((str(u), str(20 + u), "MF"[u % 2], "writer", f"{u:05d}") for u in range(1, ML_USERS + 1)),
            "|",
            encoding="latin-1",
            free=3,
        ),
        "movies": Table(
            "ml-100k/u.item",
            tuple(
                (
                    str(m),
                    f"Café {m} (1995)",
                    f"01-Jan-199{m}",
                    "",
                    f"http://x/{m}",
                    *("1" if g == m % ML100K_GENRES else "0" for g in range(ML100K_GENRES)),
                )
                for m in range(1, ML_MOVIES + 1)
            ),
            "|",
            encoding="latin-1",
            free=1,
        ),
    },
    options=lambda names: {"ratings": names["ratings"], "users": names["users"], "movies": names["movies"]},
    rows=N_ROWS,
    label_kind="threshold",
)
ML1M = Dataset(
    key="ml1m",
    reader="movielens_1m",
    tables={
        "ratings": Table(
            "ml-1m/ratings.dat",
            tuple(
                (str(1 + i % ML_USERS), str(1 + i % ML_MOVIES), str(1 + i % 5), str(978300760 + i))
                for i in range(N_ROWS)
            ),
            "::",
            encoding="latin-1",
            label=2,
            free=3,
        ),
        "users": Table(
            "ml-1m/users.dat",
            tuple((str(u), "FM"[u % 2], str(u % 7), str(u % 21), f"{u:05d}") for u in range(1, ML_USERS + 1)),
            "::",
            encoding="latin-1",
            free=4,
        ),
        "movies": Table(
            "ml-1m/movies.dat.gz",
            tuple(
                (str(m), f"Movie: part {m} (199{m})", "Comedy|Drama" if m % 2 else "Action")
                for m in range(1, ML_MOVIES + 1)
            ),
            "::",
            encoding="latin-1",
            free=1,
        ),
    },
    options=lambda names: {"ratings": names["ratings"], "users": names["users"], "movies": names["movies"]},
    rows=N_ROWS,
    label_kind="threshold",
)
ML_LATEST = Dataset(
    key="ml_latest",
    reader="movielens_latest",
    tables={
        "ratings": Table(
            "ml-latest/ratings.csv",
            tuple(
                (str(1 + i % ML_USERS), str(1 + i % ML_MOVIES), f"{1 + i % 5}.{5 * (i % 2)}", str(964982703 + i))
                for i in range(N_ROWS)
            ),
            ",",
            header=("userId,movieId,rating,timestamp",),
            label=2,
            free=3,
        ),
        "movies": Table(
            "ml-latest/movies.csv.gz",
            tuple(
                (
                    str(m),
                    f'"Film, The {m} (199{m})"' if m % 2 else f"Film {m} (199{m})",
                    "Comedy|Drama" if m % 3 else "(no genres listed)",
                )
                for m in range(1, ML_MOVIES + 1)
            ),
            ",",
            header=("movieId,title,genres",),
            free=2,
        ),
    },
    options=lambda names: {"ratings": names["ratings"], "movies": names["movies"]},
    rows=N_ROWS,
    label_kind="threshold",
)

FRAPPE_HEADER = "user\titem\tcnt\tdaytime\tweekday\tisweekend\thomework\tcost\tweather\tcountry\tcity"
FRAPPE_MEMBER = "Mobile_Frappe/frappe/frappe.csv"
FRAPPE_POSITIVES = 24


def frappe_rows() -> tuple[tuple[str, ...], ...]:
    days = ("monday", "sunday")
    return tuple(
        (
            f"u{i % 4}",
            f"i{i % 9}",
            str(1 + i % 3),
            "morning",
            days[i % 2],
            "weekend" if i % 2 else "workday",
            "unknown",
            "free",
            "sunny",
            "Spain",
            str(i % 3),
        )
        for i in range(FRAPPE_POSITIVES)
    )


FRAPPE = Dataset(
    key="frappe",
    reader="frappe",
    tables={
        "log": Table(
            "frappe/Mobile_Frappe.zip", frappe_rows(), "\t", header=(FRAPPE_HEADER,), member=FRAPPE_MEMBER, free=2
        )
    },
    options=lambda names: {"path": names["log"], "member": FRAPPE_MEMBER},
    rows=3 * FRAPPE_POSITIVES,
    zip_container=False,
)
FRAPPE_PLAIN = Dataset(
    key="frappe_plain",
    reader="frappe",
    tables={"log": Table("frappe/frappe.csv", frappe_rows(), "\t", header=(FRAPPE_HEADER,), free=2)},
    options=lambda names: {"path": names["log"]},
    rows=3 * FRAPPE_POSITIVES,
    zip_container=False,
    full=False,
)


def table_rows(sep: str, quote: bool, stars: bool) -> tuple[tuple[str, ...], ...]:
    """Rows of ``city, note, n, label``: quoted notes with the separator in them when ``quote``; the
    label a 1..5 rating when ``stars``, else 0/1."""
    return tuple(
        (
            f"city{i % 6}",
            f'"note {i % 3}{sep} long"' if quote and i % 5 == 0 else f"note{i % 3}",
            "" if i % 9 == 0 else f"{(i * 7) % 13 - 3}.5",
            str(1 + i % 5) if stars else str(i % 2),
        )
        for i in range(N_ROWS)
    )


TABLE_CSV = Dataset(
    key="table_csv",
    reader="table",
    tables={
        "data": Table(
            "table/t.csv", table_rows(",", quote=True, stars=False), ",", header=("city,note,n,y",), label=3, free=1
        )
    },
    options=lambda names: {
        "path": names["data"],
        "format": "csv",
        "categorical": ["city", "note"],
        "numeric": ["n"],
        "label": "y",
    },
    rows=N_ROWS,
    numeric={"data": (2,)},
    label_kind="zero_one",
)
TABLE_TSV = Dataset(
    key="table_tsv",
    reader="table",
    tables={
        "data": Table(
            "table/t.tsv.gz",
            table_rows("\t", quote=False, stars=True),
            "\t",
            header=("city\tnote\tn\tstars",),
            label=3,
            free=1,
        )
    },
    options=lambda names: {
        "path": names["data"],
        "format": "tsv",
        "categorical": ["city", "note"],
        "numeric": ["n"],
        "label": "stars",
        "label_threshold": 4,
    },
    rows=N_ROWS,
    numeric={"data": (2,)},
    label_kind="threshold",
)
TABLE_NO_HEADER = Dataset(
    key="table_noheader",
    reader="table",
    tables={"data": Table("table/t.txt", table_rows(";", quote=False, stars=False), ";", label=3, free=1)},
    options=lambda names: {
        "path": names["data"],
        "format": "csv",
        "separator": ";",
        "has_header": False,
        "columns": ["city", "note", "n", "y"],
        "categorical": ["city", "note"],
        "numeric": ["n"],
        "label": "y",
    },
    rows=N_ROWS,
    label_kind="zero_one",
)

TEXT_DATASETS = [
    CRITEO,
    CRITEO_SPLITS,
    AVAZU,
    LIBFM,
    FRAPPE_LIBFM,
    IPINYOU,
    ML100K,
    ML1M,
    ML_LATEST,
    FRAPPE,
    FRAPPE_PLAIN,
    TABLE_CSV,
    TABLE_TSV,
    TABLE_NO_HEADER,
]


# ---------------------------------------------------------------------------------------------------
# cases


@dataclass(frozen=True)
class Case:
    """One input and what ``embdim prepare`` must do with it.

    Attributes:
        id: ``dataset/file role/change``.
        reader: the registered reader.
        files: file name below the data root -> bytes.
        options: ``dataset.options``.
        accept: exit 0 with a cache, else exit 2 with an error.
        where: rejected: a regex the error message must match (file and line, row, or config key).
        rows: accepted: rows over all splits.
        same_as: accepted: the key of the dataset whose clean arrays this cache must equal.
        preprocess: ``dataset.preprocess``.
        config: top-level config keys set (``None`` removes a key).
        env: environment variables for the command (paths relative to the case's folder).
        dataset_name: ``dataset.name``.
        directories: folders made below the data root.
        warns: accepted: regexes that ``PreparedData.warnings`` must each match.
        long_value: the input holds a 1 MB value; the data layer's own message must stay short.
    """

    id: str
    reader: str
    files: dict[str, bytes]
    options: dict
    accept: bool
    where: str = ""
    rows: int | None = None
    same_as: str | None = None
    preprocess: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    dataset_name: str = "corpus"
    directories: tuple[str, ...] = ()
    warns: tuple[str, ...] = ()
    long_value: bool = False


def at_line(display: str, line: int) -> str:
    """Regex: ``display line N`` (and not line N0)."""
    return rf"{re.escape(display)} line {line}(?!\d)"


def whole_file(name: str) -> str:
    """Regex of a message about a whole file: ``name:`` or ``name line N:``."""
    return rf"{re.escape(name)}( line \d+[^:]*)?:"


class CaseMaker:
    """Builds the cases of one file of one dataset (a text table in its role)."""

    def __init__(self, ds: Dataset, role: str) -> None:
        self.ds, self.role, self.table = ds, role, ds.tables[role]

    def case(
        self,
        change: str,
        data: bytes | None,
        accept: bool,
        where: str = "",
        *,
        name: str | None = None,
        same: bool = False,
        pack: bool = True,
        rows: int | None = None,
        **extra,
    ) -> Case:
        """A case whose file of this role holds ``data`` (packed like the table unless ``pack`` is off)."""
        name = name or self.table.name
        content = None if data is None else (self.table.pack(data, name) if pack else data)
        files = self.ds.files(**{self.role: None if content is None else (name, content)})
        options = self.ds.options(self.ds.names(**{self.role: name}))
        return Case(
            id=f"{self.ds.key}/{self.role}/{change}",
            reader=self.ds.reader,
            files=files,
            options=options,
            accept=accept,
            where=where,
            rows=(rows if rows is not None else self.ds.rows) if accept else None,
            same_as=self.ds.key if same else None,
            preprocess=extra.pop("preprocess", dict(self.ds.preprocess)),
            **extra,
        )

    # -------------------------------------------------------------- helpers on lines
    def lines(self) -> list[bytes]:
        return self.table.lines()

    @property
    def sep(self) -> bytes:
        return self.table.sep.encode(self.table.encoding)

    @property
    def middle(self) -> int:
        """Index (in ``lines()``) of a data line in the middle of the file, one without quotes (so that
        splitting it at the separator gives its fields)."""
        lines = self.lines()
        start = len(self.table.header) + len(self.table.rows) // 2
        return next(i for i in range(start, len(lines)) if b'"' not in lines[i])

    def with_field(self, line: int, column: int, value: bytes) -> bytes:
        """The file with field ``column`` of ``lines()[line]`` replaced by ``value``."""
        lines = self.lines()
        fields = lines[line].split(self.sep)
        fields[column] = value
        lines[line] = self.sep.join(fields)
        return join(lines)

    def in_free_field(self, line: int, insert: bytes) -> bytes:
        """The file with ``insert`` put inside the free-text field of a line (or the first field)."""
        column = self.table.free if self.table.free is not None else 0
        fields = self.lines()[line].split(self.sep)
        value = fields[column]
        return self.with_field(line, column, value[:1] + insert + value[1:])

    def line_no(self, line: int) -> int:
        return line + 1

    def where(self, line: int) -> str:
        return at_line(self.table.display, self.line_no(line))


def text_cases(ds: Dataset, role: str) -> Iterator[Case]:
    """Changes that apply to every text file: lines, bytes, encodings, headers, long lines."""
    m = CaseMaker(ds, role)
    t = m.table
    lines = m.lines()
    last = len(lines) - 1
    utf8 = t.encoding == "utf-8"
    whole = whole_file(t.name)

    # line ends and marks that do not change the content
    yield m.case("crlf", join(lines, b"\r\n"), True, same=True)
    yield m.case(
        "mixed_crlf", b"".join(line + (b"\r\n" if i % 2 else b"\n") for i, line in enumerate(lines)), True, same=True
    )
    yield m.case("cr_only", join(lines, b"\r"), True, same=True)
    yield m.case("cr_only_without_final_cr", join(lines, b"\r", final=False), True, same=True)
    yield m.case("utf8_bom", b"\xef\xbb\xbf" + join(lines), True, same=True)
    yield m.case("utf8_bom_and_crlf", b"\xef\xbb\xbf" + join(lines, b"\r\n"), True, same=True)
    yield m.case("no_final_newline", join(lines, final=False), True, same=True)
    yield m.case("trailing_blank_lines", join(lines) + b"\n\n\n", True, same=True)
    yield m.case("trailing_blank_lines_crlf", join(lines, b"\r\n") + b"\r\n\r\n", True, same=True)

    # lines cut, widened, narrowed or inserted
    cut = lines[last][: lines[last].rfind(m.sep) - 1]
    yield m.case("truncated_last_line", join([*lines[:last], cut], final=False), False, m.where(last))
    yield m.case("truncated_last_line_with_newline", join([*lines[:last], cut]), False, m.where(last))
    extra = [*lines]
    extra[m.middle] += m.sep + b"extra"
    yield m.case("extra_column", join(extra), False, m.where(m.middle))
    extra_last = [*lines]
    extra_last[last] += m.sep + b"1"
    yield m.case("extra_column_on_last_line", join(extra_last), False, m.where(last))
    narrow = [*lines]
    narrow[m.middle] = narrow[m.middle][: narrow[m.middle].rfind(m.sep)]
    yield m.case("missing_column", join(narrow), False, m.where(m.middle))
    both = [*lines]
    both[m.middle] += m.sep + b"x"
    both[last] = both[last][: both[last].rfind(m.sep)]
    yield m.case("extra_and_missing_column_cancel_out", join(both), False, m.where(m.middle))
    yield m.case("blank_line_in_middle", join([*lines[: m.middle], b"", *lines[m.middle :]]), False, m.where(m.middle))
    yield m.case("leading_blank_line", join([b"", *lines]), False, at_line(t.display, 1))
    yield m.case("single_field_line", join([*lines[: m.middle], b"oops", *lines[m.middle :]]), False, m.where(m.middle))

    # bytes that are not text
    bad_utf8 = m.in_free_field(m.middle, b"\xff\xfe")
    cut_sequence = m.in_free_field(m.middle, b"\xe2\x82")
    for change, data in (("invalid_utf8", bad_utf8), ("invalid_utf8_cut_sequence", cut_sequence)):
        if utf8:
            yield m.case(change, data, False, m.where(m.middle))
        else:  # every byte is a latin-1 character
            yield m.case(change, data, True)
    yield m.case("nul_byte", m.in_free_field(m.middle, b"\x00"), False, m.where(m.middle))
    yield m.case("nul_padding_after_a_crash", join(lines) + b"\x00" * 4096, False, at_line(t.display, len(lines) + 1))
    rng = np.random.default_rng(len(t.name))
    garbage = rng.bytes(4096)
    yield m.case("binary_garbage", garbage, False, rf"{re.escape(t.display)} line \d+")
    no_nul = garbage.replace(b"\x00", b"\x01")
    yield m.case("binary_garbage_without_nul", no_nul, False, rf"{re.escape(t.display)}( line \d+)?:")
    yield m.case("binary_appended", join(lines) + garbage, False, rf"{re.escape(t.display)} line \d+")

    # empty and nearly empty files
    yield m.case("empty_file", b"", False, whole)
    yield m.case("only_newlines", b"\n\n\n", False, whole)
    yield m.case("only_whitespace", b"  \n \t \n", False, whole)
    yield m.case("only_a_bom", b"\xef\xbb\xbf", False, whole)

    # headers
    if t.header:
        header, data = lines[: len(t.header)], lines[len(t.header) :]
        yield m.case("header_only", join(header), False, whole)
        if t.header_optional:
            yield m.case("without_header", join(data), True, same=True)
        else:
            yield m.case("without_header", join(data), False, at_line(t.display, 1))
        names = header[0].split(m.sep)
        renamed = [b"X" + names[0], *names[1:]]
        yield m.case("wrong_header", join([m.sep.join(renamed), *data]), False, at_line(t.display, 1))
        twice = [names[0], names[0], *names[2:]]
        yield m.case("header_names_a_column_twice", join([m.sep.join(twice), *data]), False, at_line(t.display, 1))
        yield m.case(
            "header_repeated_in_the_middle",
            join([*lines[: m.middle], header[0], *lines[m.middle :]]),
            False,
            m.where(m.middle),
        )

    # very long lines and values
    yield m.case(
        "long_line_without_separators",
        join([*lines[: m.middle], LONG.encode(), *lines[m.middle :]]),
        False,
        m.where(m.middle),
        long_value=True,
    )
    many = m.sep.join([b"1"] * 100_000)
    yield m.case(
        "line_with_100000_columns", join([*lines[: m.middle], many, *lines[m.middle :]]), False, m.where(m.middle)
    )
    if t.free is not None:
        yield m.case("value_of_1_mb", m.with_field(m.middle, t.free, LONG.encode()), True, long_value=True)


def container_cases(ds: Dataset, role: str) -> Iterator[Case]:
    """The file gzipped (well or badly), zipped (with 0, 1 or 2 members), missing, or a folder."""
    m = CaseMaker(ds, role)
    t = m.table
    text = join(m.lines())
    gz = t.name if t.name.endswith(".gz") else t.name + ".gz"
    packed = gzip.compress(text, mtime=0)
    half = len(text) // 2
    line_end = text.index(b"\n", half) + 1
    if gz != t.name:
        yield m.case("gzipped", packed, True, name=gz, pack=False, same=True)
    yield m.case(
        "gzip_two_members",
        gzip.compress(text[:line_end]) + gzip.compress(text[line_end:]),
        True,
        name=gz,
        pack=False,
        same=True,
    )
    yield m.case(
        "gzip_members_split_mid_line",
        gzip.compress(text[:half]) + gzip.compress(text[half:]),
        True,
        name=gz,
        pack=False,
        same=True,
    )
    yield m.case("gzip_with_trailing_zeros", packed + b"\x00" * 64, True, name=gz, pack=False, same=True)
    yield m.case("gzip_truncated", packed[: len(packed) - 20], False, whole_file(gz), name=gz, pack=False)
    yield m.case("gzip_cut_in_half", packed[: len(packed) // 2], False, whole_file(gz), name=gz, pack=False)
    bad_crc = bytearray(packed)
    bad_crc[-6] ^= 0xFF
    yield m.case("gzip_bad_crc", bytes(bad_crc), False, whole_file(gz) + " corrupt", name=gz, pack=False)
    flipped = bytearray(packed)
    flipped[len(flipped) // 2] ^= 0x55
    yield m.case("gzip_corrupt_body", bytes(flipped), False, whole_file(gz), name=gz, pack=False)
    yield m.case("gzip_with_trailing_garbage", packed + b"garbage", False, whole_file(gz), name=gz, pack=False)
    yield m.case("not_gzip_although_named_gz", text, False, whole_file(gz) + " not a gzip file", name=gz, pack=False)
    yield m.case("zero_byte_gz", b"", False, whole_file(gz), name=gz, pack=False)
    yield m.case("gzip_of_nothing", gzip.compress(b""), False, whole_file(gz) + " empty file", name=gz, pack=False)

    if ds.zip_container:
        zipped = t.name + ".zip"
        base = t.name.rsplit("/", 1)[-1]
        yield m.case("zip_with_one_file", zip_bytes({base: text}), True, name=zipped, pack=False, same=True)
        yield m.case(
            "zip_with_a_folder_and_one_file",
            zip_bytes({f"d/{base}": text}, ("d/",)),
            True,
            name=zipped,
            pack=False,
            same=True,
        )
        yield m.case(
            "zip_with_no_file", zip_bytes({}), False, whole_file(zipped) + " .*holds 0", name=zipped, pack=False
        )
        yield m.case(
            "zip_with_two_files",
            zip_bytes({base: text, "README": b"hi"}),
            False,
            whole_file(zipped) + " .*holds 2",
            name=zipped,
            pack=False,
        )
        archive = zip_bytes({base: text})
        yield m.case("zip_truncated", archive[: len(archive) // 2], False, whole_file(zipped), name=zipped, pack=False)
        yield m.case(
            "zip_bad_crc", zip_with_flipped_data(base, text), False, whole_file(zipped), name=zipped, pack=False
        )
        yield m.case(
            "zip_unknown_compression",
            zip_patched(base, text, method=99),
            False,
            whole_file(zipped),
            name=zipped,
            pack=False,
        )
        yield m.case(
            "zip_encrypted",
            zip_patched(base, text, flags=0x1),
            False,
            whole_file(zipped) + " .*encrypted",
            name=zipped,
            pack=False,
        )
        yield m.case(
            "not_zip_although_named_zip", text, False, whole_file(zipped) + " not a zip", name=zipped, pack=False
        )

    missing = "nowhere/" + t.name
    hint = r"\$EMBDIM_DATA_ROOT or the config key data_root"
    yield m.case(
        "missing_file", None, False, rf"{re.escape(missing)}: file not found below the data root .*{hint}", name=missing
    )
    yield m.case(
        "a_folder_instead_of_the_file",
        None,
        False,
        whole_file(t.name + "_dir") + " not a file",
        name=t.name + "_dir",
        directories=(t.name + "_dir",),
    )


def zip_with_flipped_data(member: str, data: bytes) -> bytes:
    """A stored (uncompressed) zip whose member bytes no longer match their CRC."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(member, data)
    raw = bytearray(buffer.getvalue())
    start = raw.index(data[:16])
    raw[start + 5] ^= 0x20
    return bytes(raw)


def zip_patched(member: str, data: bytes, method: int | None = None, flags: int | None = None) -> bytes:
    """A stored zip with its compression method or flag bits overwritten in both headers."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(member, data)
    raw = bytearray(buffer.getvalue())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local header, central directory
        at = raw.index(signature)
        if flags is not None:
            raw[at + offset : at + offset + 2] = flags.to_bytes(2, "little")
        if method is not None:
            raw[at + offset + 2 : at + offset + 4] = method.to_bytes(2, "little")
    return bytes(raw)


LABEL_TOKENS = {  # label kind -> (accepted tokens, rejected tokens)
    "binary": ((), ("x", "2", "-1", "1.0", " 1", "yes", "nan", "inf", "")),
    "libfm": (("+1", "-1", "0"), ("x", "2", "1.0", "+0", "nan", "")),
    "threshold": (("4.5", " 5 ", "1e300", "-3", "5e0", "+4"), ("x", "", "nan", "NaN", "inf", "-inf", "1e", "4..5")),
    "zero_one": (("1.0", " 0 ", "1e0", "+1", "-0"), ("2", "x", "", "nan", "inf", "0.5", "-1")),
}


def label_cases(ds: Dataset, role: str) -> Iterator[Case]:
    """Label (or rating) tokens, accepted and rejected, and a 1 MB label."""
    m = CaseMaker(ds, role)
    t = m.table
    if t.label is None:
        return
    accepted, rejected = LABEL_TOKENS[ds.label_kind]
    for token in accepted:
        yield m.case(f"label={token!r}", m.with_field(m.middle, t.label, token.encode()), True)
    for token in rejected:
        yield m.case(f"label={token!r}", m.with_field(m.middle, t.label, token.encode()), False, m.where(m.middle))
    yield m.case(
        "label_of_1_mb", m.with_field(m.middle, t.label, LONG.encode()), False, m.where(m.middle), long_value=True
    )


NUMBERS_ACCEPTED = (
    "inf", "-inf", "+inf", "nan", "NaN", "Infinity", "-Infinity", "INF", "1e300", "-1e300", "3.5e38", "-3.5e38",
    "3.4028235e38", "1e39", "1e400", "-1e19", "-9.3e18", "9.3e18", "-9223372036854775808", "1e-320", " 7 ", "+7",
    ".5", "5.", "1E5", "9" * 400,
)  # fmt: skip
"""Numbers read as values or, by the encoder's rule, as missing; none reaches the cache as inf."""
NUMBERS_NON_FINITE = ("inf", "-inf", "nan", "1e300", "3.5e38", "-1e19", "1e400")
"""The numbers of every mode; Criteo's column gets all of :data:`NUMBERS_ACCEPTED` under ``both``."""
NUMBERS_REJECTED = ("abc", "0x1A", "1e", "--1", "1_000", "١٢", "1.2.3", "12a")


def numeric_cases(ds: Dataset, role: str) -> Iterator[Case]:
    """Odd numbers in a numeric column under every ``numeric`` mode."""
    m = CaseMaker(ds, role)
    for column in ds.numeric.get(role, ()):
        for mode in MODES:
            preprocess = {**ds.preprocess, "numeric": mode}
            # "both" runs the dense and the discretised path at once: the long list goes there
            accepted = NUMBERS_ACCEPTED if ds is CRITEO and mode == "both" else NUMBERS_NON_FINITE
            for value in accepted if ds is CRITEO or mode == "both" else ():
                data = m.with_field(m.middle, column, value.encode())
                yield m.case(f"column{column}={value[:12]!r}/{mode}", data, True, preprocess=preprocess)
            # a whole column of huge negative integers: every value is outside int64 under discretize
            lines = m.lines()
            start = len(m.table.header)
            for i in range(start, len(lines)):
                if b'"' in lines[i]:  # a quoted separator would split wrongly here
                    continue
                fields = lines[i].split(m.sep)
                fields[column] = b"-1e19"
                lines[i] = m.sep.join(fields)
            yield m.case(f"column{column}_all_below_int64/{mode}", join(lines), True, preprocess=preprocess)
        for value in NUMBERS_REJECTED:
            data = m.with_field(m.middle, column, value.encode())
            yield m.case(f"column{column}={value!r}", data, False, m.where(m.middle))
        yield m.case(
            f"column{column}_of_1_mb",
            m.with_field(m.middle, column, LONG.encode()),
            False,
            m.where(m.middle),
            long_value=True,
        )


def dataset_cases(ds: Dataset) -> Iterator[Case]:
    """The clean dataset, a missing data root (in the config and in the environment), config errors."""
    first = next(iter(ds.tables))
    m = CaseMaker(ds, first)
    clean = join(m.lines())
    yield replace(m.case("clean", clean, True, same=True), id=f"{ds.key}/clean")
    hint = r"\$EMBDIM_DATA_ROOT or the config key data_root"
    yield replace(
        m.case(
            "missing_data_root",
            clean,
            False,
            rf"the data root \S*no-such-root does not exist.*{hint}",
            config={"data_root": "no-such-root"},
        ),
        id=f"{ds.key}/missing_data_root",
    )
    yield replace(
        m.case(
            "missing_data_root_from_the_environment",
            clean,
            False,
            rf"the data root \S*env-root does not exist.*{hint}",
            config={"data_root": None},
            env={"EMBDIM_DATA_ROOT": "env-root"},
        ),
        id=f"{ds.key}/missing_data_root_from_the_environment",
    )
    yield replace(
        m.case("unknown_option", clean, False, r"dataset\.options\.bogus: unknown key"),
        options={**ds.options(ds.names()), "bogus": 1},
        id=f"{ds.key}/unknown_option",
    )


def config_cases() -> Iterator[Case]:
    """Preprocessing keys that config validation rejects, naming the dotted key."""
    m = CaseMaker(CRITEO, "data")
    clean = join(m.lines())
    bad = {
        "ratios_1_0_0": ({"split": {"ratios": [1, 0, 0]}}, r"dataset\.preprocess\.split\.ratios.*valid > 0"),
        "ratios_without_valid": ({"split": {"ratios": [0.9, 0, 0.1]}}, r"dataset\.preprocess\.split\.ratios"),
        "ratios_without_train": ({"split": {"ratios": [0, 0.5, 0.5]}}, r"dataset\.preprocess\.split\.ratios"),
        "ratios_negative": ({"split": {"ratios": [1, -1, 1]}}, r"dataset\.preprocess\.split\.ratios"),
        "ratios_nan": ({"split": {"ratios": [math.nan, 0.1, 0.1]}}, r"dataset\.preprocess\.split\.ratios"),
        "ratios_inf": ({"split": {"ratios": [math.inf, 0.1, 0.1]}}, r"dataset\.preprocess\.split\.ratios"),
        "ratios_overflow": ({"split": {"ratios": [1e308, 1e308, 1e308]}}, r"dataset\.preprocess\.split\.ratios"),
        "ratios_two_numbers": ({"split": {"ratios": [0.5, 0.5]}}, r"dataset\.preprocess\.split\.ratios"),
        "valid_ratio_one": ({"split": {"valid_ratio": 1.0}}, r"dataset\.preprocess\.split\.valid_ratio"),
        "valid_ratio_negative": ({"split": {"valid_ratio": -0.1}}, r"dataset\.preprocess\.split\.valid_ratio"),
        "min_count_zero": ({"min_count": 0}, r"dataset\.preprocess\.min_count"),
        "numeric_mode_unknown": ({"numeric": "bucket"}, r"dataset\.preprocess\.numeric"),
        "dense_transform_unknown": ({"dense_transform": "sqrt"}, r"dataset\.preprocess\.dense_transform"),
        "unknown_preprocess_key": ({"min_cnt": 3}, r"dataset\.preprocess\.min_cnt: unknown key"),
    }
    for change, (preprocess, where) in bad.items():
        yield replace(m.case(change, clean, False, where, preprocess=preprocess), id=f"config/{change}")
    yield replace(
        m.case("dataset_name_with_a_slash", clean, False, r"dataset\.name: '\.\./escape'", dataset_name="../escape"),
        id="config/dataset_name_with_a_slash",
    )


def degenerate_cases() -> Iterator[Case]:
    """Data that reads fine but splits badly: too few rows, one label, no valid or test split."""
    table = CRITEO.tables["data"]
    display = re.escape(table.name)

    def criteo(change: str, rows: tuple[tuple[str, ...], ...], accept: bool, where: str = "", **extra) -> Case:
        data = join([table.sep.join(row).encode() for row in rows])
        return replace(
            CaseMaker(CRITEO, "data").case(change, data, accept, where, rows=len(rows), **extra),
            id=f"degenerate/{change}",
        )

    needs = "selection on validation needs rows"
    yield criteo("one_row", criteo_rows(1), False, rf"valid split is empty: split\.ratios.*{display}.*{needs}")
    yield criteo("five_rows", criteo_rows(5), False, rf"valid split is empty: split\.ratios.*{needs}")
    yield criteo("twelve_rows", criteo_rows(12), True, warns=(r"valid split has 1 row ", r"test split has 1 row "))
    yield criteo(
        "every_label_0",
        criteo_rows(label=lambda i: "0"),
        True,
        warns=(r"train split: every one of its \d+ labels is 0", r"valid split has no positives"),
    )
    yield criteo(
        "every_label_1", criteo_rows(label=lambda i: "1"), True, warns=(r"labels is 1", r"test split has no negatives")
    )
    yield criteo(
        "no_test_split",
        criteo_rows(),
        True,
        warns=(r"test split is absent",),
        preprocess={"split": {"ratios": [0.9, 0.1, 0]}},
    )
    yield criteo(
        "few_positives",
        criteo_rows(label=lambda i: str(int(i == 3))),
        True,
        warns=(r"(valid|test) split has (no|1) positives",),
    )

    m = CaseMaker(CRITEO_SPLITS, "train")
    files = CRITEO_SPLITS.names()
    only_train = {"files": {"train": files["train"]}}
    yield replace(
        m.case(
            "train_file_only_and_valid_ratio_0",
            join(m.lines()),
            False,
            r"no valid split: no valid file is given and split\.valid_ratio 0",
            preprocess={"split": {"valid_ratio": 0}},
        ),
        options=only_train,
        id="degenerate/train_file_only_and_valid_ratio_0",
    )
    three = join([b"\t".join(f.encode() for f in row) for row in criteo_rows(3)])
    yield replace(
        m.case(
            "train_file_of_3_rows_and_no_valid_file",
            three,
            False,
            rf"valid split is empty: split\.valid_ratio 0\.1 of the 3 train rows \({re.escape(files['train'])}\)",
        ),
        options=only_train,
        id="degenerate/train_file_of_3_rows_and_no_valid_file",
    )
    libfm = CaseMaker(FRAPPE_LIBFM, "data")
    yield replace(
        libfm.case("valid_and_test_files_without_train", join(libfm.lines()), False, r"dataset\.options\.files"),
        options={"files": {"valid": FRAPPE_LIBFM.tables["data"].name, "test": FRAPPE_LIBFM.tables["data"].name}},
        id="degenerate/frappe_libfm_valid_and_test_files_without_train",
    )


def reader_cases() -> Iterator[Case]:
    """What only one reader reads: Avazu hours, libFM pairs, feature maps, MovieLens side tables,
    Frappe's zip and negatives, quoted CSV."""
    m = CaseMaker(AVAZU, "data")
    for hour in ("14102124", "141021", "1410210a", "14023100", "", "99999999", LONG):
        yield m.case(
            f"hour={hour[:10]!r}",
            m.with_field(m.middle, 2, hour.encode()),
            False,
            m.where(m.middle),
            long_value=hour == LONG,
        )
    yield replace(
        m.case("raw_hour_kept", m.with_field(m.middle, 2, b"14102124"), True),
        options={**AVAZU.options(AVAZU.names()), "split_hour": False},
    )

    for ds in (LIBFM, FRAPPE_LIBFM):
        m = CaseMaker(ds, "data")
        for pair in ("3:2", "x:1", "-3:1", "3", ":1", "3:", "3:inf", "3:nan", "99999999999999999999:1", "3:1:1"):
            yield m.case(f"pair={pair!r}", m.with_field(m.middle, 2, pair.encode()), False, m.where(m.middle))
        for pair in ("7:1.0", "07:1", "7:1e0", "7:+1"):
            yield m.case(f"pair={pair!r}", m.with_field(m.middle, 2, pair.encode()), True)
        yield m.case(
            "pair_of_1_mb", m.with_field(m.middle, 2, b"1:" + LONG.encode()), False, m.where(m.middle), long_value=True
        )
    m = CaseMaker(LIBFM, "data")
    first_wide = m.lines()
    first_wide[0] += b" 20:1"
    yield m.case("first_line_has_an_extra_pair", join(first_wide), False, at_line(m.table.display, 2))
    yield replace(
        m.case("fields_option_has_one_name_too_many", join(m.lines()), False, at_line(m.table.display, 1)),
        options={"path": m.table.name, "fields": ["a", "b", "c", "d"]},
    )

    m = CaseMaker(IPINYOU, "featindex")
    feat = m.lines()
    for change, line, where_line in (
        ("index_defined_twice", b"region:v9\t3", len(feat) + 1),
        ("index_not_a_number", b"region:v9\tx", len(feat) + 1),
        ("index_negative", b"region:v9\t-5", len(feat) + 1),
        ("index_beyond_int64", b"region:v9\t99999999999999999999", len(feat) + 1),
        ("feature_without_colon", b"regionv9\t50", len(feat) + 1),
        ("feature_with_empty_field", b":v9\t50", len(feat) + 1),
    ):
        yield m.case(change, join([*feat, line]), False, at_line(m.table.display, where_line))
    yield m.case("value_of_1_mb", join([*feat, b"region:" + LONG.encode() + b"\t50"]), True)
    # a huge, sparse index must not allocate a table up to it (it once asked for terabytes)
    yield m.case("index_of_a_trillion", join([*feat, b"region:v9\t999999999999"]), True)
    m = CaseMaker(IPINYOU, "train")
    yield m.case("index_not_in_featindex", m.with_field(m.middle, 2, b"55:1"), False, m.where(m.middle))
    yield m.case("index_of_another_field", m.with_field(m.middle, 2, b"0:1"), False, m.where(m.middle))
    yield m.case("index_of_a_quadrillion", m.with_field(m.middle, 2, b"1000000000000000:1"), False, m.where(m.middle))

    for ds in (ML100K, ML1M):
        for role, key in (("users", "user_id"), ("movies", "item_id")):
            m = CaseMaker(ds, role)
            lines = m.lines()
            yield m.case(
                f"{key}_twice",
                join([*lines, lines[2]]),
                False,
                at_line(m.table.display, len(lines) + 1) + f": {key} '3' appears a second time",
            )
            yield m.case(
                f"{key}_of_1_mb_twice",
                join([*lines, *[m.with_field(0, 0, LONG.encode()).split(b"\n")[0]] * 2]),
                False,
                at_line(m.table.display, len(lines) + 2),
                long_value=True,
            )
        m = CaseMaker(ds, "ratings")
        yield m.case("user_missing_from_the_user_table", m.with_field(m.middle, 0, b"999"), True)
        yield replace(
            m.case("no_side_tables", join(m.lines()), True),
            options={"ratings": ds.tables["ratings"].name, "users": None, "movies": None},
        )
    m = CaseMaker(ML100K, "movies")
    for flag in ("2", "", "yes"):
        yield m.case(f"genre_flag={flag!r}", m.with_field(m.middle, 10, flag.encode()), False, m.where(m.middle))
    yield m.case("title_with_the_separator", m.with_field(m.middle, 1, b"A|B"), False, m.where(m.middle))
    m = CaseMaker(ML1M, "movies")
    yield m.case("title_with_the_separator", m.with_field(m.middle, 1, b"A::B (1990)"), False, m.where(m.middle))
    yield m.case("title_with_a_single_colon", m.with_field(m.middle, 1, b"A: B (1990)"), True)
    yield m.case("control_byte_0x1f", m.with_field(m.middle, 1, b"A\x1fB"), False, m.where(m.middle))

    for ds in (ML_LATEST, TABLE_CSV):
        role = "movies" if ds is ML_LATEST else "data"
        m = CaseMaker(ds, role)
        column = 1
        quoted = {
            "quoted_separator": (b'"A, B"', True),
            "quoted_newline": (b'"A\nB"', True),
            "quoted_crlf": (b'"A\r\nB"', True),
            "escaped_quotes": (b'"A ""B"" C"', True),
            "quote_inside_a_field": (b'A"B', True),
            "quoted_empty_value": (b'""', True),
            "unterminated_quote": (b'"A, B', False),
            "text_after_the_closing_quote": (b'"A"B', False),
        }
        for change, (value, accept) in quoted.items():
            yield m.case(change, m.with_field(m.middle, column, value), accept, "" if accept else m.where(m.middle))
        last = len(m.lines()) - 1
        opened = b'"' + m.lines()[last].split(b",")[column]
        yield m.case("unterminated_quote_on_the_last_line", m.with_field(last, column, opened), False, m.where(last))

    m = CaseMaker(TABLE_NO_HEADER, "data")
    literal = m.with_field(m.middle, 0, b'"Paris"')
    options = TABLE_NO_HEADER.options(TABLE_NO_HEADER.names())
    yield replace(m.case("quotes_as_text", literal, True), options={**options, "quote_char": None})
    yield m.case("quotes_around_a_value", literal, True)
    yield replace(
        m.case("columns_option_one_short", join(m.lines()), False, at_line(m.table.name, 1)),
        options={**options, "columns": ["city", "note", "y"], "numeric": []},
    )
    yield replace(
        m.case("columns_option_lacks_the_label", join(m.lines()), False, r"dataset\.options\.columns"),
        options={**options, "columns": ["city", "note", "n", "z"]},
    )
    m = CaseMaker(TABLE_CSV, "data")
    yield replace(
        m.case("latin1_encoding_option", m.in_free_field(m.middle, b"\xe9"), True),
        options={**TABLE_CSV.options(TABLE_CSV.names()), "encoding": "latin-1"},
    )
    yield replace(
        m.case("unknown_encoding_option", join(m.lines()), False, whole_file(m.table.name) + " unknown text encoding"),
        options={**TABLE_CSV.options(TABLE_CSV.names()), "encoding": "klingon"},
    )
    yield replace(
        m.case("utf16_file", "\n".join(line.decode() for line in m.lines()).encode("utf-16"), True, same=True),
        options={**TABLE_CSV.options(TABLE_CSV.names()), "encoding": "utf-16"},
    )
    yield replace(
        m.case("tsv_format_for_a_csv_file", join(m.lines()), False, at_line(m.table.name, 1)),
        options={**TABLE_CSV.options(TABLE_CSV.names()), "format": "tsv"},
    )
    yield replace(
        m.case(
            "format_not_in_the_name",
            join(m.lines()),
            False,
            r"t\.data: .*dataset\.options\.format",
            name="table/t.data",
        ),
        options={**TABLE_CSV.options(TABLE_CSV.names(data="table/t.data")), "format": None},
    )
    yield replace(
        m.case("nrows_with_a_quoted_newline", m.with_field(2, 1, b'"A\nB"'), True, rows=10),
        options={**TABLE_CSV.options(TABLE_CSV.names()), "nrows": 11},
    )

    m = CaseMaker(CRITEO, "data")
    yield replace(
        m.case("nrows_of_a_cr_only_file", join(m.lines(), b"\r"), True, rows=10),
        options={"path": m.table.name, "nrows": 10},
    )
    yield replace(
        m.case(
            "nrows_of_a_truncated_gzip",
            gzip.compress(join(m.lines()))[:-30],
            True,
            rows=10,
            name=m.table.name + ".gz",
            pack=False,
        ),
        options={"path": m.table.name + ".gz", "nrows": 10},
    )
    yield replace(
        m.case(
            "nrows_reaching_a_truncated_gzip_end",
            gzip.compress(join(m.lines()))[:-30],
            False,
            whole_file(m.table.name + ".gz"),
            name=m.table.name + ".gz",
            pack=False,
        ),
        options={"path": m.table.name + ".gz", "nrows": 1000},
    )
    yield replace(
        m.case("numbers_with_log1p", m.with_field(m.middle, 1, b"1e300"), True),
        preprocess={"numeric": "both", "dense_transform": "log1p"},
    )

    m = CaseMaker(FRAPPE, "log")
    text = join(m.lines())
    zip_name = FRAPPE.tables["log"].name
    yield m.case(
        "zip_with_the_log_and_another_file",
        zip_bytes({FRAPPE_MEMBER: text, "README": b"x"}),
        True,
        pack=False,
        same=True,
    )
    yield m.case(
        "zip_without_the_log",
        zip_bytes({"frappe.csv": text}),
        False,
        whole_file(zip_name) + " no member 'Mobile_Frappe/frappe/frappe.csv'",
        pack=False,
    )
    yield m.case(
        "zip_with_no_file", zip_bytes({}), False, whole_file(zip_name) + " no member .*members: none", pack=False
    )
    archive = zip_bytes({FRAPPE_MEMBER: text})
    yield m.case("zip_truncated", archive[:-40], False, whole_file(zip_name), pack=False)
    yield m.case(
        "zip_encrypted",
        zip_patched(FRAPPE_MEMBER, text, flags=0x1),
        False,
        whole_file(zip_name) + " .*encrypted",
        pack=False,
    )
    yield m.case("not_a_zip", text, False, whole_file(zip_name) + " not a zip", pack=False)
    header, *data = m.lines()
    no_user = [header.split(b"\t", 1)[1], *(line.split(b"\t", 1)[1] for line in data)]
    yield m.case("header_without_user", join(no_user), False, at_line(m.table.display, 1) + ": field column 'user'")
    context = data[0].split(b"\t")[2:]
    one_user = [header, *(b"\t".join([b"u1", item, *context]) for item in (b"i1", b"i2"))]
    yield m.case(
        "every_item_used_so_no_negative",
        join(one_user),
        False,
        at_line(m.table.display, 2) + r": user 'u1' has used all 2 items",
    )
    yield replace(
        m.case("no_negatives", text, True, rows=FRAPPE_POSITIVES, warns=(r"every one of its \d+ labels is 1",)),
        options={**FRAPPE.options(FRAPPE.names()), "negatives_per_positive": 0},
    )


# ---------------------------------------------------------------------------------------------------
# Parquet

PARQUET_NAME = "table/t.parquet"


def parquet_frame(n: int = N_ROWS) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "k": [f"k{i % 5}" for i in range(n)],
            "m": [i % 3 for i in range(n)],
            "n": [None if i % 8 == 0 else (i * 7) % 11 - 2.5 for i in range(n)],
            "y": [i % 2 for i in range(n)],
        }
    )


def parquet_cases() -> Iterator[Case]:
    """Parquet files with nested, binary or odd column types, odd numbers and labels, broken bytes."""
    base = parquet_frame()
    options = {"path": PARQUET_NAME, "categorical": ["k", "m"], "numeric": ["n"], "label": "y"}
    whole = whole_file(PARQUET_NAME)

    def case(change: str, frame_or_bytes: pl.DataFrame | bytes, accept: bool, where: str = "", **extra) -> Case:
        data = frame_or_bytes if isinstance(frame_or_bytes, bytes) else parquet_bytes(frame_or_bytes)
        rows = extra.pop("rows", base.height)
        return Case(
            id=f"table_parquet/data/{change}",
            reader="table",
            files=extra.pop("files", {PARQUET_NAME: data}),
            options=extra.pop("options", options),
            accept=accept,
            where=where,
            rows=rows if accept else None,
            **extra,
        )

    yield replace(case("clean", base, True, same_as="table_parquet"), id="table_parquet/clean")
    n = base.height

    def with_column(name: str, values: pl.Series) -> pl.DataFrame:
        return base.with_columns(values.alias(name))

    lists = pl.Series([[i, i + 1] for i in range(n)])
    structs = pl.Series([{"a": i, "b": str(i)} for i in range(n)])
    arrays = pl.Series([[i, i] for i in range(n)], dtype=pl.Array(pl.Int64, 2))
    binary = pl.Series([bytes([i, 255]) for i in range(n)], dtype=pl.Binary)
    for role, column in (("categorical", "k"), ("numeric", "n"), ("label", "y")):
        for kind, values in (("list", lists), ("struct", structs), ("array", arrays), ("binary", binary)):
            where = rf"{re.escape(PARQUET_NAME)}: column '{column}' \(dataset\.options\.{role}\) has type"
            yield case(f"{role}_column_of_{kind}", with_column(column, values), False, where)
    dates = pl.Series([date(2020, 1, 1 + i % 28) for i in range(n)])
    for kind, values in (
        ("date", dates),
        ("categorical_type", pl.Series([f"c{i % 3}" for i in range(n)], dtype=pl.Categorical)),
    ):
        where = rf"{re.escape(PARQUET_NAME)}: column 'n' \(dataset\.options\.numeric\) has type"
        yield case(f"numeric_column_of_{kind}", with_column("n", values), False, where)
    categorical_ok = {
        "date": dates,
        "datetime": pl.Series([datetime(2020, 1, 1, i % 24) for i in range(n)]),
        "categorical_type": pl.Series([f"c{i % 3}" for i in range(n)], dtype=pl.Categorical),
        "boolean": pl.Series([i % 2 == 0 for i in range(n)]),
        "float_with_nan": pl.Series([math.nan if i % 4 == 0 else i / 2 for i in range(n)]),
        "all_null": pl.Series([None] * n, dtype=pl.Null),
        "uint64": pl.Series([2**64 - 1 - i for i in range(n)], dtype=pl.UInt64),
        "value_of_1_mb": pl.Series([LONG if i == 3 else "a" for i in range(n)]),
    }
    for kind, values in categorical_ok.items():
        yield case(f"categorical_column_of_{kind}", with_column("k", values), True)
    numbers = {
        "inf": math.inf,
        "-inf": -math.inf,
        "nan": math.nan,
        "1e300": 1e300,
        "3.5e38": 3.5e38,
        "-1e19": -1e19,
        "-9.3e18": -9.3e18,
        "1e-320": 1e-320,
    }
    for mode in MODES:
        for text, value in numbers.items():
            values = pl.Series([value if i % 3 == 0 else float(i) for i in range(n)])
            yield case(f"numeric={text}/{mode}", with_column("n", values), True, preprocess={"numeric": mode})
        extremes = {
            "int64_min": pl.Series([-(2**63) if i % 2 else i for i in range(n)], dtype=pl.Int64),
            "uint64_max": pl.Series([2**64 - 1 if i % 2 else i for i in range(n)], dtype=pl.UInt64),
            "boolean": pl.Series([i % 2 == 0 for i in range(n)]),
            "all_null": pl.Series([None] * n, dtype=pl.Null),
            "decimal": pl.Series([i / 4 for i in range(n)]).cast(pl.Decimal(10, 2)),
            "strings_of_numbers": pl.Series(["inf" if i == 2 else f"{i}.5" for i in range(n)]),
            "float32_inf": pl.Series([math.inf if i % 2 else i for i in range(n)], dtype=pl.Float32),
        }
        for kind, values in extremes.items():
            yield case(f"numeric_column_of_{kind}/{mode}", with_column("n", values), True, preprocess={"numeric": mode})
    yield case(
        "numeric_string_not_a_number",
        with_column("n", pl.Series(["x" if i == 17 else "1" for i in range(n)])),
        False,
        rf"{re.escape(PARQUET_NAME)} row 18(?!\d): column 'n' value 'x' is not a number",
    )
    yield case(
        "numeric_string_of_1_mb",
        with_column("n", pl.Series([LONG if i == 5 else "1" for i in range(n)])),
        False,
        rf"{re.escape(PARQUET_NAME)} row 6(?!\d)",
        long_value=True,
    )
    labels = {
        "boolean": (pl.Series([i % 2 == 0 for i in range(n)]), True, ""),
        "strings_0_1": (pl.Series([str(i % 2) for i in range(n)]), True, ""),
        "float_0_1": (pl.Series([float(i % 2) for i in range(n)]), True, ""),
        "string_yes": (
            pl.Series(["yes" if i == 9 else "1" for i in range(n)]),
            False,
            "row 10(?!\\d): .*'yes' is not a number",
        ),
        "nan": (
            pl.Series([math.nan if i == 4 else 0.0 for i in range(n)]),
            False,
            "row 5(?!\\d): .*not a finite number",
        ),
        "inf": (
            pl.Series([math.inf if i == 4 else 0.0 for i in range(n)]),
            False,
            "row 5(?!\\d): .*not a finite number",
        ),
        "null": (
            pl.Series([None if i == 4 else 1 for i in range(n)]),
            False,
            "row 5(?!\\d): label column 'y' is empty",
        ),
        "two": (pl.Series([2 if i == 6 else 1 for i in range(n)]), False, "row 7(?!\\d): .*not 0 or 1"),
        "all_null": (pl.Series([None] * n, dtype=pl.Null), False, "row 1(?!\\d): label column 'y' is empty"),
    }
    for kind, (values, accept, where) in labels.items():
        yield case(
            f"label_{kind}", with_column("y", values), accept, re.escape(PARQUET_NAME) + " " + where if where else ""
        )
    yield case(
        "label_with_threshold",
        with_column("y", pl.Series([i % 5 + 0.5 for i in range(n)])),
        True,
        options={**options, "label_threshold": 3},
    )
    yield case("missing_column", base.drop("n"), False, rf"{re.escape(PARQUET_NAME)}: numeric column 'n' not found")
    yield case("no_rows", base.clear(), False, whole + " no data rows")
    yield case("nrows", base, True, rows=20, options={**options, "nrows": 20})
    clean = parquet_bytes(base)
    yield case("truncated", clean[: len(clean) // 2], False, whole + " cannot read as Parquet")
    yield case("last_bytes_cut", clean[:-3], False, whole + " cannot read as Parquet")
    yield case("garbage", np.random.default_rng(1).bytes(4096), False, whole + " cannot read as Parquet")
    yield case("empty_file", b"", False, whole + " cannot read as Parquet")
    yield case("csv_named_parquet", b"k,m,n,y\na,1,2,1\n", False, whole + " cannot read as Parquet")
    yield case(
        "gzipped_parquet",
        gzip.compress(clean),
        False,
        whole_file(PARQUET_NAME + ".gz") + " cannot read",
        options={**options, "path": PARQUET_NAME + ".gz"},
        files={PARQUET_NAME + ".gz": gzip.compress(clean)},
    )
    hint = r"\$EMBDIM_DATA_ROOT or the config key data_root"
    yield replace(
        case("missing_file", clean, False, rf"nowhere/t\.parquet: file not found below the data root .*{hint}"),
        options={**options, "path": "nowhere/t.parquet"},
    )
    yield replace(
        case(
            "a_folder_instead_of_the_file", clean, False, r"t\.parquet_dir: not a file", directories=("t.parquet_dir",)
        ),
        options={**options, "path": "t.parquet_dir", "format": "parquet"},
    )


CORE_CHANGES = {
    "crlf", "cr_only", "utf8_bom", "truncated_last_line", "missing_column", "extra_column", "invalid_utf8",
    "nul_byte", "binary_garbage", "empty_file", "header_only", "without_header", "gzipped", "gzip_two_members",
    "gzip_truncated", "gzip_bad_crc", "zip_with_one_file", "zip_with_two_files", "missing_file", "label='x'",
    "label=''", "label_of_1_mb", "mixed_crlf", "leading_blank_line", "wrong_header", "header_names_a_column_twice",
    "header_repeated_in_the_middle", "value_of_1_mb", "invalid_utf8_cut_sequence",
}  # fmt: skip
"""The changes made to every file; a dataset's first file (when ``full``) gets all of them."""


def build_corpus() -> list[Case]:
    cases: list[Case] = []
    for ds in TEXT_DATASETS:
        cases += dataset_cases(ds)
        for i, role in enumerate(ds.tables):
            every = ds.full and i == 0
            for make in (text_cases, container_cases, label_cases, numeric_cases):
                cases += [case for case in make(ds, role) if every or case.id.split("/", 2)[2] in CORE_CHANGES]
    cases += config_cases()
    cases += degenerate_cases()
    cases += reader_cases()
    cases += parquet_cases()
    return cases


CORPUS = build_corpus()
CASES = {case.id: case for case in CORPUS}
DATASETS = {ds.key: ds for ds in TEXT_DATASETS}

SAMPLE_IDS = (
    "criteo/clean",
    "criteo/data/missing_column",
    "criteo/data/cr_only",
    "criteo/data/nul_byte",
    "criteo/data/label_of_1_mb",
    "criteo/data/column1='-1e19'/discretize",
    "criteo/data/column1='inf'/dense",
    "table_tsv/data/column2='3.5e38'/both",
    "criteo/missing_data_root",
    "criteo_splits/valid/missing_file",
    "criteo_splits/test/gzip_truncated",
    "config/ratios_1_0_0",
    "degenerate/one_row",
    "degenerate/every_label_0",
    "avazu/data/utf8_bom",
    "avazu/data/hour='14102124'",
    "avazu/data/invalid_utf8",
    "libfm/data/pair='3:2'",
    "libfm/data/gzip_two_members",
    "frappe_libfm/data/extra_column",
    "ipinyou/featindex/index_defined_twice",
    "ipinyou/featindex/index_of_a_trillion",
    "ipinyou/train/zip_with_two_files",
    "ml100k/users/user_id_twice",
    "ml100k/movies/item_id_twice",
    "ml100k/movies/invalid_utf8",
    "ml1m/ratings/mixed_crlf",
    "ml1m/movies/control_byte_0x1f",
    "ml_latest/movies/quoted_newline",
    "ml_latest/movies/unterminated_quote",
    "frappe/log/truncated_last_line",
    "frappe/log/zip_with_no_file",
    "frappe/log/every_item_used_so_no_negative",
    "frappe_plain/log/gzip_bad_crc",
    "table_csv/data/unterminated_quote",
    "table_csv/data/binary_garbage",
    "table_csv/data/header_only",
    "table_tsv/data/crlf",
    "table_noheader/data/empty_file",
    "table_parquet/clean",
    "table_parquet/data/categorical_column_of_list",
    "table_parquet/data/numeric_column_of_struct",
    "table_parquet/data/numeric_string_not_a_number",
)
SAMPLE = [CASES[case_id] for case_id in SAMPLE_IDS]


# ---------------------------------------------------------------------------------------------------
# running a case


class CaseHung(Exception):
    """Raised inside a case that runs longer than :data:`HANG_SECONDS` (it then fails as an internal error)."""


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def interrupt(signum: int, frame: object) -> None:
        raise CaseHung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def write_case(case: Case, root: Path) -> Path:
    """The case's files below ``root/data`` and its experiment YAML; returns the YAML's path."""
    data_root = root / "data"
    data_root.mkdir(parents=True)
    for name, content in case.files.items():
        path = data_root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    for name in case.directories:
        (data_root / name).mkdir(parents=True)
    config = {
        "name": "corpus",
        "model": "fm",
        "data_root": str(data_root),
        "cache_root": str(root / "cache"),
        "run_root": str(root / "runs"),
        "dataset": {
            "name": case.dataset_name,
            "reader": case.reader,
            "options": case.options,
            "preprocess": case.preprocess,
        },
    }
    for key, value in case.config.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = str(root / value) if key == "data_root" else value
    path = root / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def env_of(case: Case, root: Path) -> dict[str, str]:
    return {key: str(root / value) for key, value in case.env.items()}


def the_cache(root: Path) -> PreparedData:
    folders = list((root / "cache").iterdir())
    assert len(folders) == 1 and is_complete(folders[0]), folders
    return load_prepared(folders[0])


def same_arrays(data: PreparedData, clean: PreparedData) -> None:
    assert data.schema.field_names == clean.schema.field_names
    assert data.schema.vocab_sizes == clean.schema.vocab_sizes
    assert data.schema.rows == clean.schema.rows
    for name, split in clean.splits.items():
        for array in ("ids", "dense", "labels"):
            np.testing.assert_array_equal(getattr(data[name], array), getattr(split, array), err_msg=f"{name} {array}")


def without_bars(output: str) -> str:
    """The command's output without its progress bar, for failure messages."""
    return "\n".join(line for line in output.splitlines() if line.strip() and not line.startswith("prepare "))[-3000:]


def check(case: Case, root: Path, clean_of: Callable[[str], PreparedData] | None = None) -> None:
    """Run ``embdim prepare`` on the case and check everything the module docstring promises."""
    config_path = write_case(case, root)
    start = time.perf_counter()
    with time_limit(HANG_SECONDS):
        result = CliRunner().invoke(app, ["prepare", str(config_path)], env=env_of(case, root))
    elapsed = time.perf_counter() - start
    output = result.output
    shown = without_bars(output)
    assert "Traceback" not in output and "internal error" not in output, shown
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert elapsed < CASE_SECONDS, f"took {elapsed:.1f} s"
    cache_root = root / "cache"
    entries = sorted(cache_root.iterdir()) if cache_root.exists() else []
    if not case.accept:
        assert result.exit_code == 2, shown
        message = output[output.index("error:") :]
        assert len(message) < MAX_MESSAGE_CHARS, message[:300]
        assert re.search(case.where, message, re.S), f"{case.where!r} not in {message!r}"
        # no half-written cache: nothing complete, no temporary folder, nothing at all
        assert not [p for p in entries if is_complete(p)], entries
        assert not [p for p in entries if p.name.startswith(TEMP_PREFIX)], entries
        assert not entries, entries
        if case.long_value:  # the data layer's own message is short, not only the printed line
            with pytest.raises(EmbdimError) as caught, pytest.MonkeyPatch.context() as patch:
                for key, value in env_of(case, root).items():
                    patch.setenv(key, value)
                prepare_dataset(load_config(config_path), progress=False)
            assert len(str(caught.value)) < MAX_MESSAGE_CHARS, str(caught.value)[:300]
        return
    assert result.exit_code == 0, shown
    data = the_cache(root)
    if case.rows is not None:
        assert sum(data.schema.rows.values()) == case.rows, data.schema.rows
    for name, split in data.splits.items():
        assert np.isfinite(split.dense).all(), f"{name}: a non-finite dense value reached the cache"
        assert (np.asarray(split.ids) < np.asarray(data.schema.vocab_sizes)).all() and (
            np.asarray(split.ids) >= 0
        ).all()
        assert set(np.unique(split.labels)) <= {0.0, 1.0}
    assert all(isinstance(w, str) for w in data.warnings)
    for pattern in case.warns:
        assert any(re.search(pattern, w) for w in data.warnings), (pattern, data.warnings)
    if case.same_as is not None and clean_of is not None and not case.id.endswith("/clean"):
        same_arrays(data, clean_of(case.same_as))


@pytest.fixture(scope="module")
def clean_of(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], PreparedData]:
    """Dataset key -> its clean case's cache (prepared once per module)."""
    made: dict[str, PreparedData] = {}

    def get(key: str) -> PreparedData:
        if key not in made:
            root = tmp_path_factory.mktemp(f"clean-{key}")
            check(CASES[f"{key}/clean"], root)
            made[key] = the_cache(root)
        return made[key]

    return get


# ---------------------------------------------------------------------------------------------------
# tests


def test_the_corpus_has_500_cases_over_every_reader_and_the_sample_covers_each() -> None:
    readers = {
        "criteo",
        "avazu",
        "libfm",
        "frappe_libfm",
        "ipinyou",
        "movielens_100k",
        "movielens_1m",
        "movielens_latest",
        "frappe",
        "table",
    }
    assert len(CORPUS) >= 500
    assert len(CASES) == len(CORPUS), [k for k, v in Counter(c.id for c in CORPUS).items() if v > 1]
    assert set(Counter(case.reader for case in CORPUS)) == readers
    assert {case.reader for case in SAMPLE} == readers
    assert any(case.accept for case in SAMPLE) and any(not case.accept for case in SAMPLE)
    assert all(case.where for case in CORPUS if not case.accept)


@pytest.mark.parametrize("case", SAMPLE, ids=[case.id for case in SAMPLE])
def test_a_sample_of_the_corpus_is_accepted_or_rejected_cleanly(case: Case, tmp_path: Path, clean_of) -> None:
    check(case, tmp_path, clean_of)


@pytest.mark.slow
@pytest.mark.parametrize("case", CORPUS, ids=[case.id for case in CORPUS])
def test_every_case_of_the_corpus_is_accepted_or_rejected_cleanly(case: Case, tmp_path: Path, clean_of) -> None:
    check(case, tmp_path, clean_of)


@pytest.mark.slow
@pytest.mark.parametrize("case", CORPUS, ids=[case.id for case in CORPUS])
def test_every_case_streamed_is_accepted_or_rejected_as_in_memory(
    case: Case, tmp_path: Path, clean_of, monkeypatch
) -> None:
    """The same corpus with every streamable source streamed (EMBDIM_STREAMING=prefer): the same errors,
    the same caches."""
    monkeypatch.setenv("EMBDIM_STREAMING", "prefer")
    check(case, tmp_path, clean_of)
