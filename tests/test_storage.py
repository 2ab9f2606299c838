"""Storage kinds own their byte rules: every kind has a slim group, and what a plan prices is what
its slim model stores, at every dtype boundary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embdim.plan import EmbeddingPlan
from embdim.slim import (
    GROUP_KINDS,
    CompactGroup,
    CsrGroup,
    DenseGroup,
    HashedGroup,
    QRGroup,
    RaggedGroup,
    SlimEmbedding,
)
from embdim.storage import (
    STORAGE_KINDS,
    DenseStorage,
    bitmap_bytes,
    column_dtype,
    field_bounds,
    offset_bytes,
    offset_dtype,
    size_dtype,
)


def test_every_storage_kind_has_a_slim_group_of_the_same_name():
    assert set(STORAGE_KINDS) == set(GROUP_KINDS) == {"dense", "ragged", "csr", "compact", "hashed", "qr"}


def test_index_dtypes_widen_exactly_at_their_limits():
    assert offset_dtype(2**31 - 1) == np.int32 and offset_dtype(2**31) == np.int64
    assert offset_bytes(np.array([2**31 - 1, 2**31])).tolist() == [4, 8]
    assert size_dtype(255) == np.uint8 and size_dtype(256) == np.int16
    assert column_dtype(256) == np.uint8 and column_dtype(257) == np.int16  # columns 0..dim-1
    assert [bitmap_bytes(d) for d in (1, 8, 9, 16, 17, 64, 65)] == [1, 1, 2, 2, 3, 8, 9]


def test_field_bounds_place_fields_back_to_back():
    assert field_bounds([3, 1, 4]).tolist() == [0, 3, 4, 8]
    assert field_bounds([]).tolist() == [0]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("dim", [6, 300])  # uint8 and int16 sizes / column indices
@pytest.mark.parametrize("storage", ["dense", "ragged", "csr", "compact", "hashed", "qr"])
def test_a_plans_bytes_are_the_bytes_its_slim_model_stores(storage, dim, precision):
    gen = torch.Generator().manual_seed(dim)
    rows = (40, 25)
    n = sum(rows)
    table = torch.randn(n, dim, generator=gen)
    if storage == "dense":
        widths = [dim, dim // 2]
        groups = [DenseGroup((f,), (rows[f],), table[: rows[f], : widths[f]], None, dim) for f in range(2)]
        plan = EmbeddingPlan("x", ["a", "b"], list(rows), dim, widths)
    elif storage in ("hashed", "qr"):  # field a shares rows (7 buckets), field b keeps its plain table
        buckets = [7, rows[1]]
        plan = EmbeddingPlan("x", ["a", "b"], list(rows), dim, [dim, dim], storage=storage, buckets=buckets)
        shared = plan.kind.stored_rows(plan)[0]  # hashed: 7; qr: ceil(40 / 7) + 7 = 13
        if storage == "hashed":
            params = torch.tensor([12345], dtype=torch.int32), torch.tensor([678], dtype=torch.int32)
            group = HashedGroup((0,), rows[:1], buckets[:1], table[:shared], *params, dim)
        else:
            group = QRGroup((0,), rows[:1], buckets[:1], "mult", table[:shared], dim)
        groups = [group, DenseGroup((1,), rows[1:], table[: rows[1]], None, dim)]
    else:
        if storage == "ragged":  # sizes in runs (frequency order), so the per-run index is chosen
            sizes = torch.cat([torch.full((30,), dim), torch.full((10,), 2), torch.full((25,), 1)])
            group = RaggedGroup.from_dense((0, 1), rows, table, sizes, dim)
        else:  # csr, compact: some rows keep nothing
            mask = (torch.rand(n, dim, generator=gen) > 0.7) & (torch.rand(n, 1, generator=gen) > 0.3)
            sizes = mask.sum(1)
            group = {"csr": CsrGroup, "compact": CompactGroup}[storage].from_dense((0, 1), rows, table, mask, dim)
        row_sizes = [s.numpy() for s in torch.split(sizes, rows)]
        widths = [int(r.max()) for r in row_sizes]
        plan = EmbeddingPlan("x", ["a", "b"], list(rows), dim, widths, storage=storage, row_sizes=row_sizes)
        groups = [group]
    slim = SlimEmbedding(plan, groups).with_precision(precision)
    plan = slim.plan
    assert plan.num_bytes == slim.stored_bytes()
    assert plan.num_bytes == sum(plan.field_bytes()) + plan.kind.index_bytes(plan)[1]
    if storage == "ragged":
        assert plan.ragged_index() == "runs" and "run_sizes" in group.index_names


def test_a_new_storage_kind_is_one_subclass_and_plans_price_with_it():
    class HalfStorage(DenseStorage):
        name = "half_test"

        def value_bytes(self, plan):
            return 2

    try:
        plan = EmbeddingPlan("x", ["a", "b"], [10, 20], 8, [8, 4], storage="half_test")
        assert plan.kind is STORAGE_KINDS["half_test"]
        assert plan.num_bytes == (10 * 8 + 20 * 4) * 2
        assert plan.summary()["storage"] == "half_test"
    finally:
        del STORAGE_KINDS["half_test"]
    with pytest.raises(ValueError, match="storage must be one of"):
        EmbeddingPlan("x", ["a"], [10], 8, [8], storage="half_test")
