"""MLET: factorised shapes, init law, exact collapse for every model, export size, sparse A, decay
options; the frequency and effective-rank reports."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from embdim import EmbeddingLayer, FieldInfo
from embdim.config import ConfigError
from embdim.measures import effective_rank, singular_values
from embdim.recommender import build_recommender, export_model, load_model
from embdim.searchers.mlet import MLETConfig
from embdim.train.evaluate import group_by_frequency, row_frequencies
from embdim.train.optim import build_optimizers
from embdim.train.run import run_experiment
from test_train import small_config  # tests/ is on sys.path under pytest

FIELDS = [
    FieldInfo("small", 3, np.array([0, 50, 20])),
    FieldInfo("mid", 40, np.r_[0, np.arange(39, 0, -1)]),
    FieldInfo("big", 500, np.r_[3, np.arange(499, 0, -1)]),
]
DIM = 4
K = 16
COLLAPSE_TOL = 1e-5


def _ids(batch: int = 128, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, f.vocab_size, (batch,), generator=gen) for f in FIELDS], 1)


def _layer(**options) -> EmbeddingLayer:
    torch.manual_seed(0)
    return EmbeddingLayer(FIELDS, DIM, method="mlet", method_config={"inner_dim": K, **options})


def test_shapes_table_is_a_of_width_k_and_b_per_field():
    layer = _layer()
    (spec,) = layer.lookup.specs
    assert spec.dim == K and spec.rows == (3, 40, 500)
    assert layer.lookup.table_weight(spec.name).shape == (543, K)
    assert layer.searcher.B.shape == (3, K, DIM)
    assert layer(_ids()).shape == (128, 3, DIM)
    # k as a multiple of d, rounded up
    assert EmbeddingLayer(FIELDS, 5, "mlet", {"inner_multiple": 2.5}).searcher.inner_dim == 13


def test_each_field_uses_its_own_b():
    layer = _layer()
    ids = _ids()
    with torch.no_grad():
        out = layer(ids)
        a = layer.lookup.table_weight("a")
        for f in range(3):
            rows = a[ids[:, f] + layer.lookup.specs[0].offsets[f]]
            assert torch.allclose(out[:, f], rows @ layer.searcher.B[f], atol=1e-7)


@pytest.mark.parametrize(
    ("options", "key"), [({"inner_dim": 2}, "inner_dim"), ({"inner_multiple": 0.5}, "inner_multiple")]
)
def test_inner_width_below_d_is_rejected_by_name(options, key):
    with pytest.raises(ValueError, match=key):
        EmbeddingLayer(FIELDS, DIM, "mlet", options)


def test_product_decay_needs_the_product_option():
    with pytest.raises(ValueError, match="product_decay"):
        MLETConfig(product_decay=0.1)


@pytest.mark.parametrize("b_init", ["orthogonal", "normal"])
def test_init_variance_of_the_product_matches_the_full_table(b_init):
    std = 0.01
    fields = [FieldInfo("f", 20000), FieldInfo("g", 20000)]
    torch.manual_seed(0)
    layer = EmbeddingLayer(fields, 8, "mlet", {"inner_dim": 64, "b_init": b_init}, init_std=std)
    full = EmbeddingLayer(fields, 8, "full", init_std=std)
    w = layer.searcher.collapsed_table(layer.lookup)
    # 320k entries: the sample std is within ~0.3 % of the truth; allow 3 %
    assert w.std().item() == pytest.approx(std, rel=0.03)
    assert full.lookup.table_weight("all").std().item() == pytest.approx(std, rel=0.03)
    if b_init == "orthogonal":  # orthonormal columns: each row of A @ B is exactly N(0, std^2 I_d)
        eye = torch.eye(8).expand(2, 8, 8)
        b = layer.searcher.B.detach()
        assert torch.allclose(b.transpose(1, 2) @ b, eye, atol=1e-5)


@pytest.mark.parametrize("model", ["fm", "deepfm", "dlrm", "autoint"])
def test_collapsed_model_predicts_like_the_factorised_one_for_every_model(model, tmp_path):
    torch.manual_seed(1)
    rec = build_recommender(FIELDS, 2, DIM, model, method="mlet", method_config={"inner_dim": 64}, init_std=0.1)
    with torch.no_grad():  # move B off its orthonormal start, so the collapse is not trivially exact
        rec.embedding.searcher.B.mul_(2.0).add_(0.2 * torch.randn_like(rec.embedding.searcher.B))
    rec.eval()
    ids, dense = _ids(256, seed=2), torch.randn(256, 2)
    with torch.no_grad():
        expected = rec(ids, dense)
    slim = export_model(rec, tmp_path)
    loaded = load_model(tmp_path)
    with torch.no_grad():
        got = loaded(ids, dense)
        emb_diff = (loaded.embedding(ids) - rec.embedding(ids)).abs().max().item()
    assert expected.std() > 1e-3 and expected.abs().max() < 20  # logits of a realistic scale, not constant
    assert emb_diff <= 1e-6
    assert (got - expected).abs().max().item() <= COLLAPSE_TOL
    # exported: one dense n_f x d table per field, exactly the size of full at d
    full = build_recommender(FIELDS, 2, DIM, model, method="full")
    assert slim.stored_bytes() == slim.plan.num_bytes == full.embedding.plan().num_bytes
    assert slim.groups[0].weight.shape == (543, DIM) and slim.groups[0].projection is None
    assert slim.groups[0].weight.dtype == torch.float32


def test_collapse_is_computed_in_float64():
    layer = _layer(b_init="normal")
    w64 = layer.searcher.collapsed_table(layer.lookup)
    assert w64.dtype == torch.float64
    exported = layer.export().groups[0].weight
    assert torch.equal(exported, w64.float())


def test_sparse_gradient_for_a_dense_for_b_and_a_sparse_step():
    torch.manual_seed(0)
    layer = EmbeddingLayer(FIELDS, DIM, method="mlet", method_config={"inner_dim": K}, sparse=True)
    out = layer(_ids(16))
    out.square().sum().backward()
    (a,) = layer.lookup.parameters()
    assert a.grad.is_sparse and not layer.searcher.B.grad.is_sparse
    assert layer.searcher.B.grad.abs().sum() > 0
    from embdim.config import TrainConfig

    opts = build_optimizers([], [layer.searcher.B], TrainConfig(optimizer="adam", fused=False), sparse_tables=[a])
    before_a, before_b = a.detach().clone(), layer.searcher.B.detach().clone()
    for o in opts:
        o.step()
    touched = (a.detach() != before_a).any(1)
    looked_up = torch.zeros(543, dtype=torch.bool)
    looked_up[(_ids(16) + torch.tensor(layer.lookup.specs[0].offsets)).flatten()] = True
    assert torch.equal(touched, looked_up)  # only looked-up rows of A move
    assert not torch.equal(layer.searcher.B.detach(), before_b)


def test_product_decay_penalises_the_collapsed_batch_rows():
    layer = _layer(weight_decay_on="product", product_decay=0.5)
    assert _layer().embed(_ids()).penalty is None
    out, penalty = layer.embed(_ids())
    assert penalty is not None
    assert torch.allclose(penalty, 0.5 * out.square().sum() / 128)
    layer.eval()
    assert layer.embed(_ids()).penalty is None  # no penalty from evaluation forwards


def test_report_has_training_memory_next_to_inference_size_and_ranks():
    layer = _layer()
    rep = layer.searcher.report(layer.lookup)
    assert rep["training_embedding_params"] == 543 * K + 3 * K * DIM
    assert rep["inference_embedding_params"] == 543 * DIM
    assert rep["inference_embedding_bytes"] == layer.plan().num_bytes
    assert set(rep["effective_rank"]) == {"small", "mid", "big"}
    assert all(1.0 <= r <= DIM for r in rep["effective_rank"].values())


def test_effective_rank_bounds():
    gen = torch.Generator().manual_seed(0)
    u, v = torch.randn(100, 1, generator=gen), torch.randn(1, 8, generator=gen)
    assert effective_rank(u @ v) == pytest.approx(1.0, abs=1e-6)
    assert effective_rank(torch.eye(8)) == pytest.approx(8.0)
    assert effective_rank(torch.diag(torch.tensor([1.0, 1.0, 0.0, 0.0]))) == pytest.approx(2.0)
    assert effective_rank(torch.zeros(5, 3)) == 0.0
    tall = torch.randn(300, 6, generator=gen) * torch.tensor([5.0, 2.0, 1.0, 1.0, 0.5, 0.1])
    assert torch.allclose(singular_values(tall, chunk_rows=64), torch.linalg.svdvals(tall.double()), atol=1e-9)
    # two singular values 3:1 -> p = (0.75, 0.25)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_rank(torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(math.exp(h))


def test_rows_are_grouped_by_training_frequency():
    fields = [FieldInfo("u", 3, np.array([0, 10, 2])), FieldInfo("i", 2, np.array([50, 1]))]
    ids = np.array([[1, 0], [2, 0], [1, 1], [2, 1]])
    assert row_frequencies(ids, fields, "u").tolist() == [10, 2, 10, 2]
    assert row_frequencies(ids, fields, 1).tolist() == [50, 50, 1, 1]
    assert row_frequencies(ids, fields).tolist() == [10, 2, 1, 1]  # rarest id of the row
    labels = np.array([1, 0, 0, 1, 1, 0], dtype=np.float32)
    logits = np.array([2.0, -1.0, 0.5, 0.2, -3.0, 3.0])
    freq = np.array([1, 1, 1, 1, 30, 30])
    buckets = group_by_frequency(labels, logits, freq, edges=(0, 5, 20))
    assert [(b["lo"], b["hi"], b["rows"]) for b in buckets] == [(0, 5, 4), (20, None, 2)]
    # positives score 2.0, 0.2; negatives -1.0, 0.5: 3 of 4 pairs ordered
    assert buckets[0]["auc"] == pytest.approx(0.75)
    assert buckets[1]["auc"] == 0.0
    with pytest.raises(ValueError, match="increasing"):
        group_by_frequency(labels, logits, freq, edges=(5, 0))


def test_mlet_run_end_to_end_reports_and_exports_exactly(tmp_path):
    result = run_experiment(small_config(tmp_path, "name=m", "method=mlet", "method.inner_dim=32", "train.epochs=1"))
    assert result["export_max_abs_logit_diff"] <= COLLAPSE_TOL
    assert result["embedding_bytes"] == result["full_embedding_bytes"]
    rep = result["searcher"]
    assert rep["inner_dim"] == 32 and rep["training_over_inference"] > 4
    assert len(rep["effective_rank"]) == 4


def test_bad_mlet_option_fails_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"method\.b_init"):
        small_config(tmp_path, "method=mlet", "method.b_init=uniform")
