"""AMTL (issue 5): prefix masks, twin gradients, OOV, hot start, ragged export, budget, frequency."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from embdim import EmbeddingLayer, FieldInfo
from embdim.budget import Budget, BudgetUnreachable
from embdim.config import ConfigError, compose, validate
from embdim.measures import spearman
from embdim.plan import EmbeddingPlan
from embdim.recommender import build_recommender, export_model, load_model
from embdim.searchers.amtl import PENALTY_WEIGHT_BOUNDS, AMTLConfig, AMTLSearcher, frequency_features
from embdim.train.checkpoint import save_weights, warm_start
from embdim.train.run import run_experiment

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TINY_SYNTHETIC
from test_train import CONFIGS, small_config

FIELDS = [
    FieldInfo("small", 4, np.array([7, 50, 20, 0])),  # OOV seen 7 times, id 3 never seen in training
    FieldInfo("mid", 40, np.r_[0, np.arange(390, 0, -10)]),
    FieldInfo("big", 300, np.r_[3, (3000 / np.arange(1, 300)).astype(int) + 1]),
]
DIM = 8
MODELS = ["fm", "deepfm", "dlrm", "autoint"]
SMALL_MODEL_OPTIONS = {
    "fm": {},
    "deepfm": {"hidden": [16]},
    "dlrm": {"bottom_hidden": [8], "top_hidden": [16]},
    "autoint": {"attention_layers": 1, "hidden": [16]},
}
SMALL_MODELS = {  # small widths so that every model trains in a second or two
    "fm": [],
    "deepfm": ["model.hidden=[32,32]"],
    "dlrm": ["model.bottom_hidden=[16]", "model.top_hidden=[32]"],
    "autoint": ["model.attention_layers=1", "model.hidden=[32]"],
}


def _stage(searcher, name: str):
    """The searcher's stage record of that name."""
    return next(stage for stage in searcher.stages() if stage.name == name)


def model_config(tmp_path: Path, model: str, *overrides: str):
    """``small_config`` (synthetic data, d=8) with any of the four models."""
    base = [
        f"run_root={tmp_path / 'runs'}",
        f"cache_root={tmp_path / 'cache'}",
        *TINY_SYNTHETIC,
        f"model={model}",
        *SMALL_MODELS[model],
        "embedding.dim=8",
        "train.batch_size=256",
        "train.progress=false",
        "train.eval_every_steps=10",
        *overrides,
    ]
    return validate(compose(CONFIGS / "experiments" / "quickstart.yaml", base))


def _ids(batch: int = 128, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, f.vocab_size, (batch,), generator=gen) for f in FIELDS], 1)


def _draw(rng: np.random.Generator, batch: int) -> torch.Tensor:
    """Ids [batch, F] drawn like training rows: each field by its training counts."""
    cols = [rng.choice(f.vocab_size, batch, p=f.counts / f.counts.sum()) for f in FIELDS]
    return torch.from_numpy(np.stack(cols, 1))


def _layer(**options) -> EmbeddingLayer:
    torch.manual_seed(0)
    return EmbeddingLayer(FIELDS, DIM, method="amtl", method_config=options)


def _scramble(layer: EmbeddingLayer, seed: int = 1) -> None:
    """Random mask networks, so lengths spread over 1..d (a freshly initialised layer keeps d)."""
    gen = torch.Generator().manual_seed(seed)
    s = layer.searcher
    with torch.no_grad():
        for p in (s.w1, s.b1, s.w2, s.b2):
            p.copy_(torch.randn(p.shape, generator=gen))


def test_forward_mask_is_an_exact_zero_one_prefix():
    layer = _layer(min_length=1)
    _scramble(layer)
    mask = layer.searcher.mask(_ids())
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (mask[..., 0] == 1).all()  # at least one dimension is kept
    assert (mask[..., 1:] <= mask[..., :-1]).all()  # non-increasing: a prefix
    lengths = mask.sum(-1)
    assert lengths.unique().numel() > 2  # the scramble really spreads lengths
    out = layer(_ids())
    raw = layer.lookup(_ids()).stacked()
    assert torch.equal(out, raw * mask)


def test_gradients_reach_both_twin_networks_and_the_tables():
    layer = _layer(size_penalty=0.1)
    _scramble(layer)
    out, penalty = layer.embed(_ids())
    (out.square().sum() + penalty).backward()
    s = layer.searcher
    for p in (s.w1, s.b1, s.w2, s.b2):
        assert p.grad is not None
        for twin in range(2):  # [nets, ...]: both the high- and the low-frequency network learn
            assert p.grad[twin].abs().sum() > 0
    assert layer.lookup.tables["all"].weight.grad.abs().sum() > 0


def test_shared_network_ablation_has_one_network():
    layer = _layer(twins=False)
    assert layer.searcher.w1.shape[0] == 1
    _scramble(layer)
    out = layer(_ids())
    assert out.shape == (128, 3, DIM)


def test_soft_mask_ablation_is_not_binary_and_freezing_makes_it_exact():
    layer = _layer(straight_through=False)
    _scramble(layer)
    mask = layer.searcher.mask(_ids())
    assert ((mask > 0) & (mask < 1)).any()
    layer.searcher.start_stage(_stage(layer.searcher, "finetune"), layer.lookup)
    ids = _ids(seed=2)
    with torch.no_grad():
        assert torch.allclose(layer.export()(ids), layer(ids), atol=1e-6)


def test_frequency_features_oov_and_unseen_values():
    feats = frequency_features(np.array([7, 50, 20, 0]), oov_count=False)
    assert feats.shape == (4, 3) and np.isfinite(feats).all()
    assert (feats[0] == 0).all() and (feats[3] == 0).all()  # OOV and the unseen value: frequency 0
    assert feats[1, 0] == 1 and feats[1, 1] == 1 and feats[1, 2] == 1  # the most frequent value
    assert feats[1, 0] > feats[2, 0] > 0 and feats[1, 1] > feats[2, 1] > 0
    with_oov = frequency_features(np.array([7, 50, 20, 0]), oov_count=True)
    assert with_oov[0, 0] > 0
    # ties share their rank
    tied = frequency_features(np.array([0, 5, 5, 1]), oov_count=False)
    assert tied[1, 1] == tied[2, 1] == 1.0
    # OOV and unseen ids get a defined size and finite output
    layer = _layer()
    _scramble(layer)
    ids = torch.tensor([[0, 0, 0], [3, 0, 299]])
    assert torch.isfinite(layer(ids)).all()
    lengths = layer.searcher.lengths()
    assert lengths[0] == lengths[3]  # same (zero) frequency, same size


def test_missing_counts_are_a_clear_error():
    with pytest.raises(ValueError, match="counts"):
        EmbeddingLayer([FieldInfo("a", 5)], DIM, method="amtl")


def test_fresh_layer_keeps_full_length_so_a_hot_start_is_exact():
    layer = _layer()
    assert (layer.searcher.lengths() == DIM).all()
    assert (layer.searcher.mask(_ids()) == 1).all()


def test_ragged_export_equals_the_masked_layer_and_counts_its_bytes(tmp_path):
    layer = _layer()
    _scramble(layer)
    ids = _ids(seed=3)
    with torch.no_grad():
        expected = layer(ids)
    slim = layer.export()
    plan = layer.plan()
    assert plan.storage == "ragged"
    lengths = layer.searcher.lengths()
    assert [r.tolist() for r in plan.row_sizes] == [r.tolist() for r in torch.split(lengths, [4, 40, 300])]
    n = sum(f.vocab_size for f in FIELDS)
    # sizes follow frequency and ids are numbered by frequency: one index entry per run of equal sizes
    runs = sum(int((r[1:] != r[:-1]).sum()) + 1 for r in torch.split(lengths, [4, 40, 300]))
    assert plan.ragged_index() == "runs" and runs < n / 4
    per_run_index = (runs + 1) * (4 + 4) + runs * 1  # first row and first value (int32), size (uint8)
    assert plan.num_bytes == int(lengths.sum()) * 4 + per_run_index == slim.stored_bytes()
    assert plan.num_bytes / plan.full_bytes == pytest.approx(layer.searcher._class_bytes_ratio())
    assert torch.allclose(slim(ids), expected, atol=1e-6)
    slim.save(tmp_path)
    from embdim.slim import SlimEmbedding

    assert torch.allclose(SlimEmbedding.load(tmp_path)(ids), expected, atol=1e-6)
    assert EmbeddingPlan.from_json(plan.to_json()).num_bytes == plan.num_bytes


def test_penalty_is_an_unbiased_vocabulary_average():
    """With memory weighting, E[penalty] over training draws = lambda * mean over the vocabulary of E[k]/d."""
    layer = _layer(size_penalty=1.0)
    _scramble(layer)
    s = layer.searcher
    rng = np.random.default_rng(0)
    draws = []
    with torch.no_grad():
        layer.lookup.tables["all"].weight.zero_()  # the table does not enter the penalty: skip its work
    for _ in range(60):
        ids = _draw(rng, 512)
        draws.append(float(layer.embed(ids).penalty.detach()))
    # exact target: the soft expected length of every seen value, averaged over the whole vocabulary
    with torch.no_grad():
        rows = torch.arange(sum(f.vocab_size for f in FIELDS))
        field = torch.repeat_interleave(torch.arange(3), torch.tensor([4, 40, 300]))
        expected = []
        for f in range(3):
            r = rows[field == f]
            t_hat = s.soft_lengths(s.length_logits(s.id_class[r]))
            expected.append((t_hat * torch.arange(s.min_length, DIM + 1)).sum(-1) / DIM)
        seen = torch.from_numpy(np.concatenate([f.counts for f in FIELDS]) > 0)
        target = float((torch.cat(expected) * seen).sum()) / len(rows)
    assert np.mean(draws) == pytest.approx(target, rel=0.1)


def test_frozen_sizes_survive_a_weight_reload_and_a_checkpoint_round_trip():
    layer = _layer()
    _scramble(layer)
    s = layer.searcher
    s.start_stage(_stage(s, "finetune"), layer.lookup)
    frozen = s.lengths()
    state = s.state_for_checkpoint()
    layer.load_state_dict(_layer().state_dict())  # a rewind / best reload: mask nets back to full length
    assert torch.equal(s.lengths(), frozen)
    fresh = _layer()
    fresh.searcher.load_checkpoint_state(state)
    assert torch.equal(fresh.searcher.lengths(), frozen) and fresh.searcher.stage == "finetune"


def test_budget_controller_raises_lambda_until_the_sizes_land():
    layer = _layer(budget={"kind": "fraction", "value": 0.4}, budget_interval=1)
    s = layer.searcher
    search = _stage(s, "search")
    assert search.selection == "last" and not search.patience
    opt = torch.optim.Adam([s.w1, s.b1, s.w2, s.b2], lr=1e-2)
    rng = np.random.default_rng(0)
    start = s.controller.lam
    for step in range(400):
        ids = _draw(rng, 256)
        out, penalty = layer.embed(ids)
        loss = out.sum() * 0  # no task signal: only the penalty acts
        if penalty is not None:
            loss = loss + penalty
        opt.zero_grad()
        loss.backward()
        opt.step()
        s.on_step(step, layer.lookup)
        if s.stage_done(search):
            break
    assert s.stage_done(search), "the budget was never reached"
    assert s.controller.lam > start
    assert layer.plan().num_bytes <= 0.4 * 1.02 * layer.plan().full_bytes
    frozen = s.lengths()
    s.start_stage(_stage(s, "finetune"), layer.lookup)  # the sizes frozen on landing are the ones fine-tuned
    assert torch.equal(s.lengths(), frozen)


def test_bad_option_is_named():
    with pytest.raises(Exception, match="temprature"):
        EmbeddingLayer(FIELDS, DIM, method="amtl", method_config={"temprature": 1.0})


def test_bad_option_in_a_run_config_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"method\.budget_rate"):
        small_config(tmp_path, "method=amtl", "method.budget_rate=-1")


def test_spearman_helper_handles_constant_input():
    assert spearman(np.ones(5), np.arange(5)) == 0.0
    assert spearman(np.arange(5), np.arange(5)) == pytest.approx(1.0)


@pytest.mark.parametrize("model", MODELS)
def test_hot_start_is_exact_at_step_0_and_ragged_export_predicts_alike(tmp_path, model):
    """Every model: AMTL warm-started from a full model predicts exactly like it before any step; with
    spread sizes, the exported slim model (ragged storage) predicts like the masked model."""
    torch.manual_seed(0)
    plain = build_recommender(FIELDS, 2, DIM, model, SMALL_MODEL_OPTIONS[model], "full")
    with torch.no_grad():  # a "trained" full model: weights far from any initial value
        for p in plain.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    save_weights(tmp_path / "full.safetensors", plain)
    torch.manual_seed(1)
    amtl = build_recommender(FIELDS, 2, DIM, model, SMALL_MODEL_OPTIONS[model], "amtl")
    left = warm_start(tmp_path / "full.safetensors", amtl)
    assert left and all(k.startswith("embedding.searcher.") for k in left)
    plain.eval(), amtl.eval()
    ids, dense = _ids(256, seed=4), torch.randn(256, 2)
    with torch.no_grad():
        assert torch.equal(amtl(ids, dense), plain(ids, dense))
        _scramble(amtl.embedding)
        masked = amtl(ids, dense)
    export_model(amtl, tmp_path / "model")
    slim = load_model(tmp_path / "model")
    assert slim.embedding.plan.storage == "ragged"
    with torch.no_grad():
        assert (slim(ids, dense) - masked).abs().max() < 1e-6


@pytest.mark.slow  # two whole runs
def test_end_to_end_hot_start_from_a_full_run(tmp_path):
    """``train.init_from`` a full run folder: no collapse at the first evaluation, budget met, export exact."""
    full = run_experiment(model_config(tmp_path, "deepfm", "name=full", "train.max_steps=20"))
    cfg = model_config(
        tmp_path,
        "deepfm",
        "name=amtl",
        "method=amtl",
        "method.budget={kind: fraction, value: 0.5}",
        "method.budget_rate=1.0",
        "method.init_margin=1.0",
        "train.max_steps=40",
        f"train.init_from={tmp_path / 'runs' / 'full'}",
    )
    result = run_experiment(cfg)
    assert result["export_max_abs_logit_diff"] < 1e-6
    assert result["storage"] == "ragged" and result["searcher"]["bytes_ratio"] == result["bytes_ratio"]
    assert result["bytes_ratio"] <= 0.5 * 1.02
    assert set(result["stages"]) == {"search", "finetune"}
    assert "valid_auc_at_start" in result["stages"]["finetune"]
    lines = [json.loads(x) for x in (tmp_path / "runs" / "amtl" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["valid_auc"] > full["valid_auc"] - 0.05


@pytest.mark.slow
def test_size_rank_correlates_with_frequency_when_frequent_values_carry_more(tmp_path):
    """Synthetic teacher: only the top 20 % of each field's values use more than 1 dimension."""
    cfg = small_config(
        tmp_path,
        "name=syn",
        "method=amtl",
        "dataset.options.rows=12000",
        "dataset.options.rare_value_dim=1",
        "dataset.options.frequent_share=0.2",
        "method.budget={kind: fraction, value: 0.45}",
        "method.budget_rate=0.2",
        "train.epochs=4",
    )
    result = run_experiment(cfg)
    assert result["searcher"]["spearman_size_frequency"]["all"] > 0.3
    assert result["bytes_ratio"] <= 0.45 * 1.02
    assert result["export_max_abs_logit_diff"] < 1e-6


def test_searcher_is_registered():
    from embdim import list_searchers

    assert "amtl" in list_searchers()
    assert AMTLSearcher.registered_name == "amtl"


def test_value_size_plots_for_ragged_and_csr_plans(tmp_path):
    from embdim.report.value_sizes import plot_size_distribution, plot_size_vs_frequency

    layer = _layer()
    _scramble(layer)
    ragged = layer.plan()
    csr = EmbeddingPlan(
        "pep", ragged.field_names, ragged.vocab_sizes, DIM, [DIM] * 3, storage="csr", row_sizes=ragged.row_sizes
    )
    for i, plan in enumerate((ragged, csr)):
        for plot in (plot_size_vs_frequency, plot_size_distribution):
            out = plot(plan, FIELDS, tmp_path / f"{plot.__name__}_{i}.png")
            assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dense = EmbeddingPlan("full", ragged.field_names, ragged.vocab_sizes, DIM, [DIM] * 3)
    with pytest.raises(ValueError, match="per-row sizes"):
        plot_size_vs_frequency(dense, FIELDS, tmp_path / "x.png")


# ----------------------------------------------------------------------------------------- low budgets


def test_with_min_length_zero_values_may_drop_and_export_as_empty_rows():
    layer = _layer(min_length=0)
    _scramble(layer, seed=2)
    s = layer.searcher
    with torch.no_grad():  # favour length 0 until some of the frequency classes, not all, take it
        while not (s.lengths() == 0).any():
            s.b2[..., 0] += 0.05
    lengths = s.lengths()
    assert lengths.min() == 0 < lengths.max()
    ids = _ids(512, seed=4)
    mask = s.mask(ids)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (mask[..., 1:] <= mask[..., :-1]).all()
    assert (mask.sum(-1) == 0).any()  # some looked-up values embed to zeros
    with torch.no_grad():
        expected = layer(ids)
    plan = layer.plan()
    assert sum(plan.dropped_features()) == int((lengths == 0).sum()) > 0
    assert torch.allclose(layer.export()(ids), expected, atol=1e-6)
    assert set(s.report(layer.lookup)["length_histogram"]) == {str(k) for k in range(DIM + 1)}


def test_a_budget_below_every_value_at_min_length_is_unreachable_unless_values_may_drop():
    budget = Budget(value=0.05)  # 550 bytes: fewer than one fp32 value per row
    with pytest.raises(BudgetUnreachable, match=r"method\.min_length=0"):
        AMTLSearcher.for_budget(FIELDS, DIM, AMTLConfig(min_length=1), budget)
    _, config = AMTLSearcher.for_budget(FIELDS, DIM, AMTLConfig(), budget)  # the default drops values
    assert config.budget == budget


def test_a_logit_gain_bounds_how_far_the_softmax_saturates():
    logits = torch.randn(6, DIM, generator=torch.Generator().manual_seed(0)) * 1e3
    raw = _layer().searcher.soft_lengths(logits)
    gained = _layer(logit_gain=2.0).searcher.soft_lengths(logits)
    assert raw.max() > 1 - 1e-6  # saturated: the gradient through it vanishes
    assert gained.max() < 0.99
    assert torch.equal(gained.argmax(-1), logits.argmax(-1))  # the sizes themselves are the same
    assert torch.allclose(_layer(logit_gain=2.0).searcher.soft_lengths(logits * 7 + 3), gained, atol=1e-6)


def test_a_search_stuck_at_the_weights_bound_ends_not_landed_and_says_why():
    layer = _layer(min_length=0, budget={"kind": "fraction", "value": 0.05}, budget_stall_evals=2)
    s = layer.searcher
    search = _stage(s, "search")
    s.start_stage(search, layer.lookup)
    s.on_evaluation(search, layer.lookup)  # not at the bound: the stall count does not start
    s.controller.lam = PENALTY_WEIGHT_BOUNDS[1]
    s.on_evaluation(search, layer.lookup)
    assert not s.stage_done(search)
    s.on_evaluation(search, layer.lookup)  # the bytes never fell: two evaluations at the bound without progress
    assert s.stage_done(search)
    report = s.report(layer.lookup)
    assert report["budget_landed"] is False and "bound" in report["budget_note"]
    s.on_step(0, layer.lookup)  # an ended search no longer moves the controller or freezes
    assert s.frozen_lengths is None
    fresh = _layer(min_length=0, budget={"kind": "fraction", "value": 0.05}, budget_stall_evals=2).searcher
    fresh.load_checkpoint_state(s.state_for_checkpoint())
    assert fresh.stage_done(search) and fresh.report(layer.lookup)["budget_note"] == report["budget_note"]


def test_finetune_from_initial_rewinds_the_weights_but_keeps_the_searched_sizes():
    layer = _layer(finetune_from="initial")
    s = layer.searcher
    assert _stage(s, "finetune").rewind and not _stage(_layer().searcher, "finetune").rewind
    initial = {k: v.clone() for k, v in layer.state_dict().items()}
    _scramble(layer)
    searched = s.lengths()
    assert not torch.equal(searched, torch.full_like(searched, DIM))
    s.end_stage(_stage(s, "search"), layer.lookup)  # sizes frozen before the rewind
    layer.load_state_dict(initial)  # the trainer's rewind: mask networks back to full length
    s.start_stage(_stage(s, "finetune"), layer.lookup)
    assert torch.equal(s.lengths(), searched)
