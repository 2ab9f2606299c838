"""Quotient-remainder embeddings (``qr``): complementary partitions give every id its own vector, the
combination starts at the full table's scale, plain small fields, a slim model that checks itself, and
budgets met by the collision factor."""

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
from embdim.searchers.qr import QRConfig, QRSearcher, field_collisions
from embdim.slim import EMBEDDING_JSON, EMBEDDING_TENSORS, DenseGroup, QRGroup, SlimEmbedding

FIELDS = [
    FieldInfo("small", 3, np.array([0, 50, 20])),
    FieldInfo("mid", 40, np.r_[0, np.arange(39, 0, -1)]),
    FieldInfo("big", 500, np.r_[3, np.arange(499, 0, -1)]),
]
DIM = 8


def _every_id(n: int = 500) -> torch.Tensor:
    every = torch.arange(n)
    return torch.stack([every % f.vocab_size for f in FIELDS], 1)


def test_a_field_keeps_its_plain_table_where_the_two_tables_save_no_row():
    # c = 4: 3 ids -> ceil(3 / 4) + 4 = 5 rows (plain); 40 -> 10 + 4; 500 -> 125 + 4
    assert field_collisions([3, 40, 500], 4) == [3, 4, 4]
    assert field_collisions([4, 5, 6], 3) == [4, 5, 3]  # 6 ids: 2 + 3 rows save one; 5 ids: none
    layer = EmbeddingLayer(FIELDS, DIM, "qr")
    assert layer.searcher.compressed == [1, 2] and layer.searcher.num_lookup_fields == 5
    assert layer.plan().kind.stored_rows(layer.plan()) == [3, 14, 129]


@pytest.mark.parametrize("combine", ["mult", "add"])
def test_every_id_reads_its_own_pair_of_rows_combined_as_configured(combine):
    torch.manual_seed(0)
    layer = EmbeddingLayer(FIELDS, DIM, "qr", {"combine": combine, "collisions": 7})
    ids = _every_id()
    rows = layer.searcher.lookup_ids(ids)  # [n, F + 2]: quotient or id, then the remainders
    assert torch.equal(rows[:, :3], torch.stack([ids[:, 0], ids[:, 1] // 7, ids[:, 2] // 7], 1))
    assert torch.equal(rows[:, 3:], ids[:, 1:] % 7)
    assert len({(int(q), int(r)) for q, r in rows[:, [2, 4]]}) == 500  # complementary: no pair repeats
    out = layer(ids)
    assert len(out[:, 2].unique(dim=0)) == 500  # every id its own vector
    q, r = layer.lookup.field_weight(2)[ids[:, 2] // 7], layer.lookup.field_weight(4)[ids[:, 2] % 7]
    assert torch.equal(out[:, 2], q * r if combine == "mult" else q + r)
    slim = layer.export()
    assert [type(g) for g in slim.groups] == [QRGroup, DenseGroup]
    assert torch.equal(slim(ids), out)


@pytest.mark.parametrize("combine", ["mult", "add"])
def test_the_combined_vectors_start_at_the_full_tables_scale(combine):
    fields = [FieldInfo("wide", 40_000)]
    torch.manual_seed(0)
    std = 0.01
    layer = EmbeddingLayer(fields, 16, "qr", {"combine": combine, "collisions": 50}, init_std=std)
    with torch.no_grad():
        out = layer(torch.arange(40_000).unsqueeze(1))  # every id: 800 quotient rows x 50 remainder rows
    assert abs(float(out.mean())) < 0.05 * std
    assert float(out.std()) == pytest.approx(std, rel=0.05)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    EmbeddingLayer(FIELDS, DIM, "qr").export().save(tmp_path)
    return tmp_path


def _edit_json(folder, edit):
    meta = json.loads((folder / EMBEDDING_JSON).read_text())
    edit(meta)
    (folder / EMBEDDING_JSON).write_text(json.dumps(meta))


def test_a_damaged_quotient_remainder_model_is_refused_naming_what_is_wrong(saved):
    original = {name: (saved / name).read_bytes() for name in (EMBEDDING_JSON, EMBEDDING_TENSORS)}

    def restore():
        for name, data in original.items():
            (saved / name).write_bytes(data)

    tensors = load_file(str(saved / EMBEDDING_TENSORS))
    tensors["g0.weight"] = tensors["g0.weight"][:, :4].contiguous()
    save_file(tensors, str(saved / EMBEDDING_TENSORS))
    with pytest.raises(ModelFileError, match=r"group g0 \(qr\): weight: shape \[143, 4\], expected \[143, 8\]"):
        SlimEmbedding.load(saved)
    restore()
    _edit_json(saved, lambda m: m["groups"][0].__setitem__("combine", "concat"))
    with pytest.raises(ModelFileError, match="layout 'combine': must be one of mult, add, got 'concat'"):
        SlimEmbedding.load(saved)
    restore()
    _edit_json(saved, lambda m: m["groups"][0].__setitem__("collisions", [4, 1]))
    with pytest.raises(ModelFileError, match=r"layout 'collisions': need one count per field in \[2, its rows"):
        SlimEmbedding.load(saved)
    restore()
    _edit_json(saved, lambda m: m["groups"][0].__setitem__("collisions", [5, 4]))  # valid, but not the weight's
    with pytest.raises(ModelFileError, match=r"weight: shape \[143, 8\], expected \[142, 8\]"):
        SlimEmbedding.load(saved)
    restore()
    _edit_json(saved, lambda m: m["plan"].__setitem__("buckets", [3, 5, 4]))  # the plan's, not the group's
    with pytest.raises(ModelFileError, match="field 'mid': 14 stored rows, its qr storage keeps 13"):
        SlimEmbedding.load(saved)
    restore()
    SlimEmbedding.load(saved)  # restored: loads again


@pytest.mark.parametrize("fraction", [0.5, 0.25, 0.15])
def test_a_budget_is_met_by_the_collision_factor(fraction):
    dim, config = QRSearcher.for_budget(FIELDS, DIM, QRConfig(), Budget(value=fraction))
    assert dim == DIM and config.budget is None
    assert Budget(value=fraction).landed(EmbeddingLayer(FIELDS, dim, "qr", config).plan())


@pytest.mark.parametrize("fraction", [0.8, 0.4, 0.05])
def test_a_budget_beyond_or_between_the_collision_factors_is_unreachable(fraction):
    # c = 2 keeps about half of a compressed field's rows, c = 3 a third; the fewest come near c = sqrt(n_f)
    with pytest.raises(BudgetUnreachable, match=r"qr \(mult\) gets no closer than .* factors 2 to 23 give"):
        QRSearcher.for_budget(FIELDS, DIM, QRConfig(), Budget(value=fraction))


def test_training_memory_is_the_three_kinds_of_table():
    config = QRConfig(collisions=3)
    layer = EmbeddingLayer(FIELDS, DIM, "qr", config)
    tables = sum(p.numel() for p in layer.lookup.parameters()) * 4
    assert QRSearcher.training_memory(FIELDS, DIM, config).tables == tables == layer.plan().num_params * 4
