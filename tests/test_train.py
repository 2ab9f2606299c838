"""Training end to end on small synthetic data: determinism, resume, run folders, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_SYNTHETIC
from embdim.config import ConfigError, compose, load_config, validate
from embdim.train.run import run_experiment
from embdim.train.trainer import Trainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def small_config(tmp_path: Path, *overrides: str):
    base = [
        f"run_root={tmp_path / 'runs'}",
        f"cache_root={tmp_path / 'cache'}",
        *TINY_SYNTHETIC,
        "model=deepfm",
        "model.hidden=[32,32]",
        "model.dropout=0.1",
        "embedding.dim=8",
        "train.batch_size=256",
        "train.epochs=2",
        "train.progress=false",
        "train.checkpoint_every_steps=5",
        "train.eval_every_steps=10",
    ]
    return validate(compose(CONFIGS / "experiments" / "quickstart.yaml", [*base, *overrides]))


class KilledAt(Trainer):
    kill_step = 13

    def after_step(self, p):
        if p.stage_index == 0 and p.step == self.kill_step:
            raise KeyboardInterrupt("simulated kill")


def test_same_seed_same_result_and_run_folder(tmp_path):
    a = run_experiment(small_config(tmp_path, "name=a"))
    b = run_experiment(small_config(tmp_path, "name=b"))
    for key in ("test_auc", "valid_auc", "test_logloss"):
        assert a[key] == b[key]
    run = tmp_path / "runs" / "a"
    for name in ("config.yaml", "metrics.jsonl", "checkpoint.pt", "best.safetensors", "plan.json", "result.json"):
        assert (run / name).exists(), name
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) >= 2 and all("valid_auc" in x for x in lines)
    for key in (
        "test_auc",
        "test_logloss",
        "valid_auc",
        "embedding_params",
        "embedding_bytes",
        "full_embedding_params",
        "train_seconds",
        "samples_per_second",
    ):
        assert key in a
    assert a["export_max_abs_logit_diff"] < 1e-6
    # the end-to-end rate also waits for batches and checkpoints, so it is never above the steps' rate
    assert 0 < a["end_to_end_samples_per_second"] <= a["samples_per_second"]
    assert a["eval_seconds"] > 0


def test_killed_run_resumes_to_the_same_result(tmp_path):
    reference = run_experiment(small_config(tmp_path, "name=ref"))
    cfg = small_config(tmp_path, "name=killed")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, trainer_cls=KilledAt)
    run = tmp_path / "runs" / "killed"
    assert (run / "checkpoint.pt").exists() and not (run / "result.json").exists()
    resumed = run_experiment(cfg)
    for key in ("test_auc", "valid_auc", "test_logloss", "valid_logloss"):
        assert resumed[key] == reference[key], key
    ref_lines = (tmp_path / "runs" / "ref" / "metrics.jsonl").read_text().splitlines()
    got_lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["valid_auc"] for x in got_lines] == [json.loads(x)["valid_auc"] for x in ref_lines]


FUSED_TABLES = ["embedding.backend=torchrec", "train.optimizer=adagrad", "train.embedding_decay=looked_up"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.device=gpu"], r"train\.device"),
        (
            ["train.device=cuda", *FUSED_TABLES],
            r"embedding\.backend=torch\b",
        ),
        (["train.device=cuda:1", "train.processes=2"], r"train\.processes=1"),
    ],
)
def test_a_device_the_run_cannot_train_on_is_refused_naming_the_key(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        small_config(tmp_path, *overrides)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where torch sees no GPU")
def test_a_run_on_cuda_without_a_gpu_is_refused_before_its_run_folder_is_written(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.device=cuda: torch sees 0 CUDA device\(s\).*train\.device=cpu"):
        run_experiment(small_config(tmp_path, "name=gpu", "train.device=cuda"))
    assert not (tmp_path / "runs" / "gpu").exists()


def test_finished_run_is_not_trained_again_and_other_config_is_refused(tmp_path):
    first = run_experiment(small_config(tmp_path, "name=r"))
    assert run_experiment(small_config(tmp_path, "name=r")) == first
    with pytest.raises(ConfigError, match=r"different config(.|\n)*train\.lr: 0\.\d+ -> 0\.01"):
        run_experiment(small_config(tmp_path, "name=r", "train.lr=0.01"))


def test_a_run_folder_written_before_a_key_existed_resumes_while_the_key_keeps_its_default(tmp_path):
    import yaml

    from embdim.train.run import stored_config_changes

    cfg = small_config(tmp_path, "name=old")
    run_experiment(cfg)
    config = tmp_path / "runs" / "old" / "config.yaml"
    older = yaml.safe_load(config.read_text())
    del older["train"]["processes"], older["embedding"]["sharding"]  # keys an earlier version did not write
    config.write_text(yaml.safe_dump(older, sort_keys=False))
    assert stored_config_changes(cfg) == []
    moved = small_config(tmp_path, "name=old", "embedding.sharding.min_column_width=8")
    assert stored_config_changes(moved) == ["embedding.sharding.min_column_width: None -> 8"]


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.lrr=0.1", "train.lrr"),
        ("model.hiden=[8]", "model.hiden"),
        ("method.alpha=0.3", "method.alpha"),
        ("embedding.dim=-1", "embedding.dim"),
        ("dataset.options.no_such=1", "dataset.options.no_such"),
    ],
)
def test_bad_keys_fail_before_any_work_naming_the_key(tmp_path, override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        small_config(tmp_path, override)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


def test_library_configs_all_validate():
    for exp in (CONFIGS / "experiments").glob("*.yaml"):
        load_config(exp)
    for model in (CONFIGS / "models").glob("*.yaml"):
        load_config(CONFIGS / "experiments" / "quickstart.yaml", [f"model={model.stem}"])
    for method in (CONFIGS / "methods").glob("*.yaml"):
        load_config(CONFIGS / "experiments" / "quickstart.yaml", [f"method={method.stem}"])
    for dataset in (CONFIGS / "datasets").glob("*.yaml"):
        load_config(CONFIGS / "experiments" / "quickstart.yaml", [f"dataset={dataset.stem}"])


@pytest.mark.slow
def test_deepfm_learns_the_planted_teacher(tmp_path):
    cfg = small_config(
        tmp_path,
        "name=q",
        "dataset.options.rows=60000",
        "train.epochs=8",
        "train.eval_every_steps=null",
        "train.batch_size=512",
        "model.hidden=[64,64]",
    )
    assert run_experiment(cfg)["test_auc"] >= 0.75


def test_epoch_limit_and_per_epoch_shuffle(tmp_path):
    cfg = small_config(tmp_path, "name=ep", "train.epochs=3", "train.eval_every_steps=null", "train.patience=10")
    run_experiment(cfg)
    lines = [json.loads(x) for x in (tmp_path / "runs" / "ep" / "metrics.jsonl").read_text().splitlines()]
    steps_per_epoch = -(-int(6000 * 0.8) // 256)
    assert [x["epoch"] for x in lines] == [0, 1, 2]
    assert [x["step"] for x in lines] == [steps_per_epoch * (i + 1) for i in range(3)]


def test_init_from_a_run_starts_from_its_weights(tmp_path):
    """Hot start: a new run begins with the finished run's selected weights (its step-0 logits match)."""
    from embdim.train.checkpoint import warm_start
    from embdim.train.evaluate import predict_logits
    from embdim.train.run import prepare_dataset

    source = small_config(tmp_path, "name=src")
    run_experiment(source)
    hot = small_config(tmp_path, "name=hot", f"train.init_from={tmp_path / 'runs' / 'src'}", "train.max_steps=1")
    trainer = Trainer(hot, prepare_dataset(hot, progress=False), tmp_path / "runs" / "hot")
    trainer._build()
    cold = Trainer(source, trainer.data, tmp_path / "runs" / "cold")
    cold._build()
    valid = trainer.data.splits["valid"]
    assert not np.allclose(predict_logits(trainer.rec, valid, 4096), predict_logits(cold.rec, valid, 4096))
    warm_start(tmp_path / "runs" / "src", cold.rec)
    np.testing.assert_array_equal(predict_logits(trainer.rec, valid, 4096), predict_logits(cold.rec, valid, 4096))


def test_init_from_rejects_missing_or_mismatched_weights(tmp_path):
    from embdim.train.checkpoint import warm_start

    run_experiment(small_config(tmp_path, "name=src"))
    with pytest.raises(ConfigError, match="init_from"):
        run_experiment(small_config(tmp_path, "name=a", f"train.init_from={tmp_path / 'nowhere'}"))
    assert not (tmp_path / "runs" / "a").exists()
    other = small_config(tmp_path, "name=b", "embedding.dim=4")
    from embdim.train.run import prepare_dataset

    trainer = Trainer(other, prepare_dataset(other, progress=False), tmp_path / "runs" / "b")
    trainer.tc = trainer.tc.model_copy(update={"init_from": None})
    trainer._build()
    with pytest.raises(ValueError, match="shape"):
        warm_start(tmp_path / "runs" / "src", trainer.rec)


def test_a_plugin_mapping_extends_its_library_config(tmp_path):
    """``method: {name: pep, s0: -8}`` keeps every other key of configs/methods/pep.yaml, not the class defaults."""
    library = tmp_path / "configs"
    (library / "methods").mkdir(parents=True)
    (library / "experiments").mkdir()
    (library / "methods" / "pep.yaml").write_text("name: pep\nthreshold_lr: 0.123\ns0: -15.0\n")
    experiment = library / "experiments" / "e.yaml"
    experiment.write_text(
        "name: e\ndataset: {name: d, reader: synthetic}\nmodel: {name: fm}\nmethod: {name: pep, s0: -8.0}\n"
    )
    options = compose(experiment)["method"]["options"]
    assert options["threshold_lr"] == 0.123 and options["s0"] == -8.0
    as_options = compose(experiment, ["method={name: pep, options: {s0: -9.0}}"])["method"]["options"]
    assert as_options["threshold_lr"] == 0.123 and as_options["s0"] == -9.0
    (library / "methods" / "pep.yaml").unlink()  # no library config: the mapping stands alone
    assert compose(experiment)["method"]["options"] == {"s0": -8.0}


def test_patience_counts_only_in_stages_that_allow_it_and_after_their_minimum_epochs(tmp_path):
    from embdim.searchers.base import Stage
    from embdim.train.run import prepare_dataset
    from embdim.train.trainer import Progress

    cfg = small_config(tmp_path, "name=p")
    trainer = Trainer(cfg, prepare_dataset(cfg, progress=False), tmp_path / "p")
    spe = trainer.steps_per_epoch
    later = Stage("retrain", patience_after_epochs=2)
    assert not trainer._patience_counts(Progress(step=2 * spe - 1), later)
    assert trainer._patience_counts(Progress(step=2 * spe), later)
    assert not trainer._patience_counts(Progress(step=10 * spe), Stage("search", patience=False))
    assert trainer._max_steps(Stage("s", max_steps=7)) == 7
