"""Serving a trained model: a bundle scores raw rows of the format it was trained on.

A bundle is the model folder every run writes (``runs/<name>/model/``, see
:func:`embdim.recommender.export_model`): the slim embedding and the network, plus the encoder
(vocabularies, OOV and missing rules, numeric transform), the dataset schema with its training counts,
and the config it was trained with. It needs neither the cache nor the training data::

    import embdim

    bundle = embdim.load("runs/quickstart/model")         # verified: every file's SHA-256, no pickle
    scores = bundle.predict("new_rows.csv")                 # float32 [N] click probabilities, input order
    scores = bundle.predict(frame)                          # a polars (or pandas) frame of raw columns
    metrics = bundle.evaluate("test_rows.csv")              # {"auc", "logloss", "rows", "test_by_frequency", ...}

Raw rows are read the way the training data was: with the training reader, pointed at the new file
(:meth:`~embdim.data.readers.base.Reader.for_scoring`: the label optional, no row dropped), or, for a
reader that cannot read a single file (Frappe's negatives are sampled, synthetic rows generated) or with
``input_format="table"``, as a CSV/TSV/Parquet table whose columns are named like the model's inputs.
Values never seen in training map to their field's OOV id, missing values (and the tokens the dataset
declares missing) to the missing category where training had one; a column the model reads that the
input lacks is an error naming it.
"""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import torch
import yaml

from embdim.config import RunConfig, validate
from embdim.data.cache import read_encoder, read_schema
from embdim.data.encoder import Encoder
from embdim.data.raw import LABEL, DataError
from embdim.data.readers._common import ParquetRows
from embdim.data.readers.base import NotStreamable, Reader
from embdim.data.readers.table import TableOptions, TableReader
from embdim.data.schema import DatasetSchema
from embdim.errors import ConfigError, ModelFileError, shorten
from embdim.plugins import READERS
from embdim.recommender import (
    BUNDLE_CONFIG,
    BUNDLE_FILES,
    MODEL_JSON,
    Recommender,
    export_model,
    folder_bytes,
    is_bundle,
    load_model,
    staged_folder,
)
from embdim.slim import CompactGroup, RaggedGroup, SlimEmbedding, read_json
from embdim.storage import VALUE_PRECISIONS
from embdim.train.evaluate import DEFAULT_BUCKET_EDGES, group_by_frequency, row_frequencies
from embdim.train.metrics import log_loss, roc_auc

InputFormat = Literal["auto", "reader", "table"]
INPUT_FORMATS: tuple[str, ...] = ("auto", "reader", "table")
DEFAULT_BATCH_SIZE = 16384
CHUNK_ROWS = 1 << 18
"""Rows read, encoded and scored at a time: memory follows this, not the input's size."""


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """float32 probabilities of float logits (no overflow warning for large magnitudes)."""
    return (0.5 * (1.0 + np.tanh(0.5 * logits.astype(np.float64)))).astype(np.float32)


@dataclass
class Scored:
    """What scoring an input gives: ``logits`` float32 [N] in input order, ``labels`` float32 [N] (NaN where
    a row has none; all NaN for unlabelled input), and the encoded ``ids`` int32 [N, F]."""

    logits: np.ndarray
    labels: np.ndarray
    ids: np.ndarray

    @property
    def scores(self) -> np.ndarray:
        """float32 [N]: click probabilities."""
        return sigmoid(self.logits)

    @property
    def labelled(self) -> bool:
        """Whether any row came with a label."""
        return bool((~np.isnan(self.labels)).any())


@dataclass
class Bundle:
    """A verified bundle: the model, in eval mode and its trained precision, with what encodes raw rows
    (:meth:`load` reads one).

    Attributes:
        folder: where it was loaded from.
        model: the :class:`~embdim.recommender.Recommender` with its slim embedding.
        encoder: the fitted :class:`~embdim.data.encoder.Encoder` of the training data.
        schema: the fields with their training counts (what ``test_by_frequency`` groups by).
        config: the :class:`~embdim.config.RunConfig` the model was trained with (its budget resolved).
        meta: ``model.json`` (format, sizes, file hashes).
    """

    folder: Path
    model: Recommender
    encoder: Encoder
    schema: DatasetSchema
    config: RunConfig
    meta: dict[str, Any]

    @classmethod
    def load(cls, folder: str | Path) -> Bundle:
        """Load and verify a bundle (a run folder's ``model/`` or a run folder itself); anything damaged,
        edited or missing is a :class:`~embdim.errors.ModelFileError` naming the file."""
        folder = bundle_folder(folder)
        if not (folder / MODEL_JSON).is_file():
            raise ModelFileError(f"{folder}: no bundle there (a bundle holds {MODEL_JSON}; a run folder, model/)")
        model = load_model(folder)  # verifies every file's hash before anything is read
        if not is_bundle(folder):
            raise ModelFileError(
                f"{folder}: a model folder without the data files of a bundle ({', '.join(sorted(BUNDLE_FILES))}); "
                "it cannot encode raw rows (run folders written by embdim run hold a bundle in model/)"
            )
        try:
            schema = read_schema(folder)
            encoder = read_encoder(folder, schema)
            config = validate(yaml.safe_load((folder / BUNDLE_CONFIG).read_text()), source=str(folder / BUNDLE_CONFIG))
        except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError, pl.exceptions.PolarsError) as err:
            raise ModelFileError(f"{folder}: {shorten(str(err))}") from None
        if encoder.field_names_ != model.embedding.plan.field_names:
            raise ModelFileError(f"{folder}: the encoder's fields differ from the model's")
        return cls(folder, model, encoder, schema, config, read_json(folder / MODEL_JSON))

    # ------------------------------------------------------------------ reading raw rows
    @property
    def input_columns(self) -> list[str]:
        """The raw columns the model reads: categorical, then numeric."""
        return [*self.encoder.categorical_, *self.encoder.numeric_]

    def training_reader(self) -> Reader:
        """The reader the model was trained with, its options as configured (relative paths below the data
        root of the training config, or ``$EMBDIM_DATA_ROOT``)."""
        ds = self.config.dataset
        return READERS.get(ds.reader)(ds.reader_options(), self.config.resolved_data_root())

    def scoring_reader(self, path: str | Path, input_format: InputFormat = "auto") -> Reader:
        """The reader of ``path`` in scoring mode: the training reader's format (``reader``), a table with the
        model's input columns (``table``), or the first that applies (``auto``)."""
        if input_format not in INPUT_FORMATS:
            raise ValueError(f"input_format must be one of {', '.join(INPUT_FORMATS)}, got {input_format!r}")
        path = Path(path).expanduser().absolute()
        if input_format != "table":
            reader = self.training_reader().for_scoring(path)
            if reader is not None:
                return reader
            if input_format == "reader":
                raise DataError(
                    f"the {self.config.dataset.reader} reader cannot read a single file of rows; "
                    "give the rows as a table (input_format=table) with the columns " + ", ".join(self.input_columns)
                )
        return self._table_reader(path)

    def _table_reader(self, path: Path) -> TableReader:
        """A table reader of the model's input columns; a model trained on a table keeps that table's
        missing tokens and label rule."""
        options: dict[str, Any] = {
            "categorical": list(self.encoder.categorical_),
            "numeric": list(self.encoder.numeric_),
            "label": self.schema.label or LABEL,
        }
        if self.config.dataset.reader == "table":
            trained = self.config.dataset.reader_options()
            rules = ("label", "label_positive", "label_threshold", "missing_values")
            options |= {key: getattr(trained, key) for key in rules}
        reader = TableReader(TableOptions(path=str(path), **options), path.parent)
        return reader.for_scoring(path)

    def frames(
        self, source: str | Path | pl.DataFrame | Any, input_format: InputFormat = "auto"
    ) -> Iterator[pl.DataFrame]:
        """Raw rows in chunks, typed as the readers type them (categorical text, numeric Float64, ``label``
        Float32 or null)."""
        if isinstance(source, str | Path):
            reader = self.scoring_reader(source, input_format)
            try:
                chunked = reader.chunked(CHUNK_ROWS)
                if chunked is not None:
                    for part in chunked.sources:
                        part.count_rows()  # where a file turns out not to stream (a quoted CSV), before any row
            except NotStreamable:
                chunked = None
            if chunked is None:
                yield from reader.read().splits.values()
                return
            for part in chunked.sources:
                yield from part.chunks()
            return
        yield self.typed(source)

    def typed(self, frame: Any) -> pl.DataFrame:
        """A frame of raw columns handed over in Python (polars or pandas), typed as a table file of the same
        columns is read: numbers parsed, declared missing tokens null, the label binarised or null; what
        the encoder's ``transform`` takes."""
        if not isinstance(frame, pl.DataFrame):
            try:
                frame = pl.from_pandas(frame)
            except (TypeError, ValueError, ImportError) as err:
                kind = type(frame).__name__
                raise DataError(f"cannot score a {kind}: give a file, or a polars or pandas frame ({err})") from None
        self._check_columns(frame.columns, "the frame")
        return self._table_reader(Path("frame"))._typed(frame, ParquetRows("the frame"))

    def _check_columns(self, available: list[str], where: str) -> None:
        if missing := [c for c in self.input_columns if c not in available]:
            raise DataError(f"{where} lacks the column(s) {', '.join(missing)} that the model reads")

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def logits(self, ids: np.ndarray, dense: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Logits float32 [N] of encoded rows: ids int [N, F], dense float32 [N, Dn]."""
        out = np.empty(len(ids), dtype=np.float32)
        for start in range(0, len(ids), batch_size):
            stop = min(start + batch_size, len(ids))
            batch_ids = torch.from_numpy(np.ascontiguousarray(ids[start:stop], dtype=np.int64))
            batch_dense = torch.from_numpy(np.ascontiguousarray(dense[start:stop])) if dense.shape[1] else None
            out[start:stop] = self.model(batch_ids, batch_dense).float().numpy()
        return out

    def score(
        self,
        source: str | Path | pl.DataFrame | Any,
        batch_size: int = DEFAULT_BATCH_SIZE,
        input_format: InputFormat = "auto",
    ) -> Scored:
        """Read, encode and score every row of ``source`` (a file path, or a polars / pandas frame)."""
        logits, labels, ids = [], [], []
        for frame in self.frames(source, input_format):
            encoded, dense = self.encoder.transform(frame)
            logits.append(self.logits(encoded, dense, batch_size))
            labels.append(frame.get_column(LABEL).cast(pl.Float32).fill_null(np.nan).to_numpy())
            ids.append(encoded)
        if not logits:
            raise DataError(f"{shorten(str(source))}: no rows to score")
        return Scored(np.concatenate(logits), np.concatenate(labels).astype(np.float32), np.concatenate(ids))

    def predict(
        self,
        source: str | Path | pl.DataFrame | Any,
        batch_size: int = DEFAULT_BATCH_SIZE,
        input_format: InputFormat = "auto",
    ) -> np.ndarray:
        """Click probabilities float32 [N] of every row of ``source``, in input order (a label, if present,
        is not used)."""
        return self.score(source, batch_size, input_format).scores

    def evaluate(
        self,
        source: str | Path | pl.DataFrame | Any,
        batch_size: int = DEFAULT_BATCH_SIZE,
        input_format: InputFormat = "auto",
        edges: tuple[int, ...] = DEFAULT_BUCKET_EDGES,
    ) -> dict[str, Any]:
        """Global AUC and logloss on the labelled rows of ``source``, and the same grouped by how often the
        rarest id of each row was seen in training (``test_by_frequency``, as in ``result.json``). Rows whose label is
        missing or not 0/1 are left out and counted (``unlabelled_rows``), as ``prepare`` drops them."""
        scored = self.score(source, batch_size, input_format)
        labelled = np.isin(scored.labels, (0.0, 1.0))
        if not labelled.any():
            raise DataError(f"{shorten(str(source))}: no row has a 0/1 label to evaluate against")
        labels, logits, ids = scored.labels[labelled], scored.logits[labelled], scored.ids[labelled]
        one_class = labels.min() == labels.max()
        freq = row_frequencies(ids, self.schema.fields)
        return {
            "auc": None if one_class else float(roc_auc(labels, logits)),
            "logloss": float(log_loss(labels, logits)),
            "rows": int(labelled.sum()),
            "positives": int(labels.sum()),
            "unlabelled_rows": int((~labelled).sum()),
            "test_by_frequency": group_by_frequency(labels, logits, freq, edges),
        }


def bundle_folder(path: str | Path) -> Path:
    """The bundle a path names: a model folder itself, or a run folder's ``model/``."""
    path = Path(path)
    if (path / "model" / "model.json").is_file() and not (path / "model.json").is_file():
        return path / "model"
    return path


def load(folder: str | Path) -> Bundle:
    """Load and verify a bundle: ``embdim.load("runs/quickstart/model")`` (or the run folder)."""
    return Bundle.load(folder)


# ---------------------------------------------------------------------- export
EXPORT_FORMATS: tuple[str, ...] = ("bundle", "torchrec", "torchscript", "onnx")
NETWORK_FILES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
EXPORT_JSON = "export.json"


def export_bundle(
    source: str | Path, target: str | Path, format: str = "bundle", precision: str = "fp32"
) -> dict[str, Any]:
    """Write ``source``'s bundle (a run folder or a bundle) to the folder ``target`` in ``format``, its
    embedding values stored in ``precision`` (``fp32``; ``fp16``; ``int8`` row-wise, see
    :meth:`~embdim.slim.SlimEmbedding.with_precision`):

    - ``bundle``: a bundle (verified; scores raw rows with :func:`load`);
    - ``torchrec``: the slim embedding as TorchRec tables with their weights and id remaps
      (:mod:`embdim.torchrec_export`; fp16 and int8 tables load into TorchRec's quantised collection; PEP's
      pruned rows have no int8 layout there and are refused);
    - ``torchscript`` / ``onnx``: the network on encoded rows, ``(ids int64 [B, F], dense float32 [B, Dn])
      -> logits [B]`` (no ``dense`` input when the model has none), traced from the slim model, with the
      batch size free; the encoder stays in the bundle (``encoder.json``, ``vocab.parquet``) to encode
      raw rows. These files are programs for their runtimes (TorchScript, ONNX Runtime), not data: load
      them only from a source you trust. ONNX has no sorted search, so run-indexed ragged tables (AMTL)
      are written with one offset per row there, and compact tables (PEP) as CSR, which give the same
      vectors.

    ``target`` is written next to its place and renamed into it. Returns what was written: format,
    precision, files, bytes (the folder's, and the embedding's), and the largest difference to the fp32
    bundle on a few hundred random rows of its own: logits, or embeddings for ``torchrec``.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
    if precision not in VALUE_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(VALUE_PRECISIONS)}, got {precision!r}")
    bundle = Bundle.load(source)
    model = bundle.model
    if precision != model.embedding.plan.precision:
        model = Recommender(model.embedding.with_precision(precision), model.model, model.model_name, model.precision)
    report: dict[str, Any] = {"format": format, "precision": precision, "source": str(bundle.folder)}
    with staged_folder(Path(target)) as tmp:
        if format == "bundle":
            extra = {k: bundle.meta[k] for k in ("dataset", "method") if k in bundle.meta}
            export_model(model, tmp, extra, {name: bundle.folder / name for name in BUNDLE_FILES})
            report["max_abs_logit_diff"] = _max_logit_diff(bundle.model, Bundle.load(tmp).model)
        elif format == "torchrec":
            from embdim.torchrec_export import export_torchrec, load_torchrec

            shutil.rmtree(tmp)  # the TorchRec export stages its own folder
            report["torchrec_bytes"] = export_torchrec(model.embedding, tmp).bytes()
            _, embedding = load_torchrec(tmp)
            ids = _example_inputs(bundle.model, 512, seed=1)[0]
            with torch.no_grad():
                report["max_abs_embedding_diff"] = float((embedding(ids) - bundle.model.embedding(ids)).abs().max())
        else:
            check = _export_network(model, tmp / NETWORK_FILES[format], format)
            report["max_abs_logit_diff"] = _max_logit_diff(bundle.model, check)
        report["embedding_bytes"] = model.embedding.stored_bytes()
        report["files"] = sorted(p.name for p in tmp.iterdir())
        report["bytes"] = folder_bytes(tmp)
        if format in NETWORK_FILES:  # a bundle and a TorchRec export hold only their own files
            (tmp / EXPORT_JSON).write_text(json.dumps(report, indent=1))
    return report


def _example_inputs(model: Recommender, rows: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random ids [rows, F] (every id of a field equally likely) and dense features [rows, Dn], if any."""
    gen = torch.Generator().manual_seed(seed)
    sizes = model.embedding.plan.vocab_sizes
    ids = torch.stack([torch.randint(0, n, (rows,), generator=gen) for n in sizes], 1)
    num_dense = model.model.num_dense
    return (ids, torch.randn(rows, num_dense, generator=gen)) if num_dense else (ids,)


def _export_network(model: Recommender, path: Path, format: str) -> Any:
    """Trace the slim model into ``path``; returns a callable on the same inputs (to check it)."""
    inputs = _example_inputs(model, 8)
    if format == "torchscript":
        with torch.no_grad():
            traced = torch.jit.trace(model, inputs)
        traced.save(str(path))
        return torch.jit.load(str(path))
    try:
        import onnx  # noqa: F401  (torch's exporter needs it, and onnxscript)
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ConfigError(
            f"--format onnx needs the onnx, onnxscript and onnxruntime packages ({err}): pip install 'embdim[onnx]'"
        ) from None
    portable = copy.deepcopy(model)
    portable.embedding = _with_row_offsets(portable.embedding)
    batch = torch.export.Dim("batch")
    names = ["ids", "dense"][: len(inputs)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            portable,
            inputs,
            str(path),
            input_names=names,
            output_names=["logits"],
            dynamo=True,
            dynamic_shapes=tuple({0: batch} for _ in inputs),
            verbose=False,
        )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(*args: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})[0])

    return run


def _with_row_offsets(slim: SlimEmbedding) -> SlimEmbedding:
    """The same slim embedding with every ragged group indexed by one offset per row, and every compact group
    as CSR (no sorted search)."""
    groups = []
    for group in slim.groups:
        if isinstance(group, CompactGroup):
            group = group.to_csr()
        if isinstance(group, RaggedGroup) and "offsets" not in group.index_names:
            sizes = group.stored_sizes()
            offsets = torch.zeros(len(sizes) + 1, dtype=torch.int64)
            offsets[1:] = sizes.cumsum(0)
            values, params = group.values.detach(), group.row_params()
            group = RaggedGroup(group.field_ids, group.rows, values, {"offsets": offsets}, group.dim, params)
        groups.append(group)
    return SlimEmbedding(slim.plan, groups)


@torch.no_grad()
def _max_logit_diff(model: Recommender, other: Any, rows: int = 512) -> float:
    inputs = _example_inputs(model, rows, seed=1)
    return float((other(*inputs) - model(*inputs)).abs().max())
