"""Shared reader machinery: opening (compressed) files, splitting delimited text, checking values.

Parsing is done by polars on whole files. Only when a fast check fails is the text scanned line by
line in Python, to name the first offending line in the error.
"""

from __future__ import annotations

import csv
import functools
import gzip
import io
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import BinaryIO, ClassVar, Literal, Protocol

import numpy as np
import polars as pl
from pydantic import PositiveInt, model_validator

from embdim.data.raw import DataError
from embdim.data.readers.base import NotStreamable, Reader, ReaderOptions, scoring_path
from embdim.errors import shorten

ALL_SPLIT = "all"
"""Split key of a single pool of rows that the caller splits at random."""
SPLIT_ORDER = ("train", "valid", "test")
"""Split keys of given split files, in the order they are returned."""
SplitKey = Literal["all", "train", "valid", "test"]

SEPARATOR_NAMES = {"\t": "tab", ",": "comma", " ": "space", "|": "'|'", ";": "';'"}
"""How error messages name the usual separators."""
SUBSTITUTE_SEPARATOR = "\x1f"
"""Single-byte stand-in for a multi-character separator such as MovieLens-1M's ``::``."""
GZIP_SUFFIX = ".gz"
ZIP_SUFFIX = ".zip"
GZIP_MAGIC = b"\x1f\x8b"
UTF8 = "utf-8"
UTF8_BOM = b"\xef\xbb\xbf"
NUL = b"\x00"
LF = b"\n"
CR = b"\r"
COUNT_BLOCK_BYTES = 1 << 24
"""Bytes read at a time where text is counted or cut in lines (:func:`count_lines`, streamed chunks)."""
ZIP_ENCRYPTED_FLAG = 0x1
"""Bit of a zip entry's general purpose flags that marks it encrypted."""
MAX_SHOWN_COLUMNS = 50
"""Error messages list at most this many available column names."""
UNLABELLED_HINT = "no label, as on the file's first line"
"""Appended to a column-count error of a file read without label in scoring mode (a labelled line among
unlabelled ones, or the reverse, is named by its wrong column count)."""


# ---------------------------------------------------------------------------------------------------
# Options and the split-file reader base


class SplitFileOptions(ReaderOptions):
    """Which files to read: one pool (``path``, or ``files: {all: ...}``) or given split files.

    Attributes:
        path: a single file, read as the pool ``all``.
        files: ``{"all": path}`` or any of ``{"train": ..., "valid": ..., "test": ...}``.
        nrows: read at most this many data rows from each file (``None``: all). In text files a row
            is a line, so a quoted field that spans lines uses up more than one.
    """

    SOURCE_OPTIONS: ClassVar[frozenset[str]] = frozenset({"path", "files"})

    path: str | None = None
    files: dict[SplitKey, str] | None = None
    nrows: PositiveInt | None = None

    @model_validator(mode="after")
    def _check_layout(self) -> SplitFileOptions:
        if self.path is not None and self.files is not None:
            raise ValueError("give either 'path' or 'files', not both")
        if self.files is not None:
            if not self.files:
                raise ValueError("'files' is empty")
            if ALL_SPLIT in self.files and len(self.files) > 1:
                raise ValueError("'files' holds 'all' next to split names; use either {all: ...} or train/valid/test")
        return self


class SplitFileReader(Reader):
    """A reader whose files are given as ``path`` / ``files`` (see :class:`SplitFileOptions`).

    Subclasses may set ``DEFAULT_FILES`` (relative to the data root), used when neither is given.
    """

    Options: ClassVar[type[ReaderOptions]] = SplitFileOptions
    DEFAULT_FILES: ClassVar[dict[str, str] | None] = None
    options: SplitFileOptions

    def split_paths(self) -> dict[str, Path]:
        """Split name -> resolved file, ``all`` alone or train/valid/test in that order."""
        if self.options.path is not None:
            files: dict[str, str] = {ALL_SPLIT: self.options.path}
        elif self.options.files is not None:
            files = dict(self.options.files)
        elif self.DEFAULT_FILES is not None:
            files = dict(self.DEFAULT_FILES)
        else:
            raise DataError(f"{type(self).__name__}: no input files; set 'path' or 'files' in the options")
        order = [ALL_SPLIT, *SPLIT_ORDER]
        return {name: self.path(files[name]) for name in order if name in files}

    def source_files(self) -> dict[str, Path]:
        return self.split_paths()

    def sources(self) -> list[Path]:
        return list(self.source_files().values())

    def display(self, path: Path) -> str:
        return display_name(path, self.root)

    def for_scoring(self, path: Path) -> Reader | None:
        return self.scoring_copy(path=scoring_path(path), files=None, nrows=None)


def display_name(path: Path, root: Path) -> str:
    """``path`` relative to the data root when it lies below it (as in error messages), else in full."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------------
# Reading bytes


def _check_file(path: Path, display: str) -> None:
    if not path.exists():
        raise DataError(f"{display}: file not found ({path})")
    if not path.is_file():
        raise DataError(f"{display}: not a file ({path})")


@contextmanager
def _read_errors(path: Path, display: str) -> Iterator[None]:
    """Turn what reading a (compressed) file can raise into a :class:`DataError` naming it."""
    try:
        yield
    except PermissionError as error:
        raise DataError(f"{display}: cannot read the file: permission denied") from error
    except gzip.BadGzipFile as error:
        if not _starts_with(path, GZIP_MAGIC):
            raise DataError(f"{display}: not a gzip file although named .gz ({error})") from error
        # a gzip start followed by a bad checksum, length or trailing bytes: the file is damaged
        raise DataError(f"{display}: corrupt gzip data ({error})") from error
    except (EOFError, zlib.error) as error:
        raise DataError(f"{display}: corrupt or truncated compressed data ({error})") from error
    except zipfile.BadZipFile as error:
        if _starts_with(path, b"PK"):
            raise DataError(f"{display}: corrupt zip archive ({error})") from error
        raise DataError(f"{display}: not a zip file although named .zip ({error})") from error
    except NotImplementedError as error:  # zipfile: a compression method it cannot decode
        raise DataError(f"{display}: cannot decompress: {error}") from error
    except OSError as error:
        raise DataError(f"{display}: cannot read the file: {error}") from error


def read_file_bytes(path: Path, display: str, *, member: str | None = None, max_lines: int | None = None) -> bytes:
    """The (decompressed) content of a plain, ``.gz`` or ``.zip`` file, read in memory.

    Args:
        path: the file. ``.gz`` is gunzipped, ``.zip`` opens ``member`` (or the only file inside).
        display: the name used in error messages.
        member: the file inside a zip archive.
        max_lines: read only this many lines (``None``: everything).

    Raises:
        DataError: missing, unreadable, not really gzip/zip, or empty.
    """
    _check_file(path, display)
    with _read_errors(path, display):
        if path.suffix == ZIP_SUFFIX:
            data = _read_zip_member(path, display, member, max_lines)
        elif path.suffix == GZIP_SUFFIX:
            if max_lines is None:
                data = gzip.decompress(path.read_bytes())
            else:
                with gzip.open(path, "rb") as stream:
                    data = b"".join(islice(stream, max_lines))
        elif max_lines is None:
            data = path.read_bytes()
        else:
            with path.open("rb") as stream:
                data = b"".join(islice(stream, max_lines))
    if not data:
        raise DataError(f"{display}: empty file")
    return data


def _starts_with(path: Path, magic: bytes) -> bool:
    with path.open("rb") as stream:
        return stream.read(len(magic)) == magic


def _member_list(names: Sequence[str]) -> str:
    return shorten(", ".join(repr(name) for name in names)) if names else "none"


def _read_zip_member(path: Path, display: str, member: str | None, max_lines: int | None) -> bytes:
    with zipfile.ZipFile(path) as archive, archive.open(_zip_member(archive, display, member)) as stream:
        return stream.read() if max_lines is None else b"".join(islice(stream, max_lines))


def _zip_member(archive: zipfile.ZipFile, display: str, member: str | None) -> zipfile.ZipInfo:
    """The archive's member to read (its only file when ``member`` is None), if it can be read."""
    infos = {info.filename: info for info in archive.infolist() if not info.is_dir()}
    names = list(infos)
    if member is None:
        if len(names) != 1:
            # these readers have no option naming a member, so the archive must hold exactly one file
            raise DataError(
                f"{display}: a .zip source must hold exactly one file, this one holds {len(names)}: "
                f"{_member_list(names)}"
            )
        member = names[0]
    if member not in infos:
        raise DataError(f"{display}: no member {member!r}; members: {_member_list(names)}")
    if infos[member].flag_bits & ZIP_ENCRYPTED_FLAG:
        raise DataError(f"{display}: member {member!r} is encrypted; unpack it first")
    return infos[member]


# ---------------------------------------------------------------------------------------------------
# Text files and locating rows


class RowLocator(Protocol):
    """Says where a data row came from, for error messages."""

    def where(self, row: int) -> str: ...


@dataclass
class ParquetRows:
    """Locator of rows of a file without lines (Parquet): ``name row 17`` (1-based); ``first_row`` is the
    0-based file row of row 0 (a chunk of the file)."""

    display: str
    first_row: int = 0

    def where(self, row: int) -> str:
        return f"{self.display} row {self.first_row + row + 1}"


@dataclass
class TextFile:
    """UTF-8 text of one source file, its header lines already removed.

    Attributes:
        display: the file's name in error messages.
        data: the text, one data row per line unless ``row_lines`` says otherwise.
        first_line: the 1-based line number of the first line of ``data`` in the file.
        row_lines: the line each row starts on, when quoted fields span lines.
    """

    display: str
    data: bytes
    first_line: int = 1
    row_lines: np.ndarray | None = None

    def line_of(self, row: int) -> int:
        if self.row_lines is not None:
            return int(self.row_lines[row])
        return self.first_line + row

    def where(self, row: int) -> str:
        return f"{self.display} line {self.line_of(row)}"

    def first_line_text(self) -> bytes:
        end = self.data.find(b"\n")
        line = self.data if end < 0 else self.data[:end]
        return line.rstrip(b"\r")

    def without_first_line(self) -> TextFile:
        end = self.data.find(b"\n")
        rest = b"" if end < 0 else self.data[end + 1 :]
        return TextFile(self.display, rest, self.first_line + 1)

    def head(self, n_lines: int) -> TextFile:
        """The first ``n_lines`` lines."""
        end = 0
        for _ in range(n_lines):
            end = self.data.find(b"\n", end) + 1
            if end == 0:
                return self
        return TextFile(self.display, self.data[:end], self.first_line)


def load_text(
    path: Path,
    display: str,
    *,
    encoding: str = UTF8,
    member: str | None = None,
    max_lines: int | None = None,
) -> TextFile:
    """Read a text file (plain, ``.gz`` or a zip member) as UTF-8, transcoding from ``encoding``.

    A UTF-8 byte order mark is dropped (before transcoding, so a latin-1 file does not start with
    three odd characters). A file without any LF whose lines end in CR (classic Mac text) is read
    as if its lines ended in LF; CRLF and LF may be mixed freely.

    Messages about the file call it ``display``; those about its text (and the returned
    :class:`TextFile`) call a zip ``member`` ``display:member``.

    Raises:
        DataError: unreadable or empty (see :func:`read_file_bytes`), a NUL byte (binary or damaged
            data; the line is named), text that is not valid in ``encoding``.
    """
    data = read_file_bytes(path, display, member=member, max_lines=max_lines)
    if member is not None:
        display = f"{display}:{member}"
    if data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM) :]
    if encoding.lower().replace("_", "-") not in (UTF8, "utf8"):
        try:
            data = data.decode(encoding).encode(UTF8)
        except UnicodeDecodeError as error:
            line = data.count(b"\n", 0, error.start) + 1
            raise DataError(f"{display} line {line}: not valid {encoding} text") from error
        except LookupError as error:
            raise DataError(f"{display}: unknown text encoding {shorten(repr(encoding))}") from error
    nul = data.find(NUL)  # checked on UTF-8: in UTF-16 source text NUL bytes are ordinary
    if nul >= 0:
        line = data.count(LF, 0, nul) + 1
        raise DataError(f"{display} line {line}: holds a NUL byte (0x00); the file looks binary or damaged")
    if LF not in data and CR in data:
        data = data.replace(CR, LF)
        if max_lines is not None:  # the line limit above counted LF only
            data = TextFile(display, data).head(max_lines).data
    return TextFile(display, data)


def _open_lines(path: Path, display: str) -> BinaryIO:
    """A binary stream of the decompressed file (plain, ``.gz``, or the only member of a ``.zip``)."""
    if path.suffix == ZIP_SUFFIX:
        archive = zipfile.ZipFile(path)
        try:
            return archive.open(_zip_member(archive, display, None))
        finally:
            archive.close()  # the member's stream keeps the file open until it is closed
    if path.suffix == GZIP_SUFFIX:
        return gzip.open(path, "rb")
    return path.open("rb")


def iter_text_chunks(path: Path, display: str, chunk_lines: int, *, max_lines: int | None = None) -> Iterator[TextFile]:
    """The file's UTF-8 text in chunks of ``chunk_lines`` lines, each a :class:`TextFile` whose line
    numbers are the file's: what :func:`load_text` gives, a chunk at a time, in bounded memory.

    The first chunk loses a byte order mark; every chunk is checked for NUL bytes. A file whose lines
    end in CR alone, or any non-UTF-8 encoding, cannot be cut at lines here (use :func:`load_text`).

    Raises:
        DataError: as :func:`load_text`, naming the file's line.
    """
    _check_file(path, display)
    first_line, lines_left, empty = 1, max_lines, True
    with _read_errors(path, display), _open_lines(path, display) as stream:
        # a row limit reads no further than its lines (a damaged end of the file stays unread)
        lines_of = _line_cutter(stream) if max_lines is None else lambda n: b"".join(islice(stream, n))
        while lines_left is None or lines_left > 0:
            take = chunk_lines if lines_left is None else min(chunk_lines, lines_left)
            data = lines_of(take)
            if not data:
                break
            if empty and data.startswith(UTF8_BOM):
                data = data[len(UTF8_BOM) :]
            empty = False
            nul = data.find(NUL)
            if nul >= 0:
                line = first_line + data.count(LF, 0, nul)
                raise DataError(f"{display} line {line}: holds a NUL byte (0x00); the file looks binary or damaged")
            if LF not in data and CR in data:
                raise NotStreamable(f"{display}: its lines end in CR alone")
            lines = data.count(LF) + (0 if data.endswith(LF) else 1)
            yield TextFile(display, data, first_line)
            first_line += lines
            if lines_left is not None:
                lines_left -= lines
    if empty:
        raise DataError(f"{display}: empty file")


def _line_cutter(stream: BinaryIO) -> Callable[[int], bytes]:
    """A function that gives the stream's next ``n`` lines (fewer at its end) as one bytes object: read
    in blocks and cut after the n-th LF, which costs far less than reading line by line."""
    pending, pending_lf = b"", 0  # the bytes read past the last cut, and their LFs

    def next_lines(n: int) -> bytes:
        nonlocal pending, pending_lf
        parts, found, before = [pending], pending_lf, 0  # before: LFs ahead of the last part
        while found < n:
            block = stream.read(COUNT_BLOCK_BYTES)
            if not block:
                break
            parts.append(block)
            before, found = found, found + block.count(LF)
        if found <= n:
            pending, pending_lf = b"", 0
            return b"".join(parts)
        last = parts[-1]  # the n-th LF is in the last part
        cut = int(np.flatnonzero(np.frombuffer(last, dtype=np.uint8) == LF[0])[n - before - 1]) + 1
        parts[-1], pending, pending_lf = last[:cut], last[cut:], found - n
        return b"".join(parts)

    return next_lines


def count_lines(path: Path, display: str, *, max_lines: int | None = None) -> int:
    """Lines of the (decompressed) file, trailing blank lines not counted: its rows when every line is one.

    Raises:
        DataError: an empty file, or one with no data rows (as :func:`load_text` and the parsers say).
        NotStreamable: lines that end in CR alone (they are read whole).
    """
    _check_file(path, display)
    with _read_errors(path, display), _open_lines(path, display) as stream:
        if max_lines is None:  # blocks of bytes: counted by bytes.count, not a Python loop per line
            pieces: Iterable[bytes] = iter(functools.partial(stream.read, COUNT_BLOCK_BYTES), b"")
        else:
            pieces = islice(stream, max_lines)
        return _count_pieces(pieces, display)


def _count_pieces(pieces: Iterable[bytes], display: str) -> int:
    """:func:`count_lines` of the bytes that ``pieces`` (blocks or lines, in order) make up."""
    pieces = iter(pieces)
    head = b""
    for piece in pieces:  # the first bytes, for a byte order mark that small pieces may cut
        head += piece
        if len(head) >= len(UTF8_BOM):
            break
    lf = 0
    content = ends_lf = False
    after = 0  # LFs since the last byte that is neither CR nor LF
    tail_cr = tail_inner_cr = False  # since the last LF: a CR, and a CR that a byte other than CR follows
    for piece in chain([head.removeprefix(UTF8_BOM)], pieces):
        if not piece:
            continue
        lf += piece.count(LF)
        ends_lf = piece.endswith(LF)
        content = content or bool(piece.strip())
        text = piece.rstrip(b"\r\n")
        after = piece.count(LF, len(text)) if text else after + piece.count(LF)
        last_lf = piece.rfind(LF)
        if last_lf >= 0:
            tail = piece[last_lf + 1 :]
            tail_cr, tail_inner_cr = CR in tail, CR in tail.rstrip(CR)
        else:
            kept = piece.rstrip(CR)
            tail_inner_cr = tail_inner_cr or (bool(kept) and (tail_cr or CR in kept))
            tail_cr = tail_cr or CR in piece
    if not head:
        raise DataError(f"{display}: empty file")
    if not ends_lf and tail_inner_cr:  # no LF at the end of a line that holds CRs: lines that end in CR alone
        raise NotStreamable(f"{display}: its lines end in CR alone")
    if not content:
        raise DataError(f"{display}: no data rows")
    lines = lf + (0 if ends_lf else 1)
    blank = after - 1 + (0 if ends_lf else 1) if after else 0  # the first LF ends the last line with text
    return lines - blank


def expect_header(text: TextFile, columns: Sequence[str], separator: str) -> TextFile:
    """Check that the first line is exactly ``columns`` joined by ``separator``; return the rest."""
    found = text.first_line_text().decode(UTF8, errors="replace")
    expected = separator.join(columns)
    if found != expected:
        raise DataError(
            f"{text.display} line {text.first_line}: expected the header {shorten(repr(expected))}, "
            f"found {shorten(repr(found))}"
        )
    return text.without_first_line()


def _trim_trailing_blank_lines(data: bytes) -> bytes:
    """Drop blank lines at the very end of a file (a common editing artefact)."""
    if not data.endswith((b"\n\n", b"\n\r\n")):
        return data
    return data.rstrip(b"\r\n") + b"\n"


def _count_lines(data: bytes) -> int:
    if not data:
        return 0
    return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


def _separator_name(separator: str) -> str:
    return SEPARATOR_NAMES.get(separator, repr(separator))


def _first_malformed_line(
    text: TextFile, separator: str, n_columns: int, hint: str, shown_separator: str
) -> str | None:
    """Scan line by line; describe the first line that is not UTF-8 or has the wrong column count."""
    for offset, raw in enumerate(io.BytesIO(text.data)):
        line_no = text.first_line + offset
        try:
            line = raw.rstrip(b"\r\n").decode(UTF8)
        except UnicodeDecodeError as error:
            return f"{text.display} line {line_no}: not valid UTF-8 (byte {error.start + 1} of the line)"
        found = line.count(separator) + 1
        if found != n_columns:
            return _column_count_message(text.display, line_no, shown_separator, n_columns, found, hint)
    return None


def _column_count_message(display: str, line: int, separator: str, expected: int, found: int, hint: str) -> str:
    extra = f" ({hint})" if hint else ""
    return (
        f"{display} line {line}: expected {expected} {_separator_name(separator)}-separated columns{extra}, "
        f"found {found}"
    )


@contextmanager
def _csv_fields_up_to(size: int) -> Iterator[None]:
    """Let the csv module read fields of ``size`` characters (it refuses 128 KiB by default, the unquoted
    path has no such limit)."""
    limit = csv.field_size_limit(max(csv.field_size_limit(), size))
    try:
        yield
    finally:
        csv.field_size_limit(limit)


def _csv_records(decoded: str, separator: str, quote_char: str) -> Iterator[list[str]]:
    return csv.reader(io.StringIO(decoded, newline=""), delimiter=separator, quotechar=quote_char, strict=True)


def _requoted(text: TextFile, separator: str, quote_char: str) -> bytes:
    """The records as the csv module reads them, written back with every quote inside a field doubled.

    Polars refuses what the csv module reads as text, such as a quote inside an unquoted field
    (``A"B``); the rewritten text parses alike in both.
    """
    decoded = text.data.decode(UTF8)
    out = io.StringIO()
    writer = csv.writer(out, delimiter=separator, quotechar=quote_char, lineterminator="\n")
    with _csv_fields_up_to(len(decoded)):
        writer.writerows(_csv_records(decoded, separator, quote_char))
    return out.getvalue().encode(UTF8)


def _quoted_row_lines(text: TextFile, separator: str, quote_char: str, n_columns: int, hint: str) -> np.ndarray:
    """Check quoted CSV with the ``csv`` module; return the line each record starts on."""
    try:
        decoded = text.data.decode(UTF8)
    except UnicodeDecodeError as error:
        line = text.first_line + text.data.count(b"\n", 0, error.start)
        raise DataError(f"{text.display} line {line}: not valid UTF-8") from error
    reader = _csv_records(decoded, separator, quote_char)
    starts: list[int] = []
    lines_read = 0
    try:
        with _csv_fields_up_to(len(decoded)):
            for record in reader:
                start = text.first_line + lines_read
                if len(record) != n_columns:
                    message = _column_count_message(text.display, start, separator, n_columns, len(record), hint)
                    raise DataError(message)
                starts.append(start)
                lines_read = reader.line_num
    except csv.Error as error:
        # the record that failed starts after the last one read; an unclosed quote runs to the end of the file
        start = text.first_line + lines_read
        unclosed = " (a quoted field opened here is not closed)" if "end of data" in str(error) else ""
        raise DataError(f"{text.display} line {start}: {error}{unclosed}") from error
    return np.asarray(starts, dtype=np.int64)


def split_columns(
    text: TextFile,
    columns: Sequence[str],
    separator: str,
    *,
    quote_char: str | None = None,
    hint: str = "",
) -> pl.DataFrame:
    """Parse delimited text into string columns (empty field = null), checking every row's width.

    Args:
        text: the file's text without header.
        columns: the column names, one per field.
        separator: one character, or a longer string (e.g. ``::``) that is swapped for a single byte.
        quote_char: quote character of quoted CSV, or ``None`` when quotes are ordinary characters.
        hint: what the columns are, appended to column-count errors.

    Raises:
        DataError: no data rows, a line with the wrong number of columns, text that is not UTF-8.

    ``text`` is updated in place (trailing blank lines trimmed, ``row_lines`` set for quoted text), so
    that ``text.where(row)`` names the right line afterwards.
    """
    if not text.data or text.data.isspace():
        raise DataError(f"{text.display}: no data rows")
    n_columns = len(columns)
    text.data = _trim_trailing_blank_lines(text.data)
    parse_separator = separator
    if len(separator) > 1:
        at = text.data.find(SUBSTITUTE_SEPARATOR.encode())
        if at >= 0:
            line = text.first_line + text.data.count(LF, 0, at)
            raise DataError(
                f"{text.display} line {line}: holds the control byte 0x1f, which this reader uses internally"
            )
        text.data = text.data.replace(separator.encode(), SUBSTITUTE_SEPARATOR.encode())
        parse_separator = SUBSTITUTE_SEPARATOR
    quoted = quote_char is not None and quote_char.encode() in text.data
    n_lines = _count_lines(text.data)

    def malformed(fallback: str) -> DataError:
        message = None
        if not quoted:
            message = _first_malformed_line(text, parse_separator, n_columns, hint, separator)
        return DataError(message or fallback)

    if quoted:
        text.row_lines = _quoted_row_lines(text, parse_separator, quote_char or "", n_columns, hint)
    elif text.data.count(parse_separator.encode()) != (n_columns - 1) * n_lines:
        raise malformed(f"{text.display}: rows do not all have {n_columns} columns")
    expected_rows = len(text.row_lines) if text.row_lines is not None else n_lines

    def parse(data: bytes) -> pl.DataFrame:
        return pl.read_csv(
            io.BytesIO(data),
            has_header=False,
            schema=dict.fromkeys(columns, pl.Utf8),
            separator=parse_separator,
            quote_char=quote_char if quoted else None,
        )

    frame: pl.DataFrame | None
    try:
        frame = parse(text.data)
    except pl.exceptions.PolarsError as error:
        if not quoted:
            raise malformed(f"{text.display}: cannot parse: {error}") from error
        frame = None
    if frame is None or (quoted and frame.height != expected_rows):
        # the csv module accepted every record above; where polars reads them otherwise, take its reading
        try:
            frame = parse(_requoted(text, parse_separator, quote_char or ""))
        except pl.exceptions.PolarsError as error:
            raise DataError(f"{text.display}: cannot parse: {shorten(str(error).splitlines()[0])}") from error
    if frame.height != expected_rows:
        raise DataError(f"{text.display}: parsed {frame.height} rows, expected {expected_rows}")
    if quoted:  # a quoted empty field ("") is empty too, as an unquoted one is
        frame = frame.with_columns([pl.when(pl.col(c).str.len_bytes() > 0).then(pl.col(c)).alias(c) for c in columns])
    return frame


def parse_header(text: TextFile, separator: str, quote_char: str | None) -> list[str]:
    """The column names on the first line (quoted names allowed); duplicates are an error."""
    line = text.first_line_text().decode(UTF8, errors="replace")
    if quote_char is None:
        names = line.split(separator)
    else:
        try:
            with _csv_fields_up_to(len(line)):
                names = next(csv.reader([line], delimiter=separator, quotechar=quote_char), [])
        except csv.Error as error:
            raise DataError(f"{text.display} line {text.first_line}: cannot read the header: {error}") from error
    seen: set[str] = set()
    for name in names:
        if name in seen:
            shown = shorten(repr(name))
            raise DataError(f"{text.display} line {text.first_line}: the header names column {shown} twice")
        seen.add(name)
    return names


def reject_repeated_header(frame: pl.DataFrame, locator: RowLocator, header: Sequence[str] | None = None) -> None:
    """Raise at the first data row that repeats the header (files joined with ``cat`` keep theirs).

    ``header`` is the header's names in column order (default: the frame's column names).
    """
    if not frame.width or frame.height == 0:
        return
    names = list(header if header is not None else frame.columns)
    same = pl.all_horizontal(
        [(pl.col(column) == name).fill_null(False) for column, name in zip(frame.columns, names, strict=True)]
    )
    row = first_true(frame.select(same).to_series())
    if row is not None:
        raise DataError(f"{locator.where(row)}: repeats the header (were files joined with their headers?)")


def require_columns(display: str, wanted: dict[str, Sequence[str]], available: Sequence[str]) -> None:
    """Raise naming the first wanted column (by role, e.g. ``numeric``) that the file lacks.

    ``display`` is where the names come from: ``"t.csv line 1"`` for a header, the file for Parquet.
    """
    present = set(available)
    for role, names in wanted.items():
        for name in names:
            if name not in present:
                shown = shorten(", ".join(repr(column) for column in list(available)[:MAX_SHOWN_COLUMNS]))
                more = " ..." if len(available) > MAX_SHOWN_COLUMNS else ""
                raise DataError(
                    f"{display}: {role} column {shorten(repr(name))} not found; available columns: {shown}{more}"
                )


# ---------------------------------------------------------------------------------------------------
# Value checks (vectorised; the first bad row is named)


def first_true(mask: pl.Series) -> int | None:
    """Index of the first ``True`` in a boolean series (nulls count as ``False``)."""
    hits = mask.fill_null(False).arg_true()
    return int(hits[0]) if len(hits) else None


def _stripped_float(name: str) -> pl.Expr:
    return pl.col(name).str.strip_chars().cast(pl.Float64, strict=False)


def parse_numeric(frame: pl.DataFrame, columns: Sequence[str], locator: RowLocator) -> pl.DataFrame:
    """Cast text columns to ``Float64``; blank, null and ``nan`` become null.

    Raises:
        DataError: a value that is not a number, naming the row's place, the column and the value.
    """
    if not columns:
        return frame
    text_columns = [name for name in columns if frame.schema[name] == pl.Utf8]
    floats = frame.select([pl.col(name).cast(pl.Float64, strict=False) for name in text_columns])
    # only a text that did not parse needs a closer look (spaces around a number, or not a number):
    # empty fields are null already, so clean data has none
    unparsed = [name for name in text_columns if (floats[name].is_null() & frame[name].is_not_null()).any()]
    if unparsed:
        floats = floats.with_columns(frame.select([_stripped_float(name) for name in unparsed]))
        blank = frame.select([pl.col(name).str.strip_chars().str.len_bytes() == 0 for name in unparsed])
        bad = floats.select([pl.col(name).is_null() & ~blank[name] for name in unparsed])
        row = first_true(bad.select(pl.any_horizontal(pl.all())).to_series())
        if row is not None:
            column = next(name for name in unparsed if bad[name][row])
            value = shorten(repr(frame[column][row]))
            raise DataError(f"{locator.where(row)}: column {column!r} value {value} is not a number")
    return frame.with_columns(
        [(floats[name] if name in text_columns else frame[name].cast(pl.Float64)).fill_nan(None) for name in columns]
    )


def binary_label(
    frame: pl.DataFrame,
    column: str,
    locator: RowLocator,
    *,
    positive: Sequence[str] = ("1",),
    negative: Sequence[str] = ("0",),
) -> pl.Series:
    """A text label column as ``Float32`` 1.0/0.0; any other token (or an empty label) raises."""
    allowed = [*negative, *positive]
    row = first_true(~frame[column].is_in(allowed).fill_null(False))
    if row is not None:
        value = frame[column][row]
        shown = "empty" if value is None else shorten(repr(value))
        raise DataError(f"{locator.where(row)}: label {shown} is not one of {', '.join(allowed)}")
    return frame[column].is_in(list(positive)).cast(pl.Float32).alias(column)


def null_label(height: int, name: str = "label") -> pl.Series:
    """The label of rows read without one (scoring mode): ``height`` nulls of the label's dtype."""
    return pl.Series(name, [None] * height, dtype=pl.Float32)


def equals_any(column: pl.Expr, dtype: pl.DataType, values: Sequence[str | float]) -> pl.Expr:
    """Whether each value of ``column`` (of ``dtype``) is one of ``values``; null is none of them.

    Text values compare with the column's text, both stripped of surrounding blanks (``" ?"`` is
    ``"?"``); numbers compare as numbers, with the column's numbers or its text read as a number
    (``"1.0"`` is ``1``). Booleans are the numbers 1 and 0.
    """
    texts = [value.strip() for value in values if isinstance(value, str)]
    numbers = [float(value) for value in values if not isinstance(value, str)]
    text = column.cast(pl.Utf8).str.strip_chars()
    hit = pl.lit(False)
    if texts:
        hit = hit | text.is_in(texts)
    if numbers:
        numeric = dtype.is_numeric() or dtype == pl.Boolean
        number = column.cast(pl.Float64) if numeric else text.cast(pl.Float64, strict=False)
        hit = hit | number.is_in(numbers)
    return hit.fill_null(False)


def positive_label(frame: pl.DataFrame, column: str, positive: Sequence[str | float], locator: RowLocator) -> pl.Series:
    """A label column as ``Float32``: 1.0 where the value is one of ``positive`` (see :func:`equals_any`), else 0.0.

    Raises:
        DataError: an empty label (null or blank), naming the row's place.
    """
    values = frame[column]
    empty = values.is_null() | (values.cast(pl.Utf8).str.strip_chars().str.len_bytes() == 0)
    row = first_true(empty)
    if row is not None:
        raise DataError(f"{locator.where(row)}: label column {column!r} is empty")
    hit = frame.select(equals_any(pl.col(column), values.dtype, positive)).to_series()
    return hit.cast(pl.Float32).alias(column)


def threshold_label(frame: pl.DataFrame, column: str, threshold: float | None, locator: RowLocator) -> pl.Series:
    """A numeric label column as ``Float32``: ``value >= threshold``, or values already 0/1 when ``None``.

    Raises:
        DataError: an empty, non-numeric or non-finite (``nan``, ``inf``) label, or (without
            threshold) a value other than 0 or 1.
    """
    values = parse_numeric(frame.select(column), [column], locator)[column]
    row = first_true(values.is_null() | values.is_infinite())
    if row is not None:
        original = frame[column][row]
        if original is None or (isinstance(original, str) and not original.strip()):
            raise DataError(f"{locator.where(row)}: label column {column!r} is empty")
        shown = shorten(repr(original))
        raise DataError(f"{locator.where(row)}: label column {column!r} value {shown} is not a finite number")
    if threshold is not None:
        return (values >= threshold).cast(pl.Float32).alias(column)
    row = first_true(~values.is_in([0.0, 1.0]))
    if row is not None:
        raise DataError(
            f"{locator.where(row)}: label column {column!r} value {values[row]!r} is not 0 or 1 "
            "(set label_threshold to binarise it)"
        )
    return values.cast(pl.Float32).alias(column)


def check_unique(frame: pl.DataFrame, column: str, locator: RowLocator) -> None:
    """Raise at the first repeated key of a side table (a join would duplicate rows)."""
    row = first_true(frame[column].is_duplicated() & ~frame[column].is_first_distinct())
    if row is not None:
        raise DataError(f"{locator.where(row)}: {column} {shorten(repr(frame[column][row]))} appears a second time")
