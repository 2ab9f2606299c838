"""The training recipe: learning-rate schedules, gradient clipping, the embedding L2 on every table."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from embdim import FieldInfo
from embdim.config import ConfigError, LRScheduleConfig, TrainConfig
from embdim.lookup import distinct_row_l2
from embdim.recommender import build_recommender
from embdim.train.optim import clip_gradients, recommender_optimizers
from embdim.train.run import prepare_dataset, run_experiment
from embdim.train.trainer import Trainer, training_step
from test_train import small_config

FIELDS = [FieldInfo("a", 20), FieldInfo("b", 300)]
DIM = 4


def _metrics(run_dir) -> list[dict]:
    """metrics.jsonl without its timings (they differ between runs)."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "samples_per_second"} for line in lines]


# ---------------------------------------------------------------------- schedules
def _plateau_run(tmp_path, name: str, *extra: str):
    # a high lr and frequent evaluations: validation stalls within the run
    cfg = small_config(
        tmp_path,
        f"name={name}",
        "train.lr=0.02",
        "train.epochs=4",
        "train.eval_every_steps=6",
        "train.patience=4",
        "train.lr_schedule={kind: plateau, factor: 0.5, patience: 1, min_lr: 0.0001}",
        *extra,
    )
    return cfg


def test_the_plateau_schedule_drops_the_rate_exactly_at_each_evaluation_without_improvement(tmp_path):
    cfg = _plateau_run(tmp_path, "plateau")
    trainer = Trainer(cfg, prepare_dataset(cfg, progress=False), tmp_path / "p")
    (tmp_path / "p").mkdir()
    trainer.fit()
    lines = _metrics(tmp_path / "p")
    stalls = np.cumsum([not line["best"] for line in lines])
    assert stalls[-1] >= 1, "validation never stalled: the test would not exercise a drop"
    for line, drops in zip(lines, stalls, strict=True):
        assert line["lr"] == pytest.approx(max(0.02 * 0.5**drops, 0.0001))
    # the optimizer really runs at the logged rate: every group is scaled alike
    last = lines[-1]["lr"] / 0.02
    for opt in trainer.optimizers:
        for group in opt.param_groups:
            assert group["lr"] == pytest.approx(max(group["base_lr"] * last, min(0.0001, group["base_lr"])))
    # early stopping counts evaluations since the last improvement, drops or not: the run ends at the
    # first streak of train.patience (4) of them, or at the epoch limit
    streak, streaks = 0, []
    for line in lines:
        streak = 0 if line["best"] else streak + 1
        streaks.append(streak)
    assert max(streaks[:-1]) < 4 and (streaks[-1] == 4 or lines[-1]["epoch"] == 3)


class KilledAfterADrop(Trainer):
    def after_step(self, p):
        if p.lr_drops >= 1 and p.evals_since_drop == 0 and p.batch == 3:
            raise KeyboardInterrupt("simulated kill")


def test_a_run_killed_mid_schedule_resumes_bit_identically(tmp_path):
    reference = run_experiment(_plateau_run(tmp_path, "ref"))
    cfg = _plateau_run(tmp_path, "killed")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, trainer_cls=KilledAfterADrop)
    resumed = run_experiment(cfg)
    assert resumed["test_auc"] == reference["test_auc"] and resumed["test_logloss"] == reference["test_logloss"]
    assert _metrics(tmp_path / "runs" / "killed") == _metrics(tmp_path / "runs" / "ref")


def test_cosine_and_step_schedules_follow_their_formulas():
    cosine = LRScheduleConfig(kind="cosine")
    assert cosine.scale(0, 0, 10, 100) == 1.0
    assert cosine.scale(50, 0, 10, 100) == pytest.approx(0.5)
    assert cosine.scale(100, 0, 10, 100) == pytest.approx(0.0, abs=1e-12)
    step = LRScheduleConfig(kind="step", factor=0.5, step_epochs=2)
    assert [step.scale(s, 0, 10, 100) for s in (0, 19, 20, 45)] == [1.0, 1.0, 0.5, 0.25]
    assert LRScheduleConfig(kind="plateau", factor=0.1).scale(7, 2, 10, 100) == pytest.approx(0.01)
    assert LRScheduleConfig.model_validate("plateau").kind == "plateau"  # train.lr_schedule=plateau


def test_the_plateau_needs_a_patience_below_the_stopping_patience(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.lr_schedule\.patience=2 must be below train\.patience=2"):
        small_config(tmp_path, "train.lr_schedule={kind: plateau, patience: 2}", "train.patience=2")


# ---------------------------------------------------------------------- clipping
@pytest.mark.parametrize("sparse", [False, True])
def test_clipping_bounds_the_global_norm_and_keeps_the_direction(sparse):
    torch.manual_seed(0)
    rec = build_recommender(FIELDS, 0, DIM, "deepfm", {"hidden": [8]}, sparse=sparse, sparse_first_order=sparse)
    ids = torch.stack([torch.randint(0, f.vocab_size, (64,)) for f in FIELDS], 1)
    (1e4 * rec(ids).square().sum()).backward()
    params = [p for p in rec.parameters() if p.grad is not None]
    before = [p.grad.to_dense().clone() for p in params]
    norm = clip_gradients(params, 1.0)
    after = [p.grad.to_dense() for p in params]
    expected = math.sqrt(sum(float(g.square().sum()) for g in before))
    assert norm == pytest.approx(expected, rel=1e-5) and norm > 1.0
    assert math.sqrt(sum(float(g.square().sum()) for g in after)) == pytest.approx(1.0, rel=1e-5)
    for b, a in zip(before, after, strict=True):
        assert torch.allclose(a, b / norm, rtol=1e-4, atol=1e-12)
    small = [g.clone() for g in after]
    assert clip_gradients(params, 10.0) == pytest.approx(1.0, rel=1e-5)  # under the bound: untouched
    assert all(torch.equal(p.grad.to_dense(), g) for p, g in zip(params, small, strict=True))


# ---------------------------------------------------------------------- embedding L2
def _recommender_and_batch():
    torch.manual_seed(0)
    rec = build_recommender(FIELDS, 2, DIM, "deepfm", {"hidden": [8]})
    with torch.no_grad():  # the first-order table starts at zero: give the decay something to shrink
        rec.model.linear.weight.weight.normal_()
    ids = torch.stack([torch.tensor([0, 0, 3, 7]), torch.tensor([5, 5, 5, 9])], 1)  # repeated rows
    return rec, ids, torch.randn(4, 2)


def _step_without_task_gradient(rec, cfg, ids, dense):
    """One SGD step at lr 1 whose task loss has no gradient: every change is the L2's."""
    opts = recommender_optimizers(rec, cfg, rec.embedding.lookup)
    before = {k: v.detach().clone() for k, v in rec.state_dict().items()}
    looked_up_l2 = cfg.embedding_weight_decay if cfg.embedding_decay == "looked_up" else 0.0
    logits, penalty = rec.training_forward(ids, dense, looked_up_l2)
    loss = 0.0 * logits.sum() + (penalty if penalty is not None else 0.0)
    for o in opts:
        o.zero_grad()
    loss.backward()
    for o in opts:
        o.step()
    return before, rec.state_dict()


@pytest.mark.parametrize("form", ["optimizer", "looked_up"])
def test_every_table_gets_the_embedding_l2_and_the_mlp_does_not(form):
    rec, ids, dense = _recommender_and_batch()
    cfg = TrainConfig(optimizer="sgd", lr=1.0, embedding_weight_decay=0.1, embedding_decay=form)
    before, after = _step_without_task_gradient(rec, cfg, ids, dense)
    table_keys = [
        "embedding.lookup.tables.all.weight",
        "model.linear.weight.weight",  # first-order
        "model.linear.dense.weight",  # the dense features' first-order weights
        "model.dense_fields.weight",  # the dense features' vectors
    ]
    rows = torch.zeros(sum(f.vocab_size for f in FIELDS), dtype=torch.bool)
    rows[(ids + torch.tensor([0, FIELDS[0].vocab_size])).flatten()] = True  # looked-up rows (each counts once)
    per_row = {"embedding.lookup.tables.all.weight", "model.linear.weight.weight"}  # the dense vectors: always read
    for key in table_keys:
        shrunk = before[key] * 0.9  # w - lr * lambda * w
        if form == "looked_up" and key in per_row:
            shrunk = torch.where(rows.unsqueeze(1), shrunk, before[key])
        assert torch.allclose(after[key], shrunk, atol=1e-7), key
    for key, value in after.items():
        if key not in table_keys and value.is_floating_point():
            assert torch.equal(value, before[key]), key  # MLP, biases: no decay


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_first_order_table_is_gathered_once_per_step_with_the_looked_up_l2(precision):
    # the L2 comes from the forward's own gather: a sparse table gets one gradient, not two to be added
    rec, ids, dense = _recommender_and_batch()
    rec.precision = precision
    table = rec.model.linear.weight
    table.sparse = True
    gathers = []
    table.register_forward_hook(lambda *_: gathers.append(1))
    _, penalty = rec.training_forward(ids, dense, looked_up_l2=0.1)
    assert len(gathers) == 1
    offset_ids = ids + torch.tensor([0, FIELDS[0].vocab_size])
    w = table.weight.detach()
    distinct = torch.unique(offset_ids)
    raw = rec.embedding.lookup.tables["all"].weight.detach()
    expected = 0.05 * (
        raw[distinct].square().sum()
        + w[distinct].square().sum()
        + rec.model.linear.dense.weight.detach().square().sum()
        + rec.model.dense_fields.weight.detach().square().sum()
    )
    assert penalty.dtype == torch.float32
    torch.testing.assert_close(penalty, expected)
    penalty.backward()
    grad = table.weight.grad
    assert grad.is_sparse
    torch.testing.assert_close(grad.to_dense()[distinct], 0.1 * w[distinct])  # each distinct row once
    rec.model.linear.weight.weight.grad = None
    rec(ids, dense)  # outside training_forward nothing is recorded
    assert all(m._l2_terms is None for m in rec.feature_tables())


def test_the_distinct_row_l2s_written_out_gradient_is_autograds():
    rows = torch.tensor([[0, 3], [3, 7], [0, 0]])  # row 0 read three times, row 3 twice
    values = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: distinct_row_l2(rows, v), (values,))
    expected = sum(values[i, j].square().sum() / (rows == rows[i, j]).sum() for i in range(3) for j in range(2))
    torch.testing.assert_close(distinct_row_l2(rows, values), expected)


def test_decay_of_every_row_needs_dense_table_gradients(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.embedding_decay=looked_up"):
        small_config(tmp_path, "embedding.sparse=true", "train.embedding_weight_decay=0.01")
    with pytest.raises(ConfigError, match=r"train\.embedding_decay=looked_up"):
        small_config(
            tmp_path, "embedding.backend=torchrec", "train.optimizer=adagrad", "train.embedding_weight_decay=0.01"
        )
    small_config(
        tmp_path, "embedding.sparse=true", "train.embedding_weight_decay=0.01", "train.embedding_decay=looked_up"
    )


def test_the_looked_up_l2_reaches_fused_tables_through_their_backward():
    pytest.importorskip("torchrec")
    torch.manual_seed(0)
    rec = build_recommender(FIELDS, 0, DIM, "fm", backend="torchrec")
    cfg = TrainConfig(optimizer="sgd", lr=1.0, embedding_weight_decay=0.1, embedding_decay="looked_up")
    ids = torch.stack([torch.tensor([0, 0, 3]), torch.tensor([5, 5, 9])], 1)
    lookup = rec.embedding.lookup
    opts = recommender_optimizers(rec, cfg, lookup)
    before = lookup.table_weight("all").detach().clone()
    logits, penalty = rec.training_forward(ids, None, cfg.embedding_weight_decay)
    (0.0 * logits.sum() + penalty).backward()  # the fused kernel applies the step here
    for o in opts:
        o.step()
    rows = [0, 3, 20 + 5, 20 + 9]
    expected = before.clone()
    expected[rows] *= 0.9
    assert torch.allclose(lookup.table_weight("all").detach(), expected, atol=1e-7)


def test_training_step_clips_before_the_update():
    rec, ids, dense = _recommender_and_batch()
    cfg = TrainConfig(optimizer="sgd", lr=1.0)
    opts = recommender_optimizers(rec, cfg)
    before = [p.detach().clone() for p in rec.parameters()]
    training_step(rec, opts, ids, dense, torch.ones(4), 0, clip_grad_norm=1e-3)
    moved = math.sqrt(
        sum(float((p.detach() - b).square().sum()) for p, b in zip(rec.parameters(), before, strict=True))
    )
    assert moved == pytest.approx(1e-3, rel=1e-3)  # SGD at lr 1 moves by the clipped gradient
