"""DML (Dimension Mask Layer): prefix masks, gradients, budget controller, cut equivalence, models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from conftest import TINY_SYNTHETIC
from embdim import EmbeddingLayer, FieldInfo
from embdim.config import compose, validate
from embdim.recommender import build_recommender, export_model, load_model
from embdim.report.field_sizes import plot_field_sizes
from embdim.searchers.dml import DMLSearcher
from embdim.train.run import run_experiment
from embdim.train.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FIELDS = [FieldInfo("small", 3), FieldInfo("mid", 40), FieldInfo("big", 500), FieldInfo("huge", 2000)]
DIM = 8


def _ids(batch: int = 64, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, f.vocab_size, (batch,), generator=gen) for f in FIELDS], 1)


def _layer(**options) -> EmbeddingLayer:
    torch.manual_seed(0)
    return EmbeddingLayer(FIELDS, DIM, method="dml", method_config=options)


def _set_lengths(searcher: DMLSearcher, lengths: list[float]) -> None:
    """Set theta so that N_f = lengths[f] (per-field lengths)."""
    share = (torch.tensor(lengths) - 1.0) / (DIM - 1)
    with torch.no_grad():
        searcher.theta.copy_(torch.logit(share) / searcher.config.length_lr_scale)


def test_initial_lengths_keep_every_dimension():
    layer = _layer()
    ids = _ids()
    assert torch.allclose(layer.searcher.lengths(), torch.full((len(FIELDS),), DIM - 0.25))
    assert torch.equal(layer(ids), layer.lookup(ids).stacked())
    assert layer.plan().field_dims == [DIM] * len(FIELDS)


@pytest.mark.parametrize("hard", [True, False])
def test_mask_is_a_monotone_prefix_of_the_rounded_length(hard):
    layer = _layer(hard_mask=hard)
    searcher = layer.searcher
    lengths = [1.2, 3.49, 3.51, 7.9]
    _set_lengths(searcher, lengths)
    mask = searcher.mask().detach()
    assert mask.shape == (len(FIELDS), DIM)
    assert (mask[:, 1:] <= mask[:, :-1] + 1e-7).all(), "mask must not increase along the dimensions"
    assert searcher.rounded_lengths() == [1, 3, 4, 8]
    if hard:
        expected = (torch.arange(1, DIM + 1) <= torch.tensor([1, 3, 4, 8]).unsqueeze(1)).float()
        assert torch.equal(mask, expected)
    else:
        assert ((mask > 0) & (mask < 1)).all()
        assert torch.equal((mask >= 0.5).sum(1), torch.tensor([1, 3, 4, 8]))


def test_gradient_reaches_every_length_through_the_hard_mask():
    layer = _layer()
    _set_lengths(layer.searcher, [2.5, 4.0, 5.5, 6.2])
    out = layer(_ids())
    (out * torch.randn_like(out)).sum().backward()
    grad = layer.searcher.theta.grad
    assert grad is not None and (grad.abs() > 0).all()


@pytest.mark.parametrize("weights", ["memory", "dims"])
def test_penalty_is_lambda_times_the_weighted_kept_share(weights):
    layer = _layer(penalty=0.3, penalty_weights=weights)
    lengths = [2.0, 3.0, 4.0, 5.0]
    _set_lengths(layer.searcher, lengths)
    n = np.array([f.vocab_size for f in FIELDS], dtype=float)
    w = n / n.sum() if weights == "memory" else np.full(len(FIELDS), 1 / len(FIELDS))
    expected = 0.3 * float((w * np.array(lengths)).sum()) / DIM
    penalty = layer.embed(_ids()).penalty
    assert float(penalty.detach()) == pytest.approx(expected, rel=1e-5)
    penalty.backward()
    assert (layer.searcher.theta.grad > 0).all()  # the penalty pulls every length down


def test_cut_and_slim_export_predict_exactly_like_the_masked_layer(tmp_path):
    layer = _layer()
    _set_lengths(layer.searcher, [1.4, 3.6, 5.2, 2.7])
    ids = _ids(seed=3)
    with torch.no_grad():
        before = layer(ids)
    assert layer.searcher.cut() == [1, 4, 5, 3]
    with torch.no_grad():
        after = layer(ids)
    assert torch.equal(before, after)
    assert layer.embed(ids).penalty is None  # lengths are frozen after the cut
    slim = layer.export()
    assert torch.allclose(slim(ids), before, atol=1e-6)
    plan = layer.plan()
    assert plan.field_dims == [1, 4, 5, 3]
    assert plan.num_bytes == slim.stored_bytes() == 4 * (3 * 1 + 40 * 4 + 500 * 5 + 2000 * 3)
    slim.save(tmp_path)
    from embdim.slim import SlimEmbedding

    assert torch.allclose(SlimEmbedding.load(tmp_path)(ids), before, atol=1e-6)


def test_lengths_per_table_are_shared_and_bad_names_are_named():
    layer = _layer(length_per="table", tables=[["mid", "huge"]])
    assert layer.searcher.theta.shape == (3,)  # {mid, huge}, small, big
    _set_group = layer.searcher.group_of_field.tolist()
    assert _set_group[1] == _set_group[3] and len(set(_set_group)) == 3
    assert _layer(length_per="table").searcher.theta.shape == (1,)
    with pytest.raises(ValueError, match="tables: unknown field 'nope'"):
        _layer(length_per="table", tables=[["nope"]])
    with pytest.raises(Exception, match="tables"):
        _layer(tables=[["mid"]])  # tables without length_per=table


def test_budget_repair_lands_on_the_target_when_rounding_misses():
    layer = _layer(budget={"kind": "fraction", "value": 0.5})
    _set_lengths(layer.searcher, [8.0, 8.0, 7.6, 7.6])  # far above half of the bytes
    widths = layer.searcher.cut()
    plan = layer.plan()
    assert plan.field_dims == widths
    assert abs(plan.num_bytes / plan.full_bytes - 0.5) <= 0.05
    assert layer.searcher.config.budget.landed(plan)


@pytest.mark.parametrize("model", ["deepfm", "autoint"])
def test_compacted_mlp_input_gives_the_same_logits_and_survives_export(model, tmp_path):
    fields = FIELDS
    torch.manual_seed(0)
    rec = build_recommender(fields, 2, DIM, model, {"hidden": [16]}, "dml", {})
    _set_lengths(rec.embedding.searcher, [1.4, 3.6, 5.2, 2.7])
    assert rec.embedding.searcher.model_input_widths() is None  # nothing to compact before the cut
    rec.embedding.searcher.cut()
    assert rec.embedding.searcher.model_input_widths() == [1, 4, 5, 3]
    rec.eval()
    ids, dense = _ids(seed=5), torch.randn(64, 2)
    with torch.no_grad():
        expected = rec(ids, dense)
    first = rec.model.mlp if model == "deepfm" else rec.model.dnn
    in_before = first.in_dim
    rec.model.compact_inputs(rec.embedding.searcher.model_input_widths())
    assert first.in_dim == in_before - DIM * len(fields) + sum([1, 4, 5, 3])
    with torch.no_grad():
        assert torch.allclose(rec(ids, dense), expected, atol=1e-6)
    export_model(rec, tmp_path)
    assert json.loads((tmp_path / "model.json").read_text())["model_config"]["input_field_widths"] == [1, 4, 5, 3]
    with torch.no_grad():
        assert torch.allclose(load_model(tmp_path)(ids, dense), expected, atol=1e-6)
    with pytest.raises(ValueError, match="already compacted"):
        rec.model.compact_inputs([1, 1, 1, 1])


def test_compaction_can_be_switched_off():
    layer = _layer(compact_mlp_input=False)
    layer.searcher.cut()
    assert layer.searcher.model_input_widths() is None


def test_models_without_a_concatenated_mlp_refuse_to_compact():
    rec = build_recommender(FIELDS, 0, DIM, "fm", None, "dml", {})
    with pytest.raises(NotImplementedError, match="FM"):
        rec.model.compact_inputs([1, 1, 1, 1])


def test_plot_of_field_sizes(tmp_path):
    layer = _layer()
    _set_lengths(layer.searcher, [1.4, 3.6, 5.2, 2.7])
    out = plot_field_sizes(layer.plan(), FIELDS, tmp_path / "sizes.png")
    assert out.exists() and out.stat().st_size > 1000
    with pytest.raises(ValueError, match="same fields"):
        plot_field_sizes(layer.plan(), FIELDS[::-1], tmp_path / "x.png")


# ---------------------------------------------------------------------- end to end on synthetic data
@pytest.fixture(scope="module")
def cache_root(tmp_path_factory) -> Path:
    """One prepared-data cache for the module's runs (the synthetic sets are prepared once each)."""
    return tmp_path_factory.mktemp("cache")


def small_config(tmp_path: Path, *overrides: str, cache: Path | None = None):
    base = [
        f"run_root={tmp_path / 'runs'}",
        f"cache_root={cache or tmp_path / 'cache'}",
        *TINY_SYNTHETIC,
        "model=deepfm",
        "embedding.dim=8",
        "train.batch_size=256",
        "train.epochs=3",
        "train.progress=false",
        "train.threads=1",
        "train.checkpoint_every_steps=5",
        "train.eval_every_steps=10",
        "method=dml",
        "method.anneal_steps=20",
    ]
    return validate(compose(CONFIGS / "experiments" / "quickstart.yaml", [*base, *overrides]))


SMALL_MODELS = {  # model -> overrides that keep it small
    "fm": [],
    "deepfm": ["model.hidden=[32,32]"],
    "dlrm": ["model.top_hidden=[32]"],
    "autoint": ["model.hidden=[32]", "model.attention_layers=1"],
}


@pytest.mark.parametrize("model", list(SMALL_MODELS))
def test_search_cut_and_finetune_with_every_model(tmp_path, cache_root, model):
    cfg = small_config(
        tmp_path,
        f"name={model}",
        f"model={model}",
        *SMALL_MODELS[model],
        "train.epochs=2",
        "method.max_search_steps=20",
        "method.finetune_max_steps=10",
        "method.penalty=2.0",
        "method.length_lr_scale=50",
        cache=cache_root,
    )
    result = run_experiment(cfg)
    assert result["export_max_abs_logit_diff"] < 1e-6
    stages = result["stages"]
    # the hard mask makes the searched model the cut one: AUC right after the cut equals the search's last AUC
    assert stages["finetune"]["valid_auc_at_start"] == pytest.approx(stages["search"]["valid_auc"], abs=1e-12)
    assert "test_auc" in stages["search"]
    report = result["searcher"]
    assert report["cut"] and report["search_steps"] == 20 and report["finetune_steps"] == 10
    assert result["params_ratio"] < 1.0  # a strong penalty shrank something


def test_budget_controller_lands_within_ten_percent(tmp_path, cache_root):
    cfg = small_config(
        tmp_path,
        "name=budget",
        *SMALL_MODELS["deepfm"],
        "method.budget={kind: fraction, value: 0.4}",
        "method.length_lr_scale=30",
        "method.finetune_max_steps=0",
        "train.epochs=10",
        cache=cache_root,
    )
    result = run_experiment(cfg)
    assert abs(result["bytes_ratio"] - 0.4) <= 0.1 * 0.4
    assert result["searcher"]["landed"] and result["searcher"]["budget_repair_moves"] == 0
    assert result["export_max_abs_logit_diff"] < 1e-6


def test_a_retrain_from_the_initial_weights_keeps_the_searched_widths(tmp_path, cache_root):
    common = [*SMALL_MODELS["deepfm"], "train.epochs=2", "method.max_search_steps=20", "method.finetune_max_steps=10"]
    common += ["method.penalty=2.0", "method.length_lr_scale=50"]
    search = run_experiment(small_config(tmp_path, "name=search", *common, cache=cache_root))
    initial = run_experiment(
        small_config(tmp_path, "name=initial", *common, "method.finetune_from=initial", cache=cache_root)
    )
    # the same search (same seed), so the same cut; the fine-tunes start from different weights
    assert initial["field_dims"] == search["field_dims"] and initial["params_ratio"] < 1.0
    assert initial["stages"]["search"]["valid_auc"] == search["stages"]["search"]["valid_auc"]
    start = initial["stages"]["finetune"]["valid_auc_at_start"]
    assert start != pytest.approx(search["stages"]["finetune"]["valid_auc_at_start"], abs=1e-6)
    assert start < initial["stages"]["search"]["valid_auc"]  # rewound: it has forgotten what the search learned
    assert initial["export_max_abs_logit_diff"] < 1e-6
    # killed in the retraining, it resumes with the searched widths (kept across the rewind) to the same end
    killed = small_config(tmp_path, "name=killed_initial", *common, "method.finetune_from=initial", cache=cache_root)
    killer = type("KilledInFinetune", (KilledAt,), {"kill_stage": 1, "kill_step": 5})
    with pytest.raises(KeyboardInterrupt):
        run_experiment(killed, trainer_cls=killer)
    resumed = run_experiment(killed)
    assert (resumed["test_auc"], resumed["field_dims"]) == (initial["test_auc"], initial["field_dims"])


class KilledAt(Trainer):
    kill_stage = 0
    kill_step = 23

    def after_step(self, p):
        if p.stage_index == self.kill_stage and p.step == self.kill_step:
            raise KeyboardInterrupt("simulated kill")


def test_killed_search_resumes_to_the_same_result(tmp_path, cache_root):
    extra = ("method.budget={kind: fraction, value: 0.5}", "method.length_lr_scale=30", "train.epochs=2")
    reference = run_experiment(small_config(tmp_path, "name=ref", *extra, *SMALL_MODELS["deepfm"], cache=cache_root))
    cfg = small_config(tmp_path, "name=killed", *extra, *SMALL_MODELS["deepfm"], cache=cache_root)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, trainer_cls=KilledAt)
    resumed = run_experiment(cfg)
    for key in ("test_auc", "valid_auc", "field_dims", "searcher"):
        assert resumed[key] == reference[key], key


@pytest.mark.slow
def test_learned_sizes_rank_like_the_planted_dimensions(tmp_path):
    """Fields of equal cardinality with planted dims 1..8: Spearman of learned widths vs planted >= 0.7
    (mean over 3 seeds). The budget fixes the total (55 % of the bytes); the method decides who gets
    what. Soft forward mask at a constant temperature of 3 dimensions: the hard straight-through mask
    gives almost no per-field signal here (lengths move in lockstep), see BENCHMARKS.md."""
    planted = [1, 2, 3, 4, 6, 8, 8]
    rhos = []
    for seed in range(3):
        cfg = small_config(
            tmp_path,
            f"name=planted{seed}",
            "dataset.options.rows=40000",
            f"dataset.options.seed={seed}",
            f"dataset.options.cardinalities={[100] * len(planted)}",
            f"dataset.options.zipf_exponents={[0.8] * len(planted)}",
            f"dataset.options.intrinsic_dims={planted}",
            f"dataset.options.missing_rates={[0] * len(planted)}",
            "dataset.options.teacher_scale=4.0",
            "model=fm",
            "train.lr=0.01",
            "train.batch_size=1024",
            "train.epochs=12",
            "train.eval_every_steps=null",
            "method.penalty_weights=dims",
            "method.budget={kind: fraction, value: 0.55}",
            "method.warmup_steps=100",
            "method.hard_mask=false",
            "method.temperature_schedule=constant",
            "method.tau_start=3.0",
            "method.finetune_max_steps=0",
            # the planted teacher, not Frappe: no embedding L2 (Frappe's 0.05 flattens every field to
            # one width), a constant lr and no clipping
            "train.embedding_weight_decay=0",
            "train.lr_schedule=constant",
            "train.clip_grad_norm=null",
        )
        result = run_experiment(cfg)
        widths = list(result["field_dims"].values())
        rhos.append(spearmanr(widths, planted).statistic)
    assert float(np.mean(rhos)) >= 0.7, rhos
