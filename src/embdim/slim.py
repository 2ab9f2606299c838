"""Slim embedding storage: what an exported model keeps, and the lookup that reads it.

A :class:`SlimEmbedding` maps ids ``[B, F]`` to ``[B, F, d]`` exactly like the masked model it came
from, but stores only what the plan keeps. Fields are grouped; each group stores its fields' rows
back to back (row ``offset_f + id``) in one of these layouts:

- :class:`DenseGroup`: a table ``[rows, w]``; shorter rows are zero-padded to ``d``, or projected
  to ``d`` by a per-field matrix ``[w, d]`` (MDE).
- :class:`RaggedGroup`: row i keeps its first ``k_i`` values: ``values [sum k]`` + ``offsets [rows + 1]``,
  or, when equal sizes come in long runs of rows, a per-run index (:func:`embdim.storage.ragged_index`).
- :class:`CsrGroup`: row i keeps ``nnz_i`` values at given columns: ``values``, ``columns`` (uint8
  or int16) and ``offsets [rows + 1]``.
- :class:`CompactGroup`: the same rows indexed by the rows that store something only: a byte of each
  one's id (under a count per block of rows) and a column bitmap (:class:`embdim.storage.CompactStorage`).
- :class:`HashedGroup`: field f's ids share the ``m_f`` full-width rows of a table by a seeded universal
  hash (:func:`hashed_buckets`): ``weight [sum m, d]``, ``hash_a`` and ``hash_b`` (int32, one per field).
- :class:`QRGroup`: field f's id reads a quotient row (``id // c_f``) and a remainder row (``id % c_f``) of
  ``weight``, which holds each field's quotient rows and then its remainder rows, and combines them
  (element-wise product or sum).

In the last two, ids share rows, so a group's ``rows`` (ids per field, as the plan's vocabulary sizes)
differ from the rows its table stores (:meth:`SlimGroup.table_rows`).

Values are stored in the plan's precision (:data:`embdim.storage.VALUE_PRECISIONS`): float32 as trained,
float16, or int8 row-wise, uint8 codes with a float16 ``scale`` and ``bias`` per row
(:func:`encode_values`); a lookup decodes the rows it reads to float32. :meth:`SlimEmbedding.with_precision`
converts a float32 embedding.

Saved as ``embedding.safetensors`` + ``embedding.json`` (no pickle).
"""

from __future__ import annotations

import dataclasses
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from embdim.errors import ModelFileError, shorten
from embdim.measures import all_finite
from embdim.plan import EmbeddingPlan
from embdim.storage import (
    HASH_PARAM_DTYPE,
    HASH_PRIME,
    ID_BLOCK_ROWS,
    ID_LOW_DTYPE,
    MIN_BUCKETS,
    ROW_PARAM_DTYPE,
    ROW_WISE,
    VALUE_DTYPE,
    VALUE_PRECISIONS,
    bitmap_bytes,
    column_dtype,
    equal_size_runs,
    field_bounds,
    offset_dtype,
    ragged_index,
    size_dtype,
)
from embdim.tensorfile import write_tensors

GROUP_KINDS: dict[str, type[SlimGroup]] = {}
EMBEDDING_TENSORS = "embedding.safetensors"
EMBEDDING_JSON = "embedding.json"


def _torch(dtype: np.dtype) -> torch.dtype:
    """The torch dtype of a numpy dtype chosen by :mod:`embdim.storage`."""
    return getattr(torch, dtype.name)


VALUES = _torch(VALUE_DTYPE)  # every trained value and projection weight
STORED = {name: _torch(dtype) for name, dtype in VALUE_PRECISIONS.items()}  # stored values, by precision
ROW_PARAMS = _torch(ROW_PARAM_DTYPE)  # an int8 row's scale and bias
CODE_MAX = 255  # the largest uint8 code


def precision_of(values: torch.Tensor) -> str:
    """The precision whose stored dtype ``values`` has."""
    for name, dtype in STORED.items():
        if values.dtype == dtype:
            return name
    raise ValueError(f"values of dtype {values.dtype} are in no storage precision ({', '.join(STORED)})")


def encode_values(
    values: torch.Tensor, precision: str, row_of: torch.Tensor | None = None, num_rows: int | None = None
) -> dict[str, torch.Tensor]:
    """float32 values in a storage precision: ``{"values": ...}``, for int8 also ``"scale"``, ``"bias"``.

    Args:
        values: a table ``[R, w]`` (row ``i`` is ``values[i]``), or flat values ``[nnz]`` of ragged rows
            whose row each value belongs to is ``row_of`` ``[nnz]`` (rows ``0..num_rows-1``).
        precision: ``fp32``, ``fp16`` or ``int8``.
    Returns:
        values in the precision's dtype, same shape; int8: uint8 codes ``round((x - bias) / scale)`` with
        float16 ``scale = (max - min) / 255`` and ``bias = min`` per row ``[R]`` (both rounded to float16
        before the codes are computed, so decoding uses exactly what is stored; an empty or constant row
        has scale 0 and codes 0).
    """
    if precision != ROW_WISE:
        return {"values": values.detach().to(STORED[precision])}
    values = values.detach().float()
    if row_of is None:
        lo, hi = values.amin(1), values.amax(1)
        rows = torch.arange(values.shape[0]).unsqueeze(1)
    else:
        inf = torch.full((num_rows,), torch.inf)
        lo = inf.scatter_reduce(0, row_of, values, "amin")
        hi = (-inf).scatter_reduce(0, row_of, values, "amax")
        empty = torch.isinf(lo)
        lo, hi = lo.masked_fill(empty, 0.0), hi.masked_fill(empty, 0.0)
        rows = row_of
    scale, bias = ((hi - lo) / CODE_MAX).to(ROW_PARAMS), lo.to(ROW_PARAMS)
    s, b = scale.float()[rows], bias.float()[rows]
    codes = torch.where(s > 0, (values - b) / s.clamp_min(torch.finfo(torch.float32).tiny), 0.0)
    return {"values": codes.round().clamp(0, CODE_MAX).to(STORED[ROW_WISE]), "scale": scale, "bias": bias}


def decode_rowwise(stored: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """int8 codes ``[..., k]`` -> float32 ``code * scale + bias`` ``[..., k]``, each by the float16 ``scale`` and
    ``bias`` (``[R]``) of its row in ``rows`` ``[...]``.

    1-d gathers of the parameters and one fused multiply-add: a third of the time of indexing and two operations
    (a code times a float16 scale is exact in float32, so the result is the same to the bit)."""
    flat, shape = rows.reshape(-1), (*rows.shape, 1)
    row_scale = scale.index_select(0, flat).float().view(shape)
    return torch.addcmul(bias.index_select(0, flat).float().view(shape), stored.float(), row_scale)


def project_fields(raw: torch.Tensor, projection: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Bring per-field vectors of width ``w`` to width ``dim``.

    Args:
        raw: [B, F_g, w].
        projection: [F_g, w, dim] per-field linear maps, or ``None`` to zero-pad (w <= dim).
    Returns:
        [B, F_g, dim].
    """
    if projection is not None:
        return torch.einsum("bfw,fwd->bfd", raw, projection)
    width = raw.shape[-1]
    if width == dim:
        return raw
    return nn.functional.pad(raw, (0, dim - width))


class SlimGroup(nn.Module, ABC):
    """Storage for a group of fields; ``forward(ids [B, F_g]) -> [B, F_g, d]``.

    A group keeps the tensors it is given, without copying them: an export builds them for it (a
    concatenation, an indexed selection, a product), and a copy would double the export's memory. A
    caller handing over live weights (a lookup's own table) passes a copy.
    """

    kind: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in vars(cls):  # a shared base without a kind of its own is no group kind
            GROUP_KINDS[cls.kind] = cls

    def __init__(self, field_ids: Sequence[int], rows: Sequence[int], dim: int) -> None:
        super().__init__()
        self.field_ids = tuple(int(f) for f in field_ids)
        self.rows = tuple(int(r) for r in rows)
        self.dim = dim
        starts = torch.from_numpy(field_bounds(self.rows)[:-1])
        self.register_buffer("row_offsets", starts, persistent=False)
        # row k: 1.0 in the first k columns (a lookup's mask of a row of size k: one gather, then a product)
        prefix = (torch.arange(dim) < torch.arange(dim + 1).unsqueeze(1)).to(VALUES)
        self.register_buffer("_prefixes", prefix, persistent=False)

    def global_rows(self, ids: torch.Tensor) -> torch.Tensor:
        return ids + self.row_offsets

    def table_rows(self) -> list[int]:
        """Rows each field's storage holds: one per id (its ``rows``), unless its ids share rows."""
        return list(self.rows)

    def layout(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "field_ids": list(self.field_ids),
            "rows": list(self.rows),
            "dim": self.dim,
            "precision": self.precision,
        }

    # ------------------------------------------------------------------ stored values
    def _keep_values(self, name: str, values: torch.Tensor, row_params: dict[str, torch.Tensor], pad: int = 0) -> None:
        """Hold ``values`` as attribute ``name``: float32 as a trainable parameter, a stored precision as a
        buffer, with an int8 group's per-row ``scale`` and ``bias`` [sum rows] (float16). Other float dtypes
        (float64, bfloat16) are trained values: kept as float32.

        With ``pad``, flat values are held with ``pad`` zeros after them (``padded_<name>``; ``name`` is a view
        of the stored ones), so that every row, wherever it starts, can be read as a window of ``pad`` values
        (:meth:`_windows`). The zeros are never saved, and a lookup masks them, so training keeps them zero.
        """
        if values.is_floating_point() and values.dtype not in STORED.values():
            values = values.to(VALUES)
        self.precision = precision_of(values)
        self._values_name = name
        if pad:
            values = _padded(values.detach(), pad)
            name = f"padded_{name}"
        if self.precision == "fp32":
            setattr(self, name, nn.Parameter(values.detach()))
        else:
            self.register_buffer(name, values.detach())
        if (self.precision == ROW_WISE) != bool(row_params) or set(row_params) - {"scale", "bias"}:
            raise ValueError("int8 values need a float16 'scale' and 'bias' per row; other precisions have none")
        for key, tensor in row_params.items():
            self.register_buffer(key, tensor.detach())

    def _windows(self, padded: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """The ``dim`` values from each of ``starts`` ``[...]`` in a padded flat tensor: ``[..., dim]`` (a row's
        own values first, then whatever follows it, which the caller masks)."""
        rows = padded.unfold(0, self.dim, 1).index_select(0, starts.reshape(-1))  # a copy of dim values per row
        return rows.view(*starts.shape, self.dim)

    def _prefix(self, sizes: torch.Tensor) -> torch.Tensor:
        """float32 ``[..., dim]``: 1.0 in the first ``sizes`` ``[...]`` columns, else 0.0. Lookups multiply
        by it (several times faster than a ``where`` on CPU), then add ``+0.0``: a masked negative value
        would be ``-0.0``, and the sum of zeros of both signs is ``+0.0``, as a dense table's padding."""
        return self._prefixes.index_select(0, sizes.reshape(-1)).view(*sizes.shape, self.dim)

    def row_params(self) -> dict[str, torch.Tensor]:
        """An int8 group's ``scale`` and ``bias`` ``[sum rows]``; empty for other precisions."""
        return {"scale": self.scale, "bias": self.bias} if self.precision == ROW_WISE else {}

    def decode(self, stored: torch.Tensor, param_rows: torch.Tensor) -> torch.Tensor:
        """Gathered stored values ``[..., k]`` as float32 ``[..., k]``; int8 decodes each by the scale and bias at
        its ``param_rows`` ``[...]`` (a table's row; for flat values, the rank of its row among the rows that
        store values: :meth:`value_rows`)."""
        if self.precision == "fp32":
            return stored
        if self.precision != ROW_WISE:
            return stored.float()
        if len(self.scale) == 0:  # no row stores a value: whatever was read is masked away by the caller
            return torch.zeros(stored.shape, dtype=VALUES, device=stored.device)
        return decode_rowwise(stored, self.scale, self.bias, param_rows)

    def value_rows(self) -> torch.Tensor | None:
        """For flat values, the row carrying each value's int8 scale and bias ``[nnz]``: its row's rank among the
        rows that store values (a row storing nothing carries none); ``None`` for a table (one per row)."""
        sizes = self.stored_sizes()
        sizes = sizes[sizes > 0]
        return torch.repeat_interleave(torch.arange(len(sizes), device=sizes.device), sizes)

    def float_values(self) -> torch.Tensor:
        """The stored values decoded to float32 (a table ``[R, w]`` or flat ``[nnz]``)."""
        stored = getattr(self, self._values_name).detach()
        rows = self.value_rows()
        if rows is None:
            return self.decode(stored, torch.arange(stored.shape[0]))
        return self.decode(stored.unsqueeze(-1), rows).squeeze(-1)

    @abstractmethod
    def with_precision(self, precision: str) -> SlimGroup:
        """The same rows with their (decoded) values stored in ``precision``."""

    def _encoded(self, precision: str) -> dict[str, torch.Tensor]:
        rows = self.value_rows()
        stored_rows = None if rows is None else int(torch.count_nonzero(self.stored_sizes()))
        return encode_values(self.float_values(), precision, rows, stored_rows)

    @property
    def width(self) -> int:
        """Width of each field's vector from :meth:`narrow` (``d`` unless the group stores fewer columns)."""
        return self.dim

    def narrow(self, ids: torch.Tensor) -> torch.Tensor:
        """ids ``[B, F_g]`` -> ``[B, F_g, width]``: the stored columns only, before zero-padding to ``d``."""
        return self(ids)

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]: ...

    @classmethod
    @abstractmethod
    def from_saved(cls, layout: dict[str, Any], tensors: dict[str, torch.Tensor]) -> SlimGroup: ...

    @abstractmethod
    def stored_sizes(self) -> torch.Tensor:
        """Values stored for each of the group's rows, int64 [sum rows] (fields back to back)."""

    @classmethod
    @abstractmethod
    def check_saved(cls, layout: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Raise ``ValueError`` naming the tensor when ``tensors`` are not a valid group of ``layout``
        (names, dtypes, shapes, index arrays): what :meth:`SlimEmbedding.load` runs before any use."""


class _TableGroup(SlimGroup):
    """A group holding a table ``weight [R, w]`` (dense, hashed, QR): what they share, reading its rows."""

    def read(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows ``[...]`` (int64, rows of the table, not ids) -> their values decoded to float32 ``[..., w]``."""
        weight = self.weight
        if self.precision == "fp32":
            return nn.functional.embedding(rows, weight)
        stored = weight.index_select(0, rows.reshape(-1)).view(*rows.shape, weight.shape[1])
        return self.decode(stored, rows)


class DenseGroup(_TableGroup):
    """A table ``weight [sum rows, w]``, zero-padded or projected (``projection [F_g, w, d]``) to ``d``; int8
    tables also hold ``scale`` and ``bias`` ``[sum rows]``."""

    kind = "dense"

    def __init__(
        self,
        field_ids: Sequence[int],
        rows: Sequence[int],
        weight: torch.Tensor,
        projection: torch.Tensor | None,
        dim: int,
        row_params: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(field_ids, rows, dim)
        self._keep_values("weight", weight, row_params or {})
        self.projection = None if projection is None else nn.Parameter(projection.detach().to(VALUES))

    @property
    def width(self) -> int:
        return self.dim if self.projection is not None else self.weight.shape[1]

    def narrow(self, ids: torch.Tensor) -> torch.Tensor:
        raw = self.read(self.global_rows(ids))
        return raw if self.projection is None else project_fields(raw, self.projection, self.dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return project_fields(self.narrow(ids), None, self.dim)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"weight": self.weight.detach(), **self.row_params()}
        if self.projection is not None:
            out["projection"] = self.projection.detach()
        return out

    @classmethod
    def from_saved(cls, layout: dict[str, Any], tensors: dict[str, torch.Tensor]) -> DenseGroup:
        params = {k: tensors[k] for k in ("scale", "bias") if k in tensors}
        return cls(
            layout["field_ids"], layout["rows"], tensors["weight"], tensors.get("projection"), layout["dim"], params
        )

    def value_rows(self) -> None:
        return None

    def with_precision(self, precision: str) -> DenseGroup:
        encoded = self._encoded(precision)
        weight = encoded.pop("values")
        projection = None if self.projection is None else self.projection.detach()
        return DenseGroup(self.field_ids, self.rows, weight, projection, self.dim, encoded)

    def stored_sizes(self) -> torch.Tensor:
        return torch.full((self.weight.shape[0],), self.weight.shape[1], dtype=torch.long)

    @classmethod
    def check_saved(cls, layout: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        _expect_names(tensors, {"weight", *_row_param_names(layout)}, {"projection"})
        dim, rows = layout["dim"], sum(layout["rows"])
        weight = _expect_tensor(tensors, "weight", _stored_dtypes(layout), 2)
        if weight.shape[0] != rows or not 1 <= weight.shape[1] <= dim:
            raise ValueError(f"weight: shape {tuple(weight.shape)}, expected [{rows}, 1..{dim}]")
        _check_row_params(layout, tensors, rows)
        if "projection" in tensors:
            proj = _expect_tensor(tensors, "projection", FLOAT_DTYPES, 3)
            want = (len(layout["field_ids"]), weight.shape[1], dim)
            if tuple(proj.shape) != want:
                raise ValueError(f"projection: shape {tuple(proj.shape)}, expected {list(want)}")


class RaggedGroup(SlimGroup):
    """Row i keeps its first ``k_i`` values ``values [sum k]``, found through one of two indexes.

    - per row: ``offsets [R + 1]`` (R = sum of the group's rows);
    - per run of consecutive rows with one size (never crossing a field): ``run_rows [runs + 1]``
      (first row of each run), ``run_offsets [runs + 1]`` (its first value) and ``run_sizes [runs]``.
      AMTL's sizes follow frequency and the encoder numbers ids by frequency, so its runs are few.
    """

    kind = "ragged"

    def __init__(
        self,
        field_ids: Sequence[int],
        rows: Sequence[int],
        values: torch.Tensor,
        index: dict[str, torch.Tensor],
        dim: int,
        row_params: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(field_ids, rows, dim)
        self._keep_values("values", values, row_params or {}, pad=dim)
        self.index_names = tuple(sorted(index))
        if self.index_names not in (("offsets",), ("run_offsets", "run_rows", "run_sizes")):
            raise ValueError(f"a ragged index is 'offsets' or 'run_rows', 'run_offsets', 'run_sizes'; got {index}")
        for name, tensor in index.items():
            self.register_buffer(name, tensor.detach())
        if "run_rows" in index:  # per run (few): where it ends, its size, and row r's start = base + r * size
            sizes = self.run_sizes.long()
            self.register_buffer("_run_ends", self.run_rows[1:].long(), persistent=False)
            self.register_buffer("_run_sizes", sizes, persistent=False)
            base = self.run_offsets[:-1].long() - self.run_rows[:-1].long() * sizes
            self.register_buffer("_run_base", base, persistent=False)
        if self.precision == ROW_WISE:
            self._keep_param_index()

    def _keep_param_index(self) -> None:
        """How an int8 lookup finds a row's scale and bias, which only the rows that store values carry, in
        row order: per run, the rank of its first row among them minus that row (row ``g`` of a run that stores
        values is at ``base + g``); per row, each one's rank (int32 while it fits), held in memory only."""
        if "offsets" in self.index_names:
            self.register_buffer("_param_rank", _stored_rank(torch.diff(self.offsets.long())), persistent=False)
            return
        run_rows = self.run_rows.long()
        stored = _stored_rows_per_run(run_rows, self._run_sizes)
        before = stored.cumsum(0) - stored
        self.register_buffer("_run_param_base", before - run_rows[:-1], persistent=False)

    @classmethod
    def from_dense(
        cls, field_ids: Sequence[int], rows: Sequence[int], table: torch.Tensor, lengths: torch.Tensor, dim: int
    ) -> RaggedGroup:
        """From a table ``[sum rows, d]`` and kept prefix lengths ``[sum rows]``, with the smaller index."""
        keep = torch.arange(table.shape[1]) < lengths.unsqueeze(1)
        total = int(lengths.sum())
        per_field = [r.numpy() for r in torch.split(lengths.cpu(), list(rows))]
        layout, _ = ragged_index(len(lengths), total, equal_size_runs(per_field), dim)
        if layout == "rows":
            offsets = torch.zeros(len(lengths) + 1, dtype=_torch(offset_dtype(total)))
            offsets[1:] = lengths.cumsum(0)
            return cls(field_ids, rows, table[keep], {"offsets": offsets}, dim)
        field_start = torch.zeros(len(lengths), dtype=torch.bool)
        field_start[torch.from_numpy(field_bounds(rows)[:-1])] = True
        changes = torch.ones(len(lengths), dtype=torch.bool)
        changes[1:] = lengths[1:] != lengths[:-1]
        first_rows = torch.nonzero(changes | field_start).squeeze(1)
        run_sizes = lengths[first_rows]
        run_lengths = torch.diff(first_rows, append=torch.tensor([len(lengths)]))
        run_offsets = torch.zeros(len(first_rows) + 1, dtype=torch.long)
        run_offsets[1:] = (run_sizes * run_lengths).cumsum(0)
        index = {
            "run_rows": torch.cat([first_rows, torch.tensor([len(lengths)])]).to(_torch(offset_dtype(len(lengths)))),
            "run_offsets": run_offsets.to(_torch(offset_dtype(total))),
            "run_sizes": run_sizes.to(_torch(size_dtype(dim))),
        }
        return cls(field_ids, rows, table[keep], index, dim)

    def starts_and_sizes(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Group rows ``[...]`` (fields back to back) -> the position of each one's first value in ``values`` and
        its size, int64 ``[...]`` twice (either index layout)."""
        return self._find(g)[:2]

    def _find(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`starts_and_sizes`, and for int8 the index of each row's scale and bias (else ``None``)."""
        if "offsets" in self.index_names:
            starts = self.offsets[g].long()
            params = self._param_rank[g] if self.precision == ROW_WISE else None
            return starts, self.offsets[g + 1].long() - starts, params
        run = torch.searchsorted(self._run_ends, g, right=True)
        sizes = self._run_sizes[run]
        params = None
        if self.precision == ROW_WISE:  # a row storing nothing reads any stored row's: its values are masked
            params = (self._run_param_base[run] + g).clamp_(0, max(len(self.scale) - 1, 0))
        return self._run_base[run] + g * sizes, sizes, params

    @property
    def values(self) -> torch.Tensor:
        """The stored values ``[sum k]`` (a view, without the padding lookups read past)."""
        return self.padded_values[: len(self.padded_values) - self.dim]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        starts, sizes, params = self._find(self.global_rows(ids))
        return (self.decode(self._windows(self.padded_values, starts), params) * self._prefix(sizes)).add_(0.0)

    def tensors(self) -> dict[str, torch.Tensor]:
        index = {name: getattr(self, name) for name in self.index_names}
        return {"values": self.values.detach(), **self.row_params(), **index}

    @classmethod
    def from_saved(cls, layout: dict[str, Any], tensors: dict[str, torch.Tensor]) -> RaggedGroup:
        index = {k: v for k, v in tensors.items() if k not in ("values", "scale", "bias")}
        params = {k: tensors[k] for k in ("scale", "bias") if k in tensors}
        return cls(layout["field_ids"], layout["rows"], tensors["values"], index, layout["dim"], params)

    def with_precision(self, precision: str) -> RaggedGroup:
        encoded = self._encoded(precision)
        values = encoded.pop("values")
        index = {name: getattr(self, name) for name in self.index_names}
        return RaggedGroup(self.field_ids, self.rows, values, index, self.dim, encoded)

    def stored_sizes(self) -> torch.Tensor:
        return self.starts_and_sizes(torch.arange(sum(self.rows)))[1]

    @classmethod
    def check_saved(cls, layout: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        dim, rows = layout["dim"], sum(layout["rows"])
        values = _expect_tensor(tensors, "values", _stored_dtypes(layout), 1)
        params = _row_param_names(layout)
        if "offsets" in tensors:
            _expect_names(tensors, {"values", "offsets", *params})
            offsets = _check_offsets(tensors, "offsets", rows, len(values), dim)
            _check_row_params(layout, tensors, int(torch.count_nonzero(torch.diff(offsets))), STORED_ROWS)
            return
        _expect_names(tensors, {"values", "run_rows", "run_offsets", "run_sizes", *params})
        run_rows = _expect_tensor(tensors, "run_rows", INDEX_DTYPES, 1).long()
        runs = len(run_rows) - 1
        if runs < 0 or run_rows[0] != 0 or run_rows[-1] != rows or bool((torch.diff(run_rows) <= 0).any()):
            raise ValueError(f"run_rows: must rise from 0 to {rows} (the group's rows) in {runs} runs")
        sizes = _expect_tensor(tensors, "run_sizes", SIZE_DTYPES, 1).long()
        if len(sizes) != runs or bool(((sizes < 0) | (sizes > dim)).any()):
            raise ValueError(f"run_sizes: need {runs} sizes in [0, {dim}]")
        offsets = _expect_tensor(tensors, "run_offsets", INDEX_DTYPES, 1).long()
        expected = torch.cat([torch.zeros(1, dtype=torch.long), (sizes * torch.diff(run_rows)).cumsum(0)])
        if len(offsets) != runs + 1 or not torch.equal(offsets, expected) or expected[-1] != len(values):
            raise ValueError(f"run_offsets: do not match run_rows, run_sizes and the {len(values)} values")
        _check_row_params(layout, tensors, int(_stored_rows_per_run(run_rows, sizes).sum()), STORED_ROWS)


class CsrGroup(SlimGroup):
    """Row i keeps values at given columns: ``values [nnz]``, ``columns [nnz]``, ``offsets [sum rows + 1]``."""

    kind = "csr"

    def __init__(
        self,
        field_ids: Sequence[int],
        rows: Sequence[int],
        values: torch.Tensor,
        columns: torch.Tensor,
        offsets: torch.Tensor,
        dim: int,
        row_params: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(field_ids, rows, dim)
        self._keep_values("values", values, row_params or {}, pad=dim)
        self.register_buffer("padded_columns", _padded(columns.detach(), dim))
        self.register_buffer("offsets", offsets.detach())
        if self.precision == ROW_WISE:  # each row's scale and bias: its rank among the rows that store values
            self.register_buffer("_param_rank", _stored_rank(torch.diff(self.offsets.long())), persistent=False)

    @classmethod
    def from_dense(
        cls, field_ids: Sequence[int], rows: Sequence[int], table: torch.Tensor, mask: torch.Tensor, dim: int
    ) -> CsrGroup:
        """From a table ``[sum rows, d]`` and a boolean keep-mask of the same shape."""
        nnz = mask.sum(1)
        offsets = torch.zeros(len(nnz) + 1, dtype=_torch(offset_dtype(int(nnz.sum()))))
        offsets[1:] = nnz.cumsum(0)
        cols = torch.nonzero(mask, as_tuple=True)[1]
        return cls(field_ids, rows, table[mask], cols.to(_torch(column_dtype(dim))), offsets, dim)

    @property
    def values(self) -> torch.Tensor:
        """The stored values ``[nnz]`` (a view, without the padding lookups read past)."""
        return self.padded_values[: len(self.padded_values) - self.dim]

    @property
    def columns(self) -> torch.Tensor:
        """Each stored value's column ``[nnz]``."""
        return self.padded_columns[: len(self.padded_columns) - self.dim]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        g = self.global_rows(ids)
        starts = self.offsets[g].long()
        sizes = self.offsets[g + 1].long() - starts
        params = self._param_rank[g] if self.precision == ROW_WISE else None
        vals = (self.decode(self._windows(self.padded_values, starts), params) * self._prefix(sizes)).add_(0.0)
        # slots past a row's values hold the next rows' columns, all in [0, d), and scatter zeros there, which a
        # valid slot may also write: add, don't overwrite
        cols = self._windows(self.padded_columns, starts).long()
        out = torch.zeros(*ids.shape, self.dim, dtype=vals.dtype, device=vals.device)
        return out.scatter_add(-1, cols, vals)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"values": self.values.detach(), **self.row_params(), "columns": self.columns, "offsets": self.offsets}

    @classmethod
    def from_saved(cls, layout: dict[str, Any], tensors: dict[str, torch.Tensor]) -> CsrGroup:
        params = {k: tensors[k] for k in ("scale", "bias") if k in tensors}
        values, columns, offsets = tensors["values"], tensors["columns"], tensors["offsets"]
        return cls(layout["field_ids"], layout["rows"], values, columns, offsets, layout["dim"], params)

    def with_precision(self, precision: str) -> CsrGroup:
        encoded = self._encoded(precision)
        values = encoded.pop("values")
        return CsrGroup(self.field_ids, self.rows, values, self.columns, self.offsets, self.dim, encoded)

    def stored_sizes(self) -> torch.Tensor:
        return torch.diff(self.offsets.long())

    @classmethod
    def check_saved(cls, layout: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        _expect_names(tensors, {"values", "columns", "offsets", *_row_param_names(layout)})
        dim, rows = layout["dim"], sum(layout["rows"])
        values = _expect_tensor(tensors, "values", _stored_dtypes(layout), 1)
        columns = _expect_tensor(tensors, "columns", SIZE_DTYPES, 1).long()
        if len(columns) != len(values) or bool(((columns < 0) | (columns >= dim)).any()):
            raise ValueError(f"columns: need {len(values)} column indices in [0, {dim})")
        offsets = _check_offsets(tensors, "offsets", rows, len(values), dim)
        _check_row_params(layout, tensors, int(torch.count_nonzero(torch.diff(offsets))), STORED_ROWS)
        # within a row the columns rise (each value has its own column); across rows they start again
        rises = torch.diff(columns) > 0
        row_starts = offsets[1:-1][(offsets[1:-1] > 0) & (offsets[1:-1] < len(columns))] - 1
        rises[row_starts] = True
        if not bool(rises.all()):
            raise ValueError("columns: a row repeats or reorders its column indices")


#: bit j of each byte value, bool [256, 8] (bits read least significant first)
BYTE_BITS = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1 == 1
#: set bits of each byte value, int64 [256]
POPCOUNT = BYTE_BITS.sum(1)
FEW_IDS = 1024
"""Lookups of at most this many ids gather by ``torch.take`` (see :meth:`CompactGroup.forward`)."""
#: integer dtypes of 1, 2, 4 and 8 bytes: a bitmap of that many bytes held as one integer
BITMAP_WORDS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def pack_bits(bits: torch.Tensor) -> torch.Tensor:
    """bool ``[..., n]`` -> uint8 ``[..., ceil(n / 8)]``: bit ``j % 8`` of byte ``j // 8`` is ``bits[..., j]``."""
    n = bits.shape[-1]
    padded = nn.functional.pad(bits.to(torch.uint8), (0, -n % 8)).unflatten(-1, (-1, 8))
    return (padded << torch.arange(8, dtype=torch.uint8, device=bits.device)).sum(-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """uint8 ``[..., k]`` -> bool ``[..., n]`` (``n <= 8 k``), the inverse of :func:`pack_bits`."""
    return BYTE_BITS.to(packed.device)[packed.long()].flatten(-2)[..., :n]


def byte_positions(not_kept: float) -> torch.Tensor:
    """For each byte value, float32 ``[256, 9]``: per bit the number of set bits below it where the bit is
    set (``not_kept`` where it is not), then the byte's popcount."""
    below = torch.cumsum(BYTE_BITS.long(), 1) - BYTE_BITS.long()
    positions = torch.where(BYTE_BITS, below.float(), not_kept)
    return torch.cat([positions, POPCOUNT.float().unsqueeze(1)], 1)


class CompactGroup(SlimGroup):
    """Row i keeps values at given columns, indexed by the rows that store something only (layout and byte
    rule: :class:`embdim.storage.CompactStorage`): their ids (``id_lows [M]`` and ``id_blocks``), their
    column ``bitmaps [M, ceil(d / 8)]`` and ``values [nnz]``; int8 keeps ``scale`` and ``bias`` ``[M]`` for the
    M stored rows only.

    In memory the stored rows' ids and first values are held whole (``padded_row_ids``, ``padded_starts``:
    int32 while they fit), built once from the saved layout, which is what is saved and counted as stored
    bytes.

    A lookup of rows ``[B, F_g]``: a binary search finds each row's rank among the stored rows (rank ``M``,
    an all-zero bitmap held in memory after the stored ones and never saved, where it stores nothing); the
    rank's bitmap bytes, through a table of per-byte prefix counts, give each column its value's position
    after the row's start, or one past every value, where a zero is held; one gather of the values then
    returns the row as stored, zeros included. Every step is a gather or an elementwise operation on the
    batch.
    """

    kind = "compact"
    INDEX = ("id_lows", "id_blocks", "bitmaps")

    def __init__(
        self,
        field_ids: Sequence[int],
        rows: Sequence[int],
        values: torch.Tensor,
        index: dict[str, torch.Tensor],
        dim: int,
        row_params: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(field_ids, rows, dim)
        if set(index) != set(self.INDEX):
            raise ValueError(f"a compact index is {', '.join(self.INDEX)}; got {sorted(index)}")
        self._keep_values("values", values, row_params or {}, pad=1)  # one zero: where kept columns are not
        bitmaps = index["bitmaps"].detach()
        self.num_stored, width = bitmaps.shape
        row_ids = whole_ids(index["id_lows"].detach(), index["id_blocks"].detach(), sum(self.rows))
        # every array gets one entry more, read by the rows that store nothing (rank M): a row id past every
        # row (so the ids stay sorted and no id matches it), an all-zero bitmap, a start
        self.register_buffer("padded_row_ids", torch.cat([row_ids, row_ids.new_tensor([sum(self.rows)])]))
        sizes = POPCOUNT.to(bitmaps.device)[bitmaps.long()].sum(1)  # the values the bitmaps keep, [M]
        starts = torch.zeros(self.num_stored + 1, dtype=_torch(offset_dtype(len(values))), device=bitmaps.device)
        starts[1:] = sizes.cumsum(0)  # stored row s's values follow those of the rows before it
        self.register_buffer("padded_starts", starts)
        # bitmaps of up to eight bytes are held in words of 1, 2, 4 or 8 bytes (zero-filled), one integer per
        # row, so that a lookup reads a row's bitmap with one 1-d gather (the fastest, on one row or many)
        word = next((w for w in BITMAP_WORDS if w >= width), width)
        self.bitmap_width = word
        store = torch.zeros(self.num_stored + 1, word, dtype=torch.uint8, device=bitmaps.device)
        store[: self.num_stored, :width] = bitmaps
        self.words = word in BITMAP_WORDS
        self.register_buffer("bitmap_words", store.view(BITMAP_WORDS[word]).squeeze(1) if self.words else store)
        # byte k of a bitmap: per column its value's position (prefix counts, and for k > 0 the popcounts of
        # the bytes before it), as one matrix product of the bytes' table rows [word * 9] -> [d]
        spread = torch.zeros(word, 9, word * 8)
        for j in range(width * 8):
            spread[j // 8, j % 8, j] = 1.0
            spread[: j // 8, 8, j] = 1.0
        # a column the bitmap does not keep gets a position past every value, whatever the row's start: the
        # power of two above the values' count (float32 holds it exactly, and adding the popcounts of the
        # bytes before it cannot round it below), which the lookup clamps to the zero after the values
        self.num_values = len(values)
        not_kept = 2.0 ** math.ceil(math.log2(self.num_values + 1))
        self.register_buffer("_byte_positions", byte_positions(not_kept), persistent=False)
        self.register_buffer("_spread", spread.flatten(0, 1)[:, :dim].contiguous(), persistent=False)
        # such a position plus a start (and float32's rounding of it) must not overflow int32
        wide = 2 * not_kept + self.num_values > torch.iinfo(torch.int32).max
        self._position_dtype = torch.int64 if wide else torch.int32

    @property
    def padded_bitmaps(self) -> torch.Tensor:
        """The stored rows' bitmaps and then the all-zero one, uint8 ``[M + 1, ceil(d / 8)]`` (a view)."""
        store = self.bitmap_words.unsqueeze(1).view(torch.uint8) if self.words else self.bitmap_words
        return store[:, : bitmap_bytes(self.dim)]

    @classmethod
    def from_dense(
        cls, field_ids: Sequence[int], rows: Sequence[int], table: torch.Tensor, mask: torch.Tensor, dim: int
    ) -> CompactGroup:
        """From a table ``[sum rows, d]`` and a boolean keep-mask of the same shape."""
        stored = mask.any(1)
        index = compact_index(torch.nonzero(stored).squeeze(1), mask[stored], len(stored))
        return cls(field_ids, rows, table[mask], index, dim)

    # ------------------------------------------------------------------ reading
    @property
    def values(self) -> torch.Tensor:
        """The stored values ``[nnz]`` (a view, without the zero lookups read past)."""
        return self.padded_values[:-1]

    def index(self) -> dict[str, torch.Tensor]:
        """The saved index arrays: the ids split again, the bitmaps (a view, without the one rows that store
        nothing read)."""
        return {**split_ids(self.padded_row_ids[:-1], sum(self.rows)), "bitmaps": self.padded_bitmaps[:-1]}

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # the module's dicts, not its attributes: nn.Module.__getattr__ on each buffer costs a one-row
        # lookup more than its search does
        buffers = self._buffers
        values = self._parameters.get("padded_values")
        values = buffers["padded_values"] if values is None else values
        row_ids = buffers["padded_row_ids"]
        g = (ids + buffers["row_offsets"]).to(row_ids.dtype)  # the search's dtype: else it converts the ids
        s = torch.searchsorted(row_ids, g)
        s.masked_fill_(torch.take(row_ids, s) != g, self.num_stored)
        starts = torch.take(buffers["padded_starts"], s)
        if self.words and torch.jit.is_tracing():  # the tracer records no view to another dtype: shift
            words = torch.take(buffers["bitmap_words"], s).long().unsqueeze(-1)
            bitmaps = (words >> torch.arange(0, 8 * self.bitmap_width, 8, device=s.device)) & 0xFF
        elif self.words:  # [..., w] bytes, laid flat: [B, F_g * w]
            bitmaps = torch.take(buffers["bitmap_words"], s).view(torch.uint8)
        else:
            bitmaps = nn.functional.embedding(s, buffers["bitmap_words"])
        # few ids: 1-d gathers by take, the cheapest call; many: index_select, the fastest per element
        # (take needs int64 positions, whose conversion from float is slow in bulk)
        few = s.numel() <= FEW_IDS
        by_byte = buffers["_byte_positions"]
        table = by_byte[bitmaps.long()] if few else nn.functional.embedding(bitmaps.int(), by_byte)
        width = self.bitmap_width
        if width == 1:
            positions = table.view(*s.shape, 9)[..., : self.dim]
        elif few:  # each column's prefix count plus the popcounts of the bytes before it: one product
            positions = table.view(*s.shape, width * 9) @ buffers["_spread"]
        else:  # the same sum, cheaper in bulk than a product of this shape
            table = table.view(*s.shape, width, 9)
            before = table[..., 8].cumsum(-1) - table[..., 8]
            positions = (table[..., :8] + before.unsqueeze(-1)).flatten(-2)[..., : self.dim]
        # a kept column reads its value; any other column reads the zero after the values
        dtype = torch.int64 if few else self._position_dtype
        where = positions.to(dtype).add_(starts.unsqueeze(-1)).clamp_max_(self.num_values)
        stored = torch.take(values, where) if few else values.index_select(0, where.flatten()).view(where.shape)
        if self.precision == "fp32":
            if values.requires_grad and torch.is_grad_enabled():  # training: the zero slot gets no gradient
                stored = torch.where(where < self.num_values, stored, 0.0)
            return stored
        if self.precision != ROW_WISE:
            return stored.float()
        # int8: a zero code decodes to its row's bias; rows storing nothing have no scale (read row 0's)
        decoded = self.decode(stored, torch.where(s < self.num_stored, s, 0))
        return torch.where(where < self.num_values, decoded, 0.0)

    # ------------------------------------------------------------------ values and sizes
    def row_sizes(self) -> torch.Tensor:
        """Values each stored row keeps, int64 ``[M]``."""
        return torch.diff(self.padded_starts.long())

    def stored_sizes(self) -> torch.Tensor:
        sizes = torch.zeros(sum(self.rows), dtype=torch.long, device=self.padded_bitmaps.device)
        return sizes.index_copy(0, self.padded_row_ids[:-1].long(), self.row_sizes())

    def value_rows(self) -> torch.Tensor:
        """The stored row (rank) of each value ``[nnz]``: what an int8 value's scale and bias are indexed by."""
        return torch.repeat_interleave(torch.arange(self.num_stored), self.row_sizes().cpu())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"values": self.values.detach(), **self.row_params(), **self.index()}

    @classmethod
    def from_saved(cls, layout: dict[str, Any], tensors: dict[str, torch.Tensor]) -> CompactGroup:
        params = {k: tensors[k] for k in ("scale", "bias") if k in tensors}
        index = {k: tensors[k] for k in cls.INDEX}
        return cls(layout["field_ids"], layout["rows"], tensors["values"], index, layout["dim"], params)

    def with_precision(self, precision: str) -> CompactGroup:
        encoded = self._encoded(precision)
        values = encoded.pop("values")
        return CompactGroup(self.field_ids, self.rows, values, self.index(), self.dim, encoded)

    def to_csr(self) -> CsrGroup:
        """The same rows as a :class:`CsrGroup`: the same values, and for int8 the same scale and bias of each
        row that stores values. What the TorchRec export reads."""
        num_rows = sum(self.rows)
        kept = unpack_bits(self.padded_bitmaps[:-1], self.dim)
        columns = torch.nonzero(kept)[:, 1].to(_torch(column_dtype(self.dim)))
        offsets = torch.zeros(num_rows + 1, dtype=_torch(offset_dtype(len(columns))), device=kept.device)
        offsets[1:] = self.stored_sizes().cumsum(0)
        return CsrGroup(self.field_ids, self.rows, self.values, columns, offsets, self.dim, self.row_params())

    # ------------------------------------------------------------------ checks
    @classmethod
    def check_saved(cls, layout: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        _expect_names(tensors, {"values", *cls.INDEX, *_row_param_names(layout)})
        dim, num_rows = layout["dim"], sum(layout["rows"])
        lows = _expect_tensor(tensors, "id_lows", (_torch(ID_LOW_DTYPE),), 1)
        num_stored = len(lows)
        blocks = _expect_tensor(tensors, "id_blocks", (_torch(offset_dtype(num_rows)),), 1).long()
        num_blocks = -(-num_rows // ID_BLOCK_ROWS)
        counts = torch.diff(blocks, append=blocks.new_tensor([num_stored]))
        rising = bool(((counts >= 0) & (counts <= ID_BLOCK_ROWS)).all())
        if len(blocks) != num_blocks or blocks[0] != 0 or not rising:
            raise ValueError(
                f"id_blocks: need {num_blocks} counts of the stored rows before each block of {ID_BLOCK_ROWS} "
                f"rows, rising from 0 to at most the {num_stored} of id_lows"
            )
        row_ids = whole_ids(lows, blocks, num_rows).long()
        if bool((torch.diff(row_ids) <= 0).any()) or bool((row_ids >= num_rows).any()):
            raise ValueError(f"id_lows: need distinct rows of the group's {num_rows}, ascending within each block")
        bitmaps = _expect_tensor(tensors, "bitmaps", (torch.uint8,), 2)
        if tuple(bitmaps.shape) != (num_stored, bitmap_bytes(dim)):
            raise ValueError(
                f"bitmaps: shape {list(bitmaps.shape)}, expected [{num_stored}, {bitmap_bytes(dim)}] "
                "(a bit per column for each of id_lows)"
            )
        kept = unpack_bits(bitmaps, 8 * bitmaps.shape[1])
        if bool(kept[:, dim:].any()):
            raise ValueError(f"bitmaps: marks a column beyond the {dim} columns")
        sizes = kept.sum(1)
        if bool((sizes == 0).any()):
            raise ValueError("bitmaps: a stored row keeps no column (a row storing nothing has no id)")
        values = _expect_tensor(tensors, "values", _stored_dtypes(layout), 1)
        if len(values) != int(sizes.sum()):
            raise ValueError(f"values: {len(values)} values, the bitmaps keep {int(sizes.sum())}")
        _check_row_params(layout, tensors, num_stored, STORED_ROWS)


def split_ids(row_ids: torch.Tensor, num_rows: int) -> dict[str, torch.Tensor]:
    """Stored rows' ids ``[M]`` (ascending) as saved: ``id_lows`` (each id's low byte) and ``id_blocks`` (the
    stored rows before each block of :data:`~embdim.storage.ID_BLOCK_ROWS` rows)."""
    row_ids = row_ids.long()
    counts = torch.bincount(row_ids // ID_BLOCK_ROWS, minlength=-(-num_rows // ID_BLOCK_ROWS))
    return {
        "id_lows": (row_ids % ID_BLOCK_ROWS).to(_torch(ID_LOW_DTYPE)),
        "id_blocks": (counts.cumsum(0) - counts).to(_torch(offset_dtype(num_rows))),
    }


def whole_ids(lows: torch.Tensor, blocks: torch.Tensor, num_rows: int) -> torch.Tensor:
    """The inverse of :func:`split_ids`: ids ``[M]`` in :func:`~embdim.storage.offset_dtype` of ``num_rows``
    (blocks whose counts do not rise give ids that are out of order, which a check refuses)."""
    counts = torch.diff(blocks.long(), append=blocks.new_tensor([len(lows)]).long()).clamp_min(0)
    block_of = torch.repeat_interleave(torch.arange(len(blocks), device=lows.device), counts)[: len(lows)]
    block_of = nn.functional.pad(block_of, (0, len(lows) - len(block_of)), value=len(blocks))
    return (block_of * ID_BLOCK_ROWS + lows.long()).to(_torch(offset_dtype(num_rows)))


def compact_index(row_ids: torch.Tensor, kept: torch.Tensor, num_rows: int) -> dict[str, torch.Tensor]:
    """A :class:`CompactGroup`'s saved index, in the dtypes :mod:`embdim.storage` chooses.

    Args:
        row_ids: int ``[M]``, the rows that store something, ascending.
        kept: bool ``[M, d]``, each one's kept columns.
        num_rows: the group's rows ``R``.
    """
    return {**split_ids(row_ids, num_rows), "bitmaps": pack_bits(kept)}


def hashed_buckets(ids: torch.Tensor, a: torch.Tensor, b: torch.Tensor, buckets: torch.Tensor) -> torch.Tensor:
    """The hashing trick's bucket of each id: id 0 (the OOV id) keeps bucket 0 to itself, any other id goes
    to ``1 + ((a * id + b) mod p) mod (m - 1)`` (``p``: :data:`~embdim.storage.HASH_PRIME`), integer
    arithmetic only, so the buckets are the same on every machine.

    Args:
        ids: int [..., F_g], ids in ``[0, n_f)`` of each field (below ``p``).
        a: int64 [F_g], each field's multiplier in ``[1, p)``.
        b: int64 [F_g], each field's offset in ``[0, p)``.
        buckets: int64 [F_g], each field's bucket count ``m_f >= 2``.
    Returns:
        int64 [..., F_g], buckets in ``[0, m_f)``.
    """
    ids = ids.long()
    spread = torch.remainder(torch.remainder(a * ids + b, HASH_PRIME), buckets - 1)
    return torch.where(ids == 0, 0, spread + 1)


class _SharedRowGroup(_TableGroup):
    """Fields whose ids read full-width rows of one table ``weight [R, d]`` that ids share (R: the stored
    rows, :meth:`table_rows`, fields back to back); int8 tables also hold ``scale`` and ``bias`` ``[R]``."""

    def __init__(
        self,
        field_ids: Sequence[int],
        rows: Sequence[int],
        table_rows: Sequence[int],
        weight: torch.Tensor,
        dim: int,
        row_params: dict[str, torch.Tensor] | None,
    ) -> None:
        super().__init__(field_ids, rows, dim)
        self._table_rows = tuple(int(r) for r in table_rows)
        self._keep_values("weight", weight, row_params or {})
        starts = torch.from_numpy(field_bounds(self._table_rows)[:-1])
        self.register_buffer("table_offsets", starts, persistent=False)

    def table_rows(self) -> list[int]:
        return list(self._table_rows)

    def value_rows(self) -> None:
        return None

    def stored_sizes(self) -> torch.Tensor:
        # every id reads a full-width row (rows are shared, never cut)
        return torch.full((sum(self.rows),), self.dim, dtype=torch.long)

    @staticmethod
    def _check_weight(layout: dict[str, Any], tensors: dict[str, torch.Tensor], table_rows: int, what: str) -> None:
        """``weight`` ``[table_rows, d]`` in the layout's precision, and an int8 table's scales and biases."""
        dim = layout["dim"]
        weight = _expect_tensor(tensors, "weight", _stored_dtypes(layout), 2)
        if tuple(weight.shape) != (table_rows, dim):
            raise ValueError(f"weight: shape {list(weight.shape)}, expected [{table_rows}, {dim}] ({what})")
        _check_row_params(layout, tensors, table_rows)


def _layout_counts(layout: dict[str, Any], key: str) -> list[int]:
    """A shared-row group's per-field bucket counts under ``key``: one int per field, each in
    ``[MIN_BUCKETS, n_f)`` (a field whose ids share no row is stored as a plain table, not here)."""
    counts, rows = layout.get(key), layout["rows"]
    valid = isinstance(counts, list) and len(counts) == len(rows)
    valid = valid and all(isinstance(c, int) and not isinstance(c, bool) for c in counts)
    if not valid or any(not MIN_BUCKETS <= c < n for c, n in zip(counts, rows, strict=True)):
        raise ValueError(
            f"layout '{key}': need one count per field in [{MIN_BUCKETS}, its rows {rows}), got {counts!r}"
        )
    return counts


class HashedGroup(_SharedRowGroup):
    """The hashing trick: field f's ids share its ``m_f`` rows of ``weight [sum m, d]`` by
    :func:`hashed_buckets` with its ``hash_a`` and ``hash_b`` (int32 ``[F_g]``); layout key ``buckets``."""

    kind = "hashed"

    def __init__(
        self,
        field_ids: Sequence[int],
        rows: Sequence[int],
        buckets: Sequence[int],
        weight: torch.Tensor,
        hash_a: torch.Tensor,
        hash_b: torch.Tensor,
        dim: int,
        row_params: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__(field_ids, rows, buckets, weight, dim, row_params)
        self.buckets = tuple(int(m) for m in buckets)
        self.register_buffer("hash_a", hash_a.detach())
        self.register_buffer("hash_b", hash_b.detach())
        # the hash in int64 (a * id needs 62 bits), derived from the stored int32 parameters
        self.register_buffer("_a", hash_a.detach().long(), persistent=False)
        self.register_buffer("_b", hash_b.detach().long(), persistent=False)
        self.register_buffer("_m", torch.tensor(self.buckets, dtype=torch.long), persistent=False)

    def bucket(self, ids: torch.Tensor) -> torch.Tensor:
        """ids ``[B, F_g]`` -> each id's bucket within its field, int64 ``[B, F_g]``."""
        return hashed_buckets(ids, self._a, self._b, self._m)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.read(self.bucket(ids) + self.table_offsets)

    def layout(self) -> dict[str, Any]:
        return {**super().layout(), "buckets": list(self.buckets)}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight.detach(), **self.row_params(), "hash_a": self.hash_a, "hash_b": self.hash_b}

    @classmethod
    def from_saved(cls, layout: dict[str, Any], tensors: dict[str, torch.Tensor]) -> HashedGroup:
        params = {k: tensors[k] for k in ("scale", "bias") if k in tensors}
        fields, rows, buckets, dim = layout["field_ids"], layout["rows"], layout["buckets"], layout["dim"]
        return cls(fields, rows, buckets, tensors["weight"], tensors["hash_a"], tensors["hash_b"], dim, params)

    def with_precision(self, precision: str) -> HashedGroup:
        encoded = self._encoded(precision)
        weight = encoded.pop("values")
        return HashedGroup(self.field_ids, self.rows, self.buckets, weight, self.hash_a, self.hash_b, self.dim, encoded)

    @classmethod
    def check_saved(cls, layout: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        _expect_names(tensors, {"weight", "hash_a", "hash_b", *_row_param_names(layout)})
        buckets = _layout_counts(layout, "buckets")
        cls._check_weight(layout, tensors, sum(buckets), "the fields' buckets")
        param = _torch(HASH_PARAM_DTYPE)
        for name, low in (("hash_a", 1), ("hash_b", 0)):
            values = _expect_tensor(tensors, name, (param,), 1)
            if len(values) != len(buckets):
                raise ValueError(f"{name}: {len(values)} values, expected one per field ({len(buckets)})")
            if bool(((values < low) | (values >= HASH_PRIME)).any()):
                raise ValueError(f"{name}: a hash parameter outside [{low}, {HASH_PRIME})")


class QRGroup(_SharedRowGroup):
    """Quotient-remainder embeddings: field f with ``c_f`` buckets (layout key ``collisions``) stores
    ``q_f = ceil(n_f / c_f)`` quotient rows and then ``c_f`` remainder rows in ``weight [sum (q + c), d]``;
    id ``i`` reads quotient row ``i // c_f`` and remainder row ``i % c_f`` and combines them (layout key
    ``combine``: ``mult``, their element-wise product, or ``add``, their sum)."""

    kind = "qr"
    COMBINE = ("mult", "add")

    def __init__(
        self,
        field_ids: Sequence[int],
        rows: Sequence[int],
        collisions: Sequence[int],
        combine: str,
        weight: torch.Tensor,
        dim: int,
        row_params: dict[str, torch.Tensor] | None = None,
    ) -> None:
        quotient_rows = [-(-int(n) // int(c)) for n, c in zip(rows, collisions, strict=True)]
        table_rows = [q + int(c) for q, c in zip(quotient_rows, collisions, strict=True)]
        super().__init__(field_ids, rows, table_rows, weight, dim, row_params)
        if combine not in self.COMBINE:
            raise ValueError(f"combine must be one of {', '.join(self.COMBINE)}, got {combine!r}")
        self.collisions = tuple(int(c) for c in collisions)
        self.combine = combine
        self.register_buffer("_c", torch.tensor(self.collisions, dtype=torch.long), persistent=False)
        # field f's remainder rows start after its quotient rows
        remainder_starts = self.table_offsets + torch.tensor(quotient_rows, dtype=torch.long)
        self.register_buffer("remainder_offsets", remainder_starts, persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        quotient_rows = torch.div(ids, self._c, rounding_mode="floor") + self.table_offsets
        # both rows of every id in one read [2, B, F_g, d]: one gather (and one int8 decode) instead of two
        quotient, remainder = self.read(
            torch.stack([quotient_rows, torch.remainder(ids, self._c) + self.remainder_offsets])
        ).unbind(0)
        return quotient * remainder if self.combine == "mult" else quotient + remainder

    def layout(self) -> dict[str, Any]:
        return {**super().layout(), "collisions": list(self.collisions), "combine": self.combine}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight.detach(), **self.row_params()}

    @classmethod
    def from_saved(cls, layout: dict[str, Any], tensors: dict[str, torch.Tensor]) -> QRGroup:
        params = {k: tensors[k] for k in ("scale", "bias") if k in tensors}
        fields, rows, collisions, dim = layout["field_ids"], layout["rows"], layout["collisions"], layout["dim"]
        return cls(fields, rows, collisions, layout["combine"], tensors["weight"], dim, params)

    def with_precision(self, precision: str) -> QRGroup:
        encoded = self._encoded(precision)
        weight = encoded.pop("values")
        return QRGroup(self.field_ids, self.rows, self.collisions, self.combine, weight, self.dim, encoded)

    @classmethod
    def check_saved(cls, layout: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        _expect_names(tensors, {"weight", *_row_param_names(layout)})
        collisions = _layout_counts(layout, "collisions")
        if layout.get("combine") not in cls.COMBINE:
            found = layout.get("combine")
            raise ValueError(f"layout 'combine': must be one of {', '.join(cls.COMBINE)}, got {found!r}")
        rows = sum(-(-n // c) + c for n, c in zip(layout["rows"], collisions, strict=True))
        cls._check_weight(layout, tensors, rows, "each field's quotient rows, then its remainder rows")


def _stored_rows_per_run(run_rows: torch.Tensor, run_sizes: torch.Tensor) -> torch.Tensor:
    """Rows of each run that store values (all of a run's rows, or none where its size is 0), int64 [runs]."""
    return torch.diff(run_rows.long()) * (run_sizes > 0)


def _stored_rank(sizes: torch.Tensor) -> torch.Tensor:
    """Each row's rank among the rows that store values (``sizes [R] > 0``), int32 while it fits, ``[R]``; a row
    storing nothing gets the stored row's before it (or the first's): any is right, its values are masked."""
    stored = int(torch.count_nonzero(sizes))
    rank = (torch.cumsum(sizes > 0, 0) - 1).clamp_(0, max(stored - 1, 0))
    return rank.to(torch.int32 if stored <= torch.iinfo(torch.int32).max else torch.int64)


def _padded(flat: torch.Tensor, pad: int) -> torch.Tensor:
    """``flat`` ``[n]`` followed by ``pad`` zeros, in one new tensor ``[n + pad]``."""
    out = torch.zeros(len(flat) + pad, dtype=flat.dtype, device=flat.device)
    out[: len(flat)] = flat
    return out


FLOAT_DTYPES = (VALUES,)
INDEX_DTYPES = (torch.int32, torch.int64)
SIZE_DTYPES = (torch.uint8, torch.int16)


def _stored_dtypes(layout: dict[str, Any]) -> tuple[torch.dtype, ...]:
    """The dtype a group's values must have: its layout's precision's (``fp32`` when absent)."""
    return (STORED[layout.get("precision", "fp32")],)


def _row_param_names(layout: dict[str, Any]) -> set[str]:
    return {"scale", "bias"} if layout.get("precision") == ROW_WISE else set()


STORED_ROWS = "row that stores values"


def _check_row_params(layout: dict[str, Any], tensors: dict[str, torch.Tensor], rows: int, which: str = "row") -> None:
    """An int8 group's ``scale`` and ``bias``: float16 ``[rows]`` (one per ``which``), finite, scales not negative."""
    if missing := sorted(_row_param_names(layout) - set(tensors)):
        raise ValueError(f"missing tensors {missing}")
    for name in sorted(_row_param_names(layout)):
        tensor = _expect_tensor(tensors, name, (ROW_PARAMS,), 1)
        if len(tensor) != rows:
            raise ValueError(f"{name}: {len(tensor)} values, expected one per {which} ({rows})")
    if _row_param_names(layout) and bool((tensors["scale"] < 0).any()):
        raise ValueError("scale: holds a negative scale")


def _expect_names(tensors: dict[str, torch.Tensor], required: set[str], optional: set[str] = frozenset()) -> None:
    names = set(tensors)
    if missing := required - names:
        raise ValueError(f"missing tensors {sorted(missing)}")
    if extra := names - required - optional:
        raise ValueError(f"unexpected tensors {sorted(extra)}")


def _expect_tensor(
    tensors: dict[str, torch.Tensor], name: str, dtypes: tuple[torch.dtype, ...], ndim: int
) -> torch.Tensor:
    tensor = tensors[name]
    if tensor.dtype not in dtypes or tensor.ndim != ndim:
        shown = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(
            f"{name}: {str(tensor.dtype).removeprefix('torch.')} with {tensor.ndim} dims, expected {shown} with {ndim}"
        )
    if not all_finite(tensor):
        raise ValueError(f"{name}: holds non-finite values")
    return tensor


def _check_offsets(tensors: dict[str, torch.Tensor], name: str, rows: int, total: int, dim: int) -> torch.Tensor:
    """Row offsets ``[rows + 1]`` from 0 to ``total``, each row at most ``dim`` long; returns them as int64."""
    offsets = _expect_tensor(tensors, name, INDEX_DTYPES, 1).long()
    steps = torch.diff(offsets)
    if len(offsets) != rows + 1 or offsets[0] != 0 or offsets[-1] != total or bool(((steps < 0) | (steps > dim)).any()):
        raise ValueError(f"{name}: need {rows + 1} offsets rising from 0 to {total}, at most {dim} apart")
    return offsets


class SlimEmbedding(nn.Module):
    """ids ``[B, F]`` -> embeddings ``[B, F, d]`` from slim storage groups.

    Fields that no group holds (dropped entirely) embed to zeros. A model whose groups are all plain dense
    tables of several widths (DML's cut) is *packed* by :meth:`load` and :meth:`with_precision`: the tables are views
    of one flat buffer followed by ``d`` zeros, so a lookup reads every field's row as one window of that
    buffer (a gather and a mask) instead of one gather per group and a reordering (``packed``: that buffer,
    and for int8 the tables' scales and biases as views of one float16 ``[2, sum rows]``).
    """

    def __init__(
        self,
        plan: EmbeddingPlan,
        groups: Sequence[SlimGroup],
        packed: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> None:
        super().__init__()
        self.plan = plan
        self.dim = plan.dim
        self.groups = nn.ModuleList(groups)
        held = [f for g in groups for f in g.field_ids]
        if len(set(held)) != len(held):
            raise ValueError("a field is stored by more than one group")
        if any(g.precision != plan.precision for g in groups):
            raise ValueError(f"every group must store its values in the plan's precision ({plan.precision})")
        self.num_fields = plan.num_fields
        self._identity = len(groups) == 1 and held == list(range(self.num_fields))
        for i, g in enumerate(groups):
            self.register_buffer(f"_fields{i}", torch.tensor(g.field_ids, dtype=torch.long), persistent=False)
        self.register_buffer("gather", self._gather_columns(), persistent=False)
        self._use_packed(packed)

    def _use_packed(self, packed: tuple[torch.Tensor, torch.Tensor | None] | None) -> None:
        """Read through ``packed`` (see the class docstring), or group by group when ``None``."""
        self._packed, self._packed_params = packed if packed is not None else (None, None)
        if packed is None:
            return
        values, params = packed
        # each field's first value in the buffer, its row width, its first row's int8 scale and bias, and whether
        # a group holds it (a dropped field reads the buffer's first value and row, then masks them)
        base, width, first_row = (torch.zeros(self.num_fields, dtype=torch.long) for _ in range(3))
        for g in self.groups:
            start = g.weight.storage_offset() - values.storage_offset()
            param_start = 0 if params is None else g.scale.storage_offset() - params.storage_offset()
            for f, row in zip(g.field_ids, g.row_offsets.tolist(), strict=True):
                base[f], width[f] = start + row * g.weight.shape[1], g.weight.shape[1]
                first_row[f] = param_start + row
        held = (width > 0).long()  # a held field's table is at least one column wide
        mask = (torch.arange(self.dim) < width.unsqueeze(1)).to(VALUES)
        index = {"base": base, "width": width, "first_row": first_row, "held": held, "mask": mask}
        for name, tensor in index.items():
            self.register_buffer(f"_field_{name}", tensor.to(values.device), persistent=False)

    def _apply(self, fn: Any, recurse: bool = True) -> SlimEmbedding:
        super()._apply(fn, recurse)
        if self._packed is not None and not self._still_packed():  # moved or converted: pack the new tensors again
            self._use_packed(_pack_dense(list(self.groups), self.plan))
        return self

    def _still_packed(self) -> bool:
        """Whether every group's values (and int8 scales) are still views of the packed buffers."""
        views = [(g.weight, self._packed) for g in self.groups]
        if self._packed_params is not None:
            views += [(g.scale, self._packed_params) for g in self.groups]
        return all(t.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() for t, b in views)

    def _gather_columns(self) -> torch.Tensor:
        """Output column ``f * d + j`` -> its position in the groups' flattened narrow outputs, int64 [F * d].

        Column ``j`` of field ``f`` comes from the group holding ``f`` when ``j`` is below that group's
        width; every other column (cut dimensions, dropped fields) reads one shared zero slot at the end.
        """
        source: dict[tuple[int, int], int] = {}
        start = 0
        for g in self.groups:
            for k, f in enumerate(g.field_ids):
                for j in range(g.width):
                    source[f, j] = start + k * g.width + j
            start += len(g.field_ids) * g.width
        zero_slot = start
        columns = [source.get((f, j), zero_slot) for f in range(self.num_fields) for j in range(self.dim)]
        return torch.tensor(columns, dtype=torch.long)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self._identity:
            return self.groups[0](ids)
        if self._packed is not None and self._packed.device == ids.device:  # (moved elsewhere: the groups read)
            starts = (self._field_base + ids * self._field_width).reshape(-1)
            rows = self._packed.unfold(0, self.dim, 1).index_select(0, starts).view(*ids.shape, self.dim)
            if self._packed_params is None:
                values = rows.to(VALUES)
            else:  # int8: each row decoded by its scale and bias, as a group decodes it (the cut columns masked)
                param_rows = self._field_first_row + ids * self._field_held
                values = decode_rowwise(rows, self._packed_params[0], self._packed_params[1], param_rows)
            return (values * self._field_mask).add_(0.0)  # +0.0, never -0.0, where cut (see _prefix)
        # one gather of flat columns instead of padding each group to d and reordering fields (fewer copies)
        batch = ids.shape[0]
        parts = []
        for i, group in enumerate(self.groups):
            parts.append(group.narrow(ids.index_select(1, getattr(self, f"_fields{i}"))).flatten(1))
        parts.append(torch.zeros(batch, 1, dtype=VALUES, device=ids.device))
        return torch.cat(parts, dim=1).index_select(1, self.gather).view(batch, self.num_fields, self.dim)

    def with_precision(self, precision: str) -> SlimEmbedding:
        """The same embedding with its values stored in ``precision`` (``fp32``, ``fp16`` or ``int8`` row-wise;
        projections stay float32): what the bytes are and what a lookup returns change, the plan's sizes not.
        Converting a converted embedding decodes its values first; the precision it has already is itself."""
        if precision == self.plan.precision:
            return self
        plan = dataclasses.replace(self.plan, precision=precision)
        groups = [g.with_precision(precision) for g in self.groups]
        return SlimEmbedding(plan, groups, _pack_dense(groups, plan))

    def stored_bytes(self) -> int:
        """Bytes of every stored tensor (values, projections, index structures)."""
        return sum(t.numel() * t.element_size() for g in self.groups for t in g.tensors().values())

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"g{i}.{k}": v for i, g in enumerate(self.groups) for k, v in g.tensors().items()}
        write_tensors(folder / EMBEDDING_TENSORS, tensors)
        meta = {"plan": self.plan.to_dict(), "groups": [g.layout() for g in self.groups]}
        (folder / EMBEDDING_JSON).write_text(json.dumps(meta))

    @classmethod
    def load(cls, folder: str | Path) -> SlimEmbedding:
        """Read ``embedding.json`` + ``embedding.safetensors`` (no pickle), checking every group against
        the plan before use; a damaged or edited file is a :class:`~embdim.errors.ModelFileError` naming
        the file and the field."""
        folder = Path(folder)
        meta = read_json(folder / EMBEDDING_JSON)
        where = folder / EMBEDDING_JSON
        try:
            plan = EmbeddingPlan.from_dict(meta["plan"])
        except (KeyError, TypeError, ValueError) as err:
            raise ModelFileError(f"{where}: field 'plan': {shorten(str(err))}") from None
        layouts = meta.get("groups")
        if not isinstance(layouts, list) or (not layouts and plan.num_params > plan.extra_params):
            raise ModelFileError(
                f"{where}: field 'groups': expected a list of group layouts, got {shorten(repr(layouts))}"
            )
        tensors = read_safetensors(folder / EMBEDDING_TENSORS)
        groups, held = [], set()
        for i, layout in enumerate(layouts):
            field = f"groups[{i}]"
            _check_layout(layout, plan, held, f"{where}: field '{field}'")
            mine = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"g{i}.")}
            kind = GROUP_KINDS[layout["kind"]]
            try:
                kind.check_saved(layout, mine)
            except ValueError as err:
                raise ModelFileError(f"{folder / EMBEDDING_TENSORS}: group g{i} ({layout['kind']}): {err}") from None
            groups.append(kind.from_saved(layout, mine))
        strays = sorted(k for k in tensors if not k.startswith(tuple(f"g{i}." for i in range(len(layouts)))))
        if strays:
            raise ModelFileError(f"{folder / EMBEDDING_TENSORS}: tensors of no group: {shorten(str(strays))}")
        _check_sizes_match_plan(groups, plan, where)
        return cls(plan, groups, _pack_dense(groups, plan))


def _pack_dense(groups: list[SlimGroup], plan: EmbeddingPlan) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """For plain dense tables (no projection), not already one group of every field: one flat buffer holding
    every table back to back, then ``dim`` zeros, and for int8 one float16 ``[2, sum rows]`` holding their scales
    and then their biases; the tables' values (and scales and biases) become views of them."""
    plain = all(isinstance(g, DenseGroup) and g.projection is None for g in groups)
    one_table = len(groups) == 1 and list(groups[0].field_ids) == list(range(plan.num_fields))
    if not groups or not plain or one_table:
        return None
    sizes = [g.weight.numel() for g in groups]
    device = groups[0].weight.device
    packed = torch.zeros(sum(sizes) + plan.dim, dtype=groups[0].weight.dtype, device=device)
    int8 = plan.precision == ROW_WISE
    params = torch.zeros(2, sum(g.weight.shape[0] for g in groups) if int8 else 0, dtype=ROW_PARAMS, device=device)
    start = row = 0
    for group, size in zip(groups, sizes, strict=True):
        view = packed[start : start + size].view_as(group.weight)
        view.copy_(group.weight.detach())
        group.weight = nn.Parameter(view) if isinstance(group.weight, nn.Parameter) else view
        start += size
        if int8:
            rows = slice(row, row + group.weight.shape[0])
            params[0, rows], params[1, rows] = group.scale, group.bias
            group.scale, group.bias = params[0, rows], params[1, rows]
            row = rows.stop
    return packed, params if int8 else None


def _check_sizes_match_plan(groups: list[SlimGroup], plan: EmbeddingPlan, where: Path) -> None:
    """Every field the plan keeps is stored, with exactly the per-field widths or per-row sizes it records,
    in as many table rows as its storage kind keeps (ids that share rows: their buckets)."""
    stored: dict[int, torch.Tensor] = {}
    table_rows: dict[int, int] = {}
    for group in groups:
        for f, sizes in zip(group.field_ids, torch.split(group.stored_sizes(), list(group.rows)), strict=True):
            stored[f] = sizes
        table_rows.update(zip(group.field_ids, group.table_rows(), strict=True))
    for f, (name, want) in enumerate(zip(plan.field_names, plan.kind.stored_rows(plan), strict=True)):
        if table_rows.get(f, 0) != want:
            got = table_rows.get(f, 0)
            raise ModelFileError(f"{where}: field {name!r}: {got} stored rows, its {plan.storage} storage keeps {want}")
    for f, name in enumerate(plan.field_names):
        if plan.row_sizes is not None:
            want = torch.as_tensor(plan.row_sizes[f], dtype=torch.long)
        else:
            want = torch.full((plan.vocab_sizes[f],), plan.field_dims[f], dtype=torch.long)
        got = stored.get(f, torch.zeros_like(want))
        if not torch.equal(got, want):
            raise ModelFileError(f"{where}: field {name!r}: the stored sizes differ from the plan's")


def _check_layout(layout: Any, plan: EmbeddingPlan, held: set[int], where: str) -> None:
    """A group layout's kind, fields, rows and width against the plan (fields may be held once)."""
    if not isinstance(layout, dict) or layout.get("kind") not in GROUP_KINDS:
        raise ModelFileError(f"{where}: 'kind' must be one of {sorted(GROUP_KINDS)}")
    fields, rows = layout.get("field_ids"), layout.get("rows")
    valid = (
        isinstance(fields, list)
        and isinstance(rows, list)
        and len(fields) == len(rows) > 0
        and all(isinstance(f, int) and 0 <= f < plan.num_fields for f in fields)
    )
    if not valid:
        raise ModelFileError(f"{where}: 'field_ids' and 'rows' must be equal-length lists of fields of the plan")
    if held & set(fields) or len(set(fields)) != len(fields):
        raise ModelFileError(f"{where}: 'field_ids': a field is stored by more than one group")
    held.update(fields)
    want = [plan.vocab_sizes[f] for f in fields]
    if rows != want:
        raise ModelFileError(f"{where}: 'rows' {shorten(str(rows))} differ from the plan's vocabulary sizes {want}")
    if layout.get("dim") != plan.dim:
        raise ModelFileError(f"{where}: 'dim' {layout.get('dim')!r} differs from the plan's {plan.dim}")
    if layout.get("precision", "fp32") != plan.precision:
        found = layout.get("precision")
        raise ModelFileError(f"{where}: 'precision' {found!r} differs from the plan's {plan.precision}")


def read_json(path: Path) -> dict[str, Any]:
    """A model file's JSON object; missing or unparsable is a :class:`ModelFileError` naming it."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFileError(f"{path}: missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: expected a JSON object")
    return data


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A model file's tensors (safetensors: no code runs); a damaged file is a :class:`ModelFileError`."""
    if not path.is_file():
        raise ModelFileError(f"{path}: missing")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for every kind of damage
        raise ModelFileError(f"{path}: not a readable safetensors file ({shorten(str(err))})") from None
