"""The contract every registered searcher keeps (parametrised over the registry)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embdim import EmbeddingLayer, FieldInfo, list_searchers
from embdim.searchers.mde import mde_dims
from embdim.train.run import run_experiment
from embdim.train.trainer import Trainer
from test_train import small_config

FIELDS = [
    FieldInfo("small", 3, np.array([0, 50, 20])),
    FieldInfo("mid", 40, np.r_[0, np.arange(39, 0, -1)]),
    FieldInfo("big", 500, np.r_[3, np.arange(499, 0, -1)]),
]
DIM = 8


def _ids(batch: int = 64, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, f.vocab_size, (batch,), generator=gen) for f in FIELDS], 1)


@pytest.fixture(params=list_searchers())
def layer(request) -> EmbeddingLayer:
    torch.manual_seed(0)
    return EmbeddingLayer(FIELDS, DIM, method=request.param)


def test_output_shape_and_gradient_reaches_tables(layer):
    ids = _ids()
    out = layer(ids)
    assert out.shape == (64, len(FIELDS), DIM)
    out.square().sum().backward()
    grads = [p.grad for p in layer.lookup.parameters()]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_slim_export_predicts_like_the_layer(layer, tmp_path):
    ids = _ids(seed=1)
    with torch.no_grad():
        expected = layer(ids)
    slim = layer.export()
    assert torch.allclose(slim(ids), expected, atol=1e-6)
    slim.save(tmp_path)
    from embdim.slim import SlimEmbedding

    assert torch.allclose(SlimEmbedding.load(tmp_path)(ids), expected, atol=1e-6)


def test_plan_bytes_are_the_slim_storage_bytes(layer):
    plan = layer.plan()
    assert plan.num_bytes == layer.export().stored_bytes()
    assert plan.full_params == sum(f.vocab_size for f in FIELDS) * DIM
    assert plan.num_params <= plan.full_params


def test_unknown_option_is_rejected_by_name():
    with pytest.raises(Exception, match="no_such_option"):
        EmbeddingLayer(FIELDS, DIM, method="full", method_config={"no_such_option": 1})


def test_mde_power_law_gives_fewer_dims_to_larger_vocabularies():
    dims = mde_dims([3, 40, 500], dim=16, alpha=0.3, base_dim=16, min_dim=1, pow2=False)
    assert dims[0] == 16 and dims[0] > dims[1] > dims[2] >= 1
    assert mde_dims([3, 40, 500], 16, 0.0, 16, 1, False) == [16, 16, 16]


#: The strong recipe's training behaviours, all on at once (plateau schedule, clipping, embedding L2).
RECIPE = [
    "train.lr_schedule={kind: plateau, patience: 1}",
    "train.patience=3",
    "train.clip_grad_norm=10",
    "train.embedding_weight_decay=0.01",
    "train.max_steps=12",
    "train.eval_every_steps=3",
]


@pytest.mark.parametrize("method", list_searchers())
def test_every_method_trains_all_its_stages_under_the_recipe(method, tmp_path):
    result = run_experiment(small_config(tmp_path, f"name={method}", f"method={method}", *RECIPE))
    assert np.isfinite([result["test_auc"], result["test_logloss"], result["valid_auc"]]).all()
    lines = [json.loads(x) for x in (tmp_path / "runs" / method / "metrics.jsonl").read_text().splitlines()]
    assert {line["stage"] for line in lines} == set(result["stages"])
    assert all(0 < line["lr"] <= 1e-3 for line in lines)


class _KilledInStage(Trainer):
    """Raises (like a kill) at ``step`` of stage ``stage``; everything on disk is what a kill -9 leaves."""

    stage = 0
    step = 7

    def after_step(self, p):
        if p.stage_index == self.stage and p.step == self.step:
            raise KeyboardInterrupt("simulated kill")


@pytest.mark.parametrize("method", list_searchers())
def test_every_method_resumes_bit_identically_after_a_kill_in_any_stage(method, tmp_path):
    _check_resumes_bit_identically(method, tmp_path)


#: Table updates whose cost follows the batch: sparse gradients (torch), fused Adagrad (TorchRec).
TABLE_UPDATES = {
    "sparse": ["embedding.sparse=true", "embedding.sparse_first_order=true", "train.embedding_decay=looked_up"],
    "fused": ["embedding.backend=torchrec", "train.optimizer=adagrad", "train.embedding_decay=looked_up"],
}


@pytest.mark.parametrize("updates", list(TABLE_UPDATES))
@pytest.mark.parametrize("method", list_searchers())
def test_every_method_trains_with_sparse_and_fused_table_updates(method, updates, tmp_path):
    if updates == "fused":
        pytest.importorskip("torchrec")
    cfg = small_config(tmp_path, f"name={method}", f"method={method}", *RECIPE, *TABLE_UPDATES[updates])
    result = run_experiment(cfg)
    assert np.isfinite([result["test_auc"], result["test_logloss"], result["valid_auc"]]).all()
    assert result["test_auc"] > 0.55  # it learned (the tiny set's planted teacher; chance is 0.5)


@pytest.mark.slow
@pytest.mark.parametrize("updates", list(TABLE_UPDATES))
@pytest.mark.parametrize("method", list_searchers())
def test_every_method_resumes_bit_identically_with_sparse_and_fused_table_updates(method, updates, tmp_path):
    if updates == "fused":
        pytest.importorskip("torchrec")
    _check_resumes_bit_identically(method, tmp_path, *TABLE_UPDATES[updates])


def _check_resumes_bit_identically(method, tmp_path, *overrides):
    """A kill in each stage, then a rerun of the same config, ends exactly where an unbroken run does."""
    reference = run_experiment(small_config(tmp_path, "name=ref", f"method={method}", *RECIPE, *overrides))
    stages = list(reference["stages"])
    for index in range(len(stages)):
        cfg = small_config(tmp_path, f"name=killed{index}", f"method={method}", *RECIPE, *overrides)
        killer = type("Killer", (_KilledInStage,), {"stage": index})
        with pytest.raises(KeyboardInterrupt):
            run_experiment(cfg, trainer_cls=killer)
        resumed = run_experiment(cfg)
        for key in ("test_auc", "test_logloss", "valid_auc", "valid_logloss", "embedding_bytes"):
            assert resumed[key] == reference[key], (stages[index], key)
        lines = [
            {k: v for k, v in json.loads(x).items() if k != "samples_per_second"}
            for run in ("ref", f"killed{index}")
            for x in (tmp_path / "runs" / run / "metrics.jsonl").read_text().splitlines()
        ]
        half = len(lines) // 2
        assert lines[:half] == lines[half:], stages[index]


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (train.device=cuda)")


@CUDA
@pytest.mark.parametrize("method", list_searchers())
def test_every_method_trains_on_cuda_like_on_the_cpu_and_exports_a_bundle_for_the_cpu(method, tmp_path):
    on_gpu = run_experiment(small_config(tmp_path, "name=gpu", f"method={method}", *RECIPE, "train.device=cuda"))
    on_cpu = run_experiment(small_config(tmp_path, "name=cpu", f"method={method}", *RECIPE))
    assert np.isfinite([on_gpu["test_auc"], on_gpu["test_logloss"]]).all()
    # the same steps in another summation order: close, not identical
    assert on_gpu["test_logloss"] == pytest.approx(on_cpu["test_logloss"], abs=0.01)
    assert on_gpu["embedding_bytes"] == on_cpu["embedding_bytes"] or method in {"pep", "dml", "amtl"}
    assert on_gpu["export_max_abs_logit_diff"] < 1e-5  # the bundle, loaded on the CPU, scores as trained


@CUDA
@pytest.mark.parametrize("method", list_searchers())
def test_every_method_resumes_on_cuda_after_a_kill(method, tmp_path):
    reference = run_experiment(small_config(tmp_path, "name=ref", f"method={method}", *RECIPE, "train.device=cuda"))
    cfg = small_config(tmp_path, "name=killed", f"method={method}", *RECIPE, "train.device=cuda")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, trainer_cls=_KilledInStage)
    resumed = run_experiment(cfg)
    # CUDA's scatter-adds (embedding backward) sum in no fixed order: equal up to float rounding
    for key in ("test_auc", "test_logloss", "valid_logloss"):
        assert resumed[key] == pytest.approx(reference[key], abs=1e-4), key


@pytest.mark.parametrize("method", list_searchers())
def test_every_method_takes_a_budget_in_a_run_as_the_bench_resolves_it(method, tmp_path):
    from embdim.budget import Budget, BudgetUnreachable
    from embdim.config import resolve_budget
    from embdim.errors import ConfigError
    from embdim.plugins import SEARCHERS

    cfg = small_config(tmp_path, f"method={method}", "method.budget=0.5")
    cls = SEARCHERS.get(method)
    plain = small_config(tmp_path, f"method={method}").method_options()
    try:
        dim, options = cls.for_budget(FIELDS, DIM, plain, Budget(value=0.5))
    except BudgetUnreachable as err:
        with pytest.raises(ConfigError, match=f"method.budget: {err}"):
            resolve_budget(cfg, FIELDS)
        return
    resolved = resolve_budget(cfg, FIELDS)
    assert resolved.embedding.dim == dim and resolved.method_options() == options
    assert resolve_budget(resolved, FIELDS) == resolved  # resolving again changes nothing
    assert (options.budget is not None) == cls.steers_to_budget  # width and scale methods spend it


@pytest.mark.parametrize("method", list_searchers())
def test_a_method_refuses_a_budget_below_its_smallest_plan_before_training_and_takes_one_at_it(method):
    from embdim.budget import LANDING_TOLERANCE, Budget, BudgetUnreachable, uniform_bytes
    from embdim.plugins import SEARCHERS

    cls = SEARCHERS.get(method)
    config = cls.Config()
    smallest = cls.smallest_plan(FIELDS, DIM, config)
    if method in ("dml", "amtl"):  # each keeps at least one dimension of a field (dml) or of a value (amtl)
        assert smallest is not None
    if smallest is None:
        return  # no floor above zero: nothing to refuse on that ground
    plan, what = smallest
    assert cls.steers_to_budget and plan.num_bytes > 0 and what
    # the floor is a plan the method stores: its widths within d, its bytes below the uniform model's
    assert max(plan.field_dims) <= DIM and plan.num_bytes < uniform_bytes(FIELDS, DIM)
    floor = plan.num_bytes / uniform_bytes(FIELDS, DIM)
    below = Budget(value=floor / (1 + LANDING_TOLERANCE) * 0.99)
    with pytest.raises(BudgetUnreachable, match=rf"{method}: its smallest plan \({what}\) takes {plan.num_bytes:,} "):
        cls.for_budget(FIELDS, DIM, config, below)
    _, options = cls.for_budget(FIELDS, DIM, config, Budget(value=floor))
    assert options.budget == Budget(value=floor)


def test_a_run_aimed_at_a_budget_by_width_reports_bytes_against_the_reference_width(tmp_path):
    result = run_experiment(small_config(tmp_path, "name=half", "method=full", "method.budget=0.5"))
    assert (result["dim"], result["reference_dim"]) == (4, 8)
    assert result["bytes_ratio"] == pytest.approx(0.5)
    assert result["full_embedding_bytes"] == 2 * result["embedding_bytes"]
