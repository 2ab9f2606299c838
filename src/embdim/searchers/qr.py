"""``qr``: quotient-remainder compositional embeddings (Shi et al., KDD 2020, arXiv 1909.02107).

Field f with collision factor ``c`` stores a quotient table ``Q_f [ceil(n_f / c), d]`` and a remainder
table ``R_f [c, d]``; id ``i`` combines ``Q_f[i // c]`` and ``R_f[i % c]`` [paper]::

    e_i = Q_f[i // c] * R_f[i % c]      combine: mult (element-wise; the paper's best)
    e_i = Q_f[i // c] + R_f[i % c]      combine: add

The two partitions of the ids (by quotient, by remainder) are complementary: no two ids share both rows,
so every id gets its own embedding [paper], from ``ceil(n_f / c) + c`` rows instead of ``n_f``. One ``c``
serves every field [paper: the DLRM reference's ``--qr-collisions``]; a field where the two tables store
no fewer rows than its plain table (``ceil(n_f / c) + c >= n_f``) keeps its plain ``n_f x d`` table
[ours: the reference keeps fields below a fixed row count plain instead].

Initialisation [ours]. The reference draws both tables from ``U(sqrt(1 / n_f), 1)`` (a ``uniform_``
call whose upper bound defaults to 1), so a product starts far from a plain table's values. Here the
combined vector starts at the ``full`` table's scale, with both tables alike. ``mult``: ``Q`` and ``R``
normal with mean 0 and standard deviation ``sqrt(std)``, so every value of ``Q[q] * R[r]`` has mean 0
and variance ``std^2``, the ``full`` table's (a product of two normals: the same variance, heavier
tails). ``add``: both ``N(0, std^2 / 2)``, so the sum is ``N(0, std^2)``, the ``full`` table's law
exactly. The two factors get the same scale because an adaptive optimizer moves each value by about its
learning rate whatever its size: a factor started near 1 beside one near ``std`` would hardly move, the
ids that share a quotient row would stay nearly alike, and the model learned markedly slower on the
tests' data. Weight decay on the tables (``train.embedding_weight_decay``) pulls both factors toward 0,
so it shrinks a product faster than a plain row.

OOV: id 0 is an id like any other (quotient 0, remainder 0): its pair of rows is its own.

Budget [ours]: :meth:`QRSearcher.for_budget` tries every ``c`` from 2 to just above the square root of
the largest field (where its two tables are smallest) and takes the one whose plan bytes are nearest
the target. ``c = 2`` keeps about half of a compressed field's rows, so budgets above about half the
``full`` bytes are out of reach, and a compressed field keeps about ``1 / c`` of its rows, so at large
budgets the steps between one ``c`` and the next are coarse: a budget between two steps may be out of
reach too.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from embdim.budget import LANDING_TOLERANCE, Budget, BudgetUnreachable, uniform_bytes
from embdim.data.schema import FieldInfo
from embdim.lookup import DEFAULT_INIT_STD, Lookup, RawEmbeddings, TableSpec
from embdim.plan import EmbeddingPlan
from embdim.registry import SEARCHERS
from embdim.searchers.base import Embedded, MethodMemory, Searcher, SearcherConfig, fields_plan
from embdim.slim import DenseGroup, QRGroup, SlimEmbedding
from embdim.storage import FLOAT_BYTES, MIN_BUCKETS, STORAGE_KINDS

STORAGE = "qr"


class QRConfig(SearcherConfig):
    collisions: int = Field(
        4,
        ge=MIN_BUCKETS,
        description="ids per quotient row c: field f gets a remainder table of c rows (id % c) and a quotient "
        "table of ceil(n_f / c) rows (id // c); a field where that saves no row keeps its plain table",
    )
    combine: Literal["mult", "add"] = Field(
        "mult", description="how an id's quotient and remainder rows combine: element-wise product or sum"
    )


def field_collisions(vocab_sizes: list[int], collisions: int) -> list[int]:
    """Each field's remainder rows: ``collisions``, or ``n_f`` (a plain table) where the two tables would
    store no fewer rows than ``n_f``."""
    shared = STORAGE_KINDS[STORAGE].shared_rows
    return [collisions if collisions < n and shared(n, collisions) < n else n for n in vocab_sizes]


def qr_plan(fields: list[FieldInfo], dim: int, buckets: list[int], details: dict | None = None) -> EmbeddingPlan:
    """The plan of quotient-remainder tables with these remainder rows per field (full width ``dim``)."""
    widths = [dim] * len(fields)
    return fields_plan("qr", fields, dim, widths, storage=STORAGE, buckets=buckets, details=details or {})


@SEARCHERS.register("qr")
class QRSearcher(Searcher):
    """Quotient-remainder embeddings: an id combines a quotient row and a remainder row of its field.

    ``lookup_ids(ids)``: ids ``[B, F]`` -> ``[B, F + K]``: each field's quotient (its id in a plain field),
    then the remainder of each of the ``K`` compressed fields.
    ``forward(raw, ids)``: ``[B, F, d]``: plain rows as looked up, compressed fields' rows combined.
    """

    Config = QRConfig
    shardable = True  # its tables are the lookup's; lookup_ids maps ids before the (sharded) lookup

    @classmethod
    def for_budget(
        cls, fields: list[FieldInfo], dim: int, config: SearcherConfig, budget: Budget
    ) -> tuple[int, SearcherConfig]:
        """The collision factor whose plan bytes land nearest ``budget``."""
        assert isinstance(config, QRConfig)
        target = budget.target_bytes(uniform_bytes(fields, dim))
        sizes = [f.vocab_size for f in fields]
        # beyond the square root of the largest field every compressed field's two tables grow again
        largest = max(MIN_BUCKETS, math.isqrt(max(sizes)) + 1)
        candidates = []
        for c in range(MIN_BUCKETS, largest + 1):
            stored = qr_plan(fields, dim, field_collisions(sizes, c)).num_bytes
            candidates.append((abs(stored - target), c, stored))
        gap, c, got = min(candidates)
        if gap > LANDING_TOLERANCE * target:
            low, high = min(s for _, _, s in candidates), max(s for _, _, s in candidates)
            raise BudgetUnreachable(
                f"qr ({config.combine}) gets no closer than {got:,} bytes to {target:,.0f}: its collision factors "
                f"{MIN_BUCKETS} to {largest} give {low:,} to {high:,} bytes"
            )
        return dim, config.model_copy(update={"collisions": c, "budget": None})

    @classmethod
    def training_memory(cls, fields: list[FieldInfo], dim: int, config: SearcherConfig) -> MethodMemory:
        """The quotient, remainder and plain tables."""
        assert isinstance(config, QRConfig)
        buckets = field_collisions([f.vocab_size for f in fields], config.collisions)
        return MethodMemory(tables=qr_plan(fields, dim, buckets).num_params * FLOAT_BYTES)

    def __init__(self, fields: list[FieldInfo], dim: int, config: QRConfig, init_std: float = DEFAULT_INIT_STD):
        super().__init__(fields, dim, config, init_std)
        self.buckets = field_collisions(self.vocab_sizes, config.collisions)
        self.compressed = [f for f, (c, n) in enumerate(zip(self.buckets, self.vocab_sizes, strict=True)) if c < n]
        self.plain = [f for f in range(self.num_fields) if f not in self.compressed]
        # the first F lookup columns: id // c (a plain field's divisor 1 leaves its id)
        divisor = [self.buckets[f] if f in self.compressed else 1 for f in range(self.num_fields)]
        self.register_buffer("divisor", torch.tensor(divisor, dtype=torch.long), persistent=False)
        self.register_buffer("compressed_fields", torch.tensor(self.compressed, dtype=torch.long), persistent=False)
        factors = torch.tensor([self.buckets[f] for f in self.compressed], dtype=torch.long)
        self.register_buffer("collision_factor", factors, persistent=False)
        order = self.plain + self.compressed  # the fields as forward concatenates them
        gather = [order.index(f) for f in range(self.num_fields)]
        self.register_buffer("gather", torch.tensor(gather, dtype=torch.long), persistent=False)
        self._identity = gather == list(range(self.num_fields))

    @property
    def num_lookup_fields(self) -> int:
        return self.num_fields + len(self.compressed)

    def table_specs(self) -> list[TableSpec]:
        """``plain`` (``n_f`` rows per plain field), ``quotient`` (``ceil(n_f / c)`` per compressed field,
        lookup columns ``f``) and ``remainder`` (``c`` per compressed field, lookup columns ``F + k``)."""
        specs, std = [], self.init_std
        if self.plain:
            rows = tuple(self.vocab_sizes[f] for f in self.plain)
            specs.append(TableSpec("plain", tuple(self.plain), rows, self.dim, std))
        if self.compressed:
            c = [self.buckets[f] for f in self.compressed]
            quotients = tuple(-(-self.vocab_sizes[f] // c_f) for f, c_f in zip(self.compressed, c, strict=True))
            remainders = tuple(range(self.num_fields, self.num_fields + len(self.compressed)))
            # mult: two N(0, std) factors, whose product has the full table's variance std^2; add: two
            # N(0, std^2 / 2), whose sum is N(0, std^2)
            factor_std = math.sqrt(std) if self.config.combine == "mult" else std / math.sqrt(2)
            q = TableSpec("quotient", tuple(self.compressed), quotients, self.dim, factor_std)
            r = TableSpec("remainder", remainders, tuple(c), self.dim, factor_std)
            specs += [q, r]
        return specs

    def lookup_ids(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long()
        first = torch.div(ids, self.divisor, rounding_mode="floor")
        if not self.compressed:
            return first
        remainders = torch.remainder(ids.index_select(1, self.compressed_fields), self.collision_factor)
        return torch.cat([first, remainders], dim=1)

    def forward(self, raw: RawEmbeddings, ids: torch.Tensor) -> Embedded:
        tables = {spec.name: values for spec, values in zip(raw.specs, raw.values, strict=True)}
        parts = [tables["plain"]] if self.plain else []
        if self.compressed:
            q, r = tables["quotient"], tables["remainder"]  # [B, K, d] each
            parts.append(q * r if self.config.combine == "mult" else q + r)
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return Embedded(out if self._identity else out[:, self.gather])

    def plan(self, lookup: Lookup) -> EmbeddingPlan:
        details = {
            "collisions": self.config.collisions,
            "combine": self.config.combine,
            "compressed_fields": [self.fields[f].name for f in self.compressed],
        }
        return qr_plan(self.fields, self.dim, list(self.buckets), details)

    def export(self, lookup: Lookup) -> SlimEmbedding:
        groups = []
        if self.compressed:  # per field its quotient rows, then its remainder rows (torch.cat copies)
            blocks = []
            for k, f in enumerate(self.compressed):
                blocks += [lookup.field_weight(f).detach(), lookup.field_weight(self.num_fields + k).detach()]
            rows = [self.vocab_sizes[f] for f in self.compressed]
            collisions = [self.buckets[f] for f in self.compressed]
            groups.append(QRGroup(self.compressed, rows, collisions, self.config.combine, torch.cat(blocks), self.dim))
        if self.plain:
            weight = torch.cat([lookup.field_weight(f).detach() for f in self.plain])
            groups.append(DenseGroup(self.plain, [self.vocab_sizes[f] for f in self.plain], weight, None, self.dim))
        return SlimEmbedding(self.plan(lookup), groups)
