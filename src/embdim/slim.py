"""Slim embedding storage: what an exported model keeps, and the lookup that reads it.

A :class:`SlimEmbedding` maps ids ``[B, F]`` to ``[B, F, d]`` exactly like the masked model it came
from, but stores only what the plan keeps. Fields are grouped; each group stores its fields' rows
back to back (row ``offset_f + id``) in one of three layouts:

- :class:`DenseGroup`: a table ``[rows, w]``; shorter rows are zero-padded to ``d``, or projected
  to ``d`` by a per-field matrix ``[w, d]`` (MDE).
- :class:`RaggedGroup`: row i keeps its first ``k_i`` values: ``values [sum k]`` + ``offsets [rows + 1]``,
  or, when equal sizes come in long runs of rows, a per-run index (:func:`embdim.storage.ragged_index`).
- :class:`CsrGroup`: row i keeps ``nnz_i`` values at given columns: ``values``, ``columns`` (uint8
  or int16) and ``offsets [rows + 1]``.

Saved as ``embedding.safetensors`` + ``embedding.json`` (no pickle).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from embdim.errors import ModelFileError, shorten
from embdim.measures import all_finite
from embdim.plan import EmbeddingPlan
from embdim.storage import (
    VALUE_DTYPE,
    column_dtype,
    equal_size_runs,
    field_bounds,
    offset_dtype,
    ragged_index,
    size_dtype,
)
from embdim.tensorfile import write_tensors

GROUP_KINDS: dict[str, type[SlimGroup]] = {}
EMBEDDING_TENSORS = "embedding.safetensors"
EMBEDDING_JSON = "embedding.json"


def _torch(dtype: np.dtype) -> torch.dtype:
    """The torch dtype of a numpy dtype chosen by :mod:`embdim.storage`."""
    return getattr(torch, dtype.name)


VALUES = _torch(VALUE_DTYPE)  # every stored value and projection weight


def project_fields(raw: torch.Tensor, projection: torch.Tensor | None, dim: int) -> torch.Tensor:
    """Bring per-field vectors of width ``w`` to width ``dim``.

    Args:
        raw: [B, F_g, w].
        projection: [F_g, w, dim] per-field linear maps, or ``None`` to zero-pad (w <= dim).
    Returns:
        [B, F_g, dim].
    """
    if projection is not None:
        return torch.einsum("bfw,fwd->bfd", raw, projection)
    width = raw.shape[-1]
    if width == dim:
        return raw
    return nn.functional.pad(raw, (0, dim - width))


class SlimGroup(nn.Module, ABC):
    """Storage for a group of fields; ``forward(ids [B, F_g]) -> [B, F_g, d]``.

    A group keeps the tensors it is given, without copying them: an export builds them for it (a
    concatenation, an indexed selection, a product), and a copy would double the export's memory. A
    caller handing over live weights (a lookup's own table) passes a copy.
    """

    kind: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        GROUP_KINDS[cls.kind] = cls

    def __init__(self, field_ids: Sequence[int], rows: Sequence[int], dim: int) -> None:
        super().__init__()
        self.field_ids = tuple(int(f) for f in field_ids)
        self.rows = tuple(int(r) for r in rows)
        self.dim = dim
        starts = torch.from_numpy(field_bounds(self.rows)[:-1])
        self.register_buffer("row_offsets", starts, persistent=False)

    def global_rows(self, ids: torch.Tensor) -> torch.Tensor:
        return ids + self.row_offsets

    def layout(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "field_ids": list(self.field_ids),
            "rows": list(self.rows),
            "dim": self.dim,
        }

    @property
    def width(self) -> int:
        """Width of each field's vector from :meth:`narrow` (``d`` unless the group stores fewer columns)."""
        return self.dim

    def narrow(self, ids: torch.Tensor) -> torch.Tensor:
        """ids ``[B, F_g]`` -> ``[B, F_g, width]``: the stored columns only, before zero-padding to ``d``."""
        return self(ids)

    @abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]: ...

    @classmethod
    @abstractmethod
    def from_saved(cls, layout: dict[str, Any], tensors: dict[str, torch.Tensor]) -> SlimGroup: ...

    @abstractmethod
    def stored_sizes(self) -> torch.Tensor:
        """Values stored for each of the group's rows, int64 [sum rows] (fields back to back)."""

    @classmethod
    @abstractmethod
    def check_saved(cls, layout: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Raise ``ValueError`` naming the tensor when ``tensors`` are not a valid group of ``layout``
        (names, dtypes, shapes, index arrays): what :meth:`SlimEmbedding.load` runs before any use."""

    def _ragged_positions(self, starts: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For rows with ``starts``/``lengths`` [...]: flat positions [..., d] and their validity."""
        j = torch.arange(self.dim, device=starts.device)
        valid = j < lengths.unsqueeze(-1)
        return torch.where(valid, starts.unsqueeze(-1) + j, 0), valid


class DenseGroup(SlimGroup):
    """A table ``weight [sum rows, w]``, zero-padded or projected (``projection [F_g, w, d]``) to ``d``."""

    kind = "dense"

    def __init__(self, field_ids, rows, weight: torch.Tensor, projection: torch.Tensor | None, dim: int) -> None:
        super().__init__(field_ids, rows, dim)
        self.weight = nn.Parameter(weight.detach().to(VALUES))
        self.projection = None if projection is None else nn.Parameter(projection.detach().to(VALUES))

    @property
    def width(self) -> int:
        return self.dim if self.projection is not None else self.weight.shape[1]

    def narrow(self, ids: torch.Tensor) -> torch.Tensor:
        raw = nn.functional.embedding(self.global_rows(ids), self.weight)
        return raw if self.projection is None else project_fields(raw, self.projection, self.dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return project_fields(self.narrow(ids), None, self.dim)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"weight": self.weight.detach()}
        if self.projection is not None:
            out["projection"] = self.projection.detach()
        return out

    @classmethod
    def from_saved(cls, layout, tensors):
        return cls(layout["field_ids"], layout["rows"], tensors["weight"], tensors.get("projection"), layout["dim"])

    def stored_sizes(self) -> torch.Tensor:
        return torch.full((self.weight.shape[0],), self.weight.shape[1], dtype=torch.long)

    @classmethod
    def check_saved(cls, layout, tensors):
        _expect_names(tensors, {"weight"}, {"projection"})
        dim, rows = layout["dim"], sum(layout["rows"])
        weight = _expect_tensor(tensors, "weight", FLOAT_DTYPES, 2)
        if weight.shape[0] != rows or not 1 <= weight.shape[1] <= dim:
            raise ValueError(f"weight: shape {tuple(weight.shape)}, expected [{rows}, 1..{dim}]")
        if "projection" in tensors:
            proj = _expect_tensor(tensors, "projection", FLOAT_DTYPES, 3)
            want = (len(layout["field_ids"]), weight.shape[1], dim)
            if tuple(proj.shape) != want:
                raise ValueError(f"projection: shape {tuple(proj.shape)}, expected {list(want)}")


class RaggedGroup(SlimGroup):
    """Row i keeps its first ``k_i`` values ``values [sum k]``, found through one of two indexes.

    - per row: ``offsets [R + 1]`` (R = sum of the group's rows);
    - per run of consecutive rows with one size (never crossing a field): ``run_rows [runs + 1]``
      (first row of each run), ``run_offsets [runs + 1]`` (its first value) and ``run_sizes [runs]``.
      AMTL's sizes follow frequency and the encoder numbers ids by frequency, so its runs are few.
    """

    kind = "ragged"

    def __init__(self, field_ids, rows, values: torch.Tensor, index: dict[str, torch.Tensor], dim: int) -> None:
        super().__init__(field_ids, rows, dim)
        self.values = nn.Parameter(values.detach().to(VALUES))
        self.index_names = tuple(sorted(index))
        if self.index_names not in (("offsets",), ("run_offsets", "run_rows", "run_sizes")):
            raise ValueError(f"a ragged index is 'offsets' or 'run_rows', 'run_offsets', 'run_sizes'; got {index}")
        for name, tensor in index.items():
            self.register_buffer(name, tensor.detach())

    @classmethod
    def from_dense(cls, field_ids, rows, table: torch.Tensor, lengths: torch.Tensor, dim: int) -> RaggedGroup:
        """From a table ``[sum rows, d]`` and kept prefix lengths ``[sum rows]``, with the smaller index."""
        keep = torch.arange(table.shape[1]) < lengths.unsqueeze(1)
        total = int(lengths.sum())
        per_field = [r.numpy() for r in torch.split(lengths.cpu(), list(rows))]
        layout, _ = ragged_index(len(lengths), total, equal_size_runs(per_field), dim)
        if layout == "rows":
            offsets = torch.zeros(len(lengths) + 1, dtype=_torch(offset_dtype(total)))
            offsets[1:] = lengths.cumsum(0)
            return cls(field_ids, rows, table[keep], {"offsets": offsets}, dim)
        field_start = torch.zeros(len(lengths), dtype=torch.bool)
        field_start[torch.from_numpy(field_bounds(rows)[:-1])] = True
        changes = torch.ones(len(lengths), dtype=torch.bool)
        changes[1:] = lengths[1:] != lengths[:-1]
        first_rows = torch.nonzero(changes | field_start).squeeze(1)
        run_sizes = lengths[first_rows]
        run_lengths = torch.diff(first_rows, append=torch.tensor([len(lengths)]))
        run_offsets = torch.zeros(len(first_rows) + 1, dtype=torch.long)
        run_offsets[1:] = (run_sizes * run_lengths).cumsum(0)
        index = {
            "run_rows": torch.cat([first_rows, torch.tensor([len(lengths)])]).to(_torch(offset_dtype(len(lengths)))),
            "run_offsets": run_offsets.to(_torch(offset_dtype(total))),
            "run_sizes": run_sizes.to(_torch(size_dtype(dim))),
        }
        return cls(field_ids, rows, table[keep], index, dim)

    def starts_and_sizes(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Group rows ``[...]`` (fields back to back) -> the position of each one's first value in ``values`` and
        its size, int64 ``[...]`` twice (either index layout)."""
        if "offsets" in self.index_names:
            starts = self.offsets[g].long()
            return starts, self.offsets[g + 1].long() - starts
        run = torch.searchsorted(self.run_rows, g.to(self.run_rows.dtype), right=True) - 1
        sizes = self.run_sizes[run].long()
        return self.run_offsets[run].long() + (g - self.run_rows[run].long()) * sizes, sizes

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos, valid = self._ragged_positions(*self.starts_and_sizes(self.global_rows(ids)))
        return torch.where(valid, self.values[pos], 0.0)

    def tensors(self):
        return {"values": self.values.detach(), **{name: getattr(self, name) for name in self.index_names}}

    @classmethod
    def from_saved(cls, layout, tensors):
        index = {k: v for k, v in tensors.items() if k != "values"}
        return cls(layout["field_ids"], layout["rows"], tensors["values"], index, layout["dim"])

    def stored_sizes(self) -> torch.Tensor:
        return self.starts_and_sizes(torch.arange(sum(self.rows)))[1]

    @classmethod
    def check_saved(cls, layout, tensors):
        dim, rows = layout["dim"], sum(layout["rows"])
        values = _expect_tensor(tensors, "values", FLOAT_DTYPES, 1)
        if "offsets" in tensors:
            _expect_names(tensors, {"values", "offsets"})
            _check_offsets(tensors, "offsets", rows, len(values), dim)
            return
        _expect_names(tensors, {"values", "run_rows", "run_offsets", "run_sizes"})
        run_rows = _expect_tensor(tensors, "run_rows", INDEX_DTYPES, 1).long()
        runs = len(run_rows) - 1
        if runs < 0 or run_rows[0] != 0 or run_rows[-1] != rows or bool((torch.diff(run_rows) <= 0).any()):
            raise ValueError(f"run_rows: must rise from 0 to {rows} (the group's rows) in {runs} runs")
        sizes = _expect_tensor(tensors, "run_sizes", SIZE_DTYPES, 1).long()
        if len(sizes) != runs or bool(((sizes < 0) | (sizes > dim)).any()):
            raise ValueError(f"run_sizes: need {runs} sizes in [0, {dim}]")
        offsets = _expect_tensor(tensors, "run_offsets", INDEX_DTYPES, 1).long()
        expected = torch.cat([torch.zeros(1, dtype=torch.long), (sizes * torch.diff(run_rows)).cumsum(0)])
        if len(offsets) != runs + 1 or not torch.equal(offsets, expected) or expected[-1] != len(values):
            raise ValueError(f"run_offsets: do not match run_rows, run_sizes and the {len(values)} values")


class CsrGroup(SlimGroup):
    """Row i keeps values at given columns: ``values [nnz]``, ``columns [nnz]``, ``offsets [sum rows + 1]``."""

    kind = "csr"

    def __init__(self, field_ids, rows, values, columns, offsets, dim: int) -> None:
        super().__init__(field_ids, rows, dim)
        self.values = nn.Parameter(values.detach().to(VALUES))
        self.register_buffer("columns", columns.detach())
        self.register_buffer("offsets", offsets.detach())

    @classmethod
    def from_dense(cls, field_ids, rows, table: torch.Tensor, mask: torch.Tensor, dim: int) -> CsrGroup:
        """From a table ``[sum rows, d]`` and a boolean keep-mask of the same shape."""
        nnz = mask.sum(1)
        offsets = torch.zeros(len(nnz) + 1, dtype=_torch(offset_dtype(int(nnz.sum()))))
        offsets[1:] = nnz.cumsum(0)
        cols = torch.nonzero(mask, as_tuple=True)[1]
        return cls(field_ids, rows, table[mask], cols.to(_torch(column_dtype(dim))), offsets, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        g = self.global_rows(ids)
        starts = self.offsets[g].long()
        pos, valid = self._ragged_positions(starts, self.offsets[g + 1].long() - starts)
        vals = torch.where(valid, self.values[pos], 0.0)
        # invalid slots scatter a zero onto column 0, which a valid slot may also write: add, don't overwrite
        cols = torch.where(valid, self.columns[pos].long(), 0)
        out = torch.zeros(*ids.shape, self.dim, dtype=vals.dtype, device=vals.device)
        return out.scatter_add(-1, cols, vals)

    def tensors(self):
        return {"values": self.values.detach(), "columns": self.columns, "offsets": self.offsets}

    @classmethod
    def from_saved(cls, layout, tensors):
        return cls(
            layout["field_ids"],
            layout["rows"],
            tensors["values"],
            tensors["columns"],
            tensors["offsets"],
            layout["dim"],
        )

    def stored_sizes(self) -> torch.Tensor:
        return torch.diff(self.offsets.long())

    @classmethod
    def check_saved(cls, layout, tensors):
        _expect_names(tensors, {"values", "columns", "offsets"})
        dim, rows = layout["dim"], sum(layout["rows"])
        values = _expect_tensor(tensors, "values", FLOAT_DTYPES, 1)
        columns = _expect_tensor(tensors, "columns", SIZE_DTYPES, 1).long()
        if len(columns) != len(values) or bool(((columns < 0) | (columns >= dim)).any()):
            raise ValueError(f"columns: need {len(values)} column indices in [0, {dim})")
        offsets = _check_offsets(tensors, "offsets", rows, len(values), dim)
        # within a row the columns rise (each value has its own column); across rows they start again
        rises = torch.diff(columns) > 0
        row_starts = offsets[1:-1][(offsets[1:-1] > 0) & (offsets[1:-1] < len(columns))] - 1
        rises[row_starts] = True
        if not bool(rises.all()):
            raise ValueError("columns: a row repeats or reorders its column indices")


FLOAT_DTYPES = (VALUES,)
INDEX_DTYPES = (torch.int32, torch.int64)
SIZE_DTYPES = (torch.uint8, torch.int16)


def _expect_names(tensors: dict[str, torch.Tensor], required: set[str], optional: set[str] = frozenset()) -> None:
    names = set(tensors)
    if missing := required - names:
        raise ValueError(f"missing tensors {sorted(missing)}")
    if extra := names - required - optional:
        raise ValueError(f"unexpected tensors {sorted(extra)}")


def _expect_tensor(
    tensors: dict[str, torch.Tensor], name: str, dtypes: tuple[torch.dtype, ...], ndim: int
) -> torch.Tensor:
    tensor = tensors[name]
    if tensor.dtype not in dtypes or tensor.ndim != ndim:
        shown = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise ValueError(
            f"{name}: {str(tensor.dtype).removeprefix('torch.')} with {tensor.ndim} dims, expected {shown} with {ndim}"
        )
    if not all_finite(tensor):
        raise ValueError(f"{name}: holds non-finite values")
    return tensor


def _check_offsets(tensors: dict[str, torch.Tensor], name: str, rows: int, total: int, dim: int) -> torch.Tensor:
    """Row offsets ``[rows + 1]`` from 0 to ``total``, each row at most ``dim`` long; returns them as int64."""
    offsets = _expect_tensor(tensors, name, INDEX_DTYPES, 1).long()
    steps = torch.diff(offsets)
    if len(offsets) != rows + 1 or offsets[0] != 0 or offsets[-1] != total or bool(((steps < 0) | (steps > dim)).any()):
        raise ValueError(f"{name}: need {rows + 1} offsets rising from 0 to {total}, at most {dim} apart")
    return offsets


class SlimEmbedding(nn.Module):
    """ids ``[B, F]`` -> embeddings ``[B, F, d]`` from slim storage groups.

    Fields that no group holds (dropped entirely) embed to zeros.
    """

    def __init__(self, plan: EmbeddingPlan, groups: Sequence[SlimGroup]) -> None:
        super().__init__()
        self.plan = plan
        self.dim = plan.dim
        self.groups = nn.ModuleList(groups)
        held = [f for g in groups for f in g.field_ids]
        if len(set(held)) != len(held):
            raise ValueError("a field is stored by more than one group")
        self.num_fields = plan.num_fields
        self._identity = len(groups) == 1 and held == list(range(self.num_fields))
        for i, g in enumerate(groups):
            self.register_buffer(f"_fields{i}", torch.tensor(g.field_ids, dtype=torch.long), persistent=False)
        self.register_buffer("gather", self._gather_columns(), persistent=False)

    def _gather_columns(self) -> torch.Tensor:
        """Output column ``f * d + j`` -> its position in the groups' flattened narrow outputs, int64 [F * d].

        Column ``j`` of field ``f`` comes from the group holding ``f`` when ``j`` is below that group's
        width; every other column (cut dimensions, dropped fields) reads one shared zero slot at the end.
        """
        source: dict[tuple[int, int], int] = {}
        start = 0
        for g in self.groups:
            for k, f in enumerate(g.field_ids):
                for j in range(g.width):
                    source[f, j] = start + k * g.width + j
            start += len(g.field_ids) * g.width
        zero_slot = start
        columns = [source.get((f, j), zero_slot) for f in range(self.num_fields) for j in range(self.dim)]
        return torch.tensor(columns, dtype=torch.long)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self._identity:
            return self.groups[0](ids)
        # one gather of flat columns instead of padding each group to d and reordering fields (fewer copies)
        batch = ids.shape[0]
        parts = []
        for i, group in enumerate(self.groups):
            parts.append(group.narrow(ids.index_select(1, getattr(self, f"_fields{i}"))).flatten(1))
        parts.append(torch.zeros(batch, 1, dtype=VALUES, device=ids.device))
        return torch.cat(parts, dim=1).index_select(1, self.gather).view(batch, self.num_fields, self.dim)

    def stored_bytes(self) -> int:
        """Bytes of every stored tensor (values, projections, index structures)."""
        return sum(t.numel() * t.element_size() for g in self.groups for t in g.tensors().values())

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {f"g{i}.{k}": v for i, g in enumerate(self.groups) for k, v in g.tensors().items()}
        write_tensors(folder / EMBEDDING_TENSORS, tensors)
        meta = {"plan": self.plan.to_dict(), "groups": [g.layout() for g in self.groups]}
        (folder / EMBEDDING_JSON).write_text(json.dumps(meta))

    @classmethod
    def load(cls, folder: str | Path) -> SlimEmbedding:
        """Read ``embedding.json`` + ``embedding.safetensors`` (no pickle), checking every group against
        the plan before use; a damaged or edited file is a :class:`~embdim.errors.ModelFileError` naming
        the file and the field."""
        folder = Path(folder)
        meta = read_json(folder / EMBEDDING_JSON)
        where = folder / EMBEDDING_JSON
        try:
            plan = EmbeddingPlan.from_dict(meta["plan"])
        except (KeyError, TypeError, ValueError) as err:
            raise ModelFileError(f"{where}: field 'plan': {shorten(str(err))}") from None
        layouts = meta.get("groups")
        if not isinstance(layouts, list) or (not layouts and plan.num_params > plan.extra_params):
            raise ModelFileError(
                f"{where}: field 'groups': expected a list of group layouts, got {shorten(repr(layouts))}"
            )
        tensors = read_safetensors(folder / EMBEDDING_TENSORS)
        groups, held = [], set()
        for i, layout in enumerate(layouts):
            field = f"groups[{i}]"
            _check_layout(layout, plan, held, f"{where}: field '{field}'")
            mine = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"g{i}.")}
            kind = GROUP_KINDS[layout["kind"]]
            try:
                kind.check_saved(layout, mine)
            except ValueError as err:
                raise ModelFileError(f"{folder / EMBEDDING_TENSORS}: group g{i} ({layout['kind']}): {err}") from None
            groups.append(kind.from_saved(layout, mine))
        strays = sorted(k for k in tensors if not k.startswith(tuple(f"g{i}." for i in range(len(layouts)))))
        if strays:
            raise ModelFileError(f"{folder / EMBEDDING_TENSORS}: tensors of no group: {shorten(str(strays))}")
        _check_sizes_match_plan(groups, plan, where)
        return cls(plan, groups)


def _check_sizes_match_plan(groups: list[SlimGroup], plan: EmbeddingPlan, where: Path) -> None:
    """Every field the plan keeps is stored, with exactly the per-field widths or per-row sizes it records."""
    stored: dict[int, torch.Tensor] = {}
    for group in groups:
        for f, sizes in zip(group.field_ids, torch.split(group.stored_sizes(), list(group.rows)), strict=True):
            stored[f] = sizes
    for f, name in enumerate(plan.field_names):
        if plan.row_sizes is not None:
            want = torch.as_tensor(plan.row_sizes[f], dtype=torch.long)
        else:
            want = torch.full((plan.vocab_sizes[f],), plan.field_dims[f], dtype=torch.long)
        got = stored.get(f, torch.zeros_like(want))
        if not torch.equal(got, want):
            raise ModelFileError(f"{where}: field {name!r}: the stored sizes differ from the plan's")


def _check_layout(layout: Any, plan: EmbeddingPlan, held: set[int], where: str) -> None:
    """A group layout's kind, fields, rows and width against the plan (fields may be held once)."""
    if not isinstance(layout, dict) or layout.get("kind") not in GROUP_KINDS:
        raise ModelFileError(f"{where}: 'kind' must be one of {sorted(GROUP_KINDS)}")
    fields, rows = layout.get("field_ids"), layout.get("rows")
    valid = (
        isinstance(fields, list)
        and isinstance(rows, list)
        and len(fields) == len(rows) > 0
        and all(isinstance(f, int) and 0 <= f < plan.num_fields for f in fields)
    )
    if not valid:
        raise ModelFileError(f"{where}: 'field_ids' and 'rows' must be equal-length lists of fields of the plan")
    if held & set(fields) or len(set(fields)) != len(fields):
        raise ModelFileError(f"{where}: 'field_ids': a field is stored by more than one group")
    held.update(fields)
    want = [plan.vocab_sizes[f] for f in fields]
    if rows != want:
        raise ModelFileError(f"{where}: 'rows' {shorten(str(rows))} differ from the plan's vocabulary sizes {want}")
    if layout.get("dim") != plan.dim:
        raise ModelFileError(f"{where}: 'dim' {layout.get('dim')!r} differs from the plan's {plan.dim}")


def read_json(path: Path) -> dict[str, Any]:
    """A model file's JSON object; missing or unparsable is a :class:`ModelFileError` naming it."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFileError(f"{path}: missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: expected a JSON object")
    return data


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A model file's tensors (safetensors: no code runs); a damaged file is a :class:`ModelFileError`."""
    if not path.is_file():
        raise ModelFileError(f"{path}: missing")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for every kind of damage
        raise ModelFileError(f"{path}: not a readable safetensors file ({shorten(str(err))})") from None
