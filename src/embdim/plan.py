"""EmbeddingPlan: what a method decided to store, as data (sizes, parameter count, bytes, JSON).

How the kept values are laid out and what each layout costs is the plan's storage kind
(:mod:`embdim.storage`: ``dense``, ``ragged``, ``csr``, ``hashed``, ``qr``); the plan records the sizes
and delegates its counts and bytes to that kind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embdim.storage import FLOAT_BYTES, STORAGE_KINDS, VALUE_PRECISIONS, RaggedIndex, RaggedStorage, StorageKind


@dataclass
class EmbeddingPlan:
    """Learned embedding sizes of every field (and, where the method decides per value, every row).

    Attributes:
        method: the searcher that made the plan.
        field_names: F names.
        vocab_sizes: F vocabulary sizes ``n_f``.
        dim: the common output width ``d`` (what the model receives).
        field_dims: F stored widths ``d_f`` (for ``ragged``/``csr``: the widest row, at most ``d``).
        storage: the name of its storage kind, one of :data:`embdim.storage.STORAGE_KINDS`.
        row_sizes: for ``ragged`` the kept prefix length of each row, for ``csr`` its number of
            kept values; F int arrays ``[n_f]``. ``None`` for ``dense``.
        extra_params: parameters outside the tables that the slim embedding needs (projections).
        details: method-specific JSON-able summary (thresholds, temperatures, ...).
        precision: how each kept value is stored: ``fp32`` (as trained), ``fp16`` or ``int8`` row-wise
            (:data:`embdim.storage.VALUE_PRECISIONS`); projections stay float32.
        buckets: for the kinds whose ids share rows, per field how many buckets its ids fall into:
            ``hashed``: the hash buckets ``m_f`` (rows of its table); ``qr``: the remainder rows ``c_f``
            (its quotient table has ``ceil(n_f / c_f)``). ``n_f`` keeps the field's plain table. F ints;
            ``None`` for the other kinds.
    """

    method: str
    field_names: list[str]
    vocab_sizes: list[int]
    dim: int
    field_dims: list[int]
    storage: str = "dense"
    row_sizes: list[np.ndarray] | None = None
    extra_params: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    buckets: list[int] | None = None

    def __post_init__(self) -> None:
        F = len(self.field_names)
        if not (len(self.vocab_sizes) == len(self.field_dims) == F):
            raise ValueError("field_names, vocab_sizes and field_dims must have one entry per field")
        if any(not 0 <= d <= self.dim for d in self.field_dims):
            raise ValueError(f"field_dims must lie in [0, {self.dim}], got {self.field_dims}")
        if self.storage not in STORAGE_KINDS:
            raise ValueError(f"storage must be one of {sorted(STORAGE_KINDS)}, got {self.storage!r}")
        if self.precision not in VALUE_PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(VALUE_PRECISIONS)}, got {self.precision!r}")
        self.row_sizes = self.kind.checked_rows(self)
        self.buckets = self.kind.checked_buckets(self)

    # ------------------------------------------------------------------ sizes
    @property
    def num_fields(self) -> int:
        return len(self.field_names)

    @property
    def kind(self) -> StorageKind:
        """The storage kind that lays out and prices this plan's values."""
        return STORAGE_KINDS[self.storage]

    def field_params(self) -> list[int]:
        """Stored embedding values per field (table entries only)."""
        return self.kind.field_params(self)

    @property
    def num_params(self) -> int:
        """Embedding parameters of the slim model: table values plus ``extra_params``."""
        return sum(self.field_params()) + self.extra_params

    @property
    def full_params(self) -> int:
        """Parameters of the uniform ``n x d`` tables this plan is compared with."""
        return sum(self.vocab_sizes) * self.dim

    def ragged_index(self) -> RaggedIndex | None:
        """How a ``ragged`` plan's rows are indexed (see :func:`embdim.storage.ragged_index`); ``None`` otherwise."""
        return self.kind.index_layout(self) if isinstance(self.kind, RaggedStorage) else None

    def field_bytes(self) -> list[int]:
        """Bytes each field's slim storage takes: its values, plus its share of the row index (and
        one column index per value for ``csr``). All fields share one index, whose closing entries
        :attr:`num_bytes` adds once."""
        return self.kind.field_bytes(self)

    @property
    def num_bytes(self) -> int:
        """Bytes of the slim embedding: tables, their index structures and ``extra_params``."""
        return self.kind.table_bytes(self) + self.extra_params * FLOAT_BYTES

    @property
    def full_bytes(self) -> int:
        return self.full_params * FLOAT_BYTES

    def dropped_features(self) -> list[int]:
        """Per field, how many rows store nothing (features pruned away entirely)."""
        return self.kind.dropped_features(self)

    def summary(self, reference_dim: int | None = None) -> dict[str, Any]:
        """Scalars for ``result.json`` and reports; sizes are compared with the uniform ``n x reference_dim``
        tables (default: the plan's own ``dim``; a run aimed at a budget by a narrower width compares with
        the width the budget is a share of)."""
        full_params = sum(self.vocab_sizes) * (self.dim if reference_dim is None else reference_dim)
        full_bytes = full_params * FLOAT_BYTES
        return {
            "method": self.method,
            "storage": self.storage,
            "precision": self.precision,
            "embedding_params": self.num_params,
            "embedding_bytes": self.num_bytes,
            "full_embedding_params": full_params,
            "full_embedding_bytes": full_bytes,
            "params_ratio": self.num_params / max(full_params, 1),
            "bytes_ratio": self.num_bytes / max(full_bytes, 1),
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
            "precision": self.precision,
            "buckets": None if self.buckets is None else [int(m) for m in self.buckets],
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
