"""Lookup backends: the physical embedding tables and the id -> raw vector gather.

A searcher declares the raw tables it needs as :class:`TableSpec`; a backend (plain torch here,
TorchRec in :mod:`embdim.distributed.torchrec_lookup`, both created by name in :mod:`embdim.backends`)
owns them and returns :class:`RawEmbeddings`.
A backend may also update its tables inside the backward pass (:meth:`Lookup.fuse_optimizer`). Models and
searchers never touch a backend's internals, so one backend can replace another.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

DEFAULT_INIT_STD = 0.01
#: Optimizers a backend can fuse into its backward pass (fbgemm's CPU kernels: no Adam), by train.optimizer name.
FUSABLE_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD}


@dataclass(frozen=True)
class TableSpec:
    """One physical table holding the rows of one or more fields (each field keeps its own rows).

    Attributes:
        name: table name (unique within a layer).
        field_ids: the fields stored in this table, in order; field ``field_ids[j]`` owns rows
            ``offsets[j] : offsets[j] + rows[j]``. A field is a column of the ids the lookup reads: the
            model's fields, unless a searcher maps them first (:meth:`Searcher.lookup_ids
            <embdim.searchers.base.Searcher.lookup_ids>`: hashed buckets, a quotient and a remainder).
        rows: the rows of each of those fields (its vocabulary size, or its buckets).
        dim: raw width of the table (may differ from the model's ``d``: MDE, MLET).
        init_std: standard deviation of the normal initialisation.
    """

    name: str
    field_ids: tuple[int, ...]
    rows: tuple[int, ...]
    dim: int
    init_std: float = DEFAULT_INIT_STD

    @property
    def num_rows(self) -> int:
        return sum(self.rows)

    @property
    def offsets(self) -> tuple[int, ...]:
        out, total = [], 0
        for r in self.rows:
            out.append(total)
            total += r
        return tuple(out)


def group_fields_by_width(
    widths: Sequence[int], vocab_sizes: Sequence[int], init_std: float, prefix: str = "t"
) -> list[TableSpec]:
    """One table per distinct width (fields of equal width share a table; width-0 fields get none)."""
    specs = []
    for width in sorted({w for w in widths if w > 0}, reverse=True):
        fields = tuple(f for f, w in enumerate(widths) if w == width)
        specs.append(TableSpec(f"{prefix}{width}", fields, tuple(int(vocab_sizes[f]) for f in fields), width, init_std))
    return specs


class RawEmbeddings:
    """Looked-up raw vectors, one tensor ``[B, F_t, D_t]`` per table, and the rows they came from.

    ``stacked()`` gives ``[B, F, D]`` when every field has the same raw width (free when a single
    table holds all fields in order, the common case); ``field(f)`` gives ``[B, D_f]``. ``rows`` holds
    each table's looked-up row indices ``[B, F_t]`` (int64), for :meth:`distinct_row_l2`.
    """

    def __init__(
        self,
        specs: Sequence[TableSpec],
        values: Sequence[torch.Tensor],
        num_fields: int,
        rows: Sequence[torch.Tensor] | None = None,
    ) -> None:
        self.specs = list(specs)
        self.values = list(values)
        self.num_fields = num_fields
        self.rows = None if rows is None else list(rows)
        self._where = {f: (t, j) for t, s in enumerate(self.specs) for j, f in enumerate(s.field_ids)}

    def distinct_row_l2(self) -> torch.Tensor:
        """``sum ||w_r||^2`` over the distinct rows this lookup read (a row looked up k times counts once):
        a 0-d tensor whose gradient reaches only those rows, through the lookup's own output (so fused
        tables apply it in their backward)."""
        if self.rows is None:
            raise ValueError("these raw embeddings carry no row indices (the lookup backend did not record them)")
        return sum(
            (distinct_row_l2(rows, values) for rows, values in zip(self.rows, self.values, strict=True)),
            torch.zeros(()),
        )

    def field(self, f: int) -> torch.Tensor:
        t, j = self._where[f]
        return self.values[t][:, j]

    def stacked(self) -> torch.Tensor:
        if len(self.values) == 1 and self.specs[0].field_ids == tuple(range(self.num_fields)):
            return self.values[0]
        widths = {s.dim for s in self.specs}
        if len(widths) != 1:
            raise ValueError(f"cannot stack raw embeddings of different widths {sorted(widths)}")
        return torch.stack([self.field(f) for f in range(self.num_fields)], dim=1)


def distinct_row_l2(rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``sum ||w_r||^2`` over the distinct rows among ``rows`` [...] whose looked-up vectors are ``values``
    [..., D]: each occurrence is weighted by one over its row's count in the batch."""
    flat = rows.reshape(-1)
    _, inverse, counts = torch.unique(flat, return_inverse=True, return_counts=True)
    weight = 1.0 / counts[inverse].to(values.dtype)
    return _WeightedSquares.apply(values.reshape(flat.numel(), -1), weight)


class _WeightedSquares(torch.autograd.Function):
    """``Σ_n weight[n] ||values[n]||²`` for ``values`` [N, D] and ``weight`` [N] (no gradient), with the
    gradient ``2 g weight[n] values[n]`` written out: one pass over the values each way, where autograd's
    square passes over them four times (the looked-up rows are as many values as the model's input)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(values, weight)
        return (torch.linalg.vector_norm(values, dim=1).square() * weight).sum()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        values, weight = ctx.saved_tensors
        return values * (2 * grad * weight).unsqueeze(1), None


class FusedTableOptimizer(ABC):
    """Stands in the trainer's optimizer list for tables a backend updates inside the backward pass.

    ``zero_grad()`` and ``step()`` do nothing to the tables (the update already happened);
    ``state_dict()`` / ``load_state_dict()`` save and restore the fused optimizer state, so
    checkpoints and resumes stay exact.
    """

    param_groups: list[dict[str, Any]]

    def zero_grad(self, set_to_none: bool = True) -> None:  # noqa: B027  (a no-op by design)
        """Nothing to clear: fused tables never hold a ``.grad``."""

    def step(self, closure: Any = None) -> None:  # noqa: B027  (a no-op by design)
        """Nothing to apply: the backward pass already updated the looked-up rows."""

    def apply_lr(self) -> None:  # noqa: B027  (backends without a rate of their own need nothing)
        """Make ``param_groups[0]["lr"]`` the rate of the next backward pass's updates at once, as a
        torch optimizer's next ``step()`` would use a changed rate."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Lookup(nn.Module, ABC):
    """Owns the raw tables described by ``specs``; ``forward(ids [B, F] int64) -> RawEmbeddings``."""

    def __init__(self, specs: Sequence[TableSpec], num_fields: int) -> None:
        super().__init__()
        self.specs = list(specs)
        self.num_fields = num_fields
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ValueError(f"table names must be unique, got {names}")

    @abstractmethod
    def forward(self, ids: torch.Tensor) -> RawEmbeddings: ...

    @abstractmethod
    def table_weight(self, name: str) -> torch.Tensor:
        """The whole table ``[num_rows, dim]`` (a view where possible; gathered when sharded)."""

    def field_weight(self, f: int) -> torch.Tensor:
        """Rows of field ``f``: ``[n_f, D_f]``."""
        for spec in self.specs:
            if f in spec.field_ids:
                j = spec.field_ids.index(f)
                start = spec.offsets[j]
                return self.table_weight(spec.name)[start : start + spec.rows[j]]
        raise KeyError(f"field {f} has no table")

    def global_rows(self, spec: TableSpec, ids: torch.Tensor) -> torch.Tensor:
        """Row indices into ``spec``'s table for per-field ids ``[B, F]`` -> ``[B, F_t]``."""
        return ids[:, list(spec.field_ids)] + self.get_buffer(f"offsets_{spec.name}")

    def fuse_optimizer(self, name: str, lr: float) -> FusedTableOptimizer | None:
        """Update the tables with optimizer ``name`` inside the backward pass, if this backend can.

        Returns the stand-in for the trainer's optimizer list, or ``None`` when the backend has no
        fused update (its tables are then trained by torch optimizers like any parameter). A backend
        that can fuse some optimizers raises ``ValueError`` naming ``train.optimizer`` for the others.
        """
        return None


class TorchLookup(Lookup):
    """Plain ``nn.Embedding`` tables, one per :class:`TableSpec`, fields addressed by offsets.

    Args:
        specs: the tables.
        num_fields: F.
        sparse: produce sparse gradients (for SparseAdam / Adagrad / SGD on the tables).
    """

    def __init__(self, specs: Sequence[TableSpec], num_fields: int, sparse: bool = False) -> None:
        super().__init__(specs, num_fields)
        self.sparse = sparse
        self.tables = nn.ModuleDict()
        for spec in self.specs:
            table = nn.Embedding(spec.num_rows, spec.dim, sparse=sparse)
            nn.init.normal_(table.weight, std=spec.init_std)
            self.tables[spec.name] = table
            self.register_buffer(f"offsets_{spec.name}", torch.tensor(spec.offsets, dtype=torch.long), persistent=False)
        self._all_in_one = len(self.specs) == 1 and self.specs[0].field_ids == tuple(range(num_fields))

    def forward(self, ids: torch.Tensor) -> RawEmbeddings:
        if self._all_in_one:  # fast path: no column gather
            spec = self.specs[0]
            rows = [ids + self.get_buffer(f"offsets_{spec.name}")]
        else:
            rows = [self.global_rows(s, ids) for s in self.specs]
        values = [self.tables[s.name](r) for s, r in zip(self.specs, rows, strict=True)]
        return RawEmbeddings(self.specs, values, self.num_fields, rows)

    def table_weight(self, name: str) -> torch.Tensor:
        return self.tables[name].weight
