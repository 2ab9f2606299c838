"""Compact storage (PEP at high sparsity): what a plan prices is what its slim model stores at every
precision and dtype boundary, the group reproduces the masked table for every id, saves and loads
exactly, and a damaged file is refused naming the tensor."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from embdim.errors import ModelFileError
from embdim.plan import EmbeddingPlan
from embdim.slim import EMBEDDING_TENSORS, FEW_IDS, CompactGroup, CsrGroup, SlimEmbedding
from embdim.storage import ID_BLOCK_ROWS, CompactStorage, CsrStorage

PRECISIONS = ["fp32", "fp16", "int8"]
#: widths at the layout boundaries: bitmaps of 1, 2, 3, 8 and 9 bytes (held in memory in words of 1, 2,
#: 4, 8 bytes, then as bytes), and column indices of csr (which compact is checked against) in int16
DIMS = [1, 6, 8, 9, 16, 17, 64, 65, 300]
ROWS = (3, 50, 600, 1)  # a field of 3 ids, two larger ones (three blocks of ids), one id that keeps nothing


def _table_and_mask(dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A table ``[sum ROWS, dim]`` and a keep-mask: most rows keep nothing, a few keep everything, the rest
    some columns; field 3 keeps nothing; runs of stored rows cross the blocks of row starts."""
    gen = torch.Generator().manual_seed(seed)
    n = sum(ROWS)
    table = torch.randn(n, dim, generator=gen)
    mask = (torch.rand(n, dim, generator=gen) > 0.6) & (torch.rand(n, 1, generator=gen) > 0.7)
    mask[3:20] = True  # full rows, more of them than a block of starts holds at small widths
    mask[n - 1] = False
    return table, mask


def _slim(dim: int, precision: str = "fp32", seed: int = 0) -> tuple[SlimEmbedding, torch.Tensor]:
    """The compact slim embedding of :func:`_table_and_mask` in ``precision``, and the masked table."""
    table, mask = _table_and_mask(dim, seed)
    group = CompactGroup.from_dense(tuple(range(len(ROWS))), ROWS, table, mask, dim)
    sizes = [s.numpy() for s in torch.split(mask.sum(1), ROWS)]
    plan = EmbeddingPlan(
        "pep", [f"f{i}" for i in range(len(ROWS))], list(ROWS), dim, [int(s.max()) for s in sizes], "compact", sizes
    )
    return SlimEmbedding(plan, [group]).with_precision(precision), table * mask


def _every_id() -> torch.Tensor:
    """ids ``[max n, F]``: every id of every field (fields shorter than the longest repeat theirs)."""
    return torch.stack([torch.arange(max(ROWS)) % n for n in ROWS], 1)


def _global(ids: torch.Tensor) -> torch.Tensor:
    return ids + torch.tensor(np.cumsum([0, *ROWS[:-1]]))


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("dim", DIMS)
def test_a_compact_plans_bytes_are_the_bytes_its_slim_model_stores(dim, precision):
    slim, _ = _slim(dim, precision)
    plan = slim.plan
    assert plan.num_bytes == slim.stored_bytes()
    assert plan.num_bytes == sum(plan.field_bytes()) + plan.kind.index_bytes(plan)[1]
    stored, values = sum(plan.kind.param_rows(plan)), plan.num_params
    assert plan.num_bytes == CompactStorage.layout_bytes(sum(ROWS), stored, values, dim, precision)
    assert len(slim.groups[0].tensors()["id_blocks"]) == -(-sum(ROWS) // ID_BLOCK_ROWS)
    assert plan.dropped_features()[3] == 1 and plan.kind.param_rows(plan)[3] == 0  # the field keeping nothing


def test_the_byte_rule_prices_stored_rows_only():
    # 1000 rows of width 16, 10 rows keep 3 values each: per stored row an id byte and a 2-byte bitmap, an
    # int32 count per 256 rows, 30 float32 values. CSR pays an int32 offset for every row
    sizes = np.zeros(1000, dtype=np.int64)
    sizes[::100] = 3
    plan = EmbeddingPlan("pep", ["a"], [1000], 16, [3], "compact", [sizes])
    assert plan.num_bytes == 10 * (1 + 2) + 4 * 4 + 30 * 4
    assert plan.num_params == 30 and plan.summary()["params_ratio"] == 30 / 16000
    assert plan.summary()["bytes_ratio"] == plan.num_bytes / (16000 * 4)
    csr = EmbeddingPlan("pep", ["a"], [1000], 16, [3], "csr", [sizes])
    assert csr.num_bytes == 30 * (4 + 1) + 1001 * 4 == CsrStorage.layout_bytes(1000, 10, 30, 16)
    int8 = EmbeddingPlan("pep", ["a"], [1000], 16, [3], "compact", [sizes], precision="int8")
    assert int8.num_bytes == 10 * (1 + 2 + 4) + 4 * 4 + 30  # scale and bias for the stored rows only
    csr8 = EmbeddingPlan("pep", ["a"], [1000], 16, [3], "csr", [sizes], precision="int8")
    assert csr8.num_bytes == 30 * (1 + 1) + 1001 * 4 + 10 * 4 == CsrStorage.layout_bytes(1000, 10, 30, 16, "int8")
    empty = EmbeddingPlan("pep", ["a"], [1000], 16, [0], "compact", [np.zeros(1000, dtype=np.int64)])
    assert empty.num_bytes == 4 * 4  # the blocks' counts, all zero


@pytest.mark.parametrize("dim", DIMS)
def test_the_group_reproduces_the_masked_table_for_every_id_of_every_field(dim):
    slim, masked = _slim(dim)
    table, mask = _table_and_mask(dim)
    ids = _every_id()
    many = ids.repeat(-(-(FEW_IDS + 1) // ids.numel()), 1)  # beyond FEW_IDS: the bulk path
    with torch.no_grad():
        for batch in (ids, ids[:1], many):
            got, want = slim(batch), masked[_global(batch)]
            assert torch.equal(got, want)
            assert torch.equal(got.view(torch.int32), (want + 0.0).view(torch.int32))  # zeros are +0.0
    csr = CsrGroup.from_dense(tuple(range(len(ROWS))), ROWS, table, mask, dim)
    assert torch.equal(slim.groups[0].stored_sizes(), csr.stored_sizes())
    assert torch.equal(slim.groups[0].to_csr()(ids), csr(ids))


def test_a_pruned_column_reads_zero_however_many_values_follow_its_row():
    """A pruned column's position lies past every value, however many: here more than a million, most of
    them after the rows read."""
    rows, dim = 80_000, 16
    gen = torch.Generator().manual_seed(3)
    table = torch.randn(rows, dim, generator=gen)
    mask = torch.rand(rows, dim, generator=gen) > 0.1
    group = CompactGroup.from_dense((0,), (rows,), table, mask, dim)
    assert group.num_values > 2**20
    ids = torch.arange(0, rows, 97).unsqueeze(1)  # [B, 1], from the first rows on
    with torch.no_grad():
        for batch in (ids, ids[:3]):  # the bulk path and the few-ids one
            assert torch.equal(group(batch), (table * mask)[batch])


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_a_quantised_compact_group_decodes_as_the_same_csr_group(precision):
    """The same values in the same precision decode alike (int8: the same scale and bias per stored row)."""
    dim = 12
    table, mask = _table_and_mask(dim)
    compact = CompactGroup.from_dense(tuple(range(len(ROWS))), ROWS, table, mask, dim).with_precision(precision)
    csr = CsrGroup.from_dense(tuple(range(len(ROWS))), ROWS, table, mask, dim).with_precision(precision)
    ids = _every_id()
    with torch.no_grad():
        got = compact(ids)
        assert torch.equal(got, csr(ids)) and torch.equal(compact(ids[:1]), csr(ids[:1]))
        assert bool((got[(table * mask)[_global(ids)] == 0] == 0).all())  # pruned stays exactly zero
    if precision == "int8":
        assert len(compact.scale) == len(csr.scale) == int(mask.any(1).sum()) < sum(ROWS)  # the stored rows only


@pytest.mark.parametrize("precision", PRECISIONS)
def test_a_compact_model_saves_and_loads_exactly(precision, tmp_path):
    slim, _ = _slim(16, precision)
    slim.save(tmp_path)
    loaded = SlimEmbedding.load(tmp_path)
    assert loaded.plan.to_dict() == slim.plan.to_dict() and loaded.stored_bytes() == slim.stored_bytes()
    assert set(load_file(str(tmp_path / EMBEDDING_TENSORS))) == {f"g0.{k}" for k in slim.groups[0].tensors()}
    ids = _every_id()
    with torch.no_grad():
        assert torch.equal(loaded(ids), slim(ids))


@pytest.mark.parametrize("dim", [16, 65])  # bitmaps held in words, and as bytes
def test_a_traced_compact_embedding_looks_up_as_the_module(dim):
    """TorchScript export traces the lookup (serve.export_bundle); the trace holds for other batch sizes."""
    slim, masked = _slim(dim)
    ids = _every_id()
    with torch.no_grad():
        traced = torch.jit.trace(slim, ids[:8], check_trace=False)
        assert torch.equal(traced(ids), masked[_global(ids)]) and torch.equal(traced(ids[:1]), slim(ids[:1]))


def test_a_table_that_keeps_nothing_stores_nothing_and_embeds_to_zeros(tmp_path):
    dim = 8
    group = CompactGroup.from_dense((0, 1), (4, 6), torch.randn(10, dim), torch.zeros(10, dim, dtype=torch.bool), dim)
    plan = EmbeddingPlan("pep", ["a", "b"], [4, 6], dim, [0, 0], "compact", [np.zeros(4), np.zeros(6)])
    slim = SlimEmbedding(plan, [group])
    assert slim.stored_bytes() == plan.num_bytes == 4  # one block of ids, none stored
    ids = torch.tensor([[0, 5], [3, 0]])
    assert torch.equal(slim(ids), torch.zeros(2, 2, dim))
    slim.save(tmp_path)
    assert torch.equal(SlimEmbedding.load(tmp_path)(ids), torch.zeros(2, 2, dim))
    assert torch.equal(slim.with_precision("int8")(ids), torch.zeros(2, 2, dim))


def test_training_a_slim_compact_table_moves_kept_values_only():
    """A pruned column reads the zero after the values; training must not move it."""
    slim, masked = _slim(9)
    group = slim.groups[0]
    ids = _every_id()
    out = slim(ids)
    out.sum().backward()
    grad = group.padded_values.grad
    assert grad[-1] == 0 and bool((grad[:-1] > 0).all())  # each kept value is read at least once
    with torch.no_grad():
        group.padded_values.add_(grad)
        assert torch.equal(slim(ids) == 0, masked[_global(ids)] == 0)


def _damaged(tmp_path, edit) -> str:
    """Save a compact int8 model, apply ``edit`` to its group's tensors, and return the load error."""
    slim, _ = _slim(12, "int8")
    slim.save(tmp_path)
    tensors = {k.removeprefix("g0."): v for k, v in load_file(str(tmp_path / EMBEDDING_TENSORS)).items()}
    edit(tensors)
    save_file({f"g0.{k}": v.contiguous() for k, v in tensors.items()}, str(tmp_path / EMBEDDING_TENSORS))
    with pytest.raises(ModelFileError) as err:
        SlimEmbedding.load(tmp_path)
    return str(err.value)


def _set_bit(tensors: dict[str, torch.Tensor], column: int | None = None) -> None:
    """Mark one more column in a stored row's bitmap: ``column`` in the first row, or the first column any
    row does not keep."""
    bitmaps = tensors["bitmaps"].clone()
    if column is None:
        kept = (bitmaps.long().unsqueeze(-1) >> torch.arange(8)) & 1  # [M, bytes, 8]
        row, column = (int(i) for i in torch.nonzero(kept.flatten(1)[:, :12] == 0)[0])
    else:
        row = 0
    bitmaps[row, column // 8] |= 1 << (column % 8)
    tensors["bitmaps"] = bitmaps


DAMAGE = {
    "a bitmap keeps a column more than the values hold": (_set_bit, r"values: \d+ values, the bitmaps keep \d+"),
    "a bitmap marks a column beyond the width": (lambda t: _set_bit(t, 15), "bitmaps: marks a column beyond"),
    "a stored row's bitmap keeps nothing": (
        lambda t: t.__setitem__("bitmaps", t["bitmaps"].clone().index_fill_(0, torch.tensor([1]), 0)),
        "bitmaps: a stored row keeps no column",
    ),
    "a bitmap missing a row": (lambda t: t.__setitem__("bitmaps", t["bitmaps"][1:]), r"bitmaps: shape \[\d+, 2\]"),
    "a row id beyond the rows": (
        lambda t: t["id_lows"].__setitem__(-1, 255),  # the last block holds rows 512..653
        r"id_lows: need distinct rows of the group's 654, ascending within each block",
    ),
    "row ids out of order": (lambda t: t.__setitem__("id_lows", t["id_lows"].flip(0)), "id_lows: need distinct"),
    "a block count beyond the stored rows": (
        lambda t: t["id_blocks"].__setitem__(1, len(t["id_lows"]) + 1),
        r"id_blocks: need 3 counts .* rising from 0 to at most the \d+ of id_lows",
    ),
    "block counts of a wider dtype": (
        lambda t: t.__setitem__("id_blocks", t["id_blocks"].long()),
        "id_blocks: int64 .* int32",
    ),
    "values of another precision": (lambda t: t.__setitem__("values", t["values"].float()), "values: float32"),
    "a scale per row instead of per stored row": (
        lambda t: t.__setitem__("scale", torch.zeros(654, dtype=torch.float16)),
        r"scale: 654 values, expected one per row that stores values \(\d+\)",
    ),
    "a missing index array": (lambda t: t.pop("id_lows"), r"missing tensors \['id_lows'\]"),
    "bitmaps of another dtype": (lambda t: t.__setitem__("bitmaps", t["bitmaps"].to(torch.int16)), "bitmaps: int16"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_compact_file_is_refused_naming_the_tensor(damage, tmp_path):
    edit, message = DAMAGE[damage]
    error = _damaged(tmp_path, edit)
    assert "embedding.safetensors: group g0 (compact): " in error
    assert re.search(message, error), error
