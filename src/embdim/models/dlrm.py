"""DLRM: bottom MLP for dense features, pairwise dot interactions, top MLP."""

from __future__ import annotations

import torch
from pydantic import Field, PositiveInt

from embdim.data.schema import FieldInfo
from embdim.models.base import CTRModel, ModelConfig
from embdim.models.layers import MLP, DotInteraction, init_linear_layers
from embdim.registry import MODELS

#: Default hidden widths of the bottom MLP (before its final layer of width ``d``).
DEFAULT_BOTTOM_HIDDEN = [64]
#: Default hidden widths of the top MLP (before its single-unit output layer).
DEFAULT_TOP_HIDDEN = [512, 256]


class DLRMConfig(ModelConfig):
    """Options of :class:`DLRM`."""

    bottom_hidden: list[PositiveInt] = Field(
        default=DEFAULT_BOTTOM_HIDDEN,
        description="Hidden widths of the bottom MLP on dense features; a ReLU layer of width d follows.",
    )
    top_hidden: list[PositiveInt] = Field(
        default=DEFAULT_TOP_HIDDEN, description="Hidden widths of the top MLP; a single-unit output follows."
    )
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout after each top-MLP hidden layer.")
    batch_norm: bool = Field(default=False, description="BatchNorm between each MLP hidden linear layer and ReLU.")


@MODELS.register("dlrm")
class DLRM(CTRModel):
    """DLRM (Naumov et al., 2019) with dot interactions.

    With dense features (``num_dense > 0``): ``z = bottom_mlp(dense)`` [B, d] (ReLU on every layer, as
    in the reference implementation); the vectors ``[z, e_1, ..., e_F]`` (N = F + 1) give all pairwise
    dots ``<x_i, x_j>, i < j`` (no self-terms), and the top MLP gets ``[z, dots]``
    (width ``d + N (N - 1) / 2``).

    Without dense features there is no ``z``: the dots run over the ``F`` embeddings alone and the top
    MLP gets ``[dots, flatten(emb)]`` (width ``F (F - 1) / 2 + F d``), so first-order information about
    each embedding still reaches the top MLP the way ``z`` does in the dense case.

    ``forward(emb [B, F, d], dense [B, Dn] | None, ids [B, F]) -> [B]``.
    """

    Config = DLRMConfig

    def __init__(self, fields: list[FieldInfo], dim: int, num_dense: int, config: DLRMConfig) -> None:
        super().__init__(fields, dim, num_dense, config)
        num_fields = len(fields)
        if num_dense > 0:
            self.bottom: MLP | None = MLP(
                num_dense, [*config.bottom_hidden, dim], batch_norm=config.batch_norm
            )  # [B, d]
            self.interaction = DotInteraction(num_fields + 1)
            top_in = dim + self.interaction.out_dim
        else:
            self.bottom = None
            self.interaction = DotInteraction(num_fields)
            top_in = self.interaction.out_dim + num_fields * dim
        self.top = MLP(top_in, config.top_hidden, dropout=config.dropout, batch_norm=config.batch_norm, output_dim=1)
        self.init_weights()

    def init_weights(self) -> None:
        """Xavier-uniform weights and zero biases in both MLPs."""
        init_linear_layers(self)

    def forward(self, emb: torch.Tensor, dense: torch.Tensor | None, ids: torch.Tensor) -> torch.Tensor:
        """emb: [B, F, d]; dense: [B, Dn] or None; ids: int64 [B, F] (unused) -> logits [B]."""
        if self.bottom is not None:
            if dense is None:
                raise ValueError("this model was built with dense features but forward() got dense=None")
            z = self.bottom(dense)  # [B, d]
            dots = self.interaction(torch.cat([z.unsqueeze(1), emb], dim=1))  # [B, (F+1) F / 2]
            top_in = torch.cat([z, dots], dim=1)
        else:
            dots = self.interaction(emb)  # [B, F (F-1) / 2]
            top_in = torch.cat([dots, emb.flatten(start_dim=1)], dim=1)
        return self.top(top_in).squeeze(-1)
