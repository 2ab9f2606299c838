"""A method added the way a user adds one: this file and its registration, nothing else.

``fixed_widths`` keeps a fixed random prefix of each field's dimensions (seeded, no learning): the
contract tests (tests/test_searchers.py) train, export, resume and budget it like every built-in
method, which proves that a method needs no change anywhere else in embdim.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from embdim.lookup import Lookup, RawEmbeddings
from embdim.plan import EmbeddingPlan
from embdim.registry import SEARCHERS
from embdim.searchers.base import Embedded, Searcher, SearcherConfig
from embdim.slim import DenseGroup, SlimEmbedding


class FixedWidthsConfig(SearcherConfig):
    seed: int = Field(0, description="seed of the per-field widths")


@SEARCHERS.register("fixed_widths")
class FixedWidthsSearcher(Searcher):
    """Field ``f`` keeps its first ``w_f`` of ``d`` dimensions, ``w_f`` drawn once in ``[1, d]``.

    ``forward(raw, ids)``: ``[B, F, d]`` raw vectors times the prefix mask ``[F, d]``.
    """

    Config = FixedWidthsConfig
    shardable = True  # no state of its own: its tables are the lookup's, its export reads them (gathered)

    def __init__(self, fields, dim: int, config: FixedWidthsConfig, init_std: float = 0.01) -> None:
        super().__init__(fields, dim, config, init_std)
        self.widths = [int(w) for w in np.random.default_rng(config.seed).integers(1, dim + 1, len(fields))]
        mask = torch.arange(dim) < torch.tensor(self.widths).unsqueeze(1)
        self.register_buffer("mask", mask.float(), persistent=False)

    def forward(self, raw: RawEmbeddings, ids: torch.Tensor) -> Embedded:
        return Embedded(raw.stacked() * self.mask)

    def plan(self, lookup: Lookup) -> EmbeddingPlan:
        return self._plan(list(self.widths))

    def export(self, lookup: Lookup) -> SlimEmbedding:
        groups = []
        for width in sorted(set(self.widths), reverse=True):
            fids = tuple(f for f, w in enumerate(self.widths) if w == width)
            weight = torch.cat([lookup.field_weight(f).detach()[:, :width] for f in fids])
            groups.append(DenseGroup(fids, tuple(self.vocab_sizes[f] for f in fids), weight, None, self.dim))
        return SlimEmbedding(self.plan(lookup), groups)
