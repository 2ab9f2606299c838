"""train.precision: the dense part under bfloat16 autocast agrees with float32; weights, tables, lookups and
the loss stay float32; every method trains and resumes under it; CPUs without native bf16 are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embdim import FieldInfo, list_searchers
from embdim.config import ConfigError
from embdim.errors import ModelFileError
from embdim.recommender import SELF_HASH, build_recommender, content_sha256, export_model, load_model
from embdim.train.run import run_experiment
from embdim.train.trainer import training_step
from test_searchers import RECIPE
from test_train import KilledAt, small_config

FIELDS = [FieldInfo("a", 20), FieldInfo("b", 200), FieldInfo("c", 50), FieldInfo("d", 1000)]
NUM_DENSE = 3
DIM = 8
#: bf16 keeps 8 significant bits (each rounding within 2^-8 relative); a handful of layers each rounding
#: its output stay well inside 2^-5 of the largest logit (measured: DeepFM 3e-4, DLRM and AutoInt 1.0-1.4e-2).
LOGIT_TOL = 2.0**-5
#: A short run's test AUC and logloss: bf16 within this of fp32 (measured on the tiny synthetic set, two
#: seeds: AUC within 5e-4, logloss within 1.4e-4).
AUC_TOL = 0.005


@pytest.fixture(autouse=True)
def native_bf16(monkeypatch):
    """The tests run bf16 on any CPU: where it is only emulated it is slower, not different."""
    monkeypatch.setattr("embdim.recommender.native_bf16", lambda device_type="cpu": True)


def _batch(rows: int = 1024, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids int64 [rows, F], dense float32 [rows, Dn], labels float32 [rows]."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, f.vocab_size, (rows,), generator=gen) for f in FIELDS], 1)
    return ids, torch.randn(rows, NUM_DENSE, generator=gen), torch.randint(0, 2, (rows,), generator=gen).float()


def _model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    options = {"hidden": [32, 32]} if name == "deepfm" else {}
    return build_recommender(FIELDS, NUM_DENSE, DIM, name, options, init_std=0.1).eval()


@pytest.mark.parametrize("model", ["fm", "deepfm", "dlrm", "autoint"])
def test_bf16_logits_agree_with_fp32_within_a_thirty_second_of_the_largest_logit(model):
    rec = _model(model)
    ids, dense, _ = _batch()
    with torch.no_grad():
        fp32 = rec(ids, dense)
        rec.precision = "bf16"
        bf16 = rec(ids, dense)
    assert bf16.dtype == torch.float32
    diff = float((bf16 - fp32).abs().max())
    assert diff <= LOGIT_TOL * float(fp32.abs().max()), diff
    if model == "fm":  # no linear layer: the embeddings, the FM term and the tables stay float32 exactly
        assert diff == 0.0
    else:  # autocast did act on the MLPs
        assert diff > 0.0


def test_deepfms_mlp_computes_in_bf16_from_float32_weights_and_gets_float32_gradients():
    rec = _model("deepfm")
    rec.train()
    rec.precision = "bf16"
    seen: list[torch.dtype] = []
    first = rec.model.mlp.layers[0]
    first.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    ids, dense, labels = _batch(256)
    optimizers = [torch.optim.Adam(rec.parameters(), lr=1e-3)]
    loss = training_step(rec, optimizers, ids, dense, labels, step=0)
    assert seen == [torch.bfloat16]
    assert loss.dtype == torch.float32 and np.isfinite(float(loss))
    for name, param in rec.named_parameters():
        assert param.dtype == torch.float32, name
        assert param.grad is None or param.grad.dtype == torch.float32, name
    assert all(v.dtype == torch.float32 for state in optimizers[0].state.values() for v in state.values())


def test_a_short_bf16_run_reaches_the_fp32_test_auc_and_exports_in_bf16(tmp_path):
    fp32 = run_experiment(small_config(tmp_path, "name=fp32"))
    bf16 = run_experiment(small_config(tmp_path, "name=bf16", "train.precision=bf16"))
    assert fp32["test_auc"] > 0.6
    assert abs(bf16["test_auc"] - fp32["test_auc"]) < AUC_TOL, (bf16["test_auc"], fp32["test_auc"])
    assert abs(bf16["test_logloss"] - fp32["test_logloss"]) < AUC_TOL
    assert bf16["test_auc"] != fp32["test_auc"]  # bf16 did change the arithmetic
    meta = json.loads((tmp_path / "runs" / "bf16" / "model" / "model.json").read_text())
    assert meta["precision"] == "bf16"
    assert load_model(tmp_path / "runs" / "bf16" / "model").precision == "bf16"
    # the slim model scores in the precision it was trained in, so it predicts like the trained one
    assert bf16["export_max_abs_logit_diff"] < 1e-6


def test_a_killed_bf16_run_resumes_to_the_same_result_bit_for_bit(tmp_path):
    reference = run_experiment(small_config(tmp_path, "name=ref", "train.precision=bf16"))
    cfg = small_config(tmp_path, "name=killed", "train.precision=bf16")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, trainer_cls=KilledAt)
    resumed = run_experiment(cfg)
    for key in ("test_auc", "valid_auc", "test_logloss", "valid_logloss"):
        assert resumed[key] == reference[key], key
    lines = [
        [{k: v for k, v in json.loads(x).items() if k != "samples_per_second"} for x in path.read_text().splitlines()]
        for path in (tmp_path / "runs" / "ref" / "metrics.jsonl", tmp_path / "runs" / "killed" / "metrics.jsonl")
    ]
    assert lines[0] == lines[1]


@pytest.mark.parametrize("method", list_searchers())
def test_every_method_trains_all_its_stages_under_bf16(method, tmp_path):
    steps = [x for x in RECIPE if not x.startswith("train.max_steps")]
    cfg = small_config(
        tmp_path, f"name={method}", f"method={method}", *steps, "train.max_steps=6", "train.precision=bf16"
    )
    result = run_experiment(cfg)
    assert np.isfinite([result["test_auc"], result["test_logloss"], result["valid_auc"]]).all()
    lines = [json.loads(x) for x in (tmp_path / "runs" / method / "metrics.jsonl").read_text().splitlines()]
    assert {line["stage"] for line in lines} == set(result["stages"])


def test_bf16_on_a_cpu_without_native_bfloat16_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr("embdim.recommender.native_bf16", lambda device_type="cpu": False)
    with pytest.raises(
        ConfigError, match=r"train\.precision=bf16: this CPU .* no native bfloat16.*train\.precision=fp32"
    ):
        run_experiment(small_config(tmp_path, "name=r", "train.precision=bf16"))
    assert not (tmp_path / "cache").exists() and not (tmp_path / "runs" / "r").exists()
    run_experiment(small_config(tmp_path, "name=r", "train.max_steps=2"))  # fp32 needs nothing


def test_a_model_file_without_a_precision_loads_as_fp32_and_an_unknown_one_is_refused(tmp_path):
    folder = tmp_path / "model"
    export_model(_model("deepfm"), folder)
    meta_path = folder / "model.json"
    for precision, expect in ((None, "fp32"), ("fp8", None)):
        meta = json.loads(meta_path.read_text())
        meta.pop("precision", None)
        if precision is not None:
            meta["precision"] = precision
        meta[SELF_HASH] = content_sha256(meta)
        meta_path.write_text(json.dumps(meta))
        if expect is None:
            with pytest.raises(ModelFileError, match="'precision' is 'fp8'"):
                load_model(folder)
        else:
            assert load_model(folder).precision == expect
