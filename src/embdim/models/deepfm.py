"""DeepFM: a factorization machine and an MLP over the flattened embeddings, sharing the embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field, PositiveInt

from embdim.data.schema import FieldInfo
from embdim.models.base import MLPInputConfig
from embdim.models.fm import FM, FMConfig
from embdim.models.layers import MLP, init_linear_layers
from embdim.registry import MODELS

#: Default hidden widths of the deep part (DeepFM paper: 3 layers of 400).
DEFAULT_HIDDEN = [400, 400, 400]


class DeepFMConfig(FMConfig, MLPInputConfig):
    """Options of :class:`DeepFM`: those of :class:`~embdim.models.fm.FM` plus the deep part."""

    hidden: list[PositiveInt] = Field(
        default=DEFAULT_HIDDEN, description="Hidden layer widths of the deep part (ReLU); [] = linear."
    )
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout after each hidden layer.")
    batch_norm: bool = Field(default=False, description="BatchNorm between each hidden linear layer and ReLU.")


@MODELS.register("deepfm")
class DeepFM(FM):
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
        self.mlp = MLP(
            num_inputs * dim,
            config.hidden,
            dropout=config.dropout,
            batch_norm=config.batch_norm,
            output_dim=1,
        )
        init_linear_layers(self.mlp)
        self.register_buffer("mlp_columns", None, persistent=False)
        if config.input_field_widths is not None:
            self.compact_inputs(config.input_field_widths)

    def compact_inputs(self, field_widths: Sequence[int]) -> None:
        """The MLP reads only the first ``field_widths[f]`` dimensions of each field (dense-as-fields: all)."""
        self.mlp_columns = self._compact_mlp(self.mlp, field_widths, self.num_dense)

    def init_weights(self) -> None:
        """The FM part's init, then Xavier for the MLP."""
        super().init_weights()
        init_linear_layers(self.mlp)

    def forward(self, emb: torch.Tensor, dense: torch.Tensor | None, ids: torch.Tensor) -> torch.Tensor:
        """emb: [B, F, d]; dense: [B, Dn] or None; ids: int64 [B, F] -> logits [B]."""
        logits, x = self.fm_logits(emb, dense, ids)  # x: [B, F + Dn, d]
        flat = x.flatten(start_dim=1)  # [B, (F + Dn) d]
        if self.mlp_columns is not None:  # compacted: [B, K] kept columns only
            flat = flat.index_select(1, self.mlp_columns)
        return logits + self.mlp(flat).squeeze(-1)
