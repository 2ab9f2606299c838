"""``mlet``: Multi-Layer Embedding Training (Deng et al., arXiv 2006.05623; ACML 2023, arXiv 2309.15881).

Each field's table is trained as a product of two linear maps with no non-linearity between
them [paper]::

    e_v = A[v] @ B_f        A: [n_f, k] (a raw lookup table), B_f: [k, d] (one per field)

The lookup backend owns ``A`` (a :class:`TableSpec` of width ``k``: only looked-up rows are read,
and ``A`` gets sparse gradients when ``embedding.sparse=true``); ``B`` is a dense searcher
parameter ``[F, k, d]`` that every step updates. After training the factors are **collapsed**
[paper]: ``W_f = A_f @ B_f`` computed in float64, stored in float32 as one ``n_f x d`` table per
field, so the exported model is exactly the size of a ``full`` model at ``d`` and predicts like
the factorised one (logits within 1e-5; the float64 product differs from the float32 forward by
float32 rounding only).

Initialisation [ours; the papers do not state one]: the trap in METHODS.md is that a product
initialised with both factors at the baseline's std has variance ``k * std^4``, which confounds
the comparison. Default ``b_init=orthogonal``: ``A ~ N(0, std^2)`` like the ``full`` table and
``B_f`` has orthonormal columns (``B_f^T B_f = I_d``, possible since ``k >= d``), so every row
``A[v] @ B_f ~ N(0, std^2 I_d)``: *exactly* the ``full`` table's init distribution, not only its
variance. ``b_init=normal``: ``B_f ~ N(0, 1/k)``, so ``Var(A[v] @ B_f) = k * std^2 / k = std^2``
(matched variance, slightly heavier tails).

Weight decay [ours, an explicit option]: ``weight_decay_on=factors`` (the default) leaves decay
to the trainer, which applies ``train.embedding_weight_decay`` to ``A`` and ``train.weight_decay``
to ``B`` (both 0 in our experiment configs, so by default nothing is decayed). Decay on the
factors is *not* decay on ``W``: it penalises ``|A|^2 + |B|^2``, which at the optimum is a
nuclear-norm-like penalty on ``W``. ``weight_decay_on=product`` adds the penalty
``product_decay * sum_{rows r in the batch} |A[v_r] @ B_f|^2 / batch`` instead: L2 on the
collapsed rows the batch looks up (frequency-weighted, as CTR embedding regularisers usually
are), which keeps ``A``'s gradient sparse; set the trainer's decays to 0 with it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from embdim.budget import Budget, uniform_dim_for_budget
from embdim.data.schema import FieldInfo
from embdim.distributed.torchrec_lookup import padded_dim
from embdim.lookup import DEFAULT_INIT_STD, Lookup, RawEmbeddings, TableSpec
from embdim.measures import effective_rank
from embdim.plan import EmbeddingPlan
from embdim.registry import SEARCHERS
from embdim.searchers.base import Embedded, MethodMemory, Searcher, SearcherConfig
from embdim.slim import DenseGroup, SlimEmbedding
from embdim.storage import FLOAT64_BYTES, FLOAT_BYTES

TABLE_NAME = "a"


class MLETConfig(SearcherConfig):
    """Options of MLET. Give the inner width as ``inner_dim`` (a number) or ``inner_multiple`` (times d)."""

    inner_dim: int | None = Field(None, ge=1, description="inner width k of A and B; overrides inner_multiple")
    inner_multiple: float = Field(4.0, gt=0, description="k = ceil(inner_multiple * d) when inner_dim is unset")
    b_init: Literal["orthogonal", "normal"] = Field(
        "orthogonal", description="B_f with orthonormal columns (exact full-init law) or N(0, 1/k) (matched variance)"
    )
    weight_decay_on: Literal["factors", "product"] = Field(
        "factors", description="decay A and B via the trainer's decays, or penalise the collapsed batch rows"
    )
    product_decay: float = Field(0.0, ge=0, description="L2 weight on collapsed batch rows (weight_decay_on=product)")

    @model_validator(mode="after")
    def _decay_consistent(self) -> MLETConfig:
        if self.product_decay > 0 and self.weight_decay_on != "product":
            raise ValueError("product_decay > 0 needs weight_decay_on=product (factor decay is train.*weight_decay)")
        return self

    def resolve_inner_dim(self, dim: int) -> int:
        """k for output width ``dim``; must be at least ``dim`` (a narrower k caps the rank below d)."""
        k = self.inner_dim if self.inner_dim is not None else math.ceil(self.inner_multiple * dim)
        if k < dim:
            key = "inner_dim" if self.inner_dim is not None else "inner_multiple"
            raise ValueError(f"method.{key}: inner width k={k} must be >= embedding.dim={dim}")
        return k


@SEARCHERS.register("mlet")
class MLETSearcher(Searcher):
    """Factorised tables ``A_f @ B_f`` during training, collapsed to ``n_f x d`` tables on export.

    ``forward(raw, ids)``: raw holds ``A``'s looked-up rows ``[B, F, k]``; returns ``[B, F, d]``.
    """

    Config = MLETConfig
    shardable = True  # A is the lookup's table; B is data-parallel

    @classmethod
    def for_budget(
        cls, fields: list[FieldInfo], dim: int, config: SearcherConfig, budget: Budget
    ) -> tuple[int, SearcherConfig]:
        """The collapsed model is a uniform one, so MLET meets a budget by its output width (k follows
        ``inner_multiple``, or stays ``inner_dim`` while that is at least the new width)."""
        return uniform_dim_for_budget(fields, dim, budget), config.model_copy(update={"budget": None})

    def __init__(self, fields: list[FieldInfo], dim: int, config: MLETConfig, init_std: float = DEFAULT_INIT_STD):
        super().__init__(fields, dim, config, init_std)
        self.inner_dim = config.resolve_inner_dim(dim)
        k = self.inner_dim
        b = torch.empty(self.num_fields, k, dim)
        for b_f in b:  # [k, d] each
            if config.b_init == "orthogonal":
                nn.init.orthogonal_(b_f)  # k >= d: orthonormal columns, B_f^T B_f = I_d
            else:
                nn.init.normal_(b_f, std=1.0 / math.sqrt(k))
        self.B = nn.Parameter(b)  # [F, k, d]

    @classmethod
    def training_memory(cls, fields: list[FieldInfo], dim: int, config: SearcherConfig) -> MethodMemory:
        """A (``n x k``) and B (``F x k x d``); the collapse at export builds ``n x d`` in float64."""
        assert isinstance(config, MLETConfig)
        n, k = sum(f.vocab_size for f in fields), config.resolve_inner_dim(dim)
        return MethodMemory(
            tables=n * k * FLOAT_BYTES,
            parameters=len(fields) * k * dim * FLOAT_BYTES,
            state=n * dim * FLOAT64_BYTES,  # the collapse W = A @ B is computed in float64
            fused_tables=n * padded_dim(k) * FLOAT_BYTES,
        )

    @classmethod
    def lighter_options(cls, dim: int, config: SearcherConfig) -> list[dict[str, Any]]:
        """A narrower inner width: k halved while it stays at least ``d`` (A is ``n x k``)."""
        assert isinstance(config, MLETConfig)
        k, out = config.resolve_inner_dim(dim), []
        while k // 2 >= dim:
            k //= 2
            out.append({"inner_dim": k})
        return out

    def table_specs(self) -> list[TableSpec]:
        return [
            TableSpec(TABLE_NAME, tuple(range(self.num_fields)), tuple(self.vocab_sizes), self.inner_dim, self.init_std)
        ]

    def forward(self, raw: RawEmbeddings, ids: torch.Tensor) -> Embedded:
        a_rows = raw.stacked()  # [B, F, k]
        # per field: [B, k] @ [k, d]; as a batched matmul over fields [F, B, k] @ [F, k, d]
        out = torch.bmm(a_rows.transpose(0, 1), self.B).transpose(0, 1)  # [B, F, d]
        if self.config.weight_decay_on != "product" or not self.training:
            return Embedded(out)
        return Embedded(out, self.config.product_decay * self._batch_mean(out.square().sum(), out.shape[0]))

    # ------------------------------------------------------------------ collapse
    @torch.no_grad()
    def collapsed_fields(self, lookup: Lookup) -> list[torch.Tensor]:
        """Per field, ``W_f = A_f @ B_f`` in float64: F tensors ``[n_f, d]``."""
        b = self.B.detach().double()
        return [lookup.field_weight(f).detach().double() @ b[f] for f in range(self.num_fields)]

    @torch.no_grad()
    def collapsed_table(self, lookup: Lookup) -> torch.Tensor:
        """Every field's collapsed table stacked, float64 ``[sum n_f, d]`` (row order of the full table)."""
        return torch.cat(self.collapsed_fields(lookup))

    def plan(self, lookup: Lookup) -> EmbeddingPlan:
        return self._plan(
            [self.dim] * self.num_fields,
            details={
                "inner_dim": self.inner_dim,
                "training_params": self.training_params(),
                "training_bytes": self.training_params() * FLOAT_BYTES,
            },
        )

    def export(self, lookup: Lookup) -> SlimEmbedding:
        weight = self.collapsed_table(lookup).to(torch.float32)  # collapse in float64, store float32
        group = DenseGroup(tuple(range(self.num_fields)), tuple(self.vocab_sizes), weight, None, self.dim)
        return SlimEmbedding(self.plan(lookup), [group])

    # ------------------------------------------------------------------ reports
    def training_params(self) -> int:
        """Embedding parameters held while training: ``A`` (``sum n_f * k``) plus ``B`` (``F * k * d``)."""
        return sum(self.vocab_sizes) * self.inner_dim + self.B.numel()

    def report(self, lookup: Lookup) -> dict[str, Any]:
        """Training-time table memory next to inference size, and the effective rank of each collapsed table."""
        inference = sum(self.vocab_sizes) * self.dim
        ranks = {f.name: effective_rank(w) for f, w in zip(self.fields, self.collapsed_fields(lookup), strict=True)}
        return {
            "inner_dim": self.inner_dim,
            "training_embedding_params": self.training_params(),
            "training_embedding_bytes": self.training_params() * FLOAT_BYTES,
            "inference_embedding_params": inference,
            "inference_embedding_bytes": inference * FLOAT_BYTES,
            "training_over_inference": self.training_params() / max(inference, 1),
            "effective_rank": ranks,
        }

    def metrics(self, lookup: Lookup) -> dict[str, float]:
        # mean spectral norm of B_f: how far the shared maps moved from their orthonormal start
        return {"b_spectral_norm": float(torch.linalg.matrix_norm(self.B.detach(), ord=2).mean())}
