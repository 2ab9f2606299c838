"""Recommender: an embedding layer (searching or slim) plus a CTR model; export and load without pickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from embdim.data.schema import FieldInfo
from embdim.embedding import EmbeddingLayer, add_penalty
from embdim.lookup import DEFAULT_INIT_STD
from embdim.models.base import CTRModel, ModelConfig
from embdim.models.layers import FeaturesLinear, FeatureTable
from embdim.registry import MODELS
from embdim.slim import SlimEmbedding

EXPORT_FORMAT_VERSION = 1


class Scored(NamedTuple):
    """A training forward's output: logits [B] and the loss term to add (``None`` when there is none)."""

    logits: torch.Tensor
    penalty: torch.Tensor | None


class Recommender(nn.Module):
    """``forward(ids [B, F] int64, dense [B, Dn] float | None) -> logits [B]``.

    ``embedding`` is an :class:`EmbeddingLayer` while training and a :class:`SlimEmbedding` once
    exported; the model is the same object type either way.
    """

    def __init__(self, embedding: EmbeddingLayer | SlimEmbedding, model: CTRModel, model_name: str) -> None:
        super().__init__()
        self.embedding = embedding
        self.model = model
        self.model_name = model_name

    def forward(self, ids: torch.Tensor, dense: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(self.embedding(ids), dense, ids)

    def training_forward(
        self, ids: torch.Tensor, dense: torch.Tensor | None = None, looked_up_l2: float = 0.0
    ) -> Scored:
        """Logits and the batch's penalty: the searcher's, plus with ``looked_up_l2 > 0`` the looked-up
        form of the embedding L2, ``looked_up_l2 / 2 * sum ||w_r||^2`` over the distinct rows the batch
        reads of every table (raw tables, first-order table, dense features' vectors)."""
        if not isinstance(self.embedding, EmbeddingLayer):  # a slim embedding trains without penalties
            return Scored(self(ids, dense), None)
        emb, penalty = self.embedding.embed(ids, looked_up_l2)
        if looked_up_l2 > 0 and self.training:
            model_l2 = sum((m.looked_up_l2(ids) for m in self.feature_tables()), torch.zeros(()))
            penalty = add_penalty(penalty, 0.5 * looked_up_l2 * model_l2)
        return Scored(self.model(emb, dense, ids), penalty)

    def feature_tables(self) -> list[FeatureTable]:
        """The model's layers that hold one row per feature (first-order weights, dense features' vectors)."""
        return [m for m in self.model.modules() if isinstance(m, FeatureTable)]

    def table_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """Every table the model reads, as ``(dense-gradient, sparse-gradient)`` lists: the lookup's raw
        tables and the model's feature tables. They train at ``train.embedding_lr`` with the embedding L2;
        sparse ones need a sparse optimizer."""
        if not isinstance(self.embedding, EmbeddingLayer):
            return [], []
        lookup = self.embedding.lookup
        raw = list(lookup.parameters())
        sparse = {id(p) for p in raw} if getattr(lookup, "sparse", False) else set()
        for m in self.feature_tables():
            if isinstance(m, FeaturesLinear) and m.sparse:
                sparse.add(id(m.weight.weight))
        tables = [*raw, *(p for m in self.feature_tables() for p in m.table_parameters())]
        return [p for p in tables if id(p) not in sparse], [p for p in tables if id(p) in sparse]


def build_recommender(
    fields: list[FieldInfo],
    num_dense: int,
    dim: int,
    model: str,
    model_config: ModelConfig | dict[str, Any] | None = None,
    method: str = "full",
    method_config: Any = None,
    backend: str = "torch",
    sparse: bool = False,
    init_std: float = DEFAULT_INIT_STD,
    sparse_first_order: bool = False,
) -> Recommender:
    """Build embedding layer + model from registered names and their options.

    ``sparse_first_order`` gives the models' ``n x 1`` first-order tables sparse gradients too (with
    ``sparse``); on CPU that pays only for very large vocabularies (at 1e6 rows coalescing the batch's
    ids cost more than a dense update of the whole table, see BENCHMARKS.md).
    """
    model_cls = MODELS.get(model)
    if not isinstance(model_config, ModelConfig):
        model_config = model_cls.Config(**(model_config or {}))
    layer = EmbeddingLayer(fields, dim, method, method_config, backend, sparse, init_std)
    ctr_model = model_cls(fields, dim, num_dense, model_config)
    for module in ctr_model.modules():
        if isinstance(module, FeaturesLinear):
            # sparse: a step then updates the rows in the batch, not all n rows
            module.sparse = sparse and sparse_first_order
    return Recommender(layer, ctr_model, model)


def export_model(rec: Recommender, folder: str | Path, extra: dict[str, Any] | None = None) -> SlimEmbedding:
    """Write the slim model: ``embedding.*`` (slim tables), ``model.safetensors`` and ``model.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    slim = rec.embedding.export() if isinstance(rec.embedding, EmbeddingLayer) else rec.embedding
    slim.save(folder)
    state = {k: v.detach().contiguous() for k, v in rec.model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    model = rec.model
    meta = {
        "format_version": EXPORT_FORMAT_VERSION,
        "model": rec.model_name,
        "model_config": model.config.model_dump(mode="json"),
        "fields": [
            {"name": n, "vocab_size": v} for n, v in zip(slim.plan.field_names, slim.plan.vocab_sizes, strict=True)
        ],
        "dim": slim.dim,
        "num_dense": model.num_dense,
        **(extra or {}),
    }
    (folder / "model.json").write_text(json.dumps(meta, indent=2))
    return slim


def load_model(folder: str | Path) -> Recommender:
    """Load an exported slim model (safetensors + JSON only, no pickle), in eval mode."""
    folder = Path(folder)
    meta = json.loads((folder / "model.json").read_text())
    fields = [FieldInfo(f["name"], f["vocab_size"]) for f in meta["fields"]]
    model_cls = MODELS.get(meta["model"])
    model = model_cls(fields, meta["dim"], meta["num_dense"], model_cls.Config(**meta["model_config"]))
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    rec = Recommender(SlimEmbedding.load(folder), model, meta["model"])
    return rec.eval()
