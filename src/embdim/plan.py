"""EmbeddingPlan: what a method decided to store, as data (sizes, parameter count, bytes, JSON).

Three storage kinds cover every method:

- ``dense``: field f stores an ``n_f x d_f`` table (full, MDE, DML after the cut, MLET collapsed);
- ``ragged``: row i of field f stores its first ``k_i`` values (AMTL), plus an index: one offset
  per row, or, when rows of equal size come in long runs (AMTL's sizes follow frequency and ids are
  numbered by frequency), one entry per run (:func:`ragged_index`);
- ``csr``: row i stores ``nnz_i`` values at arbitrary columns (PEP), plus column indices and offsets.

Rows that store nothing are features dropped entirely; they embed to zeros.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

StorageKind = Literal["dense", "ragged", "csr"]

FLOAT_BYTES = 4
INT32_MAX = 2**31 - 1
UINT8_MAX = 255


def offset_bytes(total: int) -> int:
    """Bytes of one row offset: int32 while the offsets fit, else int64."""
    return 4 if total <= INT32_MAX else 8


def size_bytes(dim: int) -> int:
    """Bytes of one stored row size in ``[0, dim]``: uint8 up to 255, else int16."""
    return 1 if dim <= UINT8_MAX else 2


RaggedIndex = Literal["rows", "runs"]


def equal_size_runs(row_sizes: list[np.ndarray]) -> int:
    """Runs of consecutive rows with the same size, split at field boundaries."""
    return sum(int(np.count_nonzero(np.diff(r))) + 1 for r in row_sizes if len(r))


def ragged_index(num_rows: int, num_values: int, num_runs: int, dim: int) -> tuple[RaggedIndex, int]:
    """The smaller index of a ragged table, and its bytes (closing entries included).

    ``rows``: offsets ``[num_rows + 1]``. ``runs``: per run of equal-size rows its first row
    ``[num_runs + 1]``, first value ``[num_runs + 1]`` and row size ``[num_runs]``; row ``i`` of run
    ``r`` starts at ``first_value[r] + (i - first_row[r]) * size[r]``.
    """
    per_row = (num_rows + 1) * offset_bytes(num_values)
    per_run = (num_runs + 1) * (offset_bytes(num_rows) + offset_bytes(num_values)) + num_runs * size_bytes(dim)
    return ("runs", per_run) if per_run < per_row else ("rows", per_row)


def column_index_bytes(dim: int) -> int:
    """Bytes of one CSR column index: uint8 up to 256 columns, else int16."""
    return 1 if dim - 1 <= UINT8_MAX else 2


@dataclass
class EmbeddingPlan:
    """Learned embedding sizes of every field (and, where the method decides per value, every row).

    Attributes:
        method: the searcher that made the plan.
        field_names: F names.
        vocab_sizes: F vocabulary sizes ``n_f``.
        dim: the common output width ``d`` (what the model receives).
        field_dims: F stored widths ``d_f`` (for ``ragged``/``csr``: the widest row, at most ``d``).
        storage: ``dense``, ``ragged`` or ``csr`` (see module docstring).
        row_sizes: for ``ragged`` the kept prefix length of each row, for ``csr`` its number of
            kept values; F int arrays ``[n_f]``. ``None`` for ``dense``.
        extra_params: parameters outside the tables that the slim embedding needs (projections).
        details: method-specific JSON-able summary (thresholds, temperatures, ...).
    """

    method: str
    field_names: list[str]
    vocab_sizes: list[int]
    dim: int
    field_dims: list[int]
    storage: StorageKind = "dense"
    row_sizes: list[np.ndarray] | None = None
    extra_params: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        F = len(self.field_names)
        if not (len(self.vocab_sizes) == len(self.field_dims) == F):
            raise ValueError("field_names, vocab_sizes and field_dims must have one entry per field")
        if any(not 0 <= d <= self.dim for d in self.field_dims):
            raise ValueError(f"field_dims must lie in [0, {self.dim}], got {self.field_dims}")
        if self.storage == "dense":
            if self.row_sizes is not None:
                raise ValueError("dense storage has no per-row sizes")
        else:
            if self.row_sizes is None or len(self.row_sizes) != F:
                raise ValueError(f"{self.storage} storage needs row_sizes for each of the {F} fields")
            self.row_sizes = [np.asarray(r, dtype=np.int64) for r in self.row_sizes]
            for name, n, rows in zip(self.field_names, self.vocab_sizes, self.row_sizes, strict=True):
                if rows.shape != (n,) or rows.min(initial=0) < 0 or rows.max(initial=0) > self.dim:
                    raise ValueError(f"field {name!r}: row sizes must be {n} values in [0, {self.dim}]")

    # ------------------------------------------------------------------ sizes
    @property
    def num_fields(self) -> int:
        return len(self.field_names)

    def field_params(self) -> list[int]:
        """Stored embedding values per field (table entries only)."""
        if self.storage == "dense":
            return [n * d for n, d in zip(self.vocab_sizes, self.field_dims, strict=True)]
        assert self.row_sizes is not None
        return [int(r.sum()) for r in self.row_sizes]

    @property
    def num_params(self) -> int:
        """Embedding parameters of the slim model: table values plus ``extra_params``."""
        return sum(self.field_params()) + self.extra_params

    @property
    def full_params(self) -> int:
        """Parameters of the uniform ``n x d`` tables this plan is compared with."""
        return sum(self.vocab_sizes) * self.dim

    def ragged_index(self) -> RaggedIndex | None:
        """How a ``ragged`` plan's rows are indexed (see :func:`ragged_index`); ``None`` otherwise."""
        return self._index_bytes()[0] if self.storage == "ragged" else None

    def _index_bytes(self) -> tuple[RaggedIndex, list[int], int]:
        """The row index of ``ragged``/``csr`` storage: its layout, each field's share of its bytes,
        and the bytes of its closing entries (shared by all fields)."""
        assert self.row_sizes is not None
        rows, values = sum(self.vocab_sizes), sum(self.field_params())
        if self.storage == "ragged":
            runs = [equal_size_runs([r]) for r in self.row_sizes]
            if ragged_index(rows, values, sum(runs), self.dim)[0] == "runs":
                closing = offset_bytes(rows) + offset_bytes(values)
                return "runs", [r * (closing + size_bytes(self.dim)) for r in runs], closing
        return "rows", [n * offset_bytes(values) for n in self.vocab_sizes], offset_bytes(values)

    def field_bytes(self) -> list[int]:
        """Bytes each field's slim storage takes: its values, plus its share of the row index (and
        one column index per value for ``csr``). All fields share one index, whose closing entries
        :attr:`num_bytes` adds once."""
        params = self.field_params()
        values = [p * FLOAT_BYTES for p in params]
        if self.storage == "dense":
            return values
        index = self._index_bytes()[1]
        col = column_index_bytes(self.dim) if self.storage == "csr" else 0
        return [v + i + p * col for v, i, p in zip(values, index, params, strict=True)]

    @property
    def num_bytes(self) -> int:
        """Bytes of the slim embedding: tables, their index structures and ``extra_params``."""
        closing = 0 if self.storage == "dense" else self._index_bytes()[2]
        return sum(self.field_bytes()) + closing + self.extra_params * FLOAT_BYTES

    @property
    def full_bytes(self) -> int:
        return self.full_params * FLOAT_BYTES

    def dropped_features(self) -> list[int]:
        """Per field, how many rows store nothing (features pruned away entirely)."""
        if self.storage == "dense":
            return [n if d == 0 else 0 for n, d in zip(self.vocab_sizes, self.field_dims, strict=True)]
        assert self.row_sizes is not None
        return [int((r == 0).sum()) for r in self.row_sizes]

    def summary(self) -> dict[str, Any]:
        """Scalars for ``result.json`` and reports."""
        return {
            "method": self.method,
            "storage": self.storage,
            "embedding_params": self.num_params,
            "embedding_bytes": self.num_bytes,
            "full_embedding_params": self.full_params,
            "full_embedding_bytes": self.full_bytes,
            "params_ratio": self.num_params / max(self.full_params, 1),
            "bytes_ratio": self.num_bytes / max(self.full_bytes, 1),
            "field_dims": dict(zip(self.field_names, self.field_dims, strict=True)),
            "dropped_features": sum(self.dropped_features()),
        }

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "field_names": list(self.field_names),
            "vocab_sizes": [int(n) for n in self.vocab_sizes],
            "dim": int(self.dim),
            "field_dims": [int(d) for d in self.field_dims],
            "storage": self.storage,
            "row_sizes": None if self.row_sizes is None else [r.tolist() for r in self.row_sizes],
            "extra_params": int(self.extra_params),
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbeddingPlan:
        data = dict(data)
        if data.get("row_sizes") is not None:
            data["row_sizes"] = [np.asarray(r, dtype=np.int64) for r in data["row_sizes"]]
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> EmbeddingPlan:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingPlan:
        return cls.from_json(Path(path).read_text())

    # ------------------------------------------------------------------ TorchRec
    def to_torchrec_tables(self) -> list[Any]:
        """One TorchRec ``EmbeddingBagConfig`` per field with its stored width (dense storage).

        Fields cut to width 0 get no table. Value-level plans (ragged, csr) have no TorchRec
        table equivalent and raise.
        """
        if self.storage != "dense":
            raise ValueError(f"{self.storage} plans have no TorchRec table equivalent; only dense plans do")
        from torchrec.modules.embedding_configs import EmbeddingBagConfig

        return [
            EmbeddingBagConfig(name=f"t_{name}", embedding_dim=d, num_embeddings=n, feature_names=[name])
            for name, n, d in zip(self.field_names, self.vocab_sizes, self.field_dims, strict=True)
            if d > 0
        ]
