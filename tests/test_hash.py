"""The hashing trick (``hash``): a fixed integer hash, OOV's own bucket, plain small fields, a slim model
that stores the hash instead of an index and refuses a damaged one, and budgets met by the bucket share."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from embdim.budget import Budget, BudgetUnreachable
from embdim.data.schema import FieldInfo
from embdim.embedding import EmbeddingLayer
from embdim.errors import ModelFileError
from embdim.searchers.hashing import HashConfig, HashSearcher, field_buckets, hash_parameters
from embdim.slim import EMBEDDING_JSON, EMBEDDING_TENSORS, DenseGroup, HashedGroup, SlimEmbedding, hashed_buckets
from embdim.storage import HASH_PRIME

FIELDS = [
    FieldInfo("small", 3, np.array([0, 50, 20])),
    FieldInfo("mid", 40, np.r_[0, np.arange(39, 0, -1)]),
    FieldInfo("big", 500, np.r_[3, np.arange(499, 0, -1)]),
]
DIM = 8


def test_the_hash_parameters_are_a_fixed_integer_stream_of_the_seed():
    # pinned: the same on every machine and version (splitmix64 in Python integers)
    assert hash_parameters(0, 3) == [
        (60845732, 2125112010),
        (454736306, 1667494720),
        (1049532998, 471195908),
    ]
    assert hash_parameters(0, 2) == hash_parameters(0, 3)[:2]  # a field's parameters do not depend on F
    assert hash_parameters(7, 1) != hash_parameters(0, 1)
    assert all(1 <= a < HASH_PRIME and 0 <= b < HASH_PRIME for a, b in hash_parameters(123, 50))


def test_buckets_follow_the_documented_formula_and_oov_keeps_bucket_zero():
    (a, b), m = hash_parameters(3, 1)[0], 97
    ids = torch.arange(5000).unsqueeze(1)  # [n, 1]
    got = hashed_buckets(ids, torch.tensor([a]), torch.tensor([b]), torch.tensor([m])).squeeze(1)
    want = [0] + [1 + ((a * i + b) % HASH_PRIME) % (m - 1) for i in range(1, 5000)]
    assert got.tolist() == want
    assert bool((got[1:] >= 1).all())  # no real id shares the OOV id's bucket
    load = torch.bincount(got[1:], minlength=m)[1:]  # the other buckets fill evenly
    assert load.min() > 0 and load.max() < 2 * load.float().mean()


def test_a_field_keeps_its_plain_table_where_hashing_saves_no_row():
    assert field_buckets([1, 2, 3, 4, 40, 500], 0.5) == [1, 2, 2, 2, 20, 250]  # at least OOV's bucket and one
    assert field_buckets([3, 40], 0.9) == [3, 36]
    layer = EmbeddingLayer(FIELDS, DIM, "hash", {"buckets": 0.9})
    assert layer.searcher.hashed == [1, 2]
    ids = torch.tensor([[0, 5, 7], [1, 5, 7], [2, 5, 7]])
    assert torch.equal(layer.searcher.lookup_ids(ids)[:, 0], ids[:, 0])  # the plain field reads its ids
    slim = layer.export()
    assert [type(g) for g in slim.groups] == [HashedGroup, DenseGroup]
    assert slim.plan.buckets == [3, 36, 450] and slim.plan.storage == "hashed"


def test_ids_that_collide_share_a_row_and_the_slim_model_reads_it_alike():
    torch.manual_seed(0)
    layer = EmbeddingLayer(FIELDS, DIM, "hash")
    every = torch.arange(500)
    buckets = layer.searcher.lookup_ids(torch.stack([every % 3, every % 40, every], 1))[:, 2]
    i, j = next((i, j) for i in range(1, 500) for j in range(i + 1, 500) if buckets[i] == buckets[j])
    ids = torch.tensor([[1, 1, i], [1, 1, j]])
    out = layer(ids)
    assert torch.equal(out[0, 2], out[1, 2])
    assert len(buckets.unique()) <= 250 and torch.equal(layer.export()(ids), out)


def test_the_slim_model_stores_each_fields_hash_not_a_bucket_per_id():
    slim = EmbeddingLayer(FIELDS, DIM, "hash").export()
    group = slim.groups[0]
    tensors = group.tensors()
    assert set(tensors) == {"weight", "hash_a", "hash_b"} and tensors["hash_a"].dtype == torch.int32
    assert tensors["weight"].shape == (2 + 20 + 250, DIM)
    assert slim.plan.num_bytes == slim.stored_bytes() == (2 + 20 + 250) * DIM * 4 + 3 * 2 * 4


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    EmbeddingLayer(FIELDS, DIM, "hash", {"buckets": 0.9}).export().save(tmp_path)
    return tmp_path


def _edit(folder, edit):
    tensors = load_file(str(folder / EMBEDDING_TENSORS))
    edit(tensors)
    save_file(tensors, str(folder / EMBEDDING_TENSORS))


def _edit_json(folder, edit):
    meta = json.loads((folder / EMBEDDING_JSON).read_text())
    edit(meta)
    (folder / EMBEDDING_JSON).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t["g0.hash_a"].zero_(), r"hash_a: a hash parameter outside \[1, 2147483647\)"),
        (lambda t: t["g0.hash_b"].fill_(-1), r"hash_b: a hash parameter outside \[0, 2147483647\)"),
        (lambda t: t.__setitem__("g0.hash_b", t["g0.hash_b"].long()), "hash_b: int64 with 1 dims, expected int32"),
        (lambda t: t.__setitem__("g0.weight", t["g0.weight"][:-1]), r"weight: shape \[485, 8\], expected \[486, 8\]"),
        (lambda t: t.pop("g0.hash_a"), r"missing tensors \['hash_a'\]"),
    ],
)
def test_a_damaged_hashed_model_is_refused_naming_the_tensor(saved, edit, message):
    _edit(saved, edit)
    with pytest.raises(ModelFileError, match=r"group g0 \(hashed\): " + message):
        SlimEmbedding.load(saved)


def test_bucket_counts_that_disagree_are_refused(saved, tmp_path):
    original = (saved / EMBEDDING_JSON).read_text()
    _edit_json(saved, lambda m: m["groups"][0].__setitem__("buckets", [36, 500]))
    with pytest.raises(ModelFileError, match=r"layout 'buckets': need one count per field in \[2, its rows"):
        SlimEmbedding.load(saved)
    (saved / EMBEDDING_JSON).write_text(original)
    _edit_json(saved, lambda m: m["plan"].__setitem__("buckets", [3, 30, 450]))  # the plan's, not the group's
    with pytest.raises(ModelFileError, match=r"field 'mid': 36 stored rows, its hashed storage keeps 30"):
        SlimEmbedding.load(saved)


@pytest.mark.parametrize("fraction", [0.5, 0.2, 0.1])
def test_a_budget_is_met_by_the_bucket_share(fraction):
    dim, config = HashSearcher.for_budget(FIELDS, DIM, HashConfig(), Budget(value=fraction))
    assert dim == DIM and config.budget is None
    plan = EmbeddingLayer(FIELDS, dim, "hash", config).plan()
    assert Budget(value=fraction).landed(plan)
    assert config.buckets == round(config.buckets, 6)  # a readable fraction


def test_a_budget_below_two_buckets_per_field_is_unreachable():
    with pytest.raises(BudgetUnreachable, match="hash gets no closer than"):
        HashSearcher.for_budget(FIELDS, DIM, HashConfig(), Budget(value=0.005))


def test_training_memory_is_the_bucket_tables():
    config = HashConfig(buckets=0.3)
    layer = EmbeddingLayer(FIELDS, DIM, "hash", config)
    tables = sum(p.numel() for p in layer.lookup.parameters()) * 4
    assert HashSearcher.training_memory(FIELDS, DIM, config).tables == tables == layer.plan().num_params * 4
