"""PEP: threshold maths, granularities, search dynamics, lottery-ticket retraining, slim export, budgets."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from torch import nn

from embdim import EmbeddingLayer, FieldInfo
from embdim.budget import Budget
from embdim.config import ConfigError, TrainConfig
from embdim.recommender import build_recommender, export_model, load_model
from embdim.searchers.pep import (
    STORAGES,
    PEPSearcher,
    budget_mask,
    budget_sparsity,
    soft_threshold,
    storage_bytes,
    threshold_shape,
)
from embdim.train.optim import build_optimizers
from embdim.train.run import run_experiment
from embdim.train.trainer import Trainer
from test_train import small_config

FIELDS = [
    FieldInfo("small", 3, np.array([0, 50, 20])),
    FieldInfo("mid", 40, np.r_[0, np.arange(39, 0, -1)]),
    FieldInfo("big", 500, np.r_[3, np.arange(499, 0, -1)]),
]
N = sum(f.vocab_size for f in FIELDS)
DIM = 8
GRANULARITIES = ["global", "dimension", "feature", "field", "feature_dim", "field_dim"]


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one thread avoids waiting on a busy machine's second core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _ids(batch: int = 64, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, f.vocab_size, (batch,), generator=gen) for f in FIELDS], 1)


STEPS_PER_EPOCH = 10
# a schedule for tests of a few steps: fast thresholds, pull from the first step
FAST_SCHEDULE = {"threshold_lr": 0.2, "pull_start_epochs": 0.0}


def _layer(**options) -> EmbeddingLayer:
    torch.manual_seed(0)
    layer = EmbeddingLayer(FIELDS, DIM, method="pep", method_config=FAST_SCHEDULE | options, init_std=0.1)
    layer.searcher.steps_per_epoch = STEPS_PER_EPOCH  # what the trainer sets
    return layer


def _stage(searcher, name: str):
    """The searcher's stage record of that name."""
    return next(stage for stage in searcher.stages() if stage.name == name)


def _table(layer: EmbeddingLayer) -> torch.Tensor:
    return layer.lookup.table_weight("all")


def _raise_thresholds(layer: EmbeddingLayer, sparsity: float) -> None:
    """Set every threshold so that about ``sparsity`` of the table falls below it (global quantile)."""
    cut = torch.quantile(_table(layer).detach().abs().flatten(), sparsity)
    s = torch.logit(cut)
    with torch.no_grad():
        layer.searcher.threshold.fill_(float(s))


# ---------------------------------------------------------------------- threshold maths
def test_soft_threshold_and_its_gradient_match_the_direct_formula():
    torch.manual_seed(1)
    v = torch.randn(50, 6, dtype=torch.float64, requires_grad=True)
    s = torch.randn(50, 6, dtype=torch.float64, requires_grad=True)
    out = soft_threshold(v, s)
    g = 1 / (1 + torch.exp(-s.detach()))
    alive = v.detach().abs() > g
    expected = torch.where(alive, v.detach() - torch.sign(v.detach()) * g, 0.0)
    assert torch.allclose(out.detach(), expected, atol=1e-12)
    weights = torch.randn(50, 6, dtype=torch.float64)
    (out * weights).sum().backward()
    # dS/dv = 1[|v| > g(s)];  dS/ds = -sign(v) * g'(s) * 1[|v| > g(s)],  g' = g (1 - g)
    assert torch.allclose(v.grad, weights * alive, atol=1e-12)
    assert torch.allclose(s.grad, -weights * torch.sign(v.detach()) * g * (1 - g) * alive, atol=1e-12)


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_each_granularity_has_its_shape_and_thresholds_the_looked_up_rows(granularity):
    # eager ops: compiling kernels for six granularities costs most of a minute; the fused path is
    # compared with these eager ops below
    layer = _layer(granularity=granularity, s0=-2.0, fused_threshold=False)
    searcher: PEPSearcher = layer.searcher
    assert tuple(searcher.threshold.shape) == threshold_shape(granularity, N, len(FIELDS), DIM)
    assert (
        threshold_shape(granularity, N, len(FIELDS), DIM)
        == {
            "global": (1, 1),
            "dimension": (1, DIM),
            "feature": (N, 1),
            "field": (len(FIELDS), 1),
            "feature_dim": (N, DIM),
            "field_dim": (len(FIELDS), DIM),
        }[granularity]
    )
    with torch.no_grad():  # distinct thresholds everywhere, so a wrong gather shows
        searcher.threshold.copy_(-3 + torch.rand_like(searcher.threshold))
    ids = _ids()
    out = layer(ids)
    assert out.shape == (64, len(FIELDS), DIM)
    # the same as thresholding the whole table and then looking up
    whole = soft_threshold(_table(layer), searcher.table_thresholds())
    rows = ids + torch.tensor([0, 3, 43])
    assert torch.allclose(out, whole[rows], rtol=0, atol=1e-7)  # vectorised sigmoid may round differently
    before = searcher.threshold.detach().clone()
    (out * torch.randn_like(out)).sum().backward()
    if searcher.threshold_optimizer is None:  # a parameter the run's optimizer trains
        assert searcher.threshold.grad is not None and searcher.threshold.grad.abs().sum() > 0
    else:  # per-row: the backward pass itself moved the looked-up rows' thresholds, and only those
        moved = (searcher.threshold.detach() - before).abs().sum(1) > 0
        looked_up = torch.isin(torch.arange(N), rows.flatten())
        assert moved.any() and not (moved & ~looked_up).any()  # fully pruned rows get no gradient
        assert searcher.threshold.grad is None


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_the_blockwise_sparsity_count_equals_the_whole_table_margins(granularity, monkeypatch):
    monkeypatch.setattr("embdim.searchers.pep.MEASURE_BLOCK_ROWS", 100)  # 543 rows: 6 blocks, the last short
    layer = _layer(granularity=granularity)
    searcher: PEPSearcher = layer.searcher
    with torch.no_grad():
        searcher.threshold.copy_(-3.5 + torch.rand_like(searcher.threshold))
    expected = 1.0 - int((searcher.margins(layer.lookup) > 0).sum()) / (N * DIM)
    assert 0.2 < expected < 0.9
    assert searcher.record_sparsity(layer.lookup) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------------- search dynamics
def _tiny_model_and_data(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, f.vocab_size, (2048,), generator=gen) for f in FIELDS], 1)
    labels = (torch.rand(2048, generator=gen) < 0.3).float()
    return ids, labels


def test_faithful_search_sparsity_never_decreases_and_saves_masks_at_targets():
    """Dense Adam with coupled decay 1e-5 on every parameter (the official setting) and no other force."""
    layer = _layer(mode="faithful", s0=-4.0, threshold_lr=None, targets=[0.3, 0.5])
    searcher: PEPSearcher = layer.searcher
    head = nn.Linear(len(FIELDS) * DIM, 1)
    # lr well below sigmoid(s0) = 0.018: pruned weights, pulled to 0 by decay, cannot jump back over it
    opt = torch.optim.Adam([*layer.parameters(), *head.parameters()], lr=0.005, weight_decay=1e-5)
    ids, labels = _tiny_model_and_data()
    sparsities = []
    for step in range(150):
        batch = slice((step * 128) % 2048, (step * 128) % 2048 + 128)
        logits = head(layer(ids[batch]).flatten(1)).squeeze(1)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, labels[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sparsities.append(searcher.record_sparsity(layer.lookup))
    assert sparsities[-1] > 0.5 > 0.3 > sparsities[0]  # the thresholds did rise
    assert all(b >= a for a, b in itertools.pairwise(sparsities))
    assert sorted(searcher.masks_) == [0.3, 0.5]
    for target, mask in searcher.masks_.items():  # each saved mask keeps exactly its target's share
        assert int(mask.sum()) == round((1 - target) * N * DIM)


# ---------------------------------------------------------------------- retraining
def _searched_layer(**options) -> tuple[EmbeddingLayer, dict[str, torch.Tensor]]:
    """A layer whose search reached 0.7 sparsity, and the whole layer's step-0 state."""
    layer = _layer(targets=[0.7], **options)
    initial = {k: v.clone() for k, v in layer.state_dict().items()}
    with torch.no_grad():  # the search moved weights and thresholds
        _table(layer).add_(0.05 * torch.randn_like(_table(layer)))
    _raise_thresholds(layer, 0.75)
    layer.searcher.record_sparsity(layer.lookup)
    assert 0.7 in layer.searcher.masks_
    return layer, initial


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "adagrad", "sgd"])
def test_retraining_starts_from_step0_times_mask_and_pruned_entries_stay_exactly_zero(optimizer):
    layer, initial = _searched_layer()
    searcher: PEPSearcher = layer.searcher
    mask = searcher.masks_[0.7].clone()
    layer.load_state_dict(initial)  # what the trainer's rewind does (state_dict only)
    searcher.start_stage(_stage(searcher, "retrain"), layer.lookup)
    table = _table(layer)
    assert torch.equal(table.detach(), initial["lookup.tables.all.weight"] * mask)
    assert not searcher.threshold.requires_grad
    head = nn.Linear(len(FIELDS) * DIM, 1)
    params = [p for p in [*layer.parameters(), *head.parameters()] if p.requires_grad]
    opt = {
        "adam": lambda: torch.optim.Adam(params, lr=0.01, weight_decay=1e-5),
        "adamw": lambda: torch.optim.AdamW(params, lr=0.01),
        "adagrad": lambda: torch.optim.Adagrad(params, lr=0.05),
        "sgd": lambda: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-5),
    }[optimizer]()
    ids, labels = _tiny_model_and_data(1)
    for step in range(30):
        batch = slice(step * 64, step * 64 + 64)
        loss = nn.functional.binary_cross_entropy_with_logits(
            head(layer(ids[batch]).flatten(1)).squeeze(1), labels[batch]
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = table.detach()
    assert torch.count_nonzero(after[~mask]) == 0
    assert not torch.equal(after[mask], initial["lookup.tables.all.weight"][mask])  # kept entries trained
    assert searcher.plan(layer.lookup).num_params == int(mask.sum())


def test_random_reinit_keeps_the_mask_but_not_the_step0_values():
    layer, initial = _searched_layer(retrain_init="random")
    layer.load_state_dict(initial)
    mask = layer.searcher.masks_[0.7]
    layer.searcher.start_stage(_stage(layer.searcher, "retrain"), layer.lookup)
    table = _table(layer).detach()
    assert torch.count_nonzero(table[~mask]) == 0
    assert not torch.equal(table[mask], initial["lookup.tables.all.weight"][mask])


def test_masks_and_phase_survive_a_checkpoint_round_trip():
    layer, initial = _searched_layer()
    layer.load_state_dict(initial)
    layer.searcher.start_stage(_stage(layer.searcher, "retrain"), layer.lookup)
    state = layer.searcher.state_for_checkpoint()
    fresh = _layer(targets=[0.7])
    fresh.load_state_dict(layer.state_dict())
    fresh.searcher.load_checkpoint_state(state)
    assert fresh.searcher.phase_ == "retrain" and not fresh.searcher.threshold.requires_grad
    assert torch.equal(fresh.searcher.masks_[0.7], layer.searcher.masks_[0.7])
    ids = _ids()
    assert torch.equal(fresh(ids), layer(ids))


def test_the_drift_raises_every_threshold_alike_on_schedule_and_survives_a_checkpoint():
    layer = _layer(drift_per_epoch=0.5, pull_doubling_epochs=2, pull_start_epochs=1, drift_start_quantile=None)
    searcher: PEPSearcher = layer.searcher
    expected = 0.0
    for step in range(5 * STEPS_PER_EPOCH):
        searcher.on_step(step, layer.lookup)
        pulled = searcher.search_steps_ / STEPS_PER_EPOCH - 1
        expected += 0.0 if pulled < 0 else 0.5 / STEPS_PER_EPOCH * 2 ** (pulled / 2)
    assert float(searcher.drift) == pytest.approx(expected, rel=1e-5) and expected > 0
    assert layer.embed(_ids()).penalty is None  # no loss term: the thresholds' own values stay where they were
    assert torch.equal(searcher.threshold.detach(), torch.full((N, DIM), -15.0))
    assert torch.allclose(searcher.table_thresholds(), torch.full((N, DIM), -15.0 + expected))
    fresh = _layer().searcher
    fresh.load_checkpoint_state(searcher.state_for_checkpoint())
    assert float(fresh.drift) == float(searcher.drift)


def test_the_drift_starts_where_the_smallest_values_are_whatever_s0():
    for s0 in (-15.0, -40.0):
        layer = _layer(s0=s0, pull_start_epochs=1, drift_start_quantile=0.05)
        searcher: PEPSearcher = layer.searcher
        for step in range(STEPS_PER_EPOCH - 1):
            searcher.on_step(step, layer.lookup)
        assert float(searcher.drift) == 0.0 and searcher.record_sparsity(layer.lookup) == 0.0  # warm-up: nothing pruned
        searcher.on_step(STEPS_PER_EPOCH, layer.lookup)  # the pull starts: 5 % of |v| below the threshold
        assert searcher.record_sparsity(layer.lookup) == pytest.approx(0.05, abs=0.01)
        assert float(searcher.drift) > -s0 - 5  # sigmoid(s0 + drift) is near the table's small |v| (~0.01)


def test_the_drift_prunes_ids_never_looked_up_while_the_loss_holds_up_the_looked_up_ones():
    """Half of every field is never looked up; the loss wants to keep every looked-up value. The drift
    prunes the unseen half entirely and the loss holds up the seen half (a pull on looked-up thresholds,
    tried and removed, could not reach the unseen half at all: BENCHMARKS.md, "Drift pull")."""
    # the drift reaches 7.5 logits in 3 epochs (s0 + drift: sigmoid 0.82, above every |v| of this table);
    # a seen row is in most batches of 512 and moves back up to 0.5 per step, 5 per epoch
    layer = _layer(s0=-6.0, threshold_lr=0.5, drift_per_epoch=2.5, pull_doubling_epochs=None)
    searcher: PEPSearcher = layer.searcher
    seen = torch.zeros(N, dtype=torch.bool)
    for offset, field in zip([0, 3, 43], FIELDS, strict=True):
        seen[offset : offset + (field.vocab_size + 1) // 2] = True
    gen = torch.Generator().manual_seed(1)
    for step in range(3 * STEPS_PER_EPOCH):
        ids = torch.stack([torch.randint(0, (f.vocab_size + 1) // 2, (512,), generator=gen) for f in FIELDS], 1)
        (-layer(ids).abs().sum()).backward()  # every looked-up value helps
        searcher.on_step(step, layer.lookup)
    kept = searcher.current_mask(layer.lookup).float().mean(1)
    assert kept[seen].mean() > 0.9
    assert kept[~seen].max() == 0.0


# ---------------------------------------------------------------------- slim export
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("phase", ["search", "retrain"])
def test_slim_export_equals_the_masked_layer_in_the_smaller_storage(granularity, phase, tmp_path):
    layer, initial = _searched_layer(granularity=granularity)
    if phase == "retrain":
        layer.load_state_dict(initial)
        layer.searcher.start_stage(_stage(layer.searcher, "retrain"), layer.lookup)
    ids = _ids(256, seed=3)
    with torch.no_grad():
        expected = layer(ids)
    plan = layer.plan()
    slim = layer.export()
    assert plan.num_bytes == slim.stored_bytes() == min(plan.details["storage_bytes"].values())
    assert set(plan.details["storage_bytes"]) == set(STORAGES) and slim.groups[0].kind == plan.storage
    assert (expected == 0).float().mean() > 0.5  # really pruned
    assert (slim(ids) - expected).abs().max() <= 1e-6
    slim.save(tmp_path)
    from embdim.slim import SlimEmbedding

    assert (SlimEmbedding.load(tmp_path)(ids) - expected).abs().max() <= 1e-6
    nnz = (layer.searcher.current_mask(layer.lookup)).sum(1)
    assert np.array_equal(np.concatenate(plan.row_sizes), nnz.numpy())
    assert sum(plan.dropped_features()) == int((nnz == 0).sum())


def test_a_table_whose_rows_keep_one_of_many_columns_is_stored_in_csr(tmp_path):
    """At d=64 a compact row pays an id byte and an 8-byte bitmap, a CSR row an offset and a column index
    per value: with one value in every row, CSR is the smaller and the plan takes it."""
    from embdim.slim import CsrGroup, SlimEmbedding

    torch.manual_seed(0)
    layer = EmbeddingLayer(FIELDS, 64, method="pep", method_config=FAST_SCHEDULE, init_std=0.01)
    with torch.no_grad():
        _table(layer)[:, 5] = 1.0  # one value per row above the threshold
        layer.searcher.threshold.fill_(0.0)  # sigmoid(0) = 0.5
    plan, slim = layer.plan(), layer.export()
    assert plan.storage == "csr" and isinstance(slim.groups[0], CsrGroup)
    assert plan.num_bytes == slim.stored_bytes() == plan.details["storage_bytes"]["csr"]
    assert plan.details["storage_bytes"]["csr"] < plan.details["storage_bytes"]["compact"]
    ids = _ids()
    with torch.no_grad():
        expected = layer(ids)
        assert torch.equal(slim(ids), expected) and bool((expected[..., 5] == 0.5).all())
        slim.save(tmp_path)
        assert torch.equal(SlimEmbedding.load(tmp_path)(ids), expected)


@pytest.mark.parametrize("model", ["fm", "deepfm", "dlrm", "autoint"])
def test_every_model_exports_slim_logits_equal_to_the_masked_models(model, tmp_path):
    torch.manual_seed(0)
    rec = build_recommender(FIELDS, 2, DIM, model, method="pep", method_config={"targets": [0.7]}, init_std=0.1)
    layer = rec.embedding
    _raise_thresholds(layer, 0.75)
    layer.searcher.record_sparsity(layer.lookup)
    layer.searcher.start_stage(_stage(layer.searcher, "retrain"), layer.lookup)
    rec.eval()
    ids, dense = _ids(128, seed=5), torch.randn(128, 2)
    export_model(rec, tmp_path)
    with torch.no_grad():
        assert (load_model(tmp_path)(ids, dense) - rec(ids, dense)).abs().max() <= 1e-6


# ---------------------------------------------------------------------- budgets and config
@pytest.mark.parametrize("budget", [{"kind": "fraction", "value": 0.2}, {"kind": "params", "value": 900}])
def test_budget_maps_to_a_sparsity_whose_retrained_plan_lands_on_it(budget):
    layer = _layer(targets=[0.5, 0.97], budget=budget)
    searcher: PEPSearcher = layer.searcher
    target = budget_sparsity(Budget(**budget), N, DIM)
    assert searcher.targets == [0.5, target] and searcher.retrain_sparsity == target  # 0.97: beyond the budget
    assert _layer(targets=[], budget=budget).searcher.targets == [target]
    initial = {k: v.clone() for k, v in layer.state_dict().items()}
    _raise_thresholds(layer, min(0.99, target + 0.05))  # overshoot between two measurements
    searcher.record_sparsity(layer.lookup)
    assert searcher.stage_done(_stage(searcher, "search"))
    layer.load_state_dict(initial)
    searcher.start_stage(_stage(searcher, "retrain"), layer.lookup)
    plan = layer.plan()
    assert Budget(**budget).landed(plan, tolerance=0.01)
    assert plan.num_bytes == layer.export().stored_bytes()


def test_search_is_incomplete_and_patience_off_until_the_last_target():
    layer = _layer(targets=[0.5, 0.9])
    searcher: PEPSearcher = layer.searcher
    _raise_thresholds(layer, 0.6)
    searcher.record_sparsity(layer.lookup)
    search, retrain = searcher.stages()
    assert not searcher.stage_done(search)
    assert not search.patience
    assert search.selection == "last" and retrain.selection == "best"
    assert retrain.rewind and not search.rewind


def test_patience_may_stop_the_retraining_only_after_its_minimum_epochs():
    _, retrain = _layer(targets=[0.5], retrain_min_epochs=2).searcher.stages()
    assert retrain.patience and retrain.patience_after_epochs == 2  # the trainer counts (tests/test_train.py)
    assert _layer(retrain_min_epochs=0).searcher.stages()[1].patience_after_epochs == 0


def test_the_drift_rate_is_zero_in_the_warm_up_then_doubles_or_stays_constant():
    layer = _layer(drift_per_epoch=0.5, pull_doubling_epochs=2)
    doubling = layer.searcher
    doubling.steps_per_epoch = 25
    for step in range(100):
        doubling.on_step(step, layer.lookup)
    assert doubling.pull_weight() == pytest.approx(0.5 / 25 * 4)
    constant = _layer(drift_per_epoch=0.5, pull_doubling_epochs=None).searcher
    constant.steps_per_epoch = 25
    assert constant.pull_weight() == pytest.approx(0.5 / 25)
    warm = _layer(pull_start_epochs=2).searcher
    warm.steps_per_epoch = 10
    for step in range(10):
        warm.on_step(step, layer.lookup)
    assert warm.pull_weight() == 0.0 and float(warm.drift) == 0.0  # still training the dense model


@pytest.mark.parametrize("granularity", ["field_dim", "feature_dim"])
def test_the_fused_threshold_trains_like_the_eager_ops(granularity):
    """Compiled (``fused_threshold``) and eager forward and backward agree to float rounding: the table's
    gradient and the thresholds' (dense granularities) or their row-wise update (per-row ones)."""
    ids = _ids()
    runs = {}
    for fused in (True, False):
        layer = _layer(fused_threshold=fused, granularity=granularity, s0=-2.5)
        layer.searcher.search_steps_ = STEPS_PER_EPOCH  # past the warm-up
        layer.searcher.drift.fill_(0.3)
        out = layer(ids)
        loss = (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum()
        loss.backward()
        if fused and layer.searcher._fused is None:
            pytest.skip("torch.compile cannot build kernels on this machine (the fallback test covers it)")
        assert (layer.searcher._fused is not None) == fused
        threshold = layer.searcher.threshold
        moved = threshold.grad if threshold.grad is not None else threshold.detach().clone()
        kept = torch.tensor(float(layer.searcher._count_kept(layer.lookup)))  # the scheduled sparsity count
        runs[fused] = (out, loss, _table(layer).grad, moved, kept)
    assert 0 < runs[True][-1] < N * DIM
    for compiled, eager in zip(runs[True], runs[False], strict=True):
        assert torch.allclose(compiled, eager, rtol=1e-5, atol=1e-7)


def test_the_fused_threshold_falls_back_to_eager_ops_where_it_cannot_compile(monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", no_compiler)
    layer = _layer(fused_threshold=True, s0=-2.5)
    ids = _ids()
    with pytest.warns(UserWarning, match="falls back to eager"):
        out = layer(ids)
    assert layer.searcher._fused is None and not layer.searcher._fused_ok
    whole = soft_threshold(_table(layer), layer.searcher.table_thresholds())
    assert torch.allclose(out, whole[ids + torch.tensor([0, 3, 43])], rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"mode": "faithful"}, "threshold_lr"),
        ({"targets": [0.5, 1.5]}, "targets"),
        ({"targets": []}, "targets"),
        ({"retrain_target": 5}, "retrain_target"),
        ({"budget": {"kind": "bytes", "value": 10}}, "budget"),
        ({"granularity": "row"}, "granularity"),
        ({"threshold_lr": None}, "threshold_lr"),  # rowwise thresholds need their own lr
    ],
)
def test_bad_options_fail_naming_the_key(options, key):
    with pytest.raises(ValueError, match=key):
        _layer(**options)


@pytest.mark.parametrize("granularity", ["feature_dim", "field_dim"])
def test_thresholds_train_at_their_own_learning_rate_whatever_the_model_lr(granularity):
    """Adam's first step moves each parameter by its lr: s by threshold_lr, the table by train.lr."""
    layer = _layer(threshold_lr=0.2, granularity=granularity, s0=-2.5)
    searcher: PEPSearcher = layer.searcher
    rowwise = granularity == "feature_dim"
    cfg = TrainConfig(optimizer="adam", lr=0.01)
    opts = build_optimizers([_table(layer)], [], cfg, own_groups=searcher.optimizer_groups())
    # per-row thresholds: the searcher trains them itself (row-wise), the run's optimizer never sees them
    expected_lrs = [0.01] if rowwise else [0.01, 0.2]
    assert sorted(g["lr"] for o in opts for g in o.param_groups) == expected_lrs
    assert (searcher.threshold_optimizer is not None) == rowwise
    before_s, before_table = searcher.threshold.detach().clone(), _table(layer).detach().clone()
    out = layer(_ids())
    out.square().sum().backward()
    for opt in opts:
        opt.step()
    moved = (searcher.threshold.detach() - before_s).abs()
    assert moved.max() == pytest.approx(0.2, rel=1e-3)
    assert (_table(layer).detach() - before_table).abs().max() <= 0.01 * (1 + 1e-3)
    assert _layer(mode="faithful", threshold_lr=None).searcher.optimizer_groups() == []


def test_bad_option_in_a_run_config_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"method\.threshold_lr"):
        small_config(tmp_path, "method=pep", "method.threshold_lr=-1")


def test_a_search_that_falls_short_completes_its_mask_by_margin_and_says_so():
    layer, initial = _searched_layer()  # reached 0.7 only
    searcher: PEPSearcher = layer.searcher
    searcher.masks_.clear()
    searcher.targets, searcher.retrain_sparsity = [0.7, 0.95], 0.95
    margins = searcher.margins(layer.lookup)
    with pytest.warns(UserWarning, match="below the retrain target"):
        searcher.end_stage(_stage(searcher, "search"), layer.lookup)
    assert sorted(searcher.masks_) == [0.7, 0.95]
    mask = searcher.masks_[0.95]
    assert int(mask.sum()) == round(0.05 * N * DIM)
    assert margins[mask].min() >= margins[~mask].max()  # the kept entries are those furthest above threshold
    assert not (mask & ~searcher.masks_[0.7]).any()  # nested in what the search itself kept
    layer.load_state_dict(initial)
    searcher.start_stage(_stage(searcher, "retrain"), layer.lookup)
    report = searcher.report(layer.lookup)
    assert layer.plan().num_params == int(mask.sum()) and report["final_sparsity"] == pytest.approx(0.95, abs=1e-3)
    assert not report["retrain_target_reached"] and report["retrain_mask_completed_by_margin"]
    state = searcher.state_for_checkpoint()
    fresh = _layer(targets=[0.7, 0.95]).searcher
    fresh.load_checkpoint_state(state)
    assert fresh.completed_by_margin_


def test_a_drift_scheduled_to_start_after_the_search_ends_is_warned_about_and_one_within_it_is_not():
    late = _layer(pull_start_epochs=10).searcher.schedule_warnings(epochs=2)
    assert (
        len(late) == 1
        and "method.pull_start_epochs=10" in late[0]
        and "at most 2 (train.epochs, train.max_steps)" in late[0]
    )
    assert _layer(pull_start_epochs=10).searcher.schedule_warnings(epochs=30) == []
    assert _layer(pull_start_epochs=0.5).searcher.schedule_warnings(epochs=2) == []  # fractions of an epoch
    faithful = {"mode": "faithful", "threshold_lr": None}
    assert _layer(pull_start_epochs=10, **faithful).searcher.schedule_warnings(epochs=2) == []  # no drift


def test_a_step_limit_that_ends_the_search_before_the_drift_starts_is_warned_about_too(tmp_path):
    limited = ["method=pep", "method.fused_threshold=false", "method.pull_start_epochs=1", "train.max_steps=3"]
    said = run_experiment(small_config(tmp_path, "name=limited", *limited, "train.epochs=5"))["warnings"]
    assert any("method.pull_start_epochs=1 " in w for w in said)


def test_a_run_whose_drift_never_starts_says_so_and_that_its_mask_was_completed_in_its_result(tmp_path):
    late = ["name=late", "method=pep", "method.targets=[0.5]", "method.fused_threshold=false", "train.epochs=1"]
    result = run_experiment(small_config(tmp_path, *late, "train.threads=1"))
    assert result["threads"] == 1  # the context of its speed
    said = result["warnings"]
    assert any("method.pull_start_epochs=10" in w for w in said)
    assert any("the search ended at sparsity" in w for w in said)  # the searcher's own warning, kept
    assert result["searcher"]["retrain_mask_completed_by_margin"]


# ---------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_search_then_retrain_end_to_end(tmp_path):
    result = run_experiment(
        small_config(
            tmp_path,
            "name=pep_e2e",
            "method=pep",
            "method.targets=[0.4,0.6]",
            "method.s0=-7",
            "method.threshold_lr=0.5",
            "method.pull_start_epochs=0",
            "embedding.init_std=0.01",
            "train.epochs=4",
        )
    )
    run = tmp_path / "runs" / "pep_e2e"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    search = [x["sparsity"] for x in lines if x["stage"] == "search"]
    assert search[-1] >= 0.6 and all(b >= a - 0.02 for a, b in itertools.pairwise(search))
    assert {x["stage"] for x in lines} == {"search", "retrain"}
    report = result["searcher"]
    assert report["mode"] == "ours" and set(report["targets_reached_at_step"]) == {"0.4", "0.6"}
    assert report["final_sparsity"] == pytest.approx(0.6, abs=1e-4)
    assert "test_auc" in result["stages"]["search"]  # AUC before retraining
    assert result["params_ratio"] == pytest.approx(0.4, abs=1e-4)
    assert result["export_max_abs_logit_diff"] < 1e-6
    # bytes as the exported model stores them, in the smaller of PEP's two layouts
    slim = load_model(run / "model").embedding
    assert result["storage"] == slim.plan.storage in STORAGES and result["embedding_bytes"] == slim.stored_bytes()
    assert result["bytes_ratio"] == result["embedding_bytes"] / result["full_embedding_bytes"]


class KilledInRetrain(Trainer):
    """Raises once, a few steps into the retrain stage (after the masks were saved)."""

    def after_step(self, p):
        if p.stage_index == 1 and p.step == 7:
            raise KeyboardInterrupt("simulated kill")


def test_what_the_search_said_as_it_ended_survives_a_kill_in_retraining(tmp_path):
    late = ["method=pep", "method.targets=[0.5]", "method.fused_threshold=false", "train.epochs=1"]
    reference = run_experiment(small_config(tmp_path, "name=ref", *late))
    cfg = small_config(tmp_path, "name=killed", *late)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, trainer_cls=KilledInRetrain)
    resumed = run_experiment(cfg)
    assert any("the search ended at sparsity" in w for w in resumed["warnings"])
    assert resumed["warnings"] == reference["warnings"]


@pytest.mark.slow
def test_a_run_killed_in_retraining_resumes_with_its_mask_to_the_same_result(tmp_path):
    options = ["method=pep", "method.targets=[0.5]", "method.s0=-7", "dataset.options.rows=3000", "train.epochs=3"]
    reference = run_experiment(small_config(tmp_path, "name=ref", *options))
    cfg = small_config(tmp_path, "name=killed", *options)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, trainer_cls=KilledInRetrain)
    resumed = run_experiment(cfg)
    assert resumed["test_auc"] == reference["test_auc"]
    assert resumed["embedding_params"] == reference["embedding_params"]
    assert resumed["searcher"]["final_sparsity"] == pytest.approx(0.5, abs=1e-3)
    # the search stage ended before the kill: its summary (AUC before retraining) survives the resume
    assert resumed["stages"]["search"] == reference["stages"]["search"]


def test_a_budget_csr_offsets_alone_exceed_is_reachable_and_one_below_any_index_is_not():
    from embdim.budget import Budget, BudgetUnreachable
    from embdim.plugins import SEARCHERS

    fields = [FieldInfo("a", 100), FieldInfo("b", 1000)]
    pep = SEARCHERS.get("pep")
    dim, config = pep.for_budget(fields, 10, pep.Config(), Budget(value=0.2))
    assert dim == 10 and config.budget.value == 0.2
    # CSR's row offsets alone: 4 of 40 bytes per row; compact storage stores nothing for rows that keep nothing
    pep.for_budget(fields, 10, pep.Config(), Budget(value=0.05))
    pep.for_budget(fields, 10, pep.Config(), Budget(value=0.01))
    with pytest.raises(BudgetUnreachable, match="do not hold even one kept value with its index"):
        pep.for_budget(fields, 10, pep.Config(), Budget(kind="bytes", value=10))


#: a realistic vocabulary: 26 fields (as Criteo's) of a few thousand ids each
CRITEO_LIKE = [FieldInfo(f"c{i}", 1000 + 250 * i) for i in range(26)]


def _clustered_thresholds(layer: EmbeddingLayer, rows_kept: float, sparsity: float) -> None:
    """Per-row thresholds (granularity feature) as PEP's pruning leaves them: the first ``rows_kept`` of the
    ids (by frequency) keep most of their values, every other id none; ``sparsity`` overall."""
    searcher: PEPSearcher = layer.searcher
    table = _table(layer).detach().abs()
    kept_rows = torch.rand(searcher.num_rows, generator=torch.Generator().manual_seed(0)) < rows_kept
    cut = torch.quantile(table[kept_rows].flatten(), 1 - (1 - sparsity) / rows_kept)
    with torch.no_grad():
        searcher.threshold.copy_(torch.where(kept_rows, torch.logit(cut), 10.0).unsqueeze(1))


@pytest.mark.parametrize("spread", ["uniform", "by row"])
@pytest.mark.parametrize("fraction", [0.05, 0.02, 0.01])
def test_budgets_of_a_few_percent_of_the_bytes_are_reached_in_compact_storage(fraction, spread):
    """PEP's 97-99 % regime in bytes: the budget becomes a sparsity at which any mask fits, and the retrained
    mask keeps as many values as the budget's bytes hold in the rows they fall into, so the plan lands on the
    budget; kept values spread over the rows (each alone in its row) or gathered in a few rows."""
    dim, budget = 16, Budget(value=fraction)
    pep = PEPSearcher
    granularity = "global" if spread == "uniform" else "feature"
    config = pep.Config(**FAST_SCHEDULE, targets=[], budget=budget, granularity=granularity, fused_threshold=False)
    assert pep.for_budget(CRITEO_LIKE, dim, config, budget) == (dim, config)
    torch.manual_seed(0)
    layer = EmbeddingLayer(CRITEO_LIKE, dim, method="pep", method_config=config.model_dump(), init_std=0.1)
    searcher: PEPSearcher = layer.searcher
    target = searcher.retrain_sparsity
    assert searcher.targets == [target] and 0.96 < target < 0.999
    initial = {k: v.clone() for k, v in layer.state_dict().items()}
    if spread == "uniform":
        _raise_thresholds(layer, target + 0.001)
    else:
        _clustered_thresholds(layer, rows_kept=0.5 * (1 - target) * dim / 4, sparsity=target + 0.001)
    assert searcher.record_sparsity(layer.lookup) >= target and searcher.stage_done(_stage(searcher, "search"))
    layer.load_state_dict(initial)
    searcher.start_stage(_stage(searcher, "retrain"), layer.lookup)
    plan = layer.plan()
    result = plan.summary()
    assert plan.storage == "compact" and budget.landed(plan, tolerance=0.001)
    assert result["bytes_ratio"] <= fraction and result["bytes_ratio"] == pytest.approx(fraction, rel=1e-3)
    assert result["params_ratio"] == pytest.approx(1 - searcher._mask_sparsity()) and result["params_ratio"] < fraction
    # CSR's offset per row alone (4 of a row's 64 bytes) is more than any of these budgets
    assert plan.details["storage_bytes"]["csr"] > searcher.num_rows * 4 > fraction * plan.full_bytes
    assert plan.num_bytes == layer.export().stored_bytes()


def test_the_budget_mask_is_the_longest_prefix_by_margin_that_fits():
    gen = torch.Generator().manual_seed(0)
    margins = torch.randn(300, 8, generator=gen)
    for target in (0.0, 40.0, 500.0, 3000.0):
        mask = budget_mask(margins, target)
        kept = int(mask.sum())
        stored = int(mask.any(1).sum())
        assert kept == 0 or storage_bytes(300, stored, kept, 8) <= target  # an empty table still has its index
        assert bool((margins[mask].min() if kept else torch.inf) >= margins[~mask].max())  # the largest margins
        if kept < margins.numel():  # the next entry by margin would not fit
            grown = mask.clone().flatten()
            grown[torch.argmax(torch.where(mask.flatten(), -torch.inf, margins.flatten()))] = True
            grown = grown.view_as(mask)
            assert storage_bytes(300, int(grown.any(1).sum()), kept + 1, 8) > target
