"""AutoInt+: stacked multi-head self-attention over fields, plus a parallel DNN."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field, NonNegativeInt, PositiveInt
from torch import nn

from embdim.data.schema import FieldInfo
from embdim.models.base import CTRModel, MLPInputConfig
from embdim.models.layers import (
    MLP,
    DenseAsFields,
    FeaturesLinear,
    MultiHeadSelfAttention,
    append_dense_fields,
    init_linear_layers,
)
from embdim.registry import MODELS

#: Defaults: 3 interacting layers and 2 heads as in the AutoInt paper, but heads of width 16 (the paper
#: uses 32) to halve the attention cost on CPU; with d <= 32 the layer width 32 still covers d.
DEFAULT_ATTENTION_LAYERS = 3
DEFAULT_HEADS = 2
DEFAULT_ATTENTION_DIM = 16
#: Default hidden widths of the parallel DNN ("+" variant).
DEFAULT_HIDDEN = [400, 400]


class AutoIntConfig(MLPInputConfig):
    """Options of :class:`AutoInt`."""

    attention_layers: NonNegativeInt = Field(
        default=DEFAULT_ATTENTION_LAYERS, description="Number of stacked self-attention (interacting) layers."
    )
    heads: PositiveInt = Field(default=DEFAULT_HEADS, description="Attention heads per layer.")
    attention_dim: PositiveInt = Field(
        default=DEFAULT_ATTENTION_DIM,
        description="Width of each head; a layer outputs heads * attention_dim.",
    )
    residual: bool = Field(default=True, description="Add a projected residual (x W_res) in each attention layer.")
    attention_dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout on the attention weights.")
    hidden: list[PositiveInt] = Field(
        default=DEFAULT_HIDDEN,
        description="Hidden widths of the parallel DNN; [] disables it (plain AutoInt).",
    )
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="Dropout after each DNN hidden layer.")
    batch_norm: bool = Field(default=False, description="BatchNorm between each DNN hidden linear layer and ReLU.")
    use_linear: bool = Field(
        default=False,
        description="Add the first-order term (one learned weight per id and per dense feature).",
    )


@MODELS.register("autoint")
class AutoInt(CTRModel):
    """AutoInt+ (Song et al., 2019).

    ``x`` [B, F', d] are the ``F`` embeddings plus, when ``num_dense > 0``, ``Dn`` dense-as-fields vectors.
    ``attention_layers`` interacting layers map it to [B, F', heads * attention_dim]; a linear unit on the
    flattened result gives the attention logit. A parallel DNN on ``flatten(x)`` adds its own logit (when
    ``hidden`` is non-empty), and ``use_linear`` adds the first-order term. With ``attention_layers = 0``
    the attention logit is a linear unit on ``flatten(x)``.

    ``forward(emb [B, F, d], dense [B, Dn] | None, ids [B, F]) -> [B]``.
    """

    Config = AutoIntConfig

    def __init__(self, fields: list[FieldInfo], dim: int, num_dense: int, config: AutoIntConfig) -> None:
        super().__init__(fields, dim, num_dense, config)
        num_inputs = len(fields) + num_dense
        self.dense_fields = DenseAsFields(num_dense, dim) if num_dense > 0 else None
        layers: list[nn.Module] = []
        width = dim
        for _ in range(config.attention_layers):
            layer = MultiHeadSelfAttention(
                width,
                config.heads,
                config.attention_dim,
                residual=config.residual,
                dropout=config.attention_dropout,
            )
            layers.append(layer)
            width = layer.out_dim
        self.attention = nn.Sequential(*layers)
        self.attention_out = nn.Linear(num_inputs * width, 1)
        self.dnn = (
            MLP(
                num_inputs * dim,
                config.hidden,
                dropout=config.dropout,
                batch_norm=config.batch_norm,
                output_dim=1,
            )
            if config.hidden
            else None
        )
        self.linear = (
            FeaturesLinear([f.vocab_size for f in fields], num_dense=num_dense, bias=False)
            if config.use_linear
            else None
        )
        self.init_weights()
        self.register_buffer("mlp_columns", None, persistent=False)
        if config.input_field_widths is not None:
            self.compact_inputs(config.input_field_widths)

    def compact_inputs(self, field_widths: Sequence[int]) -> None:
        """The parallel DNN reads only the first ``field_widths[f]`` dimensions of each field (the attention
        layers project every field vector with one shared map, so they keep width d)."""
        if self.dnn is None:
            raise NotImplementedError("AutoInt without its DNN (hidden=[]) has no concatenated MLP input")
        self.mlp_columns = self._compact_mlp(self.dnn, field_widths, self.num_dense)

    def init_weights(self) -> None:
        """Xavier-uniform weights and zero biases for all linear maps (per block in fused projections)."""
        init_linear_layers(self)
        for layer in self.attention:
            layer.init_weights()
        if self.linear is not None:
            self.linear.init_weights()
        if self.dense_fields is not None:
            self.dense_fields.init_weights()

    def forward(self, emb: torch.Tensor, dense: torch.Tensor | None, ids: torch.Tensor) -> torch.Tensor:
        """emb: [B, F, d]; dense: [B, Dn] or None; ids: int64 [B, F] -> logits [B]."""
        x = append_dense_fields(emb, dense, self.dense_fields)  # [B, F', d]
        attended = self.attention(x)  # [B, F', heads * attention_dim]
        logits = self.attention_out(attended.flatten(start_dim=1)).squeeze(-1)
        if self.dnn is not None:
            flat = x.flatten(start_dim=1)  # [B, F' d]
            if self.mlp_columns is not None:  # compacted: [B, K] kept columns only
                flat = flat.index_select(1, self.mlp_columns)
            logits = logits + self.dnn(flat).squeeze(-1)
        if self.linear is not None:
            logits = logits + self.linear(ids, dense)
        return logits
