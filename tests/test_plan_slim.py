"""EmbeddingPlan sizes and JSON; slim storage layouts reproduce masked tables exactly."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from embdim.plan import EmbeddingPlan
from embdim.slim import CsrGroup, DenseGroup, RaggedGroup, SlimEmbedding


def test_dense_plan_counts_and_bytes():
    plan = EmbeddingPlan("x", ["a", "b"], [10, 100], dim=8, field_dims=[8, 2], extra_params=16)
    assert plan.field_params() == [80, 200]
    assert plan.num_params == 296
    assert plan.num_bytes == 296 * 4
    assert plan.full_params == 880
    assert plan.dropped_features() == [0, 0]


def test_ragged_and_csr_bytes_include_index_structures():
    rows = [np.array([3, 0, 8]), np.array([1, 1])]
    ragged = EmbeddingPlan("x", ["a", "b"], [3, 2], 8, [8, 1], storage="ragged", row_sizes=rows)
    # values 13 floats; one int32 offsets array over all 5 rows (+1 closing entry)
    assert ragged.num_params == 13
    assert ragged.num_bytes == 13 * 4 + 6 * 4
    assert ragged.dropped_features() == [1, 0]
    csr = EmbeddingPlan("x", ["a", "b"], [3, 2], 8, [8, 1], storage="csr", row_sizes=rows)
    assert csr.num_bytes == 13 * 4 + 13 * 1 + 6 * 4  # uint8 column per value


def test_hashed_and_quotient_remainder_bytes_count_the_shared_rows():
    # field a (10 ids) in 4 buckets, field b (3 ids) kept as a plain table; width 8
    hashed = EmbeddingPlan("hash", ["a", "b"], [10, 3], 8, [8, 8], storage="hashed", buckets=[4, 3])
    assert hashed.kind.stored_rows(hashed) == [4, 3] and hashed.num_params == 7 * 8
    assert hashed.num_bytes == 7 * 8 * 4 + 2 * 4  # the rows, and field a's hash (a, b: int32)
    assert hashed.dropped_features() == [0, 0]
    # qr: field a with 4 remainder rows keeps ceil(10 / 4) = 3 quotient rows; no index
    qr = EmbeddingPlan("qr", ["a", "b"], [10, 3], 8, [8, 8], storage="qr", buckets=[4, 3])
    assert qr.kind.stored_rows(qr) == [3 + 4, 3] and qr.num_bytes == 10 * 8 * 4


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(buckets=None), "needs buckets for each of the 2 fields"),
        (dict(buckets=[1, 3]), r"buckets must be 10 \(a plain table\) or in \[2, 10\): 1"),
        (dict(buckets=[11, 3]), "buckets must be 10"),
        (dict(field_dims=[8, 4]), "keeps rows of the full width 8: 4"),
        (dict(storage="dense"), "dense storage has no buckets"),
    ],
)
def test_a_plan_whose_buckets_do_not_fit_its_kind_is_refused(bad, message):
    kwargs = dict(method="x", field_names=["a", "b"], vocab_sizes=[10, 3], dim=8, field_dims=[8, 8], storage="hashed")
    with pytest.raises(ValueError, match=message):
        EmbeddingPlan(**(kwargs | {"buckets": [4, 3]} | bad))


def test_plan_json_round_trip(tmp_path):
    plan = EmbeddingPlan(
        "amtl", ["a"], [4], 6, [5], storage="ragged", row_sizes=[np.array([5, 0, 2, 1])], details={"tau": 0.1}
    )
    plan.save(tmp_path / "plan.json")
    back = EmbeddingPlan.load(tmp_path / "plan.json")
    assert back.to_dict() == plan.to_dict()
    assert back.num_bytes == plan.num_bytes
    hashed = EmbeddingPlan("hash", ["a", "b"], [10, 3], 8, [8, 8], storage="hashed", buckets=[4, 3])
    back = EmbeddingPlan.from_json(hashed.to_json())
    assert back.to_dict() == hashed.to_dict() and back.buckets == [4, 3] and back.num_bytes == hashed.num_bytes
    older = {k: v for k, v in plan.to_dict().items() if k != "buckets"}  # a plan saved before buckets existed
    assert EmbeddingPlan.from_dict(older).to_dict() == plan.to_dict()


@pytest.mark.parametrize("bad", [dict(field_dims=[9]), dict(storage="ragged"), dict(vocab_sizes=[1, 2])])
def test_plan_rejects_inconsistent_sizes(bad):
    kwargs = dict(method="x", field_names=["a"], vocab_sizes=[3], dim=8, field_dims=[8]) | bad
    with pytest.raises(ValueError):
        EmbeddingPlan(**kwargs)


def _masked_reference(table, mask, ids, offsets):
    return (table * mask)[ids + offsets]


def test_ragged_and_csr_groups_equal_masked_table(tmp_path):
    gen = torch.Generator().manual_seed(0)
    rows, dim = (5, 7), 6
    n = sum(rows)
    table = torch.randn(n, dim, generator=gen)
    lengths = torch.randint(0, dim + 1, (n,), generator=gen)
    prefix = (torch.arange(dim) < lengths[:, None]).float()
    elementwise = (torch.rand(n, dim, generator=gen) > 0.6).float()
    ids = torch.stack([torch.randint(0, 5, (32,), generator=gen), torch.randint(0, 7, (32,), generator=gen)], 1)
    offsets = torch.tensor([0, 5])
    ragged = RaggedGroup.from_dense((0, 1), rows, table, lengths, dim)
    assert ragged.index_names == ("offsets",)  # random sizes: runs of one row, per-row offsets are smaller
    csr = CsrGroup.from_dense((0, 1), rows, table, elementwise.bool(), dim)
    assert torch.equal(ragged(ids), _masked_reference(table, prefix, ids, offsets))
    assert torch.equal(csr(ids), _masked_reference(table, elementwise, ids, offsets))
    row_sizes = [lengths[:5].numpy(), lengths[5:].numpy()]
    plan = EmbeddingPlan("x", ["a", "b"], list(rows), dim, [dim, dim], storage="ragged", row_sizes=row_sizes)
    slim = SlimEmbedding(plan, [ragged])
    assert slim.stored_bytes() == plan.num_bytes
    slim.save(tmp_path)
    assert torch.equal(SlimEmbedding.load(tmp_path)(ids), slim(ids))


def test_ragged_rows_in_runs_of_one_size_are_indexed_per_run(tmp_path):
    # field a: 6 rows of size 4, 4 of size 2; field b continues with size 2 (a new run: runs never
    # cross fields), then 0 and 1
    rows, dim = (10, 12), 4
    lengths = torch.tensor([4] * 6 + [2] * 4 + [2] * 6 + [0] * 4 + [1] * 2)
    table = torch.randn(sum(rows), dim, generator=torch.Generator().manual_seed(1))
    ragged = RaggedGroup.from_dense((0, 1), rows, table, lengths, dim)
    assert ragged.index_names == ("run_offsets", "run_rows", "run_sizes")
    assert ragged.run_rows.tolist() == [0, 6, 10, 16, 20, 22]
    assert ragged.run_sizes.tolist() == [4, 2, 2, 0, 1]
    ids = torch.cartesian_prod(torch.arange(10), torch.arange(12))  # every row of both fields
    prefix = (torch.arange(dim) < lengths[:, None]).float()
    assert torch.equal(ragged(ids), _masked_reference(table, prefix, ids, torch.tensor([0, 10])))
    row_sizes = [lengths[:10].numpy(), lengths[10:].numpy()]
    plan = EmbeddingPlan("x", ["a", "b"], list(rows), dim, [4, 2], storage="ragged", row_sizes=row_sizes)
    assert plan.ragged_index() == "runs"
    # 46 values; 6 run starts + 6 first values (int32) + 5 sizes (uint8), instead of 23 int32 row offsets
    assert plan.num_bytes == 46 * 4 + 6 * 4 + 6 * 4 + 5 == SlimEmbedding(plan, [ragged]).stored_bytes()
    assert sum(plan.field_bytes()) + 4 + 4 == plan.num_bytes
    SlimEmbedding(plan, [ragged]).save(tmp_path)
    assert torch.equal(SlimEmbedding.load(tmp_path)(ids), ragged(ids))


def test_slim_embedding_orders_groups_and_zero_fills_dropped_fields():
    dim = 4
    g_wide = DenseGroup((2,), (3,), torch.ones(3, 4), None, dim)
    g_narrow = DenseGroup((0,), (2,), torch.full((2, 2), 2.0), None, dim)
    plan = EmbeddingPlan("x", ["a", "b", "c"], [2, 5, 3], dim, [2, 0, 4])
    slim = SlimEmbedding(plan, [g_wide, g_narrow])
    out = slim(torch.tensor([[1, 4, 2]]))
    assert out.shape == (1, 3, 4)
    assert torch.equal(out[0, 0], torch.tensor([2.0, 2.0, 0.0, 0.0]))  # zero-padded
    assert torch.equal(out[0, 1], torch.zeros(4))  # field stored by no group
    assert torch.equal(out[0, 2], torch.ones(4))


def test_mixed_groups_equal_each_group_padded_and_placed():
    """The flat-column gather puts every group's vectors (narrow, projected, ragged) where its fields are."""
    gen = torch.Generator().manual_seed(1)
    dim, batch = 5, 16
    narrow = DenseGroup((3, 0), (4, 6), torch.randn(10, 2, generator=gen), None, dim)
    projected = DenseGroup((4,), (3,), torch.randn(3, 2, generator=gen), torch.randn(1, 2, dim, generator=gen), dim)
    lengths = torch.randint(0, dim + 1, (7,), generator=gen)
    ragged = RaggedGroup.from_dense((1,), (7,), torch.randn(7, dim, generator=gen), lengths, dim)
    vocab = [6, 7, 2, 4, 3]
    plan = EmbeddingPlan("x", list("abcde"), vocab, dim, [2, dim, 0, 2, dim])
    slim = SlimEmbedding(plan, [narrow, projected, ragged])
    ids = torch.stack([torch.randint(0, n, (batch,), generator=gen) for n in vocab], 1)
    out = slim(ids)
    assert out.shape == (batch, 5, dim)
    for group in (narrow, projected, ragged):
        fields = list(group.field_ids)
        assert torch.equal(out[:, fields], group(ids[:, fields]))
    assert torch.equal(out[:, 2], torch.zeros(batch, dim))  # field c: stored by no group


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_dense_tables_of_several_widths_read_packed_exactly_as_group_by_group(precision, tmp_path):
    """A model read from disk whose groups are plain dense tables (DML's cut) is packed into one buffer and
    looked up in one gather; every id of every field, a dropped field included, comes back as before."""
    gen = torch.Generator().manual_seed(2)
    dim = 6
    wide = DenseGroup((2, 0), (5, 3), torch.randn(8, 6, generator=gen), None, dim)
    narrow = DenseGroup((3,), (4,), torch.randn(4, 2, generator=gen), None, dim)
    # field b is stored by no group, with more ids than every table has rows: it must still read zeros
    plan = EmbeddingPlan("x", list("abcd"), [3, 100, 5, 4], dim, [6, 0, 6, 2])
    unpacked = SlimEmbedding(plan, [wide, narrow]).with_precision(precision)
    unpacked.save(tmp_path)
    packed = SlimEmbedding.load(tmp_path)
    unpacked._packed = None  # group by group
    assert packed._packed is not None
    ids = torch.stack([torch.arange(100) % n for n in plan.vocab_sizes], 1)
    assert torch.equal(packed(ids), unpacked(ids))
    assert packed.stored_bytes() == unpacked.stored_bytes() == unpacked.plan.num_bytes
    # packed in place: every group's values (and int8 scales and biases) are views, nothing is held twice
    held = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in packed.state_dict().values()}
    assert sum(held.values()) == packed._packed.nbytes + (0 if precision != "int8" else packed._packed_params.nbytes)
    packed.save(tmp_path / "again")
    assert torch.equal(SlimEmbedding.load(tmp_path / "again")(ids), packed(ids))
    # converted (or moved), the groups' new tensors are packed again: no stale buffer is read or kept
    converted = copy.deepcopy(packed).double()
    assert converted._packed.dtype == converted.groups[0].weight.dtype  # packed again, not the old buffer
    assert torch.equal(converted(ids), packed(ids))
    with torch.no_grad():  # field d's table (and int8 scales and biases), read through the packed buffers
        narrow_group = converted.groups[1]
        for tensor in (narrow_group.weight, *narrow_group.row_params().values()):
            tensor.zero_()
    assert not converted(ids)[:, 3].any() and torch.equal(converted(ids)[:, 0], packed(ids)[:, 0])
