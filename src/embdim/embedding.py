"""EmbeddingLayer: a lookup backend plus a searcher, ids ``[B, F]`` -> embeddings ``[B, F, d]``.

Example::

    fields = [FieldInfo("user", 1000), FieldInfo("item", 5000)]
    layer = EmbeddingLayer(fields, dim=16, method="mde", method_config={"alpha": 0.3})
    emb = layer(torch.tensor([[3, 17]]))        # [1, 2, 16]
    layer.plan().num_bytes                      # slim size
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from embdim.backends import create_lookup
from embdim.data.schema import FieldInfo
from embdim.lookup import DEFAULT_INIT_STD
from embdim.plan import EmbeddingPlan
from embdim.plugins import SEARCHERS
from embdim.searchers.base import Embedded, Searcher, SearcherConfig
from embdim.slim import SlimEmbedding


def create_searcher(
    method: str,
    fields: list[FieldInfo],
    dim: int,
    config: SearcherConfig | dict[str, Any] | None = None,
    init_std: float = DEFAULT_INIT_STD,
) -> Searcher:
    """Build a registered searcher by name; a dict config is validated against its ``Config``."""
    cls = SEARCHERS.get(method)
    if not isinstance(config, SearcherConfig):
        config = cls.Config(**(config or {}))
    return cls(fields, dim, config, init_std)


def add_penalty(penalty: torch.Tensor | None, term: torch.Tensor | None) -> torch.Tensor | None:
    """The sum of two optional loss terms (``None`` when both are)."""
    if penalty is None:
        return term
    return penalty if term is None else penalty + term


class EmbeddingLayer(nn.Module):
    """The embedding layer every model reads from.

    Args:
        fields: categorical fields (vocabulary sizes; training counts for frequency-aware methods).
        dim: output width ``d``.
        method: registered searcher name (``embdim.list_searchers()``).
        method_config: the searcher's options, as its ``Config`` or a dict.
        backend: lookup backend, ``torch`` or ``torchrec``.
        sparse: sparse gradients for the raw tables.
        init_std: normal-init standard deviation of the raw tables.

    ``forward(ids)``: int64 [B, F] per-field ids -> float [B, F, d]. Training a method with a size
    penalty (DML, AMTL with a budget) needs it too: :meth:`embed` returns the embeddings and the
    penalty to add to the loss.
    """

    def __init__(
        self,
        fields: list[FieldInfo],
        dim: int,
        method: str = "full",
        method_config: SearcherConfig | dict[str, Any] | None = None,
        backend: str = "torch",
        sparse: bool = False,
        init_std: float = DEFAULT_INIT_STD,
    ) -> None:
        super().__init__()
        self.fields = list(fields)
        self.dim = dim
        self.searcher = create_searcher(method, self.fields, dim, method_config, init_std)
        self.lookup = create_lookup(backend, self.searcher.table_specs(), self.searcher.num_lookup_fields, sparse)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids).embeddings

    def embed(self, ids: torch.Tensor, looked_up_l2: float = 0.0) -> Embedded:
        """Embeddings ``[B, F, d]`` of ``ids`` [B, F] and the batch's penalty: the searcher's, plus
        (training, ``looked_up_l2 > 0``) ``looked_up_l2 / 2 * sum ||w_r||^2`` over the distinct raw
        table rows the batch reads (the looked-up form of the embedding L2)."""
        raw = self.lookup(self.searcher.lookup_ids(ids))
        out = self.searcher(raw, ids)
        if looked_up_l2 > 0 and self.training:
            return Embedded(out.embeddings, add_penalty(out.penalty, 0.5 * looked_up_l2 * raw.distinct_row_l2()))
        return out

    def plan(self) -> EmbeddingPlan:
        return self.searcher.plan(self.lookup)

    @torch.no_grad()
    def export(self) -> SlimEmbedding:
        """The slim embedding, which maps ids to the same vectors while storing only what the plan keeps."""
        return self.searcher.export(self.lookup)
