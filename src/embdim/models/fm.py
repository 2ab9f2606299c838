"""Factorization machine: bias + first-order term + pairwise ``Σ_{i<j} <e_i, e_j>``."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from embdim.data.schema import FieldInfo
from embdim.models.base import CTRModel, ModelConfig
from embdim.models.layers import DenseAsFields, FeaturesLinear, FMInteraction, append_dense_fields
from embdim.registry import MODELS


class FMConfig(ModelConfig):
    """Options of :class:`FM`."""

    use_linear: bool = Field(
        default=True,
        description="Add the first-order term (one learned weight per id and per dense feature).",
    )


@MODELS.register("fm")
class FM(CTRModel):
    """Factorization machine (Rendle, 2010).

    ``logit = bias + linear(ids, dense) + Σ_{i<j} <x_i, x_j>`` where ``x`` are the ``F`` embeddings plus,
    when ``num_dense > 0``, ``Dn`` dense-as-fields vectors (``value * v_j``).

    ``forward(emb [B, F, d], dense [B, Dn] | None, ids [B, F]) -> [B]``.
    """

    Config = FMConfig

    def __init__(self, fields: list[FieldInfo], dim: int, num_dense: int, config: FMConfig) -> None:
        super().__init__(fields, dim, num_dense, config)
        self.bias = nn.Parameter(torch.zeros(1))
        self.linear = (
            FeaturesLinear([f.vocab_size for f in fields], num_dense=num_dense, bias=False)
            if config.use_linear
            else None
        )
        self.dense_fields = DenseAsFields(num_dense, dim) if num_dense > 0 else None
        self.interaction = FMInteraction()
        FM.init_weights(self)  # not the subclass's: its extra layers do not exist yet

    def init_weights(self) -> None:
        """Zero bias; sub-layers use their own defaults (zero linear table, small dense vectors)."""
        nn.init.zeros_(self.bias)
        if self.linear is not None:
            self.linear.init_weights()
        if self.dense_fields is not None:
            self.dense_fields.init_weights()

    def fm_logits(
        self, emb: torch.Tensor, dense: torch.Tensor | None, ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The FM logit [B] and the fields it read, ``x`` [B, F + Dn, d] (DeepFM reuses both)."""
        x = append_dense_fields(emb, dense, self.dense_fields)
        logits = self.interaction(x) + self.bias
        if self.linear is not None:
            logits = logits + self.linear(ids, dense)
        return logits, x

    def forward(self, emb: torch.Tensor, dense: torch.Tensor | None, ids: torch.Tensor) -> torch.Tensor:
        """emb: [B, F, d]; dense: [B, Dn] or None; ids: int64 [B, F] -> logits [B]."""
        return self.fm_logits(emb, dense, ids)[0]
