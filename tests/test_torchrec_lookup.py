"""The ``torchrec`` lookup backend against the plain torch one: same vectors, same updates, exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("torchrec")

from embdim import EmbeddingLayer, FieldInfo, list_searchers
from embdim.config import TrainConfig
from embdim.distributed.torchrec_lookup import TorchRecFusedOptimizer, TorchRecLookup
from embdim.lookup import FusedTableOptimizer
from embdim.recommender import build_recommender
from embdim.train.optim import build_optimizers, recommender_optimizers, set_lr_scale
from embdim.train.run import run_experiment
from test_train import KilledAt, small_config  # tests/ is on sys.path under pytest

#: the quickstart recipe's whole-table L2 and clipping have no fused form (fused tables update in the backward)
NO_L2_CLIP = ("train.embedding_weight_decay=0", "train.clip_grad_norm=null")

FIELDS = [FieldInfo("a", 7), FieldInfo("b", 30), FieldInfo("c", 300), FieldInfo("d", 3)]
DIM = 8
BATCH = 64
LR = 0.05
#: float32 tolerance for two implementations of the same update (different summation order)
UPDATE_ATOL = 1e-6
#: metrics of two whole (short) runs that differ only in float summation order
RUN_TOL = 1e-6
#: their AUCs: a pair of near-tied scores (about 1e-9 apart) may order differently, and each of the small
#: splits' ~1e5 positive-negative pairs moves the AUC by about 1e-5
RUN_AUC_TOL = 1e-4


def _ids(seed: int, batch: int = BATCH) -> torch.Tensor:
    """Skewed ids [B, F] so that rows repeat within a batch (duplicate rows must be summed)."""
    gen = torch.Generator().manual_seed(seed)
    cols = [torch.randint(0, max(f.vocab_size // 4, 1), (batch,), generator=gen) for f in FIELDS]
    return torch.stack(cols, 1)


def _pair(method: str = "full", sparse: bool = False) -> tuple[EmbeddingLayer, EmbeddingLayer]:
    """A torch-backed and a torchrec-backed layer with identical tables and searcher weights."""
    config = {"alpha": 0.5} if method == "mde" else None
    torch.manual_seed(0)
    ref = EmbeddingLayer(FIELDS, DIM, method, config, backend="torch", sparse=sparse)
    torch.manual_seed(0)
    rec = EmbeddingLayer(FIELDS, DIM, method, config, backend="torchrec", sparse=sparse)
    assert isinstance(rec.lookup, TorchRecLookup)
    rec.searcher.load_state_dict(ref.searcher.state_dict())
    with torch.no_grad():
        for spec in ref.lookup.specs:
            rec.lookup.table_weight(spec.name).copy_(ref.lookup.table_weight(spec.name))
    return ref, rec


def _loss(layer: EmbeddingLayer, ids: torch.Tensor) -> torch.Tensor:
    target = torch.linspace(-1, 1, DIM)
    return (layer(ids) * target).sum(-1).square().mean()


def _tables(layer: EmbeddingLayer) -> dict[str, torch.Tensor]:
    return {s.name: layer.lookup.table_weight(s.name).detach().clone() for s in layer.lookup.specs}


def _assert_tables_close(a: EmbeddingLayer, b: EmbeddingLayer, atol: float) -> None:
    for name, weight in _tables(a).items():
        torch.testing.assert_close(_tables(b)[name], weight, atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("method", ["full", "mde"])
def test_same_seed_gives_the_same_tables_and_later_draws_as_torch(method):
    config = {"alpha": 0.5} if method == "mde" else None
    torch.manual_seed(3)
    ref = EmbeddingLayer(FIELDS, DIM, method, config, backend="torch")
    after_ref = torch.rand(4)
    torch.manual_seed(3)
    rec = EmbeddingLayer(FIELDS, DIM, method, config, backend="torchrec")
    rec.lookup.fuse_optimizer("adagrad", LR)  # fusing draws nothing either
    assert torch.equal(torch.rand(4), after_ref)
    for key, value in ref.state_dict().items():
        assert torch.equal(rec.state_dict()[key], value), key


@pytest.mark.parametrize("method", ["full", "mde"])
def test_same_raw_embeddings_and_layer_output_as_torch(method):
    ref, rec = _pair(method)
    ids = _ids(0)
    raw_ref, raw_rec = ref.lookup(ids), rec.lookup(ids)
    assert [s.name for s in raw_rec.specs] == [s.name for s in raw_ref.specs]
    if method == "mde":
        assert len(raw_ref.specs) > 1  # several tables of different widths
    for a, b in zip(raw_ref.values, raw_rec.values, strict=True):
        assert a.shape == b.shape
        assert torch.equal(a, b)
    assert torch.equal(ref(ids), rec(ids))


@pytest.mark.parametrize("method", ["full", "mde"])
@pytest.mark.parametrize("sparse", [False, True])
def test_sgd_step_updates_the_same_tables(method, sparse):
    ref, rec = _pair(method, sparse)
    before = _tables(ref)
    ids = _ids(1)
    for layer in (ref, rec):
        opt = torch.optim.SGD(layer.parameters(), lr=LR)
        _loss(layer, ids).backward()
        grads = [p.grad for p in layer.lookup.parameters()]
        assert all(g is not None and g.is_sparse == sparse for g in grads)
        opt.step()
    _assert_tables_close(ref, rec, UPDATE_ATOL)
    assert all(not torch.equal(before[name], weight) for name, weight in _tables(rec).items())


@pytest.mark.parametrize("optimizer, torch_cls", [("adagrad", torch.optim.Adagrad), ("sgd", torch.optim.SGD)])
@pytest.mark.parametrize("method", ["full", "mde"])
def test_fused_update_equals_torch_sparse_update(optimizer, torch_cls, method):
    ref, rec = _pair(method, sparse=True)
    ref_opt = torch_cls(ref.lookup.parameters(), lr=LR)
    opts = build_optimizers(
        [], [], TrainConfig(optimizer=optimizer, lr=LR), rec.lookup, sparse_tables=list(rec.lookup.parameters())
    )
    assert len(opts) == 1 and isinstance(opts[0], FusedTableOptimizer)  # the tables left the torch optimizers
    for step in range(3):
        ids = _ids(10 + step)
        ref_opt.zero_grad()
        _loss(ref, ids).backward()
        ref_opt.step()
        for o in opts:
            o.zero_grad()
        _loss(rec, ids).backward()  # the fused kernel updates the rows here
        for o in opts:
            o.step()
        _assert_tables_close(ref, rec, UPDATE_ATOL)
    assert all(p.grad is None for p in rec.lookup.parameters())


def test_a_scheduled_rate_rules_the_next_fused_update_as_it_rules_a_torch_step():
    # the fused kernel updates inside the backward pass: a rate set between two steps must reach it
    # before the next backward, or a schedule (and a resume right after a plateau drop) lags one step
    ref, rec = _pair("full", sparse=True)
    ref_opt = torch.optim.Adagrad(ref.lookup.parameters(), lr=LR)
    ref_opt.param_groups[0]["base_lr"] = LR
    opts = build_optimizers(
        [], [], TrainConfig(optimizer="adagrad", lr=LR), rec.lookup, sparse_tables=list(rec.lookup.parameters())
    )
    for step, scale in enumerate([1.0, 0.1, 0.01]):
        set_lr_scale([ref_opt], scale)
        set_lr_scale(opts, scale)
        ids = _ids(20 + step)
        ref_opt.zero_grad()
        _loss(ref, ids).backward()
        ref_opt.step()
        _loss(rec, ids).backward()
        _assert_tables_close(ref, rec, UPDATE_ATOL)


def test_fused_optimizer_state_round_trips_and_refuses_another_optimizer():
    _, rec = _pair()
    (fused,) = build_optimizers(
        [], [], TrainConfig(optimizer="adagrad"), rec.lookup, sparse_tables=list(rec.lookup.parameters())
    )
    _loss(rec, _ids(2)).backward()
    state = fused.state_dict()
    (sums,) = state["state"]["all"]
    assert sums.shape == (sum(f.vocab_size for f in FIELDS), DIM) and sums.abs().sum() > 0
    # fusing again (next stage) keeps the weights and parameter objects, restarts the state
    weight = rec.lookup.table_weight("all")
    before = weight.detach().clone()
    again = rec.lookup.fuse_optimizer("adagrad", 0.01)
    assert rec.lookup.table_weight("all") is weight and torch.equal(weight, before)
    assert rec.lookup.fused_states()["all"][0].abs().sum() == 0
    again.load_state_dict(state)
    assert torch.equal(rec.lookup.fused_states()["all"][0], sums)
    assert again.param_groups[0]["lr"] == state["lr"]
    with pytest.raises(ValueError, match="fused 'adagrad'"):
        TorchRecFusedOptimizer(rec.lookup, "sgd", 0.1).load_state_dict(state)


def test_fused_adam_and_fused_decay_are_refused_naming_the_keys():
    _, rec = _pair()
    tables = list(rec.lookup.parameters())
    with pytest.raises(ValueError, match=r"train\.optimizer=adam.*train\.fused=false"):
        build_optimizers(tables, [], TrainConfig(optimizer="adam"), rec.lookup)
    with pytest.raises(ValueError, match=r"train\.embedding_weight_decay"):
        build_optimizers(tables, [], TrainConfig(optimizer="sgd", embedding_weight_decay=0.1), rec.lookup)
    # not fused: torch optimizers train the TorchRec tables like any parameter
    (opt,) = build_optimizers(tables, [], TrainConfig(optimizer="adam", fused=False), rec.lookup)
    assert isinstance(opt, torch.optim.Adam)


def test_sparse_first_order_table_goes_to_the_sparse_optimizer():
    dense_first_order = build_recommender(FIELDS, 0, DIM, "deepfm", {"hidden": [8]}, backend="torchrec", sparse=True)
    assert not dense_first_order.model.linear.sparse  # opt-in: dense updates of n x 1 are cheaper at 1e6 rows
    rec = build_recommender(
        FIELDS, 0, DIM, "deepfm", {"hidden": [8]}, backend="torchrec", sparse=True, sparse_first_order=True
    )
    linear = rec.model.linear.weight.weight
    assert rec.model.linear.sparse
    dense_tables, sparse_tables = rec.table_parameters()
    assert any(p is linear for p in sparse_tables) and all(p is not linear for p in dense_tables)
    opts = recommender_optimizers(rec, TrainConfig(optimizer="adagrad"), rec.embedding.lookup)
    assert isinstance(opts[0], FusedTableOptimizer)
    assert [p for p in opts[1].param_groups[0]["params"]] == [linear]
    ids = _ids(3)
    torch.nn.functional.binary_cross_entropy_with_logits(rec(ids), torch.ones(BATCH)).backward()
    assert linear.grad.is_sparse
    for o in opts:
        o.step()
    offsets = rec.model.linear.offsets
    touched = torch.zeros(linear.shape[0], dtype=torch.bool)
    touched[(ids + offsets).flatten()] = True
    assert (linear[~touched] == 0).all() and (linear[touched] != 0).all()


def test_state_dicts_are_interchangeable_with_the_torch_backend():
    ref, rec = _pair("mde")  # widths 8 and < 8: fused tables are zero-padded to a multiple of 4 inside
    rec.lookup.fuse_optimizer("adagrad", LR)
    assert list(rec.state_dict()) == list(ref.state_dict())
    for key, value in rec.state_dict().items():
        assert torch.equal(value, ref.state_dict()[key]), key
    torch.manual_seed(5)
    other = EmbeddingLayer(FIELDS, DIM, "mde", {"alpha": 0.5}, backend="torch")
    rec.load_state_dict(other.state_dict())
    ids = _ids(6)
    assert torch.equal(rec(ids), other(ids))


@pytest.mark.parametrize("method", list_searchers())
def test_every_registered_searcher_runs_on_torchrec_plain_and_fused(method):
    # training counts, for the frequency-aware methods: a few unseen ids, then a decreasing count
    fields = [FieldInfo(f.name, f.vocab_size, np.r_[0, np.arange(f.vocab_size - 1, 0, -1)]) for f in FIELDS]
    torch.manual_seed(0)
    ref = EmbeddingLayer(fields, DIM, method)
    rec = EmbeddingLayer(fields, DIM, method, backend="torchrec")
    rec.load_state_dict(ref.state_dict())  # same keys: the whole layer carries over
    ids = _ids(7)
    assert torch.equal(rec(ids), ref(ids))
    assert torch.equal(rec.export()(ids), ref.export()(ids))
    rec.lookup.fuse_optimizer("sgd", LR)
    assert torch.equal(rec(ids), ref(ids))


def test_export_gives_the_same_slim_model_as_torch(tmp_path):
    for method in ("full", "mde"):
        ref, rec = _pair(method)
        a, b = ref.export(), rec.export()
        ids = _ids(4)
        assert torch.equal(a(ids), b(ids))
        assert a.plan.to_dict() == b.plan.to_dict()
        a.save(tmp_path / f"{method}_torch")
        b.save(tmp_path / f"{method}_torchrec")
        for f in sorted((tmp_path / f"{method}_torch").iterdir()):
            assert f.read_bytes() == (tmp_path / f"{method}_torchrec" / f.name).read_bytes(), f.name


def test_killed_fused_torchrec_run_resumes_to_the_same_result(tmp_path):
    opts = (
        "embedding.backend=torchrec",
        "embedding.sparse=true",
        "train.optimizer=adagrad",
        "train.lr=0.01",
        *NO_L2_CLIP,
    )
    reference = run_experiment(small_config(tmp_path, "name=ref", *opts))
    cfg = small_config(tmp_path, "name=killed", *opts)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, trainer_cls=KilledAt)
    resumed = run_experiment(cfg)
    for key in ("test_auc", "valid_auc", "test_logloss", "valid_logloss"):
        assert resumed[key] == reference[key], key
    assert reference["test_auc"] > 0.6  # it learned something
    assert reference["export_max_abs_logit_diff"] < 1e-6
    ref_lines = (tmp_path / "runs" / "ref" / "metrics.jsonl").read_text().splitlines()
    got_lines = (tmp_path / "runs" / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["valid_auc"] for x in got_lines] == [json.loads(x)["valid_auc"] for x in ref_lines]


def test_fused_torchrec_run_tracks_the_torch_sparse_run(tmp_path):
    """Same seed, same data: fused Adagrad inside TorchRec's backward trains like torch's sparse Adagrad."""
    opts = ("embedding.sparse=true", "train.optimizer=adagrad", "train.lr=0.01", *NO_L2_CLIP)
    torch_run = run_experiment(small_config(tmp_path, "name=torch", *opts))
    torchrec_run = run_experiment(small_config(tmp_path, "name=torchrec", "embedding.backend=torchrec", *opts))
    for key in ("valid_logloss", "test_logloss"):
        assert torchrec_run[key] == pytest.approx(torch_run[key], abs=RUN_TOL), key
    for key in ("valid_auc", "test_auc"):
        assert torchrec_run[key] == pytest.approx(torch_run[key], abs=RUN_AUC_TOL), key
    assert torchrec_run["export_max_abs_logit_diff"] < 1e-6
