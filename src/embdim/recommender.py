"""Recommender: an embedding layer (searching or slim) plus a CTR model; export and load without pickle."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import save_file
from torch import nn

from embdim.data.schema import FieldInfo
from embdim.embedding import EmbeddingLayer, add_penalty
from embdim.errors import ModelFileError, shorten
from embdim.lookup import DEFAULT_INIT_STD
from embdim.models.base import CTRModel, ModelConfig
from embdim.models.layers import FeaturesLinear, FeatureTable
from embdim.registry import MODELS
from embdim.slim import EMBEDDING_JSON, EMBEDDING_TENSORS, SlimEmbedding, read_json, read_safetensors

EXPORT_FORMAT_VERSION = 2  # 2: model.json records the SHA-256 of every file
MODEL_JSON = "model.json"
MODEL_TENSORS = "model.safetensors"
MODEL_FILES = frozenset({MODEL_JSON, MODEL_TENSORS, EMBEDDING_JSON, EMBEDDING_TENSORS})
SELF_HASH = "sha256"  # model.json's own hash (of its other fields)
HASH_BLOCK = 1 << 20


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
    """Write the slim model: ``embedding.*`` (slim tables), ``model.safetensors`` and ``model.json``.

    ``model.json`` records the SHA-256 of every other file and of its own content, which
    :func:`load_model` verifies. The folder is written next to its place and renamed into it, so a
    failure never leaves a half-written model.
    """
    folder = Path(folder)
    slim = rec.embedding.export() if isinstance(rec.embedding, EmbeddingLayer) else rec.embedding
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        slim.save(tmp)
        state = {k: v.detach().contiguous() for k, v in rec.model.state_dict().items()}
        save_file(state, str(tmp / MODEL_TENSORS))
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
            "files": {name: file_sha256(tmp / name) for name in (MODEL_TENSORS, EMBEDDING_JSON, EMBEDDING_TENSORS)},
        }
        meta[SELF_HASH] = content_sha256(meta)
        (tmp / MODEL_JSON).write_text(json.dumps(meta, indent=2))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return slim


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def content_sha256(meta: dict[str, Any]) -> str:
    """SHA-256 of a JSON object without its own hash field (keys sorted)."""
    body = {k: v for k, v in meta.items() if k != SELF_HASH}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def verify_model_folder(folder: Path) -> dict[str, Any]:
    """``model.json`` of a model folder whose files are exactly the expected ones, in the known format, and
    unchanged since export (every SHA-256 matches); anything else is a :class:`ModelFileError` naming the
    file and field. Nothing in the folder is executed: only JSON and safetensors are read."""
    if not folder.is_dir():
        raise ModelFileError(f"{folder}: no model folder there")
    present = {p.name for p in folder.iterdir()}
    if unexpected := sorted(present - MODEL_FILES):
        raise ModelFileError(
            f"{folder}: unexpected file(s) {', '.join(unexpected)}; a model folder holds only "
            f"{', '.join(sorted(MODEL_FILES))} and is refused with anything else in it"
        )
    if missing := sorted(MODEL_FILES - present):
        raise ModelFileError(f"{folder}: missing {', '.join(missing)}")
    where = folder / MODEL_JSON
    meta = read_json(where)
    version = meta.get("format_version")
    if version != EXPORT_FORMAT_VERSION:
        raise ModelFileError(
            f"{where}: field 'format_version' is {version!r}; this embdim reads version {EXPORT_FORMAT_VERSION}"
        )
    if meta.get(SELF_HASH) != content_sha256(meta):
        raise ModelFileError(f"{where}: field '{SELF_HASH}' does not match the file's content (it was edited)")
    files = meta.get("files")
    if not isinstance(files, dict) or set(files) != MODEL_FILES - {MODEL_JSON}:
        raise ModelFileError(f"{where}: field 'files' must list the SHA-256 of the other three files")
    for name, digest in files.items():
        if file_sha256(folder / name) != digest:
            raise ModelFileError(
                f"{folder / name}: content differs from its SHA-256 in model.json (changed or damaged)"
            )
    return meta


def load_model(folder: str | Path) -> Recommender:
    """Load an exported slim model (safetensors + JSON only, no pickle), in eval mode, after checking it
    (:func:`verify_model_folder`, then every tensor's name, dtype and shape against the plan)."""
    folder = Path(folder)
    meta = verify_model_folder(folder)
    where = folder / MODEL_JSON
    try:
        fields = [FieldInfo(str(f["name"]), int(f["vocab_size"])) for f in meta["fields"]]
        model_cls = MODELS.get(meta["model"])
        model = model_cls(fields, int(meta["dim"]), int(meta["num_dense"]), model_cls.Config(**meta["model_config"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"{where}: {shorten(str(err))}") from None
    slim = SlimEmbedding.load(folder)
    if slim.plan.vocab_sizes != [f.vocab_size for f in fields] or slim.dim != model.dim:
        raise ModelFileError(f"{where}: field 'fields' / 'dim' disagree with {EMBEDDING_JSON}'s plan")
    state = read_safetensors(folder / MODEL_TENSORS)
    own = model.state_dict()
    for key, value in state.items():
        if key in own and (value.shape != own[key].shape or value.dtype != own[key].dtype):
            got, need = (f"{str(t.dtype).removeprefix('torch.')} {list(t.shape)}" for t in (value, own[key]))
            raise ModelFileError(f"{folder / MODEL_TENSORS}: {key!r} is {got}, the model needs {need}")
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ModelFileError(f"{folder / MODEL_TENSORS}: {shorten(str(err))}") from None
    rec = Recommender(slim, model, meta["model"])
    return rec.eval()
