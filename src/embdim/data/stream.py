"""Streaming prepare: sources read in bounded chunks, in memory that does not grow with the rows.

It writes the same cache as :func:`embdim.data.prepare.prepare` reads from memory (same splits,
vocabularies, ids, dense values and labels), in up to three passes over the sources:

0. **Count** (only for a pool split at random, or a valid share carved from the train file): the
   rows of each source, by counting lines, so that :func:`~embdim.data.split.split_indices` assigns
   each row to its split exactly as in memory.
1. **Read**: each chunk is parsed and checked by its reader; labels and dense features go straight
   into the cache's pre-sized memory-mapped arrays at their rows' places; every id field's value
   becomes a 64-bit key (a hash of its text) in a scratch file; training rows' keys are counted,
   with one text per key (two texts with one key, a hash collision, are an error).
2. **Encode**: the vocabularies follow from the counts (min count, frequency order, OOV: the
   encoder's rules), and the scratch keys become ids by a sorted search, a block of rows at a time.

Memory holds one chunk, the counted keys of the training split (one entry per distinct value), and
a block of keys; every array is written front to back by plain writes (the page cache holds
what the disk has not yet taken; none of it is mapped into the process).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from embdim.ahead import Ahead
from embdim.data.cache import DENSE_FILE, IDS_FILE, LABELS_FILE, ArrayAppender, CacheWriter
from embdim.data.encoder import Encoder
from embdim.data.raw import LABEL, DataError
from embdim.data.readers.base import ChunkedData, ChunkedSource
from embdim.data.split import POOL, SPLIT_NAMES, check_split_names, require_rows, split_indices

DEFAULT_CHUNK_ROWS = 1 << 18
"""Rows per chunk: a chunk's frame (tens of string columns) is, with the counts, what a pass holds."""
ENCODE_BLOCK_ROWS = 1 << 20
"""Rows of scratch keys turned into ids at once."""
MERGE_MIN_ROWS = 1 << 18
"""A field's partial counts are merged into its running total once they hold as many rows as the
total, and at least this many: memory stays within about twice the distinct values, and each
value is merged a logarithmic number of times."""
CACHED_KEYS = 1 << 10
"""Vocabularies of up to this many keys are searched without sorting the queries (see _encode)."""
KEY_SEED = 0
_KEY, _VALUE, _COUNT, _TEXTS, _ROWS = "key", "value", "count", "texts", "in_rows"
KEYS_FILE = "keys.npy"  # scratch, per split: uint64 [N, F]


class _Counter:
    """Training counts of one id field's values, by key, merged as they grow."""

    def __init__(self) -> None:
        self.parts: list[pl.DataFrame] = []  # the running total (if any) first, then chunks' counts
        self.total_rows = 0  # rows of the running total
        self.rows = 0  # rows of the chunks' counts since

    def add(self, part: pl.DataFrame) -> None:
        """Takes one chunk's counts (a frame of :func:`_counting`)."""
        self.parts.append(part)
        self.rows += part.height
        if self.rows >= max(MERGE_MIN_ROWS, self.total_rows) and len(self.parts) > 1:
            self.parts = [self._merged()]
            self.total_rows, self.rows = self.parts[0].height, 0

    def _merged(self) -> pl.DataFrame:
        merged = (
            pl.concat(self.parts)
            .group_by(_KEY)
            .agg(pl.col(_VALUE).first(), pl.col(_COUNT).sum(), (pl.col(_TEXTS).max() + pl.col(_VALUE).n_unique() - 1))
        )
        return merged

    def result(self, field: str) -> pl.DataFrame:
        """``key``, ``value``, ``count`` of every value seen; a hash collision is an error."""
        merged = (
            self._merged()
            if self.parts
            else pl.DataFrame(
                {_KEY: [], _VALUE: [], _COUNT: [], _TEXTS: []},
                schema={_KEY: pl.UInt64, _VALUE: pl.Utf8, _COUNT: pl.UInt32, _TEXTS: pl.UInt32},
            )
        )
        clash = merged.filter(pl.col(_TEXTS) > 1)
        if clash.height:
            raise DataError(
                f"field {field!r}: two values share one 64-bit key ({clash[_VALUE][0]!r} and another); "
                "prepare this dataset in memory (prepare(..., streaming=False))"
            )
        return merged.drop(_TEXTS)


def _plan_rows(
    chunked: ChunkedData, ratios: Sequence[float], seed: int, valid_ratio: float
) -> tuple[list[np.ndarray | str], dict[str, int], dict[str, int]]:
    """Per source, the split of each row (an int8 index into SPLIT_NAMES) or its one split's name; the
    rows of every split, in SPLIT_NAMES order, as the in-memory split would make them; and the rows of
    each source's split."""
    sources = chunked.sources
    names = {s.split for s in sources}
    given = {s.split: s.count_rows() for s in sources}
    if names == {POOL}:
        n = given[POOL]
        parts = split_indices(n, ratios, seed)
        return [_assignment_array(parts, n)], {name: len(idx) for name, idx in parts.items()}, given
    carve = "valid" not in names and valid_ratio > 0
    assignments: list[np.ndarray | str] = []
    sizes = dict.fromkeys(SPLIT_NAMES, 0)
    for source in sources:
        n = given[source.split]
        if carve and source.split == "train":
            parts = split_indices(n, (1 - valid_ratio, valid_ratio, 0.0), seed)
            assignments.append(_assignment_array(parts, n))
            for name, idx in parts.items():
                sizes[name] += len(idx)
        else:
            assignments.append(source.split)
            sizes[source.split] += n
    present = names | ({"valid"} if carve else set())
    return assignments, {name: sizes[name] for name in SPLIT_NAMES if name in present}, given


def _assignment_array(parts: dict[str, np.ndarray], n: int) -> np.ndarray:
    out = np.empty(n, dtype=np.int8)
    for name, idx in parts.items():
        out[idx] = SPLIT_NAMES.index(name)
    return out


def _rows_by_split(where: np.ndarray | str, height: int) -> dict[str, np.ndarray]:
    """The chunk's row positions of each split it holds."""
    if isinstance(where, str):
        return {where: np.arange(height)}
    return {name: rows for k, name in enumerate(SPLIT_NAMES) if len(rows := np.flatnonzero(where == k))}


def _chunks(source: ChunkedSource, assignment: np.ndarray | str) -> Iterator[tuple[pl.DataFrame, np.ndarray | str]]:
    """The source's frames with their rows' splits; checks that the rows are the counted ones."""
    start = 0
    for frame in source.chunks():
        bad = ~pl.col(LABEL).cast(pl.Float32).is_in([0.0, 1.0]).fill_null(False)
        if frame.select(bad.any()).item():
            raise DataError("a streamed source gave a row without a 0/1 label; its reader should have refused it")
        if isinstance(assignment, str):
            yield frame, assignment
        else:
            yield frame, assignment[start : start + frame.height]
        start += frame.height
    if not isinstance(assignment, str) and start != len(assignment):
        raise DataError(f"the source gave {start:,} rows where its lines counted {len(assignment):,}")


def prepare_streaming(
    chunked: ChunkedData,
    encoder: Encoder,
    writer: CacheWriter,
    split: tuple[Sequence[float], int, float],
    files: Mapping[str, str],
    progress: bool = True,
) -> tuple[Encoder, dict[str, int]]:
    """Read, split, count and encode ``chunked`` into the open ``writer`` (see the module docstring).

    Returns the fitted ``encoder`` and the rows of each split; the caller writes schema and encoder.
    """
    ratios, seed, valid_ratio = split
    check_split_names({source.split for source in chunked.sources})
    assignments, sizes, given = _plan_rows(chunked, ratios, seed, valid_ratio)
    require_rows(sizes, given, ratios, valid_ratio, files)
    fields = encoder.id_fields(chunked.categorical, chunked.numeric)
    dense_names = list(chunked.numeric) if encoder.keeps_dense else []
    labels = {s: writer.open_array(f"{s}/{LABELS_FILE}", np.float32, (n,)) for s, n in sizes.items()}
    dense = {s: writer.open_array(f"{s}/{DENSE_FILE}", np.float32, (n, len(dense_names))) for s, n in sizes.items()}
    keys = {s: writer.open_array(f"{s}.{KEYS_FILE}", np.uint64, (n, len(fields))) for s, n in sizes.items()}
    counters = {name: _Counter() for name, _ in fields}
    total = sum(sizes.values())
    with tqdm(total=total, desc="read", unit="row", unit_scale=True, disable=not progress) as bar:
        for source, assignment in zip(chunked.sources, assignments, strict=True):
            # the next chunk is parsed (polars, without the GIL) while this one is counted
            with Ahead(_chunks(source, assignment), depth=1, name="embdim-parse") as parsed:
                for frame, where in parsed:
                    _read_chunk(frame, where, encoder, fields, dense_names, labels, dense, keys, counters)
                    bar.update(frame.height)
    kept, lookups = {}, []
    for name, _ in fields:  # one field's counts at a time: only its sorted keys and ids stay
        counted = counters.pop(name).result(name)
        kept[name] = encoder.kept_values(counted.select(_VALUE, _COUNT))
        lookups.append(_key_to_id(counted, kept[name]))
        del counted
    encoder.set_vocabulary(chunked.categorical, chunked.numeric, kept, sizes["train"])
    for split in sizes:
        writer.close_array(f"{split}/{LABELS_FILE}", labels[split])
        writer.close_array(f"{split}/{DENSE_FILE}", dense[split])
        keys[split].close()
    with (
        tqdm(total=total, desc="encode", unit="row", unit_scale=True, disable=not progress) as bar,
        ThreadPoolExecutor(max(1, min(len(fields), pl.thread_pool_size()))) as pool,
    ):
        for split, n in sizes.items():
            ids = writer.open_array(f"{split}/{IDS_FILE}", np.int32, (n, len(fields)))
            scratch = Path(writer.scratch(f"{split}.{KEYS_FILE}"))
            for block in _blocks(scratch, ENCODE_BLOCK_ROWS):
                out = np.empty((len(block), len(fields)), dtype=np.int32)
                # one field per task: numpy's sort and search release the GIL, so fields run in parallel
                tasks = [pool.submit(_encode, block[:, j], *lookup, out[:, j]) for j, lookup in enumerate(lookups)]
                for task in tasks:
                    task.result()
                ids.append(out)
                bar.update(len(block))
            writer.close_array(f"{split}/{IDS_FILE}", ids)
            scratch.unlink()
    return encoder, sizes


def _read_chunk(
    frame: pl.DataFrame,
    where: np.ndarray | str,
    encoder: Encoder,
    fields: Sequence[tuple[str, bool]],
    dense_names: Sequence[str],
    labels: Mapping[str, ArrayAppender],
    dense: Mapping[str, ArrayAppender],
    keys: Mapping[str, ArrayAppender],
    counters: Mapping[str, _Counter],
) -> None:
    """Pass 1 over one chunk: labels, dense features and keys appended to their splits' arrays, the
    training rows' keys counted (every field's counting query at once, run in parallel by polars)."""
    chunk_dense = encoder.dense_features(frame, dense_names)
    chunk_labels = frame.get_column(LABEL).cast(pl.Float32).to_numpy()
    values = encoder.field_values(frame, fields)
    hashed = values.select(pl.all().hash(seed=KEY_SEED))
    chunk_keys = hashed.to_numpy() if fields else np.empty((frame.height, 0), dtype=np.uint64)
    for split, rows in _rows_by_split(where, frame.height).items():
        labels[split].append(chunk_labels[rows])  # a split's rows come in source order
        dense[split].append(chunk_dense[rows])
        keys[split].append(chunk_keys[rows])
        if split == "train" and fields:
            counted = None if len(rows) == frame.height else np.zeros(frame.height, dtype=bool)
            if counted is not None:
                counted[rows] = True
            for (name, _), part in zip(fields, pl.collect_all(_counting(hashed, values, counted)), strict=True):
                counters[name].add(part)


def _counting(keys: pl.DataFrame, values: pl.DataFrame, rows: np.ndarray | None) -> list[pl.LazyFrame]:
    """Per field, the query that counts its ``keys`` (UInt64 column) with their ``values`` (Utf8, the
    column at the same position) over the ``rows`` (a mask [N]; None: all): columns ``key``, ``value``,
    ``count``, ``texts`` (distinct texts). Each query filters only its own two columns."""
    # columns named by position, so that no field's name can clash with another column
    both = pl.DataFrame(
        [*(c.rename(f"k{j}") for j, c in enumerate(keys)), *(c.rename(f"v{j}") for j, c in enumerate(values))]
    ).lazy()
    if rows is not None:
        both = both.with_columns(pl.Series(_ROWS, rows))
    return [
        (both if rows is None else both.filter(pl.col(_ROWS)))
        .group_by(pl.col(f"k{j}").alias(_KEY))
        .agg(pl.col(f"v{j}").first().alias(_VALUE), pl.len().alias(_COUNT), pl.col(f"v{j}").n_unique().alias(_TEXTS))
        for j in range(values.width)
    ]


def _blocks(path: Path, rows: int) -> Iterator[np.ndarray]:
    """A ``.npy`` file's rows, ``rows`` at a time, by plain reads (no memory map: see
    :class:`~embdim.data.cache.ArrayAppender`)."""
    with open(path, "rb") as fh:
        np.lib.format.read_magic(fh)
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        width = int(np.prod(shape[1:], dtype=np.int64))
        for start in range(0, shape[0], rows):
            count = min(rows, shape[0] - start)
            yield np.fromfile(fh, dtype=dtype, count=count * width).reshape(count, *shape[1:])


def _key_to_id(counted: pl.DataFrame, kept: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Every counted key sorted, with its id (kept values 1.. in id order; the rest 0, OOV)."""
    ids = kept.with_columns(pl.int_range(1, kept.height + 1, dtype=pl.Int32).alias("id"))
    table = counted.join(ids.select(_VALUE, "id"), on=_VALUE, how="left").sort(_KEY)
    return table.get_column(_KEY).to_numpy(), table.get_column("id").fill_null(0).to_numpy().astype(np.int32)


def _encode(keys: np.ndarray, sorted_keys: np.ndarray, sorted_ids: np.ndarray, out: np.ndarray) -> None:
    """Writes the ids of ``keys`` [N] into ``out`` [N] (int32) by a sorted search; keys never seen in
    training are 0 (OOV). Into a large vocabulary the queries are ordered first, so that the search
    runs through it front to back instead of missing the cache at every step; a small one stays in
    the cache, and ordering the queries would cost more than it saves."""
    if not len(sorted_keys):
        out[:] = 0
        return
    if len(sorted_keys) <= CACHED_KEYS:
        pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
        out[:] = np.where(sorted_keys[pos] == keys, sorted_ids[pos], 0)
        return
    # Sorting the keys with their row numbers in the low bits orders them by their high bits: near
    # enough to sorted for the search to run front to back, and a plain sort is much faster than argsort.
    bits = max(1, (len(keys) - 1).bit_length())
    low = np.uint64((1 << bits) - 1)
    order = (np.sort((keys & ~low) | np.arange(len(keys), dtype=np.uint64)) & low).astype(np.intp)
    queries = keys[order]
    pos = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
    out[order] = np.where(sorted_keys[pos] == queries, sorted_ids[pos], 0)
