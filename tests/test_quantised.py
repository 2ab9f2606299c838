"""Embedding values stored in fp16 or int8 row-wise: what they cost, how close they decode, and that a
saved quantised model is exactly the one in memory and checks itself like any other."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from embdim import FieldInfo
from embdim.errors import ModelFileError
from embdim.plan import EmbeddingPlan
from embdim.recommender import build_recommender
from embdim.slim import EMBEDDING_JSON, EMBEDDING_TENSORS, RaggedGroup, SlimEmbedding, encode_values
from embdim.storage import VALUE_PRECISIONS

FIELDS = [
    FieldInfo("small", 3, np.array([0, 50, 20])),
    FieldInfo("mid", 40, np.r_[0, np.arange(39, 0, -1)]),
    FieldInfo("big", 500, np.r_[3, np.arange(499, 0, -1)]),
]
DIM = 8
#: one method per storage kind: dense (full), dense with projections (mde), ragged (amtl), compact (pep),
#: hashed (hash) and qr (qr), both with a plain field beside
METHODS = {"full": {}, "mde": {"alpha": 0.5}, "amtl": {}, "pep": {}, "hash": {"buckets": 0.9}, "qr": {}}


def _slim(method: str) -> SlimEmbedding:
    torch.manual_seed(0)
    rec = build_recommender(FIELDS, 0, DIM, "fm", None, method, METHODS[method], init_std=0.1)
    with torch.no_grad():
        if method == "pep":  # prune part of the table so rows differ in length
            rec.embedding.searcher.threshold.fill_(float(torch.logit(torch.tensor(0.05))))
        if method == "amtl":
            rec.embedding.searcher.b2.copy_(torch.randn_like(rec.embedding.searcher.b2))
    return rec.embedding.export()


def _all_ids() -> torch.Tensor:
    """Every id of every field (OOV included), fields padded with id 0."""
    n = max(f.vocab_size for f in FIELDS)
    return torch.stack([torch.arange(n) % f.vocab_size for f in FIELDS], 1)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("method", list(METHODS))
def test_a_quantised_embedding_decodes_close_and_saves_exactly(method, precision, tmp_path):
    slim = _slim(method)
    ids = _all_ids()
    with torch.no_grad():
        exact, quantised = slim(ids), slim.with_precision(precision)
        got = quantised(ids)
    assert quantised.plan.precision == precision and quantised.plan.num_bytes == quantised.stored_bytes()
    assert quantised.stored_bytes() < slim.stored_bytes() or method == "mde"  # narrow MDE rows pay their scales
    # fp16 keeps about 11 significant bits; int8 is within half a step of its row's range over 255
    tolerance = 1e-3 * exact.abs().max() if precision == "fp16" else 0.5 * 2 * exact.abs().max() / 255 + 1e-4
    assert (got - exact).abs().max() <= tolerance
    assert bool((got[exact == 0] == 0).all())  # what was pruned or cut stays exactly zero
    quantised.save(tmp_path)
    with torch.no_grad():
        assert torch.equal(SlimEmbedding.load(tmp_path)(ids), got)


@pytest.mark.parametrize("method", ["full", "mde", "hash", "qr"])
def test_an_int8_table_reads_code_times_scale_plus_bias_of_each_row_and_holds_only_its_stored_bytes(method):
    quantised = _slim(method).with_precision("int8")
    ids = _all_ids()
    with torch.no_grad():
        got = quantised(ids)
        for group in quantised.groups:  # each table's rows decoded by hand, in float32
            rows = torch.arange(sum(group.table_rows()))
            decoded = group.weight.float() * group.scale.float()[:, None] + group.bias.float()[:, None]
            assert torch.equal(group.read(rows), decoded)
    exact = _slim(method)(ids)
    assert (got - exact).abs().max() <= exact.abs().max() / 255 + 1e-4
    held = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in quantised.state_dict().values()}
    assert sum(held.values()) == quantised.stored_bytes()  # in memory what it stores, no decoded copy


def test_int8_rows_keep_their_extremes_and_constant_rows_decode_exactly():
    table = torch.tensor([[-1.0, 0.0, 3.0], [2.5, 2.5, 2.5], [0.0, 0.0, 0.0]])
    encoded = encode_values(table, "int8")
    assert encoded["values"].dtype == torch.uint8 and encoded["scale"].dtype == torch.float16
    assert encoded["values"][0].tolist() == [0, 64, 255]  # min -> 0, max -> 255
    decoded = encoded["values"].float() * encoded["scale"].float()[:, None] + encoded["bias"].float()[:, None]
    assert torch.equal(decoded[1:], table[1:])
    # flat values of ragged rows: each row its own range, an empty row a zero scale and bias
    flat = encode_values(torch.tensor([1.0, 3.0, -2.0]), "int8", torch.tensor([0, 0, 2]), num_rows=3)
    assert flat["values"].tolist() == [0, 255, 0] and flat["scale"][1] == 0 and flat["bias"][1] == 0


@pytest.mark.parametrize("index", ["runs", "offsets"])
def test_int8_ragged_rows_that_store_nothing_carry_no_scale_and_still_read_zeros(index, tmp_path):
    # rows sorted by size, as AMTL's are, so that runs are few; every third run stores nothing
    rows, dim = (60, 90), 6
    torch.manual_seed(3)
    lengths = torch.cat([torch.arange(n).flip(0) // 10 % 4 * (torch.arange(n).flip(0) // 10 % 3 > 0) for n in rows])
    table = torch.randn(sum(rows), dim)
    group = RaggedGroup.from_dense((0, 1), rows, table, lengths, dim)
    if index == "offsets":
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        group = RaggedGroup((0, 1), rows, group.values.detach(), {"offsets": offsets}, dim)
    assert group.index_names[0] == ("offsets" if index == "offsets" else "run_offsets")
    int8 = group.with_precision("int8")
    stored = int(torch.count_nonzero(lengths))
    assert len(int8.scale) == len(int8.bias) == stored < sum(rows)  # one pair per row that stores values
    ids = torch.stack([torch.arange(90) % rows[0], torch.arange(90)], 1)
    with torch.no_grad():
        exact, got = group(ids), int8(ids)
        assert (got - exact).abs().max() <= 2 * table.abs().max() / 255
        assert bool((got[exact == 0] == 0).all()) and bool((got[lengths[ids + int8.row_offsets] == 0] == 0).all())
        sizes = [r.numpy() for r in lengths.split(rows)]
        widths = [int(r.max()) for r in sizes]
        plan = EmbeddingPlan("amtl", ["a", "b"], list(rows), dim, widths, "ragged", sizes, precision="int8")
        slim = SlimEmbedding(plan, [int8])
        if index == "runs":  # the layout the plan prices (the smaller index)
            assert plan.num_bytes == slim.stored_bytes()  # the byte rule prices the stored rows' scales only
        slim.save(tmp_path)
        assert torch.equal(SlimEmbedding.load(tmp_path)(ids), got)


def test_every_precision_is_priced_by_its_dtype():
    assert {name: dtype.itemsize for name, dtype in VALUE_PRECISIONS.items()} == {"fp32": 4, "fp16": 2, "int8": 1}
    plan = _slim("full").plan
    n, d = sum(plan.vocab_sizes), plan.dim
    assert _slim("full").with_precision("int8").plan.num_bytes == n * d + n * 4  # codes, scale and bias per row


def _edit(folder, edit):
    tensors = load_file(str(folder / EMBEDDING_TENSORS))
    edit(tensors)
    save_file(tensors, str(folder / EMBEDDING_TENSORS))


def test_a_damaged_quantised_embedding_is_refused_naming_the_tensor(tmp_path):
    quantised = _slim("amtl").with_precision("int8")
    quantised.save(tmp_path)
    scale = next(k for k in load_file(str(tmp_path / EMBEDDING_TENSORS)) if k.endswith(".scale"))

    _edit(tmp_path, lambda t: t.__setitem__(scale, -t[scale].abs() - 1))
    with pytest.raises(ModelFileError, match="scale: holds a negative scale"):
        SlimEmbedding.load(tmp_path)
    quantised.save(tmp_path)
    values = scale.replace("scale", "values")
    _edit(tmp_path, lambda t: t.__setitem__(values, t[values].float()))
    with pytest.raises(ModelFileError, match="values: float32 with 1 dims, expected uint8"):
        SlimEmbedding.load(tmp_path)
    quantised.save(tmp_path)
    _edit(tmp_path, lambda t: t.pop(scale))
    with pytest.raises(ModelFileError, match=r"missing tensors \['scale'\]"):
        SlimEmbedding.load(tmp_path)
    quantised.save(tmp_path)
    meta = (tmp_path / EMBEDDING_JSON).read_text().replace('"precision": "int8"', '"precision": "fp16"', 1)
    (tmp_path / EMBEDDING_JSON).write_text(meta)
    with pytest.raises(ModelFileError, match="precision"):
        SlimEmbedding.load(tmp_path)
