"""``mde``: mixed-dimension embeddings (Ginart et al., arXiv 1909.11810), field-level power law.

Field f gets ``d_f = base_dim * (n_f / n_min) ** (-alpha)`` (rounded, clipped to
``[min_dim, d]``): the smallest vocabulary keeps ``base_dim``, larger vocabularies, whose rows are
each seen less often, get fewer dimensions. A per-field linear map ``[d_f, d]`` (no bias) projects
back to the common width, as in the DLRM reference (``md_embedding_bag.py``). Fields already at
width ``d`` are not projected.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from embdim.budget import LANDING_TOLERANCE, Budget, BudgetUnreachable, uniform_bytes
from embdim.data.schema import FieldInfo
from embdim.distributed.torchrec_lookup import padded_dim
from embdim.lookup import DEFAULT_INIT_STD, Lookup, RawEmbeddings, TableSpec, group_fields_by_width
from embdim.plan import EmbeddingPlan
from embdim.registry import SEARCHERS
from embdim.searchers.base import Embedded, MethodMemory, Searcher, SearcherConfig
from embdim.slim import DenseGroup, SlimEmbedding, project_fields
from embdim.storage import FLOAT_BYTES


class MDEConfig(SearcherConfig):
    alpha: float = Field(0.3, ge=0.0, description="power-law temperature; 0 gives uniform widths")
    base_dim: int | None = Field(None, ge=1, description="width of the smallest-vocabulary field; default d")
    min_dim: int = Field(1, ge=1, description="no field gets fewer dimensions than this")
    round_to_power_of_two: bool = Field(False, description="round each width to a power of two, as DLRM can")


def mde_dims(vocab_sizes: list[int], dim: int, alpha: float, base_dim: int, min_dim: int, pow2: bool) -> list[int]:
    """Per-field widths by the power-law rule, each in ``[min(min_dim, dim), dim]``."""
    n_min = min(vocab_sizes)
    dims = []
    for n in vocab_sizes:
        width = base_dim * (n / n_min) ** (-alpha)
        width = 2 ** round(math.log2(width)) if pow2 else round(width)
        dims.append(int(min(dim, max(min_dim, width))))
    return dims


def config_dims(vocab_sizes: list[int], dim: int, config: MDEConfig) -> list[int]:
    """Per-field widths of ``config`` (:func:`mde_dims` with its options)."""
    base = config.base_dim or dim
    return mde_dims(vocab_sizes, dim, config.alpha, base, config.min_dim, config.round_to_power_of_two)


def mde_values(vocab_sizes: list[int], dim: int, config: MDEConfig) -> tuple[int, int]:
    """Table values (``sum n_f d_f``) and projection values (``d_f x d`` per field narrower than ``d``)."""
    widths = config_dims(vocab_sizes, dim, config)
    tables = sum(n * w for n, w in zip(vocab_sizes, widths, strict=True))
    return tables, sum(w * dim for w in widths if w < dim)


def mde_bytes(vocab_sizes: list[int], dim: int, config: MDEConfig) -> int:
    """Bytes of MDE's slim embedding (tables and projections, float32): what its plan counts."""
    return sum(mde_values(vocab_sizes, dim, config)) * FLOAT_BYTES


@SEARCHERS.register("mde")
class MDESearcher(Searcher):
    """Mixed dimensions per field, projected to ``d``."""

    Config = MDEConfig
    shardable = True  # its tables are the lookup's alone, its projections dense parameters

    @classmethod
    def for_budget(
        cls, fields: list[FieldInfo], dim: int, config: SearcherConfig, budget: Budget
    ) -> tuple[int, SearcherConfig]:
        """Scale the power law (``base_dim``, alpha fixed) to the budget; the plan's bytes count projections."""
        assert isinstance(config, MDEConfig)
        target = budget.target_bytes(uniform_bytes(fields, dim))
        sizes = [f.vocab_size for f in fields]
        # widths are clipped to dim, so a base above dim still scales the large-vocabulary fields
        largest_base = math.ceil(dim * (max(sizes) / min(sizes)) ** config.alpha)
        candidates = []
        for base in range(1, largest_base + 1):
            update = {"base_dim": base, "min_dim": min(config.min_dim, base), "budget": None}
            option = config.model_copy(update=update)
            stored = mde_bytes(sizes, dim, option)
            candidates.append((abs(stored - target), option, stored))
        gap, option, got = min(candidates, key=lambda c: c[0])
        if gap > LANDING_TOLERANCE * target:
            raise BudgetUnreachable(
                f"mde (alpha={config.alpha}) gets no closer than {got:,} bytes to {target:,.0f} with any base_dim"
            )
        return dim, option

    def __init__(self, fields: list[FieldInfo], dim: int, config: MDEConfig, init_std: float = DEFAULT_INIT_STD):
        super().__init__(fields, dim, config, init_std)
        self.field_dims = config_dims(self.vocab_sizes, dim, config)
        self.specs = group_fields_by_width(self.field_dims, self.vocab_sizes, init_std, prefix="w")
        # one stacked projection [F_t, w, d] per table narrower than d
        self.projections = nn.ParameterDict()
        for spec in self.specs:
            if spec.dim < dim:
                proj = torch.empty(len(spec.field_ids), spec.dim, dim)
                for p in proj:
                    nn.init.xavier_uniform_(p)
                self.projections[spec.name] = nn.Parameter(proj)
        order = [f for spec in self.specs for f in spec.field_ids]
        self.register_buffer("gather", torch.tensor([order.index(f) for f in range(self.num_fields)]), persistent=False)

    @classmethod
    def training_memory(cls, fields: list[FieldInfo], dim: int, config: SearcherConfig) -> MethodMemory:
        assert isinstance(config, MDEConfig)
        vocab = [f.vocab_size for f in fields]
        tables, projections = mde_values(vocab, dim, config)
        widths = config_dims(vocab, dim, config)
        fused = sum(n * padded_dim(w) for n, w in zip(vocab, widths, strict=True))  # narrow rows padded most
        return MethodMemory(
            tables=tables * FLOAT_BYTES, parameters=projections * FLOAT_BYTES, fused_tables=fused * FLOAT_BYTES
        )

    def table_specs(self) -> list[TableSpec]:
        return self.specs

    def _projection(self, spec: TableSpec) -> torch.Tensor | None:
        return self.projections.get(spec.name)

    def forward(self, raw: RawEmbeddings, ids: torch.Tensor) -> Embedded:
        parts = [project_fields(v, self._projection(s), self.dim) for s, v in zip(raw.specs, raw.values, strict=True)]
        return Embedded(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)[:, self.gather])

    def plan(self, lookup: Lookup) -> EmbeddingPlan:
        extra = sum(p.numel() for p in self.projections.values())
        return self._plan(list(self.field_dims), extra_params=extra, details={"alpha": self.config.alpha})

    def export(self, lookup: Lookup) -> SlimEmbedding:
        groups = []
        for s in self.specs:  # copies: the lookup's table and the projections keep training
            projection = self._projection(s)
            weight = lookup.table_weight(s.name).detach().clone()
            groups.append(
                DenseGroup(s.field_ids, s.rows, weight, None if projection is None else projection.clone(), self.dim)
            )
        return SlimEmbedding(self.plan(lookup), groups)
