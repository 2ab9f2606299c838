"""Recommender: an embedding layer (searching or slim) plus a CTR model; export and load without pickle.

A model folder (:func:`export_model`) holds the slim embedding and the network; a *bundle* is a model
folder that also holds what scoring raw rows needs: the encoder (vocabularies, OOV and missing rules,
numeric transform), the dataset schema with its training counts, and the training config. Every run
writes one (``runs/<name>/model/``); :mod:`embdim.serve` reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args

import torch
from torch import nn

from embdim.data.cache import COUNTS_FILE, ENCODER_FILE, SCHEMA_FILE, VOCAB_FILE
from embdim.data.schema import FieldInfo
from embdim.embedding import EmbeddingLayer, add_penalty
from embdim.errors import ConfigError, ModelFileError, shorten
from embdim.lookup import DEFAULT_INIT_STD
from embdim.models.base import CTRModel, ModelConfig
from embdim.models.layers import FeaturesLinear, FeatureTable
from embdim.plugins import MODELS
from embdim.slim import EMBEDDING_JSON, EMBEDDING_TENSORS, SlimEmbedding, read_json, read_safetensors
from embdim.tensorfile import write_tensors

EXPORT_FORMAT_VERSION = 3  # 2: model.json records the SHA-256 of every file; 3: bundles, sizes
MODEL_JSON = "model.json"
MODEL_TENSORS = "model.safetensors"
MODEL_FILES = frozenset({MODEL_JSON, MODEL_TENSORS, EMBEDDING_JSON, EMBEDDING_TENSORS})
BUNDLE_CONFIG = "training.yaml"  # not config.yaml: that name marks a run folder
#: What a bundle adds to a model folder, named as in the dataset cache so its readers read both.
BUNDLE_FILES = frozenset({ENCODER_FILE, VOCAB_FILE, COUNTS_FILE, SCHEMA_FILE, BUNDLE_CONFIG})
SELF_HASH = "sha256"  # model.json's own hash (of its other fields)
HASH_BLOCK = 1 << 20

Precision = Literal["fp32", "bf16"]
"""The arithmetic of a model's dense part: ``fp32``, or ``bf16`` (autocast; weights and tables stay float32)."""
PRECISIONS: tuple[str, ...] = get_args(Precision)
#: Capability flags (``torch.cpu.get_capabilities``) of CPUs with native bfloat16 arithmetic: AVX512_BF16
#: or AMX-BF16 on x86, BF16 / SVE-BF16 on ARM. Other AVX-512 CPUs only emulate it, slower than fp32
#: (BENCHMARKS.md, "bf16 for the dense part").
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


def native_bf16(device_type: str = "cpu") -> bool:
    """Whether ``device_type`` (``cpu`` or ``cuda``) computes in bfloat16 natively, not by emulation."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        caps = torch.cpu.get_capabilities()
        return any(bool(caps.get(flag, False)) for flag in NATIVE_BF16_CPU_FLAGS)
    return False


def check_precision(precision: str, device_type: str = "cpu") -> None:
    """A :class:`ConfigError` naming ``train.precision`` when ``bf16`` would only be emulated on
    ``device_type`` (slower than fp32 and less exact, so nothing is gained); nothing otherwise."""
    if precision == "bf16" and not native_bf16(device_type):
        if device_type == "cpu":
            caps = torch.cpu.get_capabilities()
            where = f"this CPU ({caps.get('cpu_name', '?')}, {caps.get('architecture', '?')})"
            needs = "AVX512_BF16 or AMX-BF16 on x86, BF16 on ARM"
        else:
            where, needs = f"device {device_type!r}", "compute capability 8.0 or newer on CUDA"
        raise ConfigError(
            f"train.precision=bf16: {where} has no native bfloat16 arithmetic ({needs}); autocast would emulate "
            "it, slower than float32. Use train.precision=fp32"
        )


class Scored(NamedTuple):
    """A training forward's output: logits [B] and the loss term to add (``None`` when there is none)."""

    logits: torch.Tensor
    penalty: torch.Tensor | None


class Recommender(nn.Module):
    """``forward(ids [B, F] int64, dense [B, Dn] float | None) -> logits [B]``.

    ``embedding`` is an :class:`EmbeddingLayer` while training and a :class:`SlimEmbedding` once
    exported; the model is the same object type either way. ``precision`` (``fp32`` or ``bf16``) is the
    arithmetic of the model's dense part, in training and evaluation alike (:meth:`score`); it may be
    changed at any time, the weights are float32 either way.
    """

    def __init__(
        self,
        embedding: EmbeddingLayer | SlimEmbedding,
        model: CTRModel,
        model_name: str,
        precision: Precision = "fp32",
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.embedding = embedding
        self.model = model
        self.model_name = model_name
        self.precision = precision

    def forward(self, ids: torch.Tensor, dense: torch.Tensor | None = None) -> torch.Tensor:
        return self.score(self.embedding(ids), dense, ids)

    def score(self, emb: torch.Tensor, dense: torch.Tensor | None, ids: torch.Tensor) -> torch.Tensor:
        """The model on looked-up embeddings: emb float32 [B, F, d], dense [B, Dn] | None, ids int64 [B, F]
        -> float32 logits [B].

        Under ``bf16`` the model runs inside ``torch.autocast``: its linear layers and batched matmuls
        (MLPs, DLRM's dots, AutoInt's attention) compute in bfloat16 from float32 weights, while the
        embeddings arrive in float32 (the lookup and the searcher run outside) and the model's own tables
        (first-order weights, dense features' vectors) are gathered in float32. The logits come back as
        float32, so the loss and the metrics are computed in float32.
        """
        if self.precision == "fp32":
            return self.model(emb, dense, ids)
        with torch.autocast(ids.device.type, dtype=torch.bfloat16):
            logits = self.model(emb, dense, ids)
        return logits.float()

    def training_forward(
        self, ids: torch.Tensor, dense: torch.Tensor | None = None, looked_up_l2: float = 0.0
    ) -> Scored:
        """Logits and the batch's penalty: the searcher's, plus with ``looked_up_l2 > 0`` the looked-up
        form of the embedding L2, ``looked_up_l2 / 2 * sum ||w_r||^2`` over the distinct rows the batch
        reads of every table (raw tables, first-order table, dense features' vectors)."""
        if not isinstance(self.embedding, EmbeddingLayer):  # a slim embedding trains without penalties
            return Scored(self(ids, dense), None)
        emb, penalty = self.embedding.embed(ids, looked_up_l2)
        if not (looked_up_l2 > 0 and self.training):
            return Scored(self.score(emb, dense, ids), penalty)
        with ExitStack() as stack:  # the model's own tables record the L2 of the rows their forward reads
            terms = [stack.enter_context(m.recording_l2()) for m in self.feature_tables()]
            logits = self.score(emb, dense, ids)
        model_l2 = sum((t for recorded in terms for t in recorded), torch.zeros(()))
        return Scored(logits, add_penalty(penalty, 0.5 * looked_up_l2 * model_l2))

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
    precision: Precision = "fp32",
) -> Recommender:
    """Build embedding layer + model from registered names and their options (``precision``: see
    :class:`Recommender`).

    ``sparse_first_order`` gives the models' ``n x 1`` first-order tables sparse gradients too (with
    ``sparse``); on CPU that pays only for very large vocabularies, where a dense update of the whole
    table costs more than coalescing the batch's ids (BENCHMARKS.md, training throughput and Criteo scale).
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
    return Recommender(layer, ctr_model, model, precision)


def export_model(
    rec: Recommender,
    folder: str | Path,
    extra: dict[str, Any] | None = None,
    bundle: Mapping[str, Path | str] | None = None,
) -> SlimEmbedding:
    """Write the slim model: ``embedding.*`` (slim tables), ``model.safetensors`` and ``model.json``;
    with ``bundle`` also the data files that make it a bundle.

    Args:
        rec: the trained model (its embedding is exported) or an already slim one.
        folder: the model folder to write (replaced if it exists).
        extra: more fields for ``model.json`` (dataset, method).
        bundle: each of :data:`BUNDLE_FILES` -> a file to take it from (a prepared dataset's cache
            files, hard-linked where the file system allows: caches are never changed in place) or
            the text to write (the config).

    ``model.json`` records the precision the model was trained and evaluated in (its weights are float32
    either way), which :func:`load_model` restores; the bytes of the embedding and of the whole model
    (``sizes``); and the SHA-256 of every other file and of its own content, which :func:`load_model`
    verifies. The folder is written next to its place and renamed into it, so a failure never leaves a
    half-written model.
    """
    if bundle is not None and set(bundle) != BUNDLE_FILES:
        raise ValueError(f"a bundle needs exactly {sorted(BUNDLE_FILES)}, got {sorted(bundle)}")
    slim = rec.embedding.export() if isinstance(rec.embedding, EmbeddingLayer) else rec.embedding
    with staged_folder(Path(folder)) as tmp:
        slim.save(tmp)
        state = rec.model.state_dict()
        write_tensors(tmp / MODEL_TENSORS, state)
        for name, source in (bundle or {}).items():
            _place(source, tmp / name)
        model = rec.model
        embedding_bytes = slim.stored_bytes()
        meta = {
            "format_version": EXPORT_FORMAT_VERSION,
            "model": rec.model_name,
            "model_config": model.config.model_dump(mode="json"),
            "fields": [
                {"name": n, "vocab_size": v} for n, v in zip(slim.plan.field_names, slim.plan.vocab_sizes, strict=True)
            ],
            "dim": slim.dim,
            "num_dense": model.num_dense,
            "precision": rec.precision,
            "sizes": {"embedding_bytes": embedding_bytes, "model_bytes": embedding_bytes + tensor_bytes(state)},
            **(extra or {}),
        }
        write_manifest(tmp, MODEL_JSON, meta, MODEL_FILES | (BUNDLE_FILES if bundle else frozenset()))
    return slim


@contextmanager
def staged_folder(folder: Path) -> Iterator[Path]:
    """A fresh sibling folder ``.<name>.tmp`` to write into, renamed onto ``folder`` (replacing it) when the
    block succeeds and removed when it fails, so a failure never leaves a half-written folder."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        yield tmp
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(folder: Path, manifest: str, meta: dict[str, Any], files: frozenset[str]) -> dict[str, Any]:
    """Write ``meta`` as ``folder/manifest`` with the SHA-256 of every other file of ``files`` (field
    ``files``) and of its own content (field ``sha256``), as :func:`verify_folder` checks them."""
    meta = {**meta, "files": {name: file_sha256(folder / name) for name in sorted(files - {manifest})}}
    meta[SELF_HASH] = content_sha256(meta)
    (folder / manifest).write_text(json.dumps(meta, indent=2))
    return meta


def tensor_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Bytes of a state dict's tensors as stored (no file overhead)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def folder_bytes(folder: str | Path) -> int:
    """Bytes on disk of the files in a folder (not recursive): what a bundle costs to ship."""
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())


def _place(source: Path | str, target: Path) -> None:
    """``source`` at ``target``: a file hard-linked (copied across file systems), a text written."""
    if isinstance(source, str):
        target.write_text(source)
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


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
    """``model.json`` of a model folder (or a bundle: any of its data files makes all of them required) whose
    files are exactly the expected ones, in the known format, and unchanged since export (every SHA-256
    matches); anything else is a :class:`ModelFileError` naming the file and field. Nothing in the folder is
    executed: only JSON, safetensors, Parquet and ``.npy`` arrays are read."""
    bundle = folder.is_dir() and any((folder / name).exists() for name in BUNDLE_FILES)
    files = MODEL_FILES | BUNDLE_FILES if bundle else MODEL_FILES
    return verify_folder(folder, MODEL_JSON, files, EXPORT_FORMAT_VERSION, "bundle" if bundle else "model")


def verify_folder(folder: Path, manifest: str, files: frozenset[str], version: int, what: str) -> dict[str, Any]:
    """The manifest (``folder/manifest``, written by :func:`write_manifest`) of a ``what`` folder holding
    exactly ``files``, in format ``version``, unchanged since it was written: its own hash and every other
    file's SHA-256 match. Anything else is a :class:`ModelFileError` naming the file and field."""
    if not folder.is_dir():
        raise ModelFileError(f"{folder}: no {what} folder there")
    present = {p.name for p in folder.iterdir()}
    if unexpected := sorted(present - files):
        raise ModelFileError(
            f"{folder}: unexpected file(s) {', '.join(unexpected)}; a {what} folder holds only "
            f"{', '.join(sorted(files))} and is refused with anything else in it"
        )
    if missing := sorted(files - present):
        raise ModelFileError(f"{folder}: missing {', '.join(missing)}")
    where = folder / manifest
    meta = read_json(where)
    found = meta.get("format_version")
    if found != version:
        raise ModelFileError(f"{where}: field 'format_version' is {found!r}; this embdim reads version {version}")
    if meta.get(SELF_HASH) != content_sha256(meta):
        raise ModelFileError(f"{where}: field '{SELF_HASH}' does not match the file's content (it was edited)")
    hashed = meta.get("files")
    others = files - {manifest}
    if not isinstance(hashed, dict) or set(hashed) != others:
        raise ModelFileError(f"{where}: field 'files' must list the SHA-256 of {', '.join(sorted(others))}")
    for name, digest in hashed.items():
        if file_sha256(folder / name) != digest:
            raise ModelFileError(
                f"{folder / name}: content differs from its SHA-256 in {manifest} (changed or damaged)"
            )
    return meta


def is_bundle(folder: str | Path) -> bool:
    """Whether a model folder also holds a bundle's data files (it is checked on load either way)."""
    return all((Path(folder) / name).is_file() for name in BUNDLE_FILES)


def load_model(folder: str | Path) -> Recommender:
    """Load an exported slim model (safetensors + JSON only, no pickle), in eval mode, after checking it
    (:func:`verify_model_folder`, then every tensor's name, dtype and shape against the plan).

    The model scores in the precision it was trained in (``precision`` in ``model.json``; ``fp32`` when
    absent); set the returned model's ``precision`` to change that.
    """
    folder = Path(folder)
    meta = verify_model_folder(folder)
    where = folder / MODEL_JSON
    try:
        fields = [FieldInfo(str(f["name"]), int(f["vocab_size"])) for f in meta["fields"]]
        model_cls = MODELS.get(meta["model"])
        model = model_cls(fields, int(meta["dim"]), int(meta["num_dense"]), model_cls.Config(**meta["model_config"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ModelFileError(f"{where}: {shorten(str(err))}") from None
    precision = meta.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise ModelFileError(f"{where}: field 'precision' is {precision!r}; known: {', '.join(PRECISIONS)}")
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
    rec = Recommender(slim, model, meta["model"], precision)
    return rec.eval()
