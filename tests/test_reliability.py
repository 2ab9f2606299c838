"""Trustworthy runs: divergence is an error, run folders stay in their root, damaged checkpoints recover."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import REPO_ROOT, TINY_SYNTHETIC
from embdim.cli import app
from embdim.config import ConfigError
from embdim.train.run import run_experiment
from test_train import KilledAt, small_config

QUICKSTART = str(REPO_ROOT / "configs" / "experiments" / "quickstart.yaml")


def _cli_args(tmp_path: Path, *overrides: str) -> list[str]:
    """``embdim run`` on the tiny synthetic set, folders in ``tmp_path``."""
    base = [
        f"run_root={tmp_path / 'runs'}",
        f"cache_root={tmp_path / 'cache'}",
        *TINY_SYNTHETIC,
        "model.hidden=[16]",
        "embedding.dim=4",
        "train.batch_size=512",
        "train.epochs=2",
        # one thread everywhere: a run in this process and one in a subprocess then add in the same order
        "train.threads=1",
    ]
    return ["run", QUICKSTART, *base, *overrides, "--no-progress"]


def _run_cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    return result


# ---------------------------------------------------------------------- divergence
@pytest.mark.parametrize(
    "overrides",
    [
        ["train.optimizer=sgd", "train.lr=1e30"],
        ["train.optimizer=adagrad", "train.lr=1e38"],
        ["embedding.init_std=1e30"],
    ],
    ids=["sgd-lr", "adagrad-lr", "init"],
)
def test_a_diverged_run_ends_in_an_error_and_leaves_no_result_that_looks_like_one(tmp_path, overrides):
    result = _run_cli(*_cli_args(tmp_path, "name=div", *overrides))
    assert result.exit_code == 2, result.output
    assert "error: training diverged at step" in result.output and "Likely cause" in result.output
    cause = "init_std" if "init_std" in overrides[0] else "train.lr"
    assert cause in result.output
    assert "test_auc" not in result.output  # no metrics on stdout
    run = tmp_path / "runs" / "div"
    stored = json.loads((run / "result.json").read_text())
    assert stored["status"] == "diverged" and "test_auc" not in stored and "valid_auc" not in stored
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)  # the last good one is kept
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())
    assert not (run / "model").exists()
    again = _run_cli(*_cli_args(tmp_path, "name=div", *overrides))  # a rerun does not pretend either
    assert again.exit_code == 2 and "training diverged" in again.output


def test_a_non_finite_learning_rate_is_a_config_error(tmp_path):
    result = _run_cli(*_cli_args(tmp_path, "name=x", "train.lr=.inf"))
    assert result.exit_code == 2 and "train.lr" in result.output and "finite" in result.output


def test_the_bench_reports_a_diverged_cell_as_diverged(tmp_path):
    from embdim.bench import load_bench, run_bench

    bench = tmp_path / "bench.yaml"
    bench.write_text(
        "name: div\n"
        f"experiment: {QUICKSTART}\n"
        f"bench_root: {tmp_path / 'bench'}\n"
        f"overrides: {json.dumps([*_cli_args(tmp_path)[2:-1], 'train.optimizer=sgd', 'train.lr=1e30'])}\n"
        "methods: [full]\nbudgets: [0.5]\nseeds: [1]\n"
    )
    results = run_bench(*load_bench(bench))
    assert set(results["status"]) == {"diverged"}
    assert results["reason"].str.contains("training diverged").all()


# ---------------------------------------------------------------------- run folders stay in their root
@pytest.mark.parametrize("name", ["../x", "/abs/path", "a/b", "..", ".hidden", "a b", ""])
def test_a_run_name_that_is_not_one_folder_name_is_refused(tmp_path, name):
    result = _run_cli(*_cli_args(tmp_path, f"name={name}"))
    assert result.exit_code == 2 and "name" in result.output and "one folder name" in result.output
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


def test_force_removes_only_its_own_run_folder(tmp_path):
    cfg = small_config(tmp_path, "name=keep")
    run_experiment(cfg)
    sibling = tmp_path / "runs" / "other"
    sibling.mkdir(parents=True)
    (sibling / "notes.txt").write_text("not a run")
    with pytest.raises(ConfigError, match="not a single run's folder"):
        run_experiment(small_config(tmp_path, "name=other"), force=True)
    assert (sibling / "notes.txt").exists()
    # a folder holding other runs (a bench folder) is never a run folder
    nested = tmp_path / "runs" / "bench"
    (nested / "runs" / "r1").mkdir(parents=True)
    (nested / "runs" / "r1" / "config.yaml").write_text("name: r1\n")
    (nested / "config.yaml").write_text("name: bench\n")
    with pytest.raises(ConfigError, match="nothing was deleted"):
        run_experiment(small_config(tmp_path, "name=bench"), force=True)
    assert (nested / "runs" / "r1" / "config.yaml").exists()
    again = run_experiment(cfg, force=True)  # its own folder: retrained from scratch
    assert again["status"] == "completed" and (tmp_path / "runs" / "keep" / "result.json").exists()


# ---------------------------------------------------------------------- damaged checkpoints
@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_a_damaged_checkpoint_is_moved_aside_and_the_run_starts_again(tmp_path, damage):
    reference = run_experiment(small_config(tmp_path, "name=ref"))
    cfg = small_config(tmp_path, "name=hurt")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg, trainer_cls=KilledAt)
    checkpoint = tmp_path / "runs" / "hurt" / "checkpoint.pt"
    data = checkpoint.read_bytes()
    checkpoint.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "garbage": os.urandom(4096)}[damage])
    (checkpoint.parent / ".checkpoint.pt.tmp").write_bytes(b"left by a kill")
    result = run_experiment(cfg)
    assert result["test_auc"] == reference["test_auc"]  # from step 0, deterministic
    assert any("moved to checkpoint.pt.corrupt" in w and "from step 0" in w for w in result["warnings"])
    assert (checkpoint.parent / "checkpoint.pt.corrupt").exists()
    assert not (checkpoint.parent / ".checkpoint.pt.tmp").exists()


def test_a_full_disk_gives_a_clean_error_and_a_resumable_folder(tmp_path, monkeypatch):
    cfg = small_config(tmp_path, "name=full")
    real_save = torch.save
    calls = {"n": 0}

    def save(obj, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # a later checkpoint: the folder already holds a good one
            Path(path).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError, match="No space left"):
        run_experiment(cfg)
    run = tmp_path / "runs" / "full"
    assert not list(run.glob(".*.tmp")) and (run / "checkpoint.pt").exists()
    monkeypatch.setattr(torch, "save", real_save)
    assert run_experiment(cfg)["status"] == "completed"


def test_a_full_tmpfs_is_an_error_line_naming_the_file_and_the_fix(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        result = _run_cli(*_cli_args(tmp_path, "name=tiny", f"run_root={mount}"))
        assert result.exit_code == 2, result.output
        assert "No space left on device" in result.output and "disk is full" in result.output
        assert not list(mount.glob("*/.*.tmp"))
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_sigterm_stops_a_run_like_ctrl_c_and_it_resumes(tmp_path):
    args = _cli_args(tmp_path, "name=term", "train.epochs=30", "train.checkpoint_every_steps=2")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "embdim", *args], stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    checkpoint = tmp_path / "runs" / "term" / "checkpoint.pt"
    deadline = time.time() + 60
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not list(checkpoint.parent.glob(".*.tmp"))
    assert _run_cli(*args).exit_code == 0


# ---------------------------------------------------------------------- degenerate splits
def test_a_run_without_test_rows_completes_and_says_why_it_has_no_test_metrics(tmp_path):
    result = run_experiment(small_config(tmp_path, "name=notest", "dataset.preprocess.split.ratios=[0.9, 0.1, 0.0]"))
    assert result["status"] == "completed" and result["test_auc"] is None and result["test_by_frequency"] is None
    assert any("test split is" in w for w in result["warnings"])
    assert json.loads((tmp_path / "runs" / "notest" / "result.json").read_text())["test_auc"] is None


def test_a_tiny_valid_split_is_warned_about_in_the_result(tmp_path):
    result = run_experiment(small_config(tmp_path, "name=tiny", "dataset.preprocess.split.ratios=[0.985, 0.01, 0.005]"))
    assert any("valid split has" in w and "noisy" in w for w in result["warnings"])


# ---------------------------------------------------------------------- pre-flight memory
def test_a_run_far_larger_than_the_machine_is_refused_before_anything_is_built(tmp_path):
    result = _run_cli(*_cli_args(tmp_path, "name=huge", "embedding.dim=3000000"))
    assert result.exit_code == 2, result.output
    assert "this run needs about" in result.output and "GiB are free" in result.output
    assert "--no-memory-check" in result.output
    assert not (tmp_path / "runs" / "huge").exists()


def test_a_refused_run_names_the_settings_that_fit_mlet_a_narrower_inner_width(tmp_path):
    from embdim.train.memory import InsufficientMemory, check_memory, estimate_training_memory, lighter_runs
    from embdim.train.run import prepare_dataset

    cfg = small_config(tmp_path, "name=m", "method=mlet", "method.inner_dim=512")
    schema = prepare_dataset(cfg, progress=False).schema
    estimate = estimate_training_memory(cfg, schema)
    # room for k=256 under Adam, which no optimizer or table update alone reaches at k=512
    room = estimate_training_memory(small_config(tmp_path, "name=m", "method=mlet", "method.inner_dim=256"), schema)
    fits = lighter_runs(cfg, schema, room.total)
    assert fits[0].startswith("method.inner_dim=256 (about")
    assert not any(f.startswith(("train.optimizer=adagrad (", "embedding.sparse=true")) for f in fits)
    with pytest.raises(InsufficientMemory, match=r"These fit: method\.inner_dim=256"):
        check_memory(estimate, room.total, lighter=lambda available: lighter_runs(cfg, schema, available))
    assert lighter_runs(cfg, schema, 0) == []  # nothing fits in no memory: the message says so
    with pytest.raises(InsufficientMemory, match="no lighter optimizer or table update fits"):
        check_memory(estimate, 0, lighter=lambda available: lighter_runs(cfg, schema, available))


def test_the_estimate_counts_optimizer_state_per_slot_and_method_extras(tmp_path):
    from embdim.train.memory import estimate_training_memory
    from embdim.train.run import prepare_dataset

    cfg = small_config(tmp_path, "name=m")
    schema = prepare_dataset(cfg, progress=False).schema
    adam = estimate_training_memory(cfg, schema)
    sgd = estimate_training_memory(small_config(tmp_path, "name=m", "train.optimizer=sgd"), schema)
    trained = adam.parts["tables"] + adam.parts["model and method parameters"]
    assert adam.total - sgd.total == 2 * trained  # Adam's two moments
    rows = sum(f.vocab_size for f in schema.fields)
    assert adam.parts["tables"] == rows * 8 * 4 + rows * 4  # d=8 table + the first-order table
    pep = estimate_training_memory(small_config(tmp_path, "name=m", "method=pep"), schema)
    assert pep.parts["method state"] > rows * 8 * 4  # thresholds, their state and the masks
    sparse = estimate_training_memory(
        small_config(tmp_path, "name=m", "embedding.sparse=true", "train.embedding_decay=looked_up"), schema
    )
    assert sparse.parts["gradients"] == adam.parts["gradients"] - rows * 8 * 4  # no dense table gradient


def test_the_estimate_counts_fused_rows_padded_to_four_values_and_the_metrics_over_the_larger_split(tmp_path):
    from embdim.searchers.mde import MDEConfig, config_dims
    from embdim.train.memory import METRIC_BYTES_PER_ROW, estimate_training_memory
    from embdim.train.run import prepare_dataset

    fused = ("embedding.backend=torchrec", "train.optimizer=adagrad", "train.embedding_decay=looked_up")
    cfg = small_config(tmp_path, "name=m", "embedding.dim=5", *fused)
    schema = prepare_dataset(cfg, progress=False).schema
    rows = sum(f.vocab_size for f in schema.fields)
    estimate = estimate_training_memory(cfg, schema)
    assert estimate.parts["tables"] == rows * 8 * 4 + rows * 4  # d=5 held 8 wide, and the first-order table
    eight = estimate_training_memory(small_config(tmp_path, "name=m", "embedding.dim=8", *fused), schema)

    def table_state(e):  # Adagrad's one slot over the tables, the dense part's taken out
        return e.parts["optimizer state"] - e.parts["model and method parameters"]

    assert table_state(estimate) == table_state(eight) == eight.parts["tables"]  # d=5's state padded as d=8's
    plain = estimate_training_memory(small_config(tmp_path, "name=m", "embedding.dim=5"), schema)
    assert plain.parts["tables"] == rows * 5 * 4 + rows * 4  # torch's tables: d values a row
    mde = estimate_training_memory(small_config(tmp_path, "name=m", "method=mde", *fused), schema)
    vocab = [f.vocab_size for f in schema.fields]
    widths = config_dims(vocab, 8, MDEConfig())
    assert min(widths) < 4  # a field narrower than four values, padded to four
    padded = sum(n * -(-w // 4) * 4 for n, w in zip(vocab, widths, strict=True))
    assert mde.parts["tables"] == padded * 4 + rows * 4
    largest = max(schema.rows["valid"], schema.rows["test"])
    assert estimate.parts["metrics"] == METRIC_BYTES_PER_ROW * largest > 0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "pep", "dml", "amtl", "mlet", "mde"])
def test_kill_9_at_a_random_moment_resumes_to_the_same_result(tmp_path, method):
    import random

    args = _cli_args(tmp_path, f"method={method}", "train.epochs=6", "train.checkpoint_every_steps=3")
    reference = _run_cli(*_cli_args(tmp_path, "name=ref", f"method={method}", "train.epochs=6"))
    assert reference.exit_code == 0, reference.output
    expected = json.loads(reference.output.strip().splitlines()[-1])
    run = tmp_path / "runs" / "quickstart"
    proc = subprocess.Popen([sys.executable, "-m", "embdim", *args], stderr=subprocess.DEVNULL, cwd=tmp_path)
    deadline = time.time() + 60
    while not (run / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(random.Random(method).uniform(0.0, 2.0))
    proc.kill()
    proc.wait()
    resumed = _run_cli(*args)
    assert resumed.exit_code == 0, resumed.output
    got = json.loads(resumed.output.strip().splitlines()[-1])
    for key in ("test_auc", "test_logloss", "valid_auc"):
        assert got[key] == expected[key], key
