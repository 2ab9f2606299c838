"""TorchRec export: a slim embedding as tables that a plain ``torchrec.EmbeddingBagCollection`` loads.

:func:`export_torchrec` writes a :class:`~embdim.slim.SlimEmbedding` (``load_model(folder).embedding``) as
TorchRec tables with their weights; :func:`load_torchrec` reads them back into a plain CPU
``EmbeddingBagCollection`` plus a :class:`TorchRecEmbedding`, which maps ids ``[B, F]`` to ``[B, F, d]``
through that collection, equal to the slim embedding's output bit for bit (float32).

Tables (one ``EmbeddingBagConfig`` each: sum pooling, one feature of the same name, ``float32``) belong to
one field each; a table of width ``w < d`` is read as its ``w`` values followed by ``d - w`` zeros
(:func:`zero_pad`). Per storage kind:

- ``dense``: one table per field, ``[n_f, d_f]``, read at row = id (no remap). A field projected to ``d``
  (MDE) ships its projection ``[w, d]`` beside the table, stacked per slim group ``[F_g, w, d]`` as the slim
  model stores it; the embedding is ``row @ projection``, computed by the same ``einsum`` on the same shapes
  as the slim model, so the bits agree. Pre-multiplying into a ``d``-wide table would be larger
  (``n_f * d`` instead of ``n_f * w + w * d`` values) and rounds differently.
- ``ragged`` (AMTL, row i keeps its first ``k_i`` values): per field one table per distinct ``k > 0``,
  holding the rows of that size in id order.
- ``csr`` (PEP, row i keeps values at any columns): a row's width is its *span*, its last kept column + 1;
  the pruned columns inside the span are stored as zeros. Per field one table per distinct span, so there
  are at most ``d`` tables per field, each a plain TorchRec table. The price is the zeros inside spans
  (PEP's pruning is spread over the columns, so spans are often close to ``d``); the alternative, a table
  per distinct set of kept columns, stores no zeros but can make thousands of tiny tables.
- ``compact`` (PEP's other layout, the same rows indexed by stored row): its rows are decoded to CSR's
  (:meth:`~embdim.slim.CompactGroup.to_csr`) and exported as ``csr``; a TorchRec table has a row per
  kept id either way, so the export is as large for both.
- ``hashed`` (the hashing trick): a hashed field is one table of its ``m_f`` bucket rows (``ids:
  "hashed"``, with its hash's ``hash_a`` and ``hash_b``, and ``hash_prime`` p at the top level); id ``i``
  reads bucket 0 if ``i == 0`` (the OOV id), else ``1 + ((a * i + b) mod p) mod (m_f - 1)`` in integer
  arithmetic, as the slim model hashes it (:func:`~embdim.slim.hashed_buckets`). No remap: the export
  holds the slim model's table bytes (its hash parameters move into the JSON). Its plain fields are
  ``dense``.
- ``qr`` (quotient-remainder): a compressed field is two tables, ``f<f>_w<d>_q`` of its ``ceil(n_f / c_f)``
  quotient rows and ``f<f>_w<d>_r`` of its ``c_f`` remainder rows (``ids: "qr"``, with ``collisions`` c_f
  and ``combine``); id ``i`` is looked up in both, at rows ``i // c_f`` and ``i % c_f``, and the two pooled
  vectors are combined after the collection (their product or sum, as the slim model does). No remap:
  the rows are the id's arithmetic, so the export is as small as the slim model. Its plain fields are
  ``dense``.

Precision: the tables hold what the slim embedding stores. float32 tables are a plain collection's; fp16
and int8 tables are TorchRec's quantised collection's (``torchrec.quant.embedding_modules``, ``DataType``
FP16 / INT8, float32 output), uint8 rows ``[n, row bytes]`` in fbgemm's layout at ``row_alignment`` 1: fp16
the ``w`` values' bytes; int8 a float16 scale, a float16 bias, then ``w`` codes read as
``code * scale + bias``, exactly how the slim group decodes them. int8 ``csr`` / ``compact`` groups are
refused: a TorchRec int8 row codes all its columns from one scale and bias, and PEP's pruned zeros
between kept values have no exact code.

A field whose rows fall into several tables (or whose rows are not all kept; hashed and qr fields aside,
whose rows are computed from the id) ships an id remap: for each id, its table among the field's tables
(``int8``, ``int16`` beyond 127 tables; ``-1``: the row stores nothing and embeds to zeros) and its row in
that table (``int32``, ``int64`` beyond 2**31 rows); each row of a remapped field belongs to one id. A
field with one table holding every row in id order needs none (``ids: "direct"``); a field storing
nothing has no table (``ids: "zero"``).

The export folder (``torchrec.json`` + two safetensors files, no pickle):

- ``tables.safetensors``: ``embedding_bags.<table>.weight`` float32 ``[num_embeddings, embedding_dim]``,
  an ``EmbeddingBagCollection`` state dict;
- ``lookup.safetensors``: ``remap.<field>.table`` / ``remap.<field>.row`` ``[n_f]`` for remapped fields,
  ``projection.<p>`` float32 ``[F_p, w, d]`` for projected fields;
- ``torchrec.json``: ``dim``, ``fields`` (name, ``vocab_size``, its ``tables``, ``ids``: ``direct`` |
  ``remapped`` | ``hashed`` (with ``hash_a`` and ``hash_b``) | ``qr`` (with ``collisions`` and ``combine``) |
  ``zero``), ``tables`` (``name``, ``feature_name``, ``num_embeddings``, ``embedding_dim``, ``pooling``,
  ``field``, ``field_name``, ``width``), ``projections`` (``name``, ``fields``, ``width``), ``hash_prime``,
  ``bytes``, and the SHA-256 of both other files and of itself, verified on load like a model folder
  (:func:`embdim.recommender.verify_folder`); any damage or edit is a :class:`~embdim.errors.ModelFileError`
  naming the file and field.

Serving elsewhere: per (batch row, field), look the id up in its remap (or take the id itself, or hash it), put it
as the single id of that bag in the table's feature (every other table of the field gets an empty bag),
and read the field's vector from the chosen table's pooled columns, zero-padded to ``d`` (or times the
projection); a ``qr`` field puts ``i // c`` in its quotient table's bag and ``i % c`` in its remainder
table's, and combines the two pooled vectors. Sum pooling starts from ``+0.0``, so a stored ``-0.0``
comes back as ``+0.0`` (equal under ``torch.equal``; trained weights practically never hold it).

Example::

    slim = load_model("runs/quickstart/model").embedding  # ids [B, F] -> [B, F, d]
    export = export_torchrec(slim, "runs/quickstart/torchrec")
    export.total_bytes, export.slim_bytes  # the export's tensors against the slim model's

    ebc, lookup = load_torchrec("runs/quickstart/torchrec")
    ids = torch.tensor([[0, 3, 7], [2, 0, 1]])  # [B=2, F=3]
    kjt = lookup.features(ids)  # KeyedJaggedTensor: one feature per table, at most one id per bag
    #   keys      ["f0_w8", "f1_w8", "f2_w5", "f2_w2", ...]
    #   lengths   [1, 1,     1, 1,    1, 0,    0, 1, ...]  (f2's ids 7 and 1 live in different tables)
    pooled = ebc(kjt)  # KeyedTensor [B, sum of table widths]
    emb = lookup.combine(pooled, ids)  # [B, F, d]: each field's table columns, zero-padded or projected
    assert torch.equal(emb, slim(ids)) and torch.equal(lookup(ids), emb)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from embdim.errors import ConfigError, ModelFileError, shorten
from embdim.measures import all_finite
from embdim.recommender import staged_folder, verify_folder, write_manifest
from embdim.slim import (
    CompactGroup,
    CsrGroup,
    DenseGroup,
    HashedGroup,
    QRGroup,
    RaggedGroup,
    SlimEmbedding,
    hashed_buckets,
    project_fields,
    read_safetensors,
)
from embdim.storage import HASH_PRIME, MIN_BUCKETS, ROW_WISE, VALUE_PRECISIONS, offset_dtype, row_param_bytes
from embdim.tensorfile import write_tensors

FORMAT_VERSION = 1
TORCHREC_JSON = "torchrec.json"
TABLES_TENSORS = "tables.safetensors"
LOOKUP_TENSORS = "lookup.safetensors"
TORCHREC_FILES = frozenset({TORCHREC_JSON, TABLES_TENSORS, LOOKUP_TENSORS})
#: how a field's ids reach its tables (``hashed`` and ``qr``: rows computed from the id, shared by ids)
DIRECT, REMAPPED, HASHED, QR, ZERO = "direct", "remapped", "hashed", "qr", "zero"
#: a qr field's two tables: table_name(f, d) plus these suffixes, quotient first
QR_PARTS = ("_q", "_r")
#: TorchRec's data type of a table per stored precision (fp16 and int8: its quantised collection)
DATA_TYPES = {"fp32": DataType.FP32, "fp16": DataType.FP16, ROW_WISE: DataType.INT8}
#: bytes between the starts of two rows of a quantised table: 1, rows back to back (TorchRec's default of
#: 16 would round an int8 row of 4 + w bytes up to a multiple of 16, tripling narrow rows); recorded in
#: torchrec.json for the collection that loads it
ROW_ALIGNMENT = 1
#: an int8 row's float16 scale and bias, before its codes (fbgemm's layout)
ROW_PARAM_BYTES = row_param_bytes(ROW_WISE)


def weight_key(table: str) -> str:
    """The ``EmbeddingBagCollection`` state-dict key of ``table``'s weight."""
    return f"embedding_bags.{table}.weight"


def table_name(field: int, width: int) -> str:
    """Name (and feature name) of field ``field``'s table of width ``width``."""
    return f"f{field}_w{width}"


def zero_pad(vectors: torch.Tensor, dim: int) -> torch.Tensor:
    """A table's pooled vectors ``[..., w]`` as the model's ``[..., dim]``: the ``w`` stored values, then zeros."""
    return project_fields(vectors, None, dim)


def remap_table_dtype(num_tables: int) -> torch.dtype:
    """Dtype of a field's remap to one of its ``num_tables`` tables (or ``-1``): int8 up to 127 tables."""
    return torch.int8 if num_tables <= torch.iinfo(torch.int8).max else torch.int16


@dataclass(frozen=True)
class TableInfo:
    """One TorchRec table: the rows of one field that share a width."""

    name: str
    field: int
    field_name: str
    width: int
    num_embeddings: int

    def config(self, precision: str = "fp32") -> EmbeddingBagConfig:
        return EmbeddingBagConfig(
            name=self.name,
            embedding_dim=self.width,
            num_embeddings=self.num_embeddings,
            feature_names=[self.name],
            pooling=PoolingType.SUM,
            data_type=DATA_TYPES[precision],
        )

    def row_bytes(self, precision: str) -> int:
        """Bytes of one row of a quantised (fp16 or int8) table: ``2 w``, or ``4 + w`` (scale, bias, codes)."""
        return VALUE_PRECISIONS[precision].itemsize * self.width + row_param_bytes(precision)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "feature_name": self.name,
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.width,
            "pooling": "SUM",
            "field": self.field,
            "field_name": self.field_name,
            "width": self.width,
        }


@dataclass(frozen=True)
class TorchRecExport:
    """What :func:`export_torchrec` wrote: the folder, the table configs, and the bytes of its tensors
    (``slim_bytes``: the slim embedding's stored tensors, :meth:`SlimEmbedding.stored_bytes`)."""

    folder: Path
    configs: list[EmbeddingBagConfig]
    table_bytes: int
    remap_bytes: int
    projection_bytes: int
    slim_bytes: int

    @property
    def total_bytes(self) -> int:
        """Bytes of every exported tensor (tables, remaps, projections; file headers and JSON not counted)."""
        return self.table_bytes + self.remap_bytes + self.projection_bytes

    def bytes(self) -> dict[str, int]:
        return {
            "tables": self.table_bytes,
            "remaps": self.remap_bytes,
            "projections": self.projection_bytes,
            "total": self.total_bytes,
            "slim": self.slim_bytes,
        }


# ---------------------------------------------------------------------- export
class _Split:
    """A slim embedding cut into per-field tables, remaps and projections."""

    def __init__(self, slim: SlimEmbedding) -> None:
        plan = slim.plan
        self.plan = plan
        self.tables: dict[int, list[tuple[TableInfo, torch.Tensor]]] = {f: [] for f in range(plan.num_fields)}
        self.remaps: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.projections: list[tuple[tuple[int, ...], torch.Tensor]] = []
        #: hashed fields: their hash's a and b
        self.hashed: dict[int, tuple[int, int]] = {}
        #: qr fields: their collisions c_f and how their two rows combine
        self.qr: dict[int, tuple[int, str]] = {}
        #: an int8 table's float16 scale and bias per row ``[rows]`` twice, by table name
        self.row_params: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for group in slim.groups:
            if isinstance(group, DenseGroup):
                self._dense(group)
            elif isinstance(group, (RaggedGroup, CsrGroup)):
                self._per_row(group)
            elif isinstance(group, CompactGroup):
                self._per_row(group.to_csr())
            elif isinstance(group, HashedGroup):
                self._hashed(group)
            elif isinstance(group, QRGroup):
                self._qr(group)
            else:
                raise TypeError(f"no TorchRec export for slim groups of kind {group.kind!r}")

    def _dense(self, group: DenseGroup) -> None:
        weight = group.weight.detach().cpu()
        width = weight.shape[1]
        starts = np.cumsum([0, *group.rows])[:-1]
        for f, start, rows in zip(group.field_ids, starts, torch.split(weight, list(group.rows)), strict=True):
            info = TableInfo(table_name(f, width), f, self.plan.field_names[f], width, len(rows))
            self.tables[f].append((info, rows))
            self._keep_row_params(info, group, slice(int(start), int(start) + len(rows)))
        if group.projection is not None:
            self.projections.append((group.field_ids, group.projection.detach().cpu()))

    def _hashed(self, group: HashedGroup) -> None:
        """One table per field of its bucket rows, and the field's hash parameters."""
        weight = group.weight.detach().cpu()
        for j, (f, m) in enumerate(zip(group.field_ids, group.buckets, strict=True)):
            start = int(group.table_offsets[j])
            info = TableInfo(table_name(f, group.dim), f, self.plan.field_names[f], group.dim, m)
            self.tables[f].append((info, weight[start : start + m]))
            self._keep_row_params(info, group, slice(start, start + m))
            self.hashed[f] = (int(group.hash_a[j]), int(group.hash_b[j]))

    def _qr(self, group: QRGroup) -> None:
        """Two tables per field, its quotient rows and its remainder rows, as the slim group stores them."""
        weight = group.weight.detach().cpu()
        for j, (f, c) in enumerate(zip(group.field_ids, group.collisions, strict=True)):
            start, remainder = int(group.table_offsets[j]), int(group.remainder_offsets[j])
            parts = (slice(start, remainder), slice(remainder, remainder + c))
            for suffix, rows in zip(QR_PARTS, parts, strict=True):
                name = table_name(f, group.dim) + suffix
                info = TableInfo(name, f, self.plan.field_names[f], group.dim, rows.stop - rows.start)
                self.tables[f].append((info, weight[rows]))
                self._keep_row_params(info, group, rows)
            self.qr[f] = (c, group.combine)

    def _per_row(self, group: RaggedGroup | CsrGroup) -> None:
        """Rows of one width per table: every stored value is written into its table at (row, column)."""
        values = group.values.detach().cpu()
        num_rows = sum(group.rows)
        if isinstance(group, RaggedGroup):
            starts, sizes = (
                t.cpu() for t in group.starts_and_sizes(torch.arange(num_rows, device=group.values.device))
            )
        else:
            offsets = group.offsets.cpu().long()
            starts, sizes = offsets[:-1], torch.diff(offsets)
        entry_row = torch.repeat_interleave(torch.arange(num_rows), sizes)  # the row of each value, [nnz]
        within = torch.arange(len(entry_row)) - torch.repeat_interleave(sizes.cumsum(0) - sizes, sizes)
        source = starts[entry_row] + within  # where each value sits in ``values``
        columns = within if isinstance(group, RaggedGroup) else group.columns.cpu().long()[source]
        # a row's width: its size (ragged) or its last kept column + 1 (csr)
        widths = torch.zeros(num_rows, dtype=torch.long).scatter_reduce(0, entry_row, columns + 1, "amax")
        table_of = torch.full((num_rows,), -1, dtype=torch.long)  # index into ``infos``
        row_of = torch.zeros(num_rows, dtype=torch.long)
        infos: list[TableInfo] = []
        first = 0
        for f, n in zip(group.field_ids, group.rows, strict=True):
            mine = slice(first, first + n)
            local, rows, kinds = _rank_by_width(widths[mine])
            base = len(infos)
            infos += [TableInfo(table_name(f, w), f, self.plan.field_names[f], w, c) for w, c in kinds]
            table_of[mine] = torch.where(local >= 0, local + base, -1)
            row_of[mine] = rows
            if kinds and not (len(kinds) == 1 and kinds[0][1] == n):  # else every id is its own row: direct
                dtype = remap_table_dtype(len(kinds))
                self.remaps[f] = (local.to(dtype), rows.to(getattr(torch, offset_dtype(n).name)))
            first += n
        # all of the group's tables back to back in one flat buffer; each value lands at its (table, row, column)
        sizes_t = torch.tensor([t.num_embeddings * t.width for t in infos], dtype=torch.long)
        base_t = sizes_t.cumsum(0) - sizes_t
        width_t = torch.tensor([t.width for t in infos], dtype=torch.long)
        flat = torch.zeros(int(sizes_t.sum()), dtype=values.dtype)
        t = table_of[entry_row]
        flat[base_t[t] + row_of[entry_row] * width_t[t] + columns] = values[source]
        for info, part in zip(infos, torch.split(flat, sizes_t.tolist()), strict=True):
            self.tables[info.field].append((info, part.view(info.num_embeddings, info.width)))
        if group.precision == ROW_WISE:  # each row's scale and bias go where its values went
            counts = torch.tensor([t.num_embeddings for t in infos], dtype=torch.long)
            at = (counts.cumsum(0) - counts)[table_of.clamp(min=0)] + row_of
            stored = table_of >= 0
            params = []
            for source_params in (group.scale.detach().cpu(), group.bias.detach().cpu()):  # the stored rows', in order
                placed = torch.zeros(int(counts.sum()), dtype=source_params.dtype)
                placed[at[stored]] = source_params
                params.append(torch.split(placed, counts.tolist()))
            for info, scale, bias in zip(infos, *params, strict=True):
                self.row_params[info.name] = (scale, bias)

    def _keep_row_params(self, info: TableInfo, group: DenseGroup | HashedGroup | QRGroup, rows: slice) -> None:
        """An int8 group's scale and bias of ``rows`` (its rows held by table ``info``)."""
        if group.precision == ROW_WISE:
            self.row_params[info.name] = (group.scale.detach().cpu()[rows], group.bias.detach().cpu()[rows])

    def ids_kind(self, f: int) -> str:
        if not self.tables[f]:
            return ZERO
        if f in self.hashed:
            return HASHED
        if f in self.qr:
            return QR
        return REMAPPED if f in self.remaps else DIRECT


def _rank_by_width(widths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    """A field's row widths ``[n]`` -> each row's table (widest first; ``-1`` for width 0) and its row in
    that table (ids in order), and each table's ``(width, rows)``."""
    order = torch.argsort(-widths, stable=True)
    uniq, counts = torch.unique_consecutive(widths[order], return_counts=True)
    table_sorted = torch.repeat_interleave(torch.arange(len(uniq)), counts)
    row_sorted = torch.arange(len(widths)) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
    local = torch.empty_like(widths)
    rows = torch.empty_like(widths)
    local[order] = table_sorted
    rows[order] = row_sorted
    stored = uniq > 0
    local = torch.where(stored[local], local, -1)
    rows = torch.where(local >= 0, rows, 0)
    return local, rows, [(int(w), int(c)) for w, c in zip(uniq[stored], counts[stored], strict=True)]


def _packed(weight: torch.Tensor, params: tuple[torch.Tensor, torch.Tensor] | None, precision: str) -> torch.Tensor:
    """A table's stored rows ``[n, w]`` as its collection holds them: float32 as they are; fp16 and int8 as
    uint8 rows ``[n, row bytes]`` in fbgemm's layout (fp16: the ``w`` values' bytes; int8: the float16
    scale, the float16 bias, then the ``w`` codes, so a value reads ``code * scale + bias``, as the slim
    table decodes it)."""
    if precision == "fp32":
        return weight
    if precision == "fp16":
        return weight.contiguous().view(torch.uint8)
    assert params is not None, "an int8 table has a scale and bias per row"
    scale, bias = (p.reshape(-1, 1).contiguous().view(torch.uint8) for p in params)
    return torch.cat([scale, bias, weight], dim=1)


def export_torchrec(slim: SlimEmbedding, folder: str | Path) -> TorchRecExport:
    """Write ``slim`` as TorchRec tables with their weights, id remaps and projections (layout: the module
    docstring), in the precision the slim embedding stores (fp32: a plain collection's tables; fp16 and
    int8: TorchRec's quantised collection's); the folder is written beside its place and renamed into it
    (replacing what was there).

    Args:
        slim: a slim embedding, ids ``[B, F]`` -> ``[B, F, d]`` (e.g. ``load_model(folder).embedding``).
        folder: where the export goes.
    Returns:
        the folder, the ``EmbeddingBagConfig`` of every table, and the bytes of the exported tensors against
        the slim embedding's.
    Raises:
        ConfigError: int8 values in ``csr`` or ``compact`` storage (a TorchRec int8 row codes every column
            from its scale and bias, so the
            pruned zeros between a row's kept values have no exact code; fp16 and fp32 export them).
    """
    precision = slim.plan.precision
    if precision == ROW_WISE and slim.plan.storage in ("csr", "compact"):
        raise ConfigError(
            f"no int8 TorchRec export of {slim.plan.storage} storage (PEP's pruned rows): a TorchRec int8 row "
            "codes every column from the row's scale and bias, so the pruned zeros between its kept values "
            "have no exact code; export it in fp16 or fp32"
        )
    split = _Split(slim)
    plan = split.plan
    infos = [info for f in range(plan.num_fields) for info, _ in split.tables[f]]
    tables = {
        weight_key(info.name): _packed(w, split.row_params.get(info.name), precision)
        for f in range(plan.num_fields)
        for info, w in split.tables[f]
    }
    lookup: dict[str, torch.Tensor] = {}
    for f, (table, row) in sorted(split.remaps.items()):
        lookup[f"remap.{f}.table"], lookup[f"remap.{f}.row"] = table, row
    projections = []
    for p, (fields, projection) in enumerate(split.projections):
        lookup[f"projection.p{p}"] = projection
        projections.append({"name": f"p{p}", "fields": list(fields), "width": int(projection.shape[1])})
    nbytes = [sum(t.numel() * t.element_size() for t in ts) for ts in (tables.values(), lookup.values())]
    projection_bytes = sum(t.numel() * t.element_size() for k, t in lookup.items() if k.startswith("projection."))
    export = TorchRecExport(
        Path(folder),
        [info.config(precision) for info in infos],
        table_bytes=nbytes[0],
        remap_bytes=nbytes[1] - projection_bytes,
        projection_bytes=projection_bytes,
        slim_bytes=slim.stored_bytes(),
    )
    meta = {
        "format": "embdim-torchrec",
        "format_version": FORMAT_VERSION,
        "method": plan.method,
        "storage": plan.storage,
        "precision": precision,
        "row_alignment": ROW_ALIGNMENT,
        "dim": plan.dim,
        "fields": [
            {
                "name": name,
                "vocab_size": n,
                "tables": [info.name for info, _ in split.tables[f]],
                "ids": split.ids_kind(f),
                **({"collisions": split.qr[f][0], "combine": split.qr[f][1]} if f in split.qr else {}),
                **({"hash_a": split.hashed[f][0], "hash_b": split.hashed[f][1]} if f in split.hashed else {}),
            }
            for f, (name, n) in enumerate(zip(plan.field_names, plan.vocab_sizes, strict=True))
        ],
        "tables": [info.to_dict() | {"data_type": DATA_TYPES[precision].name} for info in infos],
        "projections": projections,
        "hash_prime": HASH_PRIME,
        "bytes": export.bytes(),
    }
    with staged_folder(Path(folder)) as tmp:
        write_tensors(tmp / TABLES_TENSORS, tables)
        write_tensors(tmp / LOOKUP_TENSORS, lookup)
        write_manifest(tmp, TORCHREC_JSON, meta, TORCHREC_FILES)
    return export


# ---------------------------------------------------------------------- load
@dataclass(frozen=True)
class TorchRecLayout:
    """An export's structure, read from ``torchrec.json``: tables in collection order, each field's ids
    (``direct`` | ``remapped`` | ``hashed`` | ``qr`` | ``zero``) and tables, the projections (name, fields,
    width), the tables' precision (``fp32`` | ``fp16`` | ``int8``), each qr field's collisions and combine,
    and each hashed field's hash parameters."""

    dim: int
    field_names: list[str]
    vocab_sizes: list[int]
    field_ids: list[str]
    field_tables: list[list[int]]
    tables: list[TableInfo]
    projections: list[tuple[str, tuple[int, ...], int]]
    precision: str = "fp32"
    qr: dict[int, tuple[int, str]] = dataclasses.field(default_factory=dict)
    hashed: dict[int, tuple[int, int]] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_json(cls, meta: dict[str, Any], where: Path) -> TorchRecLayout:
        """Check and read ``meta``; anything inconsistent is a :class:`ModelFileError` naming ``where`` and
        the field."""

        def fail(field: str, message: str) -> ModelFileError:
            return ModelFileError(f"{where}: field '{field}': {message}")

        dim = meta.get("dim")
        if not _is_int(dim) or dim < 1:
            raise fail("dim", f"expected a positive integer, got {shorten(repr(dim))}")
        precision = meta.get("precision", "fp32")  # exports before quantised tables hold float32
        if precision not in DATA_TYPES:
            raise fail("precision", f"expected one of {', '.join(DATA_TYPES)}, got {shorten(repr(precision))}")
        if precision != "fp32" and meta.get("row_alignment") != ROW_ALIGNMENT:
            raise fail("row_alignment", f"expected {ROW_ALIGNMENT}, got {shorten(repr(meta.get('row_alignment')))}")
        raw_tables, raw_fields = meta.get("tables"), meta.get("fields")
        if not isinstance(raw_tables, list) or not isinstance(raw_fields, list) or not raw_fields:
            raise fail("tables" if not isinstance(raw_tables, list) else "fields", "expected a list")
        tables: list[TableInfo] = []
        for i, t in enumerate(raw_tables):
            keys = ("name", "feature_name", "num_embeddings", "embedding_dim", "pooling", "field", "width")
            ok = isinstance(t, dict) and all(k in t for k in keys)
            ok = ok and isinstance(t["name"], str) and t["feature_name"] == t["name"] and t["pooling"] == "SUM"
            ok = ok and _is_int(t["field"]) and 0 <= t["field"] < len(raw_fields)
            ok = ok and _is_int(t["num_embeddings"]) and t["num_embeddings"] >= 1
            ok = ok and _is_int(t["width"]) and 1 <= t["width"] <= dim and t["embedding_dim"] == t["width"]
            if not ok or t["name"] not in [table_name(t["field"], t["width"]) + x for x in ("", *QR_PARTS)]:
                raise fail(
                    f"tables[{i}]",
                    f"expected a sum-pooled table 'f<field>_w<width>' (a qr field's: '_q', '_r' after it) of a "
                    f"field, with 1 to {dim} columns and feature_name = name; got {shorten(repr(t))}",
                )
            tables.append(
                TableInfo(t["name"], t["field"], str(t.get("field_name", "")), t["width"], t["num_embeddings"])
            )
        index = {t.name: k for k, t in enumerate(tables)}
        if len(index) != len(tables):
            raise fail("tables", "a table name repeats")
        names, vocab, kinds, field_tables, qr, hashed = [], [], [], [], {}, {}
        for f, entry in enumerate(raw_fields):
            ok = isinstance(entry, dict) and isinstance(entry.get("name"), str) and _is_int(entry.get("vocab_size"))
            ok = ok and entry["vocab_size"] >= 1 and entry.get("ids") in (DIRECT, REMAPPED, HASHED, QR, ZERO)
            ok = ok and isinstance(entry.get("tables"), list) and all(n in index for n in entry["tables"])
            if not ok:
                raise fail(
                    f"fields[{f}]", f"expected name, vocab_size, ids and known tables; got {shorten(repr(entry))}"
                )
            mine = [index[n] for n in entry["tables"]]
            listed = [k for k, t in enumerate(tables) if t.field == f]
            if sorted(mine) != listed or len(set(mine)) != len(mine):
                raise fail(f"fields[{f}]", "'tables' must list exactly the tables of this field")
            kind, n = entry["ids"], entry["vocab_size"]
            if kind == ZERO and mine:
                raise fail(f"fields[{f}]", "a field of ids 'zero' has no tables")
            if kind == DIRECT and (len(mine) != 1 or tables[mine[0]].num_embeddings != n):
                raise fail(f"fields[{f}]", f"a field of ids 'direct' has one table of its {n} rows")
            if kind == REMAPPED and not mine:
                raise fail(f"fields[{f}]", "a field of ids 'remapped' has tables")
            if kind == HASHED:
                a, b = entry.get("hash_a"), entry.get("hash_b")
                valid = (
                    len(mine) == 1 and tables[mine[0]].num_embeddings >= MIN_BUCKETS and tables[mine[0]].width == dim
                )
                if not (valid and _is_int(a) and _is_int(b) and 1 <= a < HASH_PRIME and 0 <= b < HASH_PRIME):
                    raise fail(
                        f"fields[{f}]",
                        f"a field of ids 'hashed' has one table of at least {MIN_BUCKETS} buckets, {dim} wide, "
                        f"hash_a in [1, {HASH_PRIME}) and hash_b in [0, {HASH_PRIME}) (an export written before "
                        "they were stored: export the bundle again)",
                    )
                hashed[f] = (a, b)
            if kind == QR:
                qr[f] = _qr_field(entry, [tables[k] for k in mine], dim, lambda m, f=f: fail(f"fields[{f}]", m))
            elif any(not tables[k].name.endswith(f"_w{tables[k].width}") for k in mine):
                raise fail(f"fields[{f}]", "only a field of ids 'qr' has quotient and remainder tables")
            names.append(entry["name"])
            vocab.append(n)
            kinds.append(kind)
            field_tables.append(mine)
        projections, projected = [], set()
        if hashed and meta.get("hash_prime") != HASH_PRIME:  # the prime the buckets were hashed with
            raise fail("hash_prime", f"expected {HASH_PRIME}, got {shorten(repr(meta.get('hash_prime')))}")
        raw_projections = meta.get("projections")
        if not isinstance(raw_projections, list):
            raise fail("projections", "expected a list")
        for p, entry in enumerate(raw_projections):
            fields = entry.get("fields") if isinstance(entry, dict) else None
            ok = entry.get("name") == f"p{p}" and isinstance(fields, list) and len(fields) > 0 if fields else False
            ok = ok and all(_is_int(f) and 0 <= f < len(names) and kinds[f] == DIRECT for f in fields)
            ok = ok and all(tables[field_tables[f][0]].width == entry.get("width") for f in fields)
            if not ok or projected & set(fields) or len(set(fields)) != len(fields):
                raise fail(
                    f"projections[{p}]",
                    f"expected name 'p{p}' and fields read directly from tables of its width, each projected once",
                )
            projected.update(fields)
            projections.append((entry["name"], tuple(fields), entry["width"]))
        return cls(dim, names, vocab, kinds, field_tables, tables, projections, precision, qr, hashed)

    def check_tables(self, tensors: dict[str, torch.Tensor], where: Path) -> None:
        """Exactly one weight of finite values per table: float32 ``[num_embeddings, width]``, or for fp16
        and int8 uint8 ``[num_embeddings, row bytes]`` (:func:`_packed`; int8: finite scales and biases)."""
        want = {weight_key(t.name): t for t in self.tables}
        if extra := sorted(set(tensors) - set(want)):
            raise ModelFileError(f"{where}: tensors of no table: {shorten(str(extra))}")
        quantised = self.precision != "fp32"
        for key, t in want.items():
            if key not in tensors:
                raise ModelFileError(f"{where}: missing tensor '{key}'")
            w = tensors[key]
            dtype, columns = (torch.uint8, t.row_bytes(self.precision)) if quantised else (torch.float32, t.width)
            if w.dtype != dtype or tuple(w.shape) != (t.num_embeddings, columns):
                raise ModelFileError(
                    f"{where}: tensor '{key}': {_describe(w)}, expected {str(dtype).removeprefix('torch.')} "
                    f"[{t.num_embeddings}, {columns}]"
                )
            floats = w
            if self.precision == "fp16":
                floats = w.view(torch.float16)
            elif self.precision == ROW_WISE:  # the codes are any byte; the scale and bias are float16
                floats = w[:, :ROW_PARAM_BYTES].flatten().view(torch.float16)
            if not all_finite(floats):
                raise ModelFileError(f"{where}: tensor '{key}': holds non-finite values")

    def check_lookup(self, tensors: dict[str, torch.Tensor], where: Path) -> None:
        """Remaps of remapped fields (every id to a table of the field or -1, each table's rows taken once)
        and projections ``[F_p, w, d]`` of finite float32."""
        want = {f"projection.{name}" for name, _, _ in self.projections}
        want |= {
            f"remap.{f}.{part}"
            for f, kind in enumerate(self.field_ids)
            if kind == REMAPPED
            for part in ("table", "row")
        }
        if extra := sorted(set(tensors) - want):
            raise ModelFileError(f"{where}: tensors of no remapped field or projection: {shorten(str(extra))}")
        if missing := sorted(want - set(tensors)):
            raise ModelFileError(f"{where}: missing tensors {shorten(str(missing))}")
        for name, fields, width in self.projections:
            key = f"projection.{name}"
            proj = tensors[key]
            if proj.dtype != torch.float32 or tuple(proj.shape) != (len(fields), width, self.dim):
                raise ModelFileError(
                    f"{where}: tensor '{key}': {_describe(proj)}, expected float32 [{len(fields)}, {width}, {self.dim}]"
                )
            if not all_finite(proj):
                raise ModelFileError(f"{where}: tensor '{key}': holds non-finite values")
        for f, kind in enumerate(self.field_ids):
            if kind != REMAPPED:
                continue
            n, mine = self.vocab_sizes[f], self.field_tables[f]
            table, row = tensors[f"remap.{f}.table"], tensors[f"remap.{f}.row"]
            if table.dtype not in (torch.int8, torch.int16) or tuple(table.shape) != (n,):
                raise ModelFileError(
                    f"{where}: tensor 'remap.{f}.table': {_describe(table)}, expected int8 or int16 [{n}]"
                )
            if row.dtype not in (torch.int32, torch.int64) or tuple(row.shape) != (n,):
                raise ModelFileError(
                    f"{where}: tensor 'remap.{f}.row': {_describe(row)}, expected int32 or int64 [{n}]"
                )
            table, row = table.long(), row.long()
            if bool(((table < -1) | (table >= len(mine))).any()):
                raise ModelFileError(f"{where}: tensor 'remap.{f}.table': a value outside [-1, {len(mine)})")
            stored = table >= 0
            counts = torch.tensor([self.tables[k].num_embeddings for k in mine], dtype=torch.long)
            t, r = table[stored], row[stored]
            covered = torch.bincount(t, minlength=len(mine))
            if bool(((r < 0) | (r >= counts[t])).any()) or not torch.equal(covered, counts):
                raise ModelFileError(f"{where}: tensor 'remap.{f}.row': rows do not cover each table of the field once")
            flat = t * int(counts.max()) + r
            if len(torch.unique(flat)) != len(flat):
                raise ModelFileError(f"{where}: tensor 'remap.{f}.row': a table row is taken by two ids")


def _qr_field(
    entry: dict[str, Any], tables: list[TableInfo], dim: int, fail: Callable[[str], ModelFileError]
) -> tuple[int, str]:
    """A qr field's ``(collisions, combine)``: two full-width tables, its ``ceil(n / c)`` quotient rows then
    its ``c`` remainder rows, ``MIN_BUCKETS <= c < n``; ``fail(message)`` is the error to raise otherwise."""
    n, c, combine = entry["vocab_size"], entry.get("collisions"), entry.get("combine")
    if not _is_int(c) or not MIN_BUCKETS <= c < n or combine not in QRGroup.COMBINE:
        raise fail(
            f"a field of ids 'qr' needs collisions in [{MIN_BUCKETS}, {n}) and combine in {QRGroup.COMBINE}; "
            f"got {c!r}, {combine!r}"
        )
    want = [(QR_PARTS[0], -(-n // c)), (QR_PARTS[1], c)]
    got = [(t.name[-2:], t.num_embeddings) for t in tables]
    if got != want or any(t.width != dim for t in tables):
        raise fail(
            f"a field of ids 'qr' has a quotient table of {want[0][1]} rows and a remainder table of {c}, {dim} wide"
        )
    return c, combine


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _describe(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)}"


def verify_torchrec_folder(folder: str | Path) -> dict[str, Any]:
    """``torchrec.json`` of an export whose files are exactly the expected ones, in the known format, and
    unchanged since export (every SHA-256 matches); anything else is a :class:`ModelFileError` naming the
    file and field."""
    return verify_folder(Path(folder), TORCHREC_JSON, TORCHREC_FILES, FORMAT_VERSION, "TorchRec export")


def load_torchrec(folder: str | Path) -> tuple[nn.Module, TorchRecEmbedding]:
    """Read an export (JSON and safetensors only, no pickle), verified and checked before use.

    Returns:
        a CPU collection holding every table's weights (its configs: ``ebc.embedding_bag_configs()``): a
        plain ``torchrec.EmbeddingBagCollection`` for float32 tables, TorchRec's quantised
        ``torchrec.quant.embedding_modules.EmbeddingBagCollection`` (float32 output, ``row_alignment`` 1)
        for fp16 and int8 ones; and the :class:`TorchRecEmbedding` that maps ids ``[B, F]`` through it to
        ``[B, F, d]`` (it holds the same collection as ``.collection``).
    """
    folder = Path(folder)
    meta = verify_torchrec_folder(folder)
    layout = TorchRecLayout.from_json(meta, folder / TORCHREC_JSON)
    weights = read_safetensors(folder / TABLES_TENSORS)
    layout.check_tables(weights, folder / TABLES_TENSORS)
    lookup = read_safetensors(folder / LOOKUP_TENSORS)
    layout.check_lookup(lookup, folder / LOOKUP_TENSORS)
    configs = [t.config(layout.precision) for t in layout.tables]
    cpu = torch.device("cpu")
    ebc: nn.Module
    with torch.random.fork_rng(devices=[]):  # its own initial draws are replaced: leave the global RNG alone
        if layout.precision == "fp32":
            ebc = EmbeddingBagCollection(tables=configs, device=cpu)
        else:
            ebc = QuantEmbeddingBagCollection(
                tables=configs, is_weighted=False, device=cpu, output_dtype=torch.float32, row_alignment=ROW_ALIGNMENT
            )
    # a plain collection takes the tensors read; the quantised one copies them into its own buffers
    ebc.load_state_dict(weights, assign=layout.precision == "fp32")
    return ebc, TorchRecEmbedding(ebc, layout, lookup)


# ---------------------------------------------------------------------- lookup
class TorchRecEmbedding(nn.Module):
    """ids ``[B, F]`` (int64, the slim model's ids) -> ``[B, F, d]`` through a TorchRec ``EmbeddingBagCollection``.

    ``forward(ids) = combine(collection(features(ids)), ids)``; a server running its own (sharded)
    collection of the same tables calls :meth:`features` and :meth:`combine` around it.
    """

    def __init__(self, collection: nn.Module, layout: TorchRecLayout, lookup: dict[str, torch.Tensor]):
        super().__init__()
        self.collection = collection
        self.layout = layout
        self.dim = layout.dim
        self.num_fields = len(layout.field_names)
        self.num_tables = num_tables = len(layout.tables)
        self.feature_names = [t.name for t in layout.tables]
        direct = [f for f, kind in enumerate(layout.field_ids) if kind == DIRECT]
        remapped = [f for f, kind in enumerate(layout.field_ids) if kind == REMAPPED]
        self.register_buffer("direct_fields", torch.tensor(direct, dtype=torch.long), persistent=False)
        direct_tables = [layout.field_tables[f][0] for f in direct]
        self.register_buffer("direct_tables", torch.tensor(direct_tables, dtype=torch.long), persistent=False)
        # remapped fields: their ids' tables (numbered in the collection; K = none) and rows, back to back
        self.register_buffer("remap_fields", torch.tensor(remapped, dtype=torch.long), persistent=False)
        starts = np.cumsum([0] + [layout.vocab_sizes[f] for f in remapped])[:-1]
        self.register_buffer("remap_starts", torch.tensor(starts, dtype=torch.long), persistent=False)
        dtype = torch.int16 if num_tables < torch.iinfo(torch.int16).max else torch.int32
        tables, rows = [], []
        for f in remapped:
            local = lookup[f"remap.{f}.table"].long()
            ids = torch.tensor([*layout.field_tables[f], num_tables], dtype=torch.long)
            tables.append(ids[torch.where(local >= 0, local, len(ids) - 1)].to(dtype))
            rows.append(lookup[f"remap.{f}.row"])
        row_dtype = torch.int64 if any(r.dtype == torch.int64 for r in rows) else torch.int32
        self.register_buffer(
            "remap_table", torch.cat(tables) if tables else torch.zeros(0, dtype=dtype), persistent=False
        )
        self.register_buffer(
            "remap_row",
            torch.cat([r.to(row_dtype) for r in rows]) if rows else torch.zeros(0, dtype=row_dtype),
            persistent=False,
        )
        self.projections = nn.ParameterList(
            [nn.Parameter(lookup[f"projection.{name}"], requires_grad=False) for name, _, _ in layout.projections]
        )
        # qr fields: an id reads row id // c of the quotient table (its remap's table) and id % c of the remainder's
        qr = sorted(layout.qr)
        self.register_buffer("qr_fields", torch.tensor(qr, dtype=torch.long), persistent=False)
        self.register_buffer(
            "qr_collisions", torch.tensor([layout.qr[f][0] for f in qr], dtype=torch.long), persistent=False
        )
        quotient_tables, remainder_tables = ([layout.field_tables[f][part] for f in qr] for part in (0, 1))
        self.register_buffer("qr_quotient_tables", torch.tensor(quotient_tables, dtype=torch.long), persistent=False)
        self.register_buffer("qr_remainder_tables", torch.tensor(remainder_tables, dtype=torch.long), persistent=False)
        self.register_buffer("qr_mult", torch.tensor([layout.qr[f][1] == "mult" for f in qr]), persistent=False)
        # hashed fields: an id reads its bucket of the field's one table, hashed as the slim model hashes it
        hashed = sorted(layout.hashed)
        self.register_buffer("hashed_fields", torch.tensor(hashed, dtype=torch.long), persistent=False)
        self.register_buffer(
            "hashed_tables",
            torch.tensor([layout.field_tables[f][0] for f in hashed], dtype=torch.long),
            persistent=False,
        )
        for name, values in (
            ("hash_a", [layout.hashed[f][0] for f in hashed]),
            ("hash_b", [layout.hashed[f][1] for f in hashed]),
            ("hash_buckets", [layout.tables[layout.field_tables[f][0]].num_embeddings for f in hashed]),
        ):
            self.register_buffer(name, torch.tensor(values, dtype=torch.long), persistent=False)
        self.register_buffer("columns", self._columns(), persistent=False)
        table_starts = np.cumsum([0, *(t.width for t in layout.tables)])
        #: per projection, where each of its fields' columns start in the pooled values
        self._projected_starts = [
            [int(table_starts[layout.field_tables[f][0]]) for f in fields] for _, fields, _ in layout.projections
        ]
        #: where each qr field's quotient and remainder columns start in the pooled values
        self._qr_starts = [[int(table_starts[k]) for k in tables] for tables in (quotient_tables, remainder_tables)]

    def _columns(self) -> torch.Tensor:
        """For each table (and one row for "no table"), where output column ``j < d`` comes from in
        ``[pooled values | projected fields | combined qr fields | one zero]``, int64 ``[K + 1, d]`` (a qr
        field is read through its quotient table)."""
        widths = [t.width for t in self.layout.tables]
        starts = np.cumsum([0, *widths])
        pooled = int(starts[-1])
        computed = [f for _, fields, _ in self.layout.projections for f in fields] + sorted(self.layout.qr)
        zero = pooled + len(computed) * self.dim
        columns = torch.full((self.num_tables + 1, self.dim), zero, dtype=torch.long)
        for k, w in enumerate(widths):
            columns[k, :w] = torch.arange(starts[k], starts[k] + w)
        for i, f in enumerate(computed):
            start = pooled + i * self.dim
            columns[self.layout.field_tables[f][0]] = torch.arange(start, start + self.dim)
        return columns

    def remap(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids ``[B, F]`` -> each id's table (index into the collection's tables; ``num_tables``: none, embeds
        to zeros; a qr field's quotient table) and its row in that table, int64 ``[B, F]`` twice."""
        batch = ids.shape[0]
        tables = torch.full((batch, self.num_fields), self.num_tables, dtype=torch.long, device=ids.device)
        rows = torch.zeros((batch, self.num_fields), dtype=torch.long, device=ids.device)
        if len(self.direct_fields):
            tables[:, self.direct_fields] = self.direct_tables
            rows[:, self.direct_fields] = ids[:, self.direct_fields]
        if len(self.remap_fields):
            flat = ids[:, self.remap_fields] + self.remap_starts
            tables[:, self.remap_fields] = self.remap_table[flat].long()
            rows[:, self.remap_fields] = self.remap_row[flat].long()
        if len(self.hashed_fields):
            tables[:, self.hashed_fields] = self.hashed_tables
            rows[:, self.hashed_fields] = hashed_buckets(
                ids[:, self.hashed_fields], self.hash_a, self.hash_b, self.hash_buckets
            )
        if len(self.qr_fields):
            tables[:, self.qr_fields] = self.qr_quotient_tables
            rows[:, self.qr_fields] = torch.div(ids[:, self.qr_fields], self.qr_collisions, rounding_mode="floor")
        return tables, rows

    def features(self, ids: torch.Tensor) -> KeyedJaggedTensor:
        """ids ``[B, F]`` -> the collection's input: one feature per table (:attr:`feature_names`, the
        collection's order), ``B`` bags each; a bag holds the id's row when the id lives in that table (a qr
        field's id lives in both of its tables), else nothing."""
        batch = ids.shape[0]
        tables, rows = self.remap(ids)
        if len(self.qr_fields):  # a qr field's id also reads its remainder table
            remainder = torch.remainder(ids[:, self.qr_fields], self.qr_collisions)
            tables = torch.cat([tables, self.qr_remainder_tables.expand_as(remainder)], dim=1)
            rows = torch.cat([rows, remainder], dim=1)
        used = tables < self.num_tables
        bag = (tables * batch + torch.arange(batch, device=ids.device).unsqueeze(1))[used]  # feature-major
        order = torch.argsort(bag)
        lengths = torch.zeros(self.num_tables * batch, dtype=torch.int32, device=ids.device)
        lengths[bag] = 1
        return KeyedJaggedTensor(keys=self.feature_names, values=rows[used][order], lengths=lengths, stride=batch)

    def combine(self, pooled: KeyedTensor, ids: torch.Tensor) -> torch.Tensor:
        """The collection's output for :meth:`features` (``ids [B, F]``) -> embeddings ``[B, F, d]``: each
        field's vector from its id's table, zero-padded to ``d`` or projected, a qr field's two rows combined,
        zeros where it has none."""
        values = pooled.values()
        if pooled.keys() != self.feature_names:
            by_key = pooled.to_dict()
            values = torch.cat([by_key[k] for k in self.feature_names], dim=1)
        batch = ids.shape[0]
        parts = [values]
        for projection, starts in zip(self.projections, self._projected_starts, strict=True):
            # [B, F_p, w], as the slim group gathers it, through the same einsum: the same bits
            width = projection.shape[1]
            raw = torch.stack([values[:, s : s + width] for s in starts], dim=1)
            parts.append(project_fields(raw, projection, self.dim).flatten(1))
        if len(self.qr_fields):  # [B, F_qr, d] twice, combined as the slim group combines them
            quotient, remainder = (
                torch.stack([values[:, s : s + self.dim] for s in starts], dim=1) for starts in self._qr_starts
            )
            mult = self.qr_mult.view(1, -1, 1)
            parts.append(torch.where(mult, quotient * remainder, quotient + remainder).flatten(1))
        parts.append(torch.zeros(batch, 1, dtype=values.dtype, device=values.device))
        flat = torch.cat(parts, dim=1)
        tables, _ = self.remap(ids)
        index = self.columns[tables].view(batch, self.num_fields * self.dim)
        return flat.gather(1, index).view(batch, self.num_fields, self.dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.num_tables == 0:  # every field dropped
            return torch.zeros(ids.shape[0], self.num_fields, self.dim, device=ids.device)
        return self.combine(self.collection(self.features(ids)), ids)


__all__ = [
    "TorchRecEmbedding",
    "TorchRecExport",
    "TorchRecLayout",
    "export_torchrec",
    "load_torchrec",
    "verify_torchrec_folder",
    "zero_pad",
]
