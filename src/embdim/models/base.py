"""The model contract: embeddings in, logits out. Models never know which embedding method ran."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch
from pydantic import Field, NonNegativeInt, SerializerFunctionWrapHandler, model_serializer
from torch import nn

from embdim.data.schema import FieldInfo
from embdim.models.layers import MLP, kept_input_columns
from embdim.options import Options


class ModelConfig(Options):
    """Base of every model's options; unknown keys are an error that names the key."""


class MLPInputConfig(ModelConfig):
    """Option of models that concatenate the embeddings into an MLP: read only a cut's kept columns."""

    input_field_widths: list[NonNegativeInt] | None = Field(
        default=None,
        description="Per-field embedding widths the MLP reads (a cut model, see compact_inputs); None = all d.",
    )

    @model_serializer(mode="wrap")
    def _omit_unset_widths(self, handler: SerializerFunctionWrapHandler) -> dict:
        # only a compacted model carries the key, so uncompacted configs read exactly as before
        data = handler(self)
        if data.get("input_field_widths", 0) is None:
            del data["input_field_widths"]
        return data


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

    def compact_inputs(self, field_widths: Sequence[int]) -> None:
        """Drop the first dense layer's input columns that only see cut embedding dimensions.

        For models that concatenate the embeddings into an MLP: after a per-field cut (field ``f``
        keeps its first ``field_widths[f]`` of ``d`` dimensions, the rest exact zeros) the MLP reads
        only the kept columns, with the same logits and fewer multiply-adds. The widths are recorded in
        the model's config (``input_field_widths``), so an exported model is rebuilt compacted.
        """
        raise NotImplementedError(f"{type(self).__name__} has no concatenated MLP input to compact")

    def _compact_mlp(self, mlp: MLP, field_widths: Sequence[int], extra_fields: int) -> torch.Tensor:
        """Shared part of :meth:`compact_inputs`: checks, slices ``mlp``'s first layer, records the widths.

        Returns the kept columns of ``flatten([B, F + extra_fields, d])``, int64 [K].
        """
        widths = [int(w) for w in field_widths]
        if len(widths) != self.num_fields:
            raise ValueError(f"input_field_widths: expected {self.num_fields} widths, got {len(widths)}")
        if getattr(self, "mlp_columns", None) is not None:
            raise ValueError("the MLP input is already compacted")
        columns = kept_input_columns(widths, self.dim, extra_fields)
        mlp.keep_input_columns(columns)
        self.config = self.config.model_copy(update={"input_field_widths": widths})
        return columns
