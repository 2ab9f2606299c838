"""Storage kinds: how a plan's kept values are laid out, and the byte rules of each layout.

Each kind is one class registered by name in :data:`STORAGE_KINDS`, which
:class:`~embdim.plan.EmbeddingPlan` delegates to and whose names the slim groups (:mod:`embdim.slim`)
share:

- ``dense``: field f stores an ``n_f x d_f`` table (full, MDE, DML after the cut, MLET collapsed);
- ``ragged``: row i of field f stores its first ``k_i`` values (AMTL), plus an index: one offset
  per row, or, when rows of equal size come in long runs (AMTL's sizes follow frequency and ids are
  numbered by frequency), one entry per run (:func:`ragged_index`);
- ``csr``: row i stores ``nnz_i`` values at arbitrary columns (PEP), plus column indices and offsets;
- ``compact``: the values of ``csr`` (PEP at high sparsity) indexed by their stored rows (an id byte and
  a column bitmap each), so that a row storing nothing costs almost nothing (:class:`CompactStorage`);
- ``hashed``: field f's ids share ``m_f`` full-width rows through a seeded universal hash (the hashing
  trick), plus the hash's two parameters per field (:data:`HASH_PARAM_DTYPE`);
- ``qr``: field f stores a quotient table ``[ceil(n_f / c_f), d]`` and a remainder table ``[c_f, d]``
  whose rows an id combines (quotient-remainder embeddings); no index.

The last two record per field a bucket count (``plan.buckets``: ``m_f``, ``c_f``); a field whose count
is its vocabulary keeps a plain ``n_f x d`` table.

Rows that store nothing are features dropped entirely; they embed to zeros. The dtypes of every
stored array (values, offsets, sizes, column indices) are chosen here and nowhere else, so the
bytes a plan reports are the bytes its slim model writes.

Orthogonal to the kind, a plan's ``precision`` says how each kept value is stored
(:data:`VALUE_PRECISIONS`): ``fp32`` (what training produces), ``fp16``, or ``int8`` row-wise: one
unsigned byte per value and, per row, a float16 ``scale`` and ``bias`` (value = code * scale + bias),
the layout of fbgemm's quantised tables. A dense table's every row gets its scale and bias, found by
row; of per-row sizes (``ragged``, ``csr``, ``compact``) only the rows that store values do, in row
order, found by their rank among them (for ``ragged``'s runs: per run; for one offset per row: a rank
per row held in memory, never saved). A row storing nothing costs nothing in any precision, so int8
stays the smaller where most rows are dropped (AMTL at low budgets, PEP).

A new kind (a hashed table, say) is one subclass here plus its slim group::

    class HalfStorage(DenseStorage):
        name = "half"

        def value_bytes(self, plan):
            return 2
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Literal, Protocol

import numpy as np

#: Every trained embedding value (and every projection weight) is float32.
VALUE_DTYPE = np.dtype(np.float32)
FLOAT_BYTES = VALUE_DTYPE.itemsize
#: Sizes of the index, counter and float64 arrays that methods and the trainer hold (memory accounting).
INT32_BYTES = np.dtype(np.int32).itemsize
INT64_BYTES = np.dtype(np.int64).itemsize
FLOAT64_BYTES = np.dtype(np.float64).itemsize

#: How a plan's kept values are stored, by its ``precision``.
VALUE_PRECISIONS: dict[str, np.dtype] = {
    "fp32": VALUE_DTYPE,
    "fp16": np.dtype(np.float16),
    "int8": np.dtype(np.uint8),
}
ROW_WISE = "int8"
"""The precision whose rows carry their own scale and bias."""
ROW_PARAM_DTYPE = np.dtype(np.float16)
"""Dtype of an int8 row's scale and of its bias."""


def row_param_bytes(precision: str) -> int:
    """Bytes a stored row costs besides its values: int8's scale and bias, nothing otherwise."""
    return 2 * ROW_PARAM_DTYPE.itemsize if precision == ROW_WISE else 0


HASH_PRIME = 2**31 - 1
"""The prime ``p`` of the hashed kind's hash ``((a * id + b) mod p)``: the Mersenne prime that is int32's
largest value, so above every id (an id is below its vocabulary size, itself an int32), and small enough
that ``a * id + b`` (``a, b < p``) stays exact in int64 arithmetic."""
HASH_PARAM_DTYPE = np.dtype(np.int32)
"""Dtype of a hashed field's stored ``a`` and ``b`` (both below :data:`HASH_PRIME`)."""
MIN_BUCKETS = 2
"""The fewest buckets a hashed or quotient-remainder field may have (fewer never saves a row)."""

INT32_MAX = np.iinfo(np.int32).max
ID_BLOCK_ROWS = 256
"""Rows per block of the ``compact`` kind's row ids: a stored row saves its id's low byte (:data:`ID_LOW_DTYPE`),
and each block of rows a count of the stored rows before it."""
ID_LOW_DTYPE = np.dtype(np.uint8)

STORAGE_KINDS: dict[str, StorageKind] = {}

RaggedIndex = Literal["rows", "runs"]


# ---------------------------------------------------------------------- index dtypes
def offset_dtype(total: int) -> np.dtype:
    """Dtype of offsets into ``total`` entries: int32 while they fit, else int64."""
    return np.dtype(np.int32 if total <= INT32_MAX else np.int64)


def offset_bytes(total: np.ndarray | int) -> np.ndarray:
    """:func:`offset_dtype`'s itemsize for each of ``total`` (an int or an int array, elementwise)."""
    return np.where(np.asarray(total) <= INT32_MAX, np.dtype(np.int32).itemsize, np.dtype(np.int64).itemsize)


def size_dtype(dim: int) -> np.dtype:
    """Dtype of a stored row size in ``[0, dim]``: uint8 up to 255, else int16."""
    return np.dtype(np.uint8 if dim <= np.iinfo(np.uint8).max else np.int16)


def column_dtype(dim: int) -> np.dtype:
    """Dtype of a column index in ``[0, dim)``: uint8 up to 256 columns, else int16."""
    return np.dtype(np.uint8 if dim - 1 <= np.iinfo(np.uint8).max else np.int16)


def bitmap_bytes(dim: int) -> int:
    """Bytes of one row's column bitmap: a bit per column, ``ceil(dim / 8)``."""
    return -(-dim // 8)


def field_bounds(vocab_sizes: Sequence[int]) -> np.ndarray:
    """Where each field's rows start when fields are stored back to back, int64 ``[F + 1]``
    (field f owns rows ``bounds[f] : bounds[f + 1]``)."""
    return np.concatenate([[0], np.cumsum(np.asarray(vocab_sizes, dtype=np.int64))]).astype(np.int64)


def equal_size_runs(row_sizes: list[np.ndarray]) -> int:
    """Runs of consecutive rows with the same size, split at field boundaries."""
    return sum(int(np.count_nonzero(np.diff(r))) + 1 for r in row_sizes if len(r))


def ragged_index(num_rows: int, num_values: int, num_runs: int, dim: int) -> tuple[RaggedIndex, int]:
    """The smaller index of a ragged table, and its bytes (closing entries included).

    ``rows``: offsets ``[num_rows + 1]``. ``runs``: per run of equal-size rows its first row
    ``[num_runs + 1]``, first value ``[num_runs + 1]`` and row size ``[num_runs]``; row ``i`` of run
    ``r`` starts at ``first_value[r] + (i - first_row[r]) * size[r]``.
    """
    per_row = (num_rows + 1) * offset_dtype(num_values).itemsize
    closing = offset_dtype(num_rows).itemsize + offset_dtype(num_values).itemsize
    per_run = (num_runs + 1) * closing + num_runs * size_dtype(dim).itemsize
    return ("runs", per_run) if per_run < per_row else ("rows", per_row)


# ---------------------------------------------------------------------- kinds
class Sizes(Protocol):
    """What a storage kind reads of a plan (:class:`~embdim.plan.EmbeddingPlan` is one)."""

    field_names: list[str]
    vocab_sizes: list[int]
    dim: int
    field_dims: list[int]
    row_sizes: list[np.ndarray] | None
    buckets: list[int] | None
    precision: str

    @property
    def num_fields(self) -> int: ...


class StorageKind(ABC):
    """One layout of kept values: which sizes it records, and what they cost.

    Subclasses set :attr:`name` (registered on definition; a shared base without its own name is not)
    and :attr:`per_row`.
    """

    name: ClassVar[str]
    #: sizes are decided per row (``plan.row_sizes``), not per field (``plan.field_dims``)
    per_row: ClassVar[bool]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in vars(cls):
            STORAGE_KINDS[cls.name] = cls()

    def checked_buckets(self, plan: Sizes) -> list[int] | None:
        """``plan.buckets`` as ints, or ``ValueError`` when they do not fit this kind (only the kinds whose
        ids share rows record them)."""
        if plan.buckets is not None:
            raise ValueError(f"{self.name} storage has no buckets")
        return None

    def checked_rows(self, plan: Sizes) -> list[np.ndarray] | None:
        """``plan.row_sizes`` as int64 arrays, or ``ValueError`` when they do not fit this kind."""
        F = plan.num_fields
        if not self.per_row:
            if plan.row_sizes is not None:
                raise ValueError(f"{self.name} storage has no per-row sizes")
            return None
        if plan.row_sizes is None or len(plan.row_sizes) != F:
            raise ValueError(f"{self.name} storage needs row_sizes for each of the {F} fields")
        rows = [np.asarray(r, dtype=np.int64) for r in plan.row_sizes]
        for name, n, r in zip(plan.field_names, plan.vocab_sizes, rows, strict=True):
            if r.shape != (n,) or r.min(initial=0) < 0 or r.max(initial=0) > plan.dim:
                raise ValueError(f"field {name!r}: row sizes must be {n} values in [0, {plan.dim}]")
        return rows

    def field_params(self, plan: Sizes) -> list[int]:
        """Stored embedding values per field (table entries only)."""
        if not self.per_row:
            return [n * d for n, d in zip(plan.vocab_sizes, plan.field_dims, strict=True)]
        return [int(r.sum()) for r in plan.row_sizes]

    def dropped_features(self, plan: Sizes) -> list[int]:
        """Per field, how many rows store nothing (features pruned away entirely)."""
        if not self.per_row:
            return [n if d == 0 else 0 for n, d in zip(plan.vocab_sizes, plan.field_dims, strict=True)]
        return [int((r == 0).sum()) for r in plan.row_sizes]

    @abstractmethod
    def index_bytes(self, plan: Sizes) -> tuple[list[int], int]:
        """The row index: each field's share of its bytes, and the closing entries' bytes (shared
        by all fields, counted once)."""

    def value_bytes(self, plan: Sizes) -> int:
        """Bytes of one stored value in the plan's precision (with its column index where the layout keeps one)."""
        return VALUE_PRECISIONS[plan.precision].itemsize

    def stored_rows(self, plan: Sizes) -> list[int]:
        """Per field, the rows its storage holds (every row; a dense field cut to width 0 holds none)."""
        if self.per_row:
            return list(plan.vocab_sizes)
        return [n if d > 0 else 0 for n, d in zip(plan.vocab_sizes, plan.field_dims, strict=True)]

    def param_rows(self, plan: Sizes) -> list[int]:
        """Per field, the rows that carry an int8 row's scale and bias: its stored rows, and of per-row sizes
        only those that store values (a row storing nothing needs no scale)."""
        if self.per_row:
            return [int(np.count_nonzero(r)) for r in plan.row_sizes]
        return self.stored_rows(plan)

    def field_bytes(self, plan: Sizes) -> list[int]:
        """Bytes each field's storage takes: its values, its rows' scales and biases (int8), and its share
        of the row index."""
        per_value, per_row = self.value_bytes(plan), row_param_bytes(plan.precision)
        index, _ = self.index_bytes(plan)
        return [
            p * per_value + r * per_row + i
            for p, r, i in zip(self.field_params(plan), self.param_rows(plan), index, strict=True)
        ]

    def table_bytes(self, plan: Sizes) -> int:
        """Bytes of every field's storage, the index's closing entries included."""
        return sum(self.field_bytes(plan)) + self.index_bytes(plan)[1]


class DenseStorage(StorageKind):
    """Field f: a table ``[n_f, d_f]``; no index."""

    name = "dense"
    per_row = False

    def index_bytes(self, plan: Sizes) -> tuple[list[int], int]:
        return [0] * plan.num_fields, 0


class SharedRowStorage(StorageKind):
    """Field f: full-width rows that its ids share, as many as its bucket count ``plan.buckets[f]`` sets
    (:meth:`shared_rows`); a field whose bucket count is its vocabulary ``n_f`` keeps a plain table
    ``[n_f, d]``. Nothing is dropped: every id reads ``d`` values."""

    per_row = False

    def checked_buckets(self, plan: Sizes) -> list[int]:
        F = plan.num_fields
        if plan.buckets is None or len(plan.buckets) != F:
            raise ValueError(f"{self.name} storage needs buckets for each of the {F} fields")
        buckets = [int(m) for m in plan.buckets]
        for name, n, m, d in zip(plan.field_names, plan.vocab_sizes, buckets, plan.field_dims, strict=True):
            if m != n and not MIN_BUCKETS <= m < n:
                raise ValueError(f"field {name!r}: buckets must be {n} (a plain table) or in [{MIN_BUCKETS}, {n}): {m}")
            if d != plan.dim:
                raise ValueError(f"field {name!r}: {self.name} storage keeps rows of the full width {plan.dim}: {d}")
        return buckets

    def compressed(self, plan: Sizes) -> list[bool]:
        """Per field, whether its ids share rows (else it keeps a plain table)."""
        return [m < n for m, n in zip(plan.buckets, plan.vocab_sizes, strict=True)]

    @abstractmethod
    def shared_rows(self, vocab_size: int, buckets: int) -> int:
        """Rows a field of ``vocab_size`` ids stores with ``buckets`` buckets (``buckets < vocab_size``)."""

    def stored_rows(self, plan: Sizes) -> list[int]:
        return [self.shared_rows(n, m) if m < n else n for n, m in zip(plan.vocab_sizes, plan.buckets, strict=True)]

    def field_params(self, plan: Sizes) -> list[int]:
        return [rows * plan.dim for rows in self.stored_rows(plan)]

    def dropped_features(self, plan: Sizes) -> list[int]:
        return [0] * plan.num_fields


class HashedStorage(SharedRowStorage):
    """A hashed field: ``m_f`` rows ``[m_f, d]`` and its hash's ``a`` and ``b``; no other index."""

    name = "hashed"

    def shared_rows(self, vocab_size: int, buckets: int) -> int:
        return buckets

    def index_bytes(self, plan: Sizes) -> tuple[list[int], int]:
        per_field = 2 * HASH_PARAM_DTYPE.itemsize
        return [per_field if c else 0 for c in self.compressed(plan)], 0


class QuotientRemainderStorage(SharedRowStorage):
    """A quotient-remainder field with ``c_f`` buckets: ``ceil(n_f / c_f)`` quotient rows and ``c_f``
    remainder rows, ``[d]`` each; no index (``c_f`` is in the layout, like a table's row count)."""

    name = "qr"

    def shared_rows(self, vocab_size: int, buckets: int) -> int:
        return -(-vocab_size // buckets) + buckets

    def index_bytes(self, plan: Sizes) -> tuple[list[int], int]:
        return [0] * plan.num_fields, 0


class RaggedStorage(StorageKind):
    """Row i: its first ``k_i`` values, found through the smaller of two indexes (:func:`ragged_index`)."""

    name = "ragged"
    per_row = True

    def index_layout(self, plan: Sizes) -> RaggedIndex:
        """Which index the plan's rows get: ``rows`` (one offset each) or ``runs``."""
        return self._layout(plan)[0]

    def index_bytes(self, plan: Sizes) -> tuple[list[int], int]:
        layout, runs = self._layout(plan)
        rows, values = sum(plan.vocab_sizes), sum(self.field_params(plan))
        if layout == "runs":
            closing = offset_dtype(rows).itemsize + offset_dtype(values).itemsize
            return [r * (closing + size_dtype(plan.dim).itemsize) for r in runs], closing
        return _offsets_per_row(plan.vocab_sizes, values)

    def _layout(self, plan: Sizes) -> tuple[RaggedIndex, list[int]]:
        """The index layout and each field's runs of equal-size rows."""
        runs = [equal_size_runs([r]) for r in plan.row_sizes]
        rows, values = sum(plan.vocab_sizes), sum(self.field_params(plan))
        return ragged_index(rows, values, sum(runs), plan.dim)[0], runs


class CsrStorage(StorageKind):
    """Row i: ``nnz_i`` values with their column indices, and one offset per row."""

    name = "csr"
    per_row = True

    def value_bytes(self, plan: Sizes) -> int:
        return self.bytes_per_value(plan.dim, plan.precision)

    def index_bytes(self, plan: Sizes) -> tuple[list[int], int]:
        return _offsets_per_row(plan.vocab_sizes, sum(self.field_params(plan)))

    @staticmethod
    def bytes_per_value(dim: int, precision: str = "fp32") -> int:
        """A value and its column index."""
        return VALUE_PRECISIONS[precision].itemsize + column_dtype(dim).itemsize

    @staticmethod
    def layout_bytes(
        num_rows: int,
        stored_rows: np.ndarray | int,
        num_values: np.ndarray | int,
        dim: int,
        precision: str = "fp32",
    ) -> np.ndarray:
        """Bytes of ``num_rows`` rows of which ``stored_rows`` store ``num_values`` values in all (ints or int
        arrays, elementwise; only int8's scales and biases depend on ``stored_rows``): what :meth:`table_bytes`
        says of such a plan, without building one."""
        stored_rows, num_values = np.asarray(stored_rows, dtype=np.int64), np.asarray(num_values, dtype=np.int64)
        offsets = (num_rows + 1) * offset_bytes(num_values)
        per_value = CsrStorage.bytes_per_value(dim, precision)
        return num_values * per_value + offsets + stored_rows * row_param_bytes(precision)


class CompactStorage(StorageKind):
    """The values of ``csr`` (row i keeps ``nnz_i`` values at any columns) indexed for high sparsity, where
    most rows store nothing and CSR's offset per row outweighs the values [ours].

    A group of ``R`` rows (fields back to back) of which ``M`` store something (``nnz_i > 0``), holding
    ``nnz`` values, saves for its stored rows only, ascending, each at its rank ``s`` among them:

    - ``id_lows`` uint8 ``[M]`` and ``id_blocks`` ``[ceil(R / ID_BLOCK_ROWS)]`` (:func:`offset_dtype` of
      ``R``): stored row ``s``'s id is ``ID_BLOCK_ROWS * b + id_lows[s]``, ``b`` its block of rows, whose
      stored rows come after the ``id_blocks[b]`` of the blocks before it; a row that is not among them
      stores nothing and embeds to zeros;
    - ``bitmaps`` uint8 ``[M, ceil(d / 8)]``: each stored row's kept columns, bit ``j % 8`` of byte
      ``j // 8`` for column ``j``; the ``k``-th kept column holds the row's ``k``-th value, and the row's
      values follow those of the stored rows before it, so where they start is the count of the bits
      before it (no start is saved);
    - ``values`` ``[nnz]`` in the plan's precision; int8 keeps ``scale`` and ``bias`` ``[M]`` for the stored
      rows only.

    Bytes (:meth:`layout_bytes`): ``ceil(R / ID_BLOCK_ROWS) * off(R) + M * (1 + ceil(d / 8) + row params)
    + nnz * value``. A row that stores nothing costs a share of a block count; against ``csr`` a stored row
    pays a byte of id and a bitmap instead of an offset, and no column index per value; the values are
    the same. In memory a group holds each stored row's id and first value whole (int32 while they fit,
    :class:`~embdim.slim.CompactGroup`), so that a lookup reads each with one gather: seven bytes per
    stored row more than it saves.

    Why these parts (measured in BENCHMARKS.md, "PEP: compact storage"):

    - a binary search in the stored rows' ids rather than a bit per row with a count per block of rows (a
      rank index): finding a rank in the bits (the block's count plus the set bits before the row) takes
      several times the tensor operations of a search, which made a one-row lookup slower than CSR's.
      Saved whole (four bytes per stored row), the ids would be the larger index wherever more than about
      one row in twenty stores something; a byte per stored row under a count per block of rows is
      smaller than the bits wherever fewer than about one row in six does (PEP's highest sparsities,
      where frequent ids keep values and rare ones none), and where more do, the bits would save at most
      a few percent of the plan's bytes;
    - a bitmap per stored row rather than a count and a column index per value: it is never larger while
      ``d <= 16`` (``ceil(d / 8)`` bytes against one per value plus the count), and a lookup turns it into
      each column's value position with one table of byte prefix counts; where rows keep few of many
      columns ``csr`` is the smaller layout, and PEP takes whichever of the two its plan makes smaller;
    - no saved starts: they follow from the bitmaps, summed once when the group is built.

    Each field's share of :meth:`index_bytes` is its stored rows' id bytes and bitmaps; the block counts of
    ids straddle fields and are counted once.
    """

    name = "compact"
    per_row = True

    def index_bytes(self, plan: Sizes) -> tuple[list[int], int]:
        per_stored = self.stored_row_bytes(plan.dim)
        return [m * per_stored for m in self.param_rows(plan)], self.block_bytes(sum(plan.vocab_sizes))

    @staticmethod
    def stored_row_bytes(dim: int, precision: str = "fp32") -> int:
        """Saved bytes of one stored row besides its values: its id's low byte, its bitmap (and int8's scale
        and bias)."""
        return ID_LOW_DTYPE.itemsize + bitmap_bytes(dim) + row_param_bytes(precision)

    @staticmethod
    def block_bytes(num_rows: int) -> int:
        """The count of stored rows before each block of ``num_rows`` rows."""
        return -(-num_rows // ID_BLOCK_ROWS) * offset_dtype(num_rows).itemsize

    @staticmethod
    def layout_bytes(
        num_rows: int,
        stored_rows: np.ndarray | int,
        num_values: np.ndarray | int,
        dim: int,
        precision: str = "fp32",
    ) -> np.ndarray:
        """Bytes of ``num_rows`` rows of which ``stored_rows`` store ``num_values`` values in all (ints or int
        arrays, elementwise): what :meth:`table_bytes` says of such a plan, without building one."""
        stored_rows, num_values = np.asarray(stored_rows, dtype=np.int64), np.asarray(num_values, dtype=np.int64)
        per_stored = CompactStorage.stored_row_bytes(dim, precision)
        values = num_values * VALUE_PRECISIONS[precision].itemsize
        return CompactStorage.block_bytes(num_rows) + stored_rows * per_stored + values


def _offsets_per_row(vocab_sizes: Sequence[int], num_values: int) -> tuple[list[int], int]:
    """One offset per row into ``num_values`` values: each field's share, and the closing offset."""
    size = offset_dtype(num_values).itemsize
    return [n * size for n in vocab_sizes], size
