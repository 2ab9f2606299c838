"""``full``: the uniform baseline (FBE), every field at the same width ``d``."""

from __future__ import annotations

import torch

from embdim.budget import Budget, uniform_dim_for_budget
from embdim.data.schema import FieldInfo
from embdim.lookup import Lookup, RawEmbeddings
from embdim.plan import EmbeddingPlan
from embdim.registry import SEARCHERS
from embdim.searchers.base import Embedded, Searcher, SearcherConfig


class FullConfig(SearcherConfig):
    """The uniform baseline has no options of its own: its size is set by the embedding ``dim`` (or by a
    ``budget``, which picks the width that lands on it)."""


@SEARCHERS.register("full")
class FullSearcher(Searcher):
    """Uniform embeddings: one ``n x d`` table, raw vectors passed through unchanged."""

    Config = FullConfig
    shardable = True  # nothing but the lookup's table

    @classmethod
    def for_budget(
        cls, fields: list[FieldInfo], dim: int, config: SearcherConfig, budget: Budget
    ) -> tuple[int, SearcherConfig]:
        """The uniform baseline meets a budget by its width alone."""
        return uniform_dim_for_budget(fields, dim, budget), config.model_copy(update={"budget": None})

    def forward(self, raw: RawEmbeddings, ids: torch.Tensor) -> Embedded:
        return Embedded(raw.stacked())

    def plan(self, lookup: Lookup) -> EmbeddingPlan:
        return self._plan([self.dim] * self.num_fields)
