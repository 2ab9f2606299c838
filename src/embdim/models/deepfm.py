"""DeepFM: a factorization machine and an MLP over the flattened embeddings, sharing the embeddings."""

from __future__ import annotations

import torch
from pydantic import Field, PositiveInt
from torch import nn

from embdim.data.schema import FieldInfo
from embdim.models.base import CTRModel, ModelConfig
from embdim.models.layers import (
    MLP,
    DenseAsFields,
    FeaturesLinear,
    FMInteraction,
    append_dense_fields,
    init_linear_layers,
)
from embdim.registry import MODELS

#: Default hidden widths of the deep part (DeepFM paper: 3 layers of 400).
DEFAULT_HIDDEN = [400, 400, 400]


class DeepFMConfig(ModelConfig):
    """Options of :class:`DeepFM`."""

    hidden: list[PositiveInt] = Field(
        default=DEFAULT_HIDDEN, description="Hidden layer widths of the deep part (ReLU); [] = linear."
    )
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout after each hidden layer.")
    batch_norm: bool = Field(default=False, description="BatchNorm between each hidden linear layer and ReLU.")
    use_linear: bool = Field(
        default=True,
        description="Add the first-order term (one learned weight per id and per dense feature).",
    )


@MODELS.register("deepfm")
class DeepFM(CTRModel):
    """DeepFM (Guo et al., 2017).

    ``logit = bias + linear(ids, dense) + Σ_{i<j} <x_i, x_j> + MLP(flatten(x))`` where ``x`` [B, F', d]
    are the ``F`` embeddings plus, when ``num_dense > 0``, ``Dn`` dense-as-fields vectors
    (``F' = F + Dn``). The MLP ends in a single linear output unit.

    ``forward(emb [B, F, d], dense [B, Dn] | None, ids [B, F]) -> [B]``.
    """

    Config = DeepFMConfig

    def __init__(self, fields: list[FieldInfo], dim: int, num_dense: int, config: DeepFMConfig) -> None:
        super().__init__(fields, dim, num_dense, config)
        num_inputs = len(fields) + num_dense
        self.bias = nn.Parameter(torch.zeros(1))
        self.linear = (
            FeaturesLinear([f.vocab_size for f in fields], num_dense=num_dense, bias=False)
            if config.use_linear
            else None
        )
        self.dense_fields = DenseAsFields(num_dense, dim) if num_dense > 0 else None
        self.interaction = FMInteraction()
        self.mlp = MLP(
            num_inputs * dim,
            config.hidden,
            dropout=config.dropout,
            batch_norm=config.batch_norm,
            output_dim=1,
        )
        self.init_weights()

    def init_weights(self) -> None:
        """Zero bias, Xavier MLP, zero linear table, small dense-field vectors."""
        nn.init.zeros_(self.bias)
        if self.linear is not None:
            self.linear.init_weights()
        if self.dense_fields is not None:
            self.dense_fields.init_weights()
        init_linear_layers(self.mlp)

    def forward(self, emb: torch.Tensor, dense: torch.Tensor | None, ids: torch.Tensor) -> torch.Tensor:
        """emb: [B, F, d]; dense: [B, Dn] or None; ids: int64 [B, F] -> logits [B]."""
        x = append_dense_fields(emb, dense, self.dense_fields)  # [B, F', d]
        logits = self.interaction(x) + self.mlp(x.flatten(start_dim=1)).squeeze(-1) + self.bias
        if self.linear is not None:
            logits = logits + self.linear(ids, dense)
        return logits
