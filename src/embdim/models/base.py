"""The model contract: embeddings in, logits out. Models never know which embedding method ran."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from embdim.data.schema import FieldInfo


class ModelConfig(BaseModel):
    """Base of every model's options; unknown keys are an error that names the key."""

    model_config = ConfigDict(extra="forbid")


class CTRModel(nn.Module, ABC):
    """A CTR model on top of an embedding layer.

    Args:
        fields: the categorical fields (vocab sizes, used only by first-order / linear terms).
        dim: width ``d`` of the embeddings it receives.
        num_dense: number of dense float features (0 when the dataset has none).
        config: the model's own options (subclass of :class:`ModelConfig`).

    ``forward(emb, dense, ids)``:
        emb: float [B, F, d] from the embedding layer (pruned parts are exact zeros).
        dense: float [B, Dn] or ``None`` when ``num_dense == 0``.
        ids: int64 [B, F] per-field ids (for linear terms that have their own 1-wide table).
        returns: float [B] logits.
    """

    Config: ClassVar[type[ModelConfig]] = ModelConfig

    def __init__(self, fields: list[FieldInfo], dim: int, num_dense: int, config: ModelConfig) -> None:
        super().__init__()
        self.num_fields = len(fields)
        self.dim = dim
        self.num_dense = num_dense
        self.config = config

    @abstractmethod
    def forward(self, emb: torch.Tensor, dense: torch.Tensor | None, ids: torch.Tensor) -> torch.Tensor: ...
