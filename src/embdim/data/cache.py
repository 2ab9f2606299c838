"""On-disk cache of prepared (encoded) datasets, written atomically and read memory-mapped.

Layout of ``cache_root/<name>-<key16>/``::

    schema.json            DatasetSchema (fields with vocab sizes, rows, skipped, meta)
    counts.npy             int64 [sum of vocab sizes]: every field's training counts, fields back to back
    encoder.json           the Encoder's parameters and columns, to encode new data the same way
    vocab.parquet          its vocabularies: per kept value its field (index) and text, in id order
    <split>/ids.npy        int32 [N, F]
    <split>/dense.npy      float32 [N, Dn]
    <split>/labels.npy     float32 [N]
    COMPLETE               JSON: cache format and the size of every file above

``key16`` is the first 16 hex digits of a SHA-256 over a canonical JSON of whatever determines the
content (each source file's resolved path, size, mtime_ns and a hash of its head and tail, see
:func:`file_fingerprint`; the reader and its options other than file paths; the preprocessing
config; see :func:`cache_key`), so touching or rewriting a source file or changing a setting gives a
new folder, while another spelling of the same file's path finds the same one.

**Atomicity.** :class:`CacheWriter` writes everything into a hidden temporary sibling
``.tmp-<name>-<key16>.<host>.<pid>.<random>``, fsyncs each file, writes ``COMPLETE`` last, fsyncs
the folder, and only then ``os.rename``\\ s it to the final name (and fsyncs ``cache_root``). The
rename is the commit point: a folder under the final name was complete when it got that name.
``COMPLETE`` is a second, cheap check that also catches folders that did not come from a rename
(a partial copy between machines, a file truncated or deleted by hand): :func:`is_complete`
requires the marker and every listed file at its recorded size, and an incomplete folder is never
loaded (:func:`prepare <embdim.data.prepare.prepare>` rebuilds it). On an exception, including
``KeyboardInterrupt``, the writer deletes its temporary folder; after a hard kill the temporary
folder stays behind, is never read (its name does not match), and :func:`clean_stale_temps` removes
it later (its process is gone, or it is older than :data:`STALE_TEMP_SECONDS`). When two processes
build the same key at once, the first rename wins and the second discards its copy.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np
import polars as pl

from embdim.data.encoder import Encoder
from embdim.data.schema import DatasetSchema
from embdim.data.split import split_warnings

CACHE_FORMAT = 2  # 2: counts and vocabularies in binary files (millions of values would not fit JSON well)
"""Bump when the layout changes; it is part of every key, so old folders are simply not found."""
KEY_LENGTH = 16
SCHEMA_FILE = "schema.json"
ENCODER_FILE = "encoder.json"
COUNTS_FILE = "counts.npy"
VOCAB_FILE = "vocab.parquet"
COMPLETE_MARKER = "COMPLETE"
IDS_FILE = "ids.npy"
DENSE_FILE = "dense.npy"
LABELS_FILE = "labels.npy"
TEMP_PREFIX = ".tmp-"
STALE_TEMP_SECONDS = 24 * 3600
"""A leftover temporary folder older than this is removed even when its owner cannot be checked."""
_TEMP_NAME_PARTS = 4  # "<prefix><final>", host, pid, random
FINGERPRINT_SAMPLE_BYTES = 1 << 20
"""Bytes hashed at each end of a source file for its fingerprint (a smaller file is hashed whole)."""


@dataclass
class SplitArrays:
    """One split's encoded arrays (memory-mapped when loaded from the cache).

    Attributes:
        ids: int32 [N, F] field ids, 0 = OOV.
        dense: float32 [N, Dn] dense features (Dn may be 0).
        labels: float32 [N] 0/1 labels.
    """

    ids: np.ndarray
    dense: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.ids.ndim != 2 or self.dense.ndim != 2 or self.labels.ndim != 1:
            raise ValueError(
                f"expected ids [N, F], dense [N, Dn], labels [N]; got {self.ids.shape}, "
                f"{self.dense.shape}, {self.labels.shape}"
            )
        if self.ids.shape[0] != n or self.dense.shape[0] != n:
            raise ValueError(f"row counts differ: ids {self.ids.shape[0]}, dense {self.dense.shape[0]}, labels {n}")

    def __len__(self) -> int:
        return len(self.labels)

    def release_pages(self) -> None:
        """Unmap the pages of this split's memory-mapped arrays from the process, once a pass over them is
        done: they stay in the page cache, so the next pass reads them with minor faults, not from disk,
        and the resident size holds one split's pages, not every split's. Arrays in memory are left as
        they are. (Within a shuffled pass it would cost too much: the kernel maps a file's pages in runs
        around each fault, so every later row read would fault again.)"""
        for array in (self.ids, self.dense, self.labels):
            mapping = getattr(array, "_mmap", None)  # np.memmap's mapping of its whole file
            if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
                mapping.madvise(mmap.MADV_DONTNEED)  # a read-only file mapping: its data is never lost


@dataclass
class PreparedData:
    """An encoded dataset: its schema and per-split arrays.

    Attributes:
        schema: fields (vocab sizes, training counts), dense names, rows, skipped, meta.
        splits: ``{"train": SplitArrays, "valid": ..., "test": ...}`` (those that exist).
        cache_dir: the cache folder it was loaded from, ``None`` when built in memory.
    """

    schema: DatasetSchema
    splits: dict[str, SplitArrays]
    cache_dir: Path | None = None
    _encoder: Encoder | None = field(default=None, repr=False)

    def __getitem__(self, split: str) -> SplitArrays:
        return self.splits[split]

    @cached_property
    def warnings(self) -> list[str]:
        """What makes metrics on this data doubtful, as sentences (JSON-able; see
        :func:`~embdim.data.split.split_warnings`). Computed from the labels, so caches written before
        this existed have them too."""
        return split_warnings({name: arrays.labels for name, arrays in self.splits.items()})

    def encoder(self) -> Encoder:
        """The fitted encoder (loaded from ``encoder.json`` in the cache folder)."""
        if self._encoder is None:
            if self.cache_dir is None:
                raise ValueError("this PreparedData was built in memory and has no encoder state")
            self._encoder = read_encoder(self.cache_dir, self.schema)
        return self._encoder


# ---------------------------------------------------------------------- keys
def file_fingerprint(path: str | Path) -> dict:
    """``{"path", "size", "mtime_ns", "sample_sha256"}`` of a source file; raises if it does not exist.

    ``path`` is the resolved absolute path (``~``, ``..``, symlinks and a relative data root all
    resolved), so every spelling of one file gives one fingerprint. ``sample_sha256`` hashes the
    file's first and last :data:`FINGERPRINT_SAMPLE_BYTES` (all of a smaller file): a file rewritten
    in place with its size and mtime kept (a copy with ``cp -p``, a restored timestamp) still changes
    the fingerprint where its head or tail changed, and the cost does not grow with the file.

    The path stays in the fingerprint, so a copy of the file elsewhere is prepared again. Dropping it
    would let a copy share the cache, but then two different files of equal size and mtime would be
    told apart by a sample of their bytes alone; a wrong hit silently trains on other data, a miss only
    costs one prepare. ``sample_sha256`` is ``None`` for what is not a regular file (a folder) or cannot
    be read: the reader reports that in its own words, and no readable file has that fingerprint.
    """
    p = Path(path).expanduser().resolve()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"source file not found: {p}") from None
    sample: str | None = None
    if stat.S_ISREG(st.st_mode):  # not a FIFO or device: opening one could block, reading it consumes it
        try:
            with open(p, "rb") as fh:
                st = os.fstat(fh.fileno())  # size and mtime of the file the sample comes from
                sample = _sample_sha256(fh, st.st_size)
        except OSError:
            sample = None
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sample_sha256": sample}


def _sample_sha256(fh: BinaryIO, size: int) -> str:
    """SHA-256 of the first and last :data:`FINGERPRINT_SAMPLE_BYTES` of an open file of ``size`` bytes."""
    h = hashlib.sha256()
    if size <= 2 * FINGERPRINT_SAMPLE_BYTES:
        h.update(fh.read())
    else:
        h.update(fh.read(FINGERPRINT_SAMPLE_BYTES))
        fh.seek(size - FINGERPRINT_SAMPLE_BYTES)
        h.update(fh.read(FINGERPRINT_SAMPLE_BYTES))
    return h.hexdigest()


def cache_key(payload: dict) -> str:
    """First :data:`KEY_LENGTH` hex digits of SHA-256 over canonical JSON of ``payload`` + format."""
    text = json.dumps({"cache_format": CACHE_FORMAT, **payload}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def cache_dir_for(cache_root: str | Path, name: str, key: str) -> Path:
    """``cache_root/<name>-<key>``."""
    return Path(cache_root) / f"{name}-{key}"


# ---------------------------------------------------------------------- reading
def is_complete(path: str | Path) -> bool:
    """True when ``path`` holds a finished cache: marker present, right format, every file at its size."""
    path = Path(path)
    try:
        marker = json.loads((path / COMPLETE_MARKER).read_text())
        if marker.get("cache_format") != CACHE_FORMAT:
            return False
        return all((path / rel).stat().st_size == size for rel, size in marker["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def load_prepared(path: str | Path) -> PreparedData:
    """Open a complete cache folder; arrays come back as read-only ``np.memmap``."""
    path = Path(path)
    if not is_complete(path):
        raise FileNotFoundError(f"no complete cache at {path}")
    schema = read_schema(path)
    splits = {
        name: SplitArrays(
            ids=np.load(path / name / IDS_FILE, mmap_mode="r"),
            dense=np.load(path / name / DENSE_FILE, mmap_mode="r"),
            labels=np.load(path / name / LABELS_FILE, mmap_mode="r"),
        )
        for name in schema.rows
    }
    return PreparedData(schema=schema, splits=splits, cache_dir=path)


# ---------------------------------------------------------------------- writing
def read_schema(folder: Path) -> DatasetSchema:
    """``schema.json`` with each field's training counts from ``counts.npy`` (memory-mapped)."""
    data = json.loads((folder / SCHEMA_FILE).read_text())
    counts = np.load(folder / COUNTS_FILE, mmap_mode="r")
    start = 0
    for f in data["fields"]:
        f["counts"] = counts[start : start + f["vocab_size"]]
        start += f["vocab_size"]
    return DatasetSchema.from_dict(data)


def read_encoder(folder: Path, schema: DatasetSchema) -> Encoder:
    """The fitted encoder of a cache folder (its counts are the schema's)."""
    state = json.loads((folder / ENCODER_FILE).read_text())
    vocab = pl.read_parquet(folder / VOCAB_FILE)
    values = vocab.get_column("value")
    bounds = np.searchsorted(vocab.get_column("field").to_numpy(), np.arange(len(schema.fields) + 1))
    state["fields"] = [
        {"name": f.name, "values": values[int(a) : int(b)], "counts": f.counts}
        for f, a, b in zip(schema.fields, bounds[:-1], bounds[1:], strict=True)
    ]
    return Encoder.from_dict(state)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _host() -> str:
    return socket.gethostname().replace(".", "_") or "host"


class ArrayAppender:
    """A ``.npy`` file of a known shape written front to back, rows appended in order.

    Plain writes, not a memory map: the pages written go to the page cache without being mapped
    into the process, so a prepare's resident memory does not grow with the cache it writes.
    """

    def __init__(self, path: Path, dtype: np.dtype | type, shape: tuple[int, ...]) -> None:
        self.path, self.dtype, self.shape = path, np.dtype(dtype), tuple(shape)
        self.rows = 0
        self._fh = open(path, "wb")  # noqa: SIM115  (closed by close())
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(self._fh, header)

    def append(self, rows: np.ndarray) -> None:
        """Write ``rows`` [k, *shape[1:]] after those already written."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.shape[1:] or self.rows + len(rows) > self.shape[0]:
            raise ValueError(f"{self.path.name}: rows of shape {rows.shape} do not fit {self.shape} after {self.rows}")
        self._fh.write(rows.data)
        self.rows += len(rows)

    def close(self) -> None:
        """Flush and fsync; the file must hold every row its header promises."""
        if self.rows != self.shape[0]:
            raise ValueError(f"{self.path.name}: {self.rows} of {self.shape[0]} rows written")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()


class CacheWriter:
    """Writes one cache folder atomically; use as a context manager.

    ::

        with CacheWriter(final_dir) as w:
            w.write_split("train", arrays)      # as each split is ready (frees memory early)
            w.write_json(ENCODER_FILE, encoder.to_dict())
            w.write_json(SCHEMA_FILE, schema.to_dict())
        # leaving the block without an exception commits (rename); with one, the temp folder is deleted

    After a commit, ``final_dir`` holds a complete cache (``committed`` is True). If another process
    committed the same folder first, its copy is kept and ours is discarded.
    """

    def __init__(self, final_dir: str | Path) -> None:
        self.final_dir = Path(final_dir)
        self.tmp_dir: Path | None = None
        self.committed = False
        self._files: dict[str, int] = {}

    def __enter__(self) -> CacheWriter:
        root = self.final_dir.parent
        root.mkdir(parents=True, exist_ok=True)
        prefix = f"{TEMP_PREFIX}{self.final_dir.name}.{_host()}.{os.getpid()}."
        self.tmp_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None and not self.committed and self.tmp_dir is not None:  # not aborted
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        elif exc_type is not None:
            self.abort()

    def _require_open(self) -> Path:
        if self.tmp_dir is None or self.committed:
            raise RuntimeError("CacheWriter is not open (use it as a context manager, before commit)")
        return self.tmp_dir

    def _write_bytes_file(self, rel: str, write: Callable[[BinaryIO], object]) -> None:
        target = self._require_open() / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        self._files[rel] = target.stat().st_size

    def write_array(self, rel: str, array: np.ndarray) -> None:
        """Save one ``.npy`` file at ``rel`` (relative to the cache folder)."""
        self._write_bytes_file(rel, lambda fh: np.save(fh, np.ascontiguousarray(array), allow_pickle=False))

    def write_split(self, name: str, arrays: SplitArrays) -> None:
        """``<name>/ids.npy`` int32, ``<name>/dense.npy`` float32, ``<name>/labels.npy`` float32."""
        self.write_array(f"{name}/{IDS_FILE}", arrays.ids.astype(np.int32, copy=False))
        self.write_array(f"{name}/{DENSE_FILE}", arrays.dense.astype(np.float32, copy=False))
        self.write_array(f"{name}/{LABELS_FILE}", arrays.labels.astype(np.float32, copy=False))
        _fsync_dir(self._require_open() / name)

    def write_json(self, rel: str, obj: object) -> None:
        """Write a JSON file at ``rel``."""
        self._write_bytes_file(rel, lambda fh: fh.write(json.dumps(obj).encode()))

    def write_schema(self, schema: DatasetSchema) -> None:
        """``schema.json`` without the counts, which go to ``counts.npy``."""
        data = schema.to_dict(counts=False)
        counts = [f.counts if f.counts is not None else np.zeros(f.vocab_size, np.int64) for f in schema.fields]
        self.write_array(COUNTS_FILE, np.concatenate(counts).astype(np.int64) if counts else np.zeros(0, np.int64))
        self.write_json(SCHEMA_FILE, data)

    def write_encoder(self, encoder: Encoder) -> None:
        """``encoder.json`` (parameters, columns, field names) and ``vocab.parquet`` (field index, value)."""
        state = encoder.state(values=False)
        fields = [encoder.vocab_[name].values for name in encoder.field_names_]
        field_index = np.repeat(np.arange(len(fields), dtype=np.int32), [len(v) for v in fields])
        vocab = pl.DataFrame(
            {"field": field_index, "value": pl.concat(fields) if fields else pl.Series([], dtype=pl.Utf8)}
        )
        self._write_bytes_file(VOCAB_FILE, lambda fh: vocab.write_parquet(fh))
        self.write_json(ENCODER_FILE, state)

    def open_array(self, rel: str, dtype: np.dtype | type, shape: tuple[int, ...]) -> ArrayAppender:
        """A pre-sized ``.npy`` file at ``rel``, filled front to back by :meth:`ArrayAppender.append`;
        :meth:`close_array` records it."""
        target = self._require_open() / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        return ArrayAppender(target, dtype, shape)

    def close_array(self, rel: str, array: ArrayAppender) -> None:
        """Check that an array from :meth:`open_array` is full, fsync it, and list it in ``COMPLETE``."""
        array.close()
        self._files[rel] = (self._require_open() / rel).stat().st_size

    def scratch(self, name: str) -> Path:
        """A path inside the temporary folder for working files (remove them before the commit)."""
        return self._require_open() / name

    def commit(self) -> Path:
        """Write ``COMPLETE``, fsync, rename the temporary folder to ``final_dir``; returns ``final_dir``."""
        tmp = self._require_open()
        if SCHEMA_FILE not in self._files:
            raise RuntimeError(f"refusing to commit a cache without {SCHEMA_FILE}")
        marker = json.dumps({"cache_format": CACHE_FORMAT, "files": self._files}).encode()
        with open(tmp / COMPLETE_MARKER, "wb") as fh:
            fh.write(marker)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        try:
            os.rename(tmp, self.final_dir)
        except OSError:
            if is_complete(self.final_dir):  # another process committed the same key first
                shutil.rmtree(tmp, ignore_errors=True)
            else:  # an incomplete folder under the final name: move it aside, then take its place
                trash = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{self.final_dir.name}.trash.", dir=tmp.parent))
                os.rename(self.final_dir, trash / "old")
                os.rename(tmp, self.final_dir)
                shutil.rmtree(trash, ignore_errors=True)
        _fsync_dir(self.final_dir.parent)
        self.committed = True
        self.tmp_dir = None
        return self.final_dir

    def abort(self) -> None:
        """Delete the temporary folder (nothing under the final name is touched)."""
        if self.tmp_dir is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.tmp_dir = None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(cache_root: str | Path, max_age_s: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Remove leftover temporary folders under ``cache_root``; returns the removed paths.

    A temporary folder is stale when it was made on this host by a process that no longer runs, or
    when it is older than ``max_age_s`` (owners on other hosts cannot be checked). Folders of live
    writers are left alone.
    """
    root = Path(cache_root)
    if not root.is_dir():
        return []
    removed = []
    now = time.time()
    for p in root.iterdir():
        if not (p.name.startswith(TEMP_PREFIX) and p.is_dir()):
            continue
        parts = p.name.rsplit(".", _TEMP_NAME_PARTS - 1)
        owner_gone = False
        if len(parts) == _TEMP_NAME_PARTS and parts[1] == _host() and parts[2].isdigit():
            owner_gone = not _pid_alive(int(parts[2]))
        try:
            too_old = now - p.stat().st_mtime > max_age_s
        except FileNotFoundError:
            continue
        if owner_gone or too_old:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed
