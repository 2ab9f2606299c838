"""``embdim bench``: budgets resolved per method, a resumable sweep, results.csv and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

import embdim.train.run as run_module
from conftest import TINY_SYNTHETIC
from embdim.bench import bench_dir, load_bench, run_bench
from embdim.budget import Budget, BudgetUnreachable
from embdim.config import ConfigError
from embdim.data.schema import FieldInfo
from embdim.embedding import EmbeddingLayer
from embdim.plan import EmbeddingPlan
from embdim.plugins import SEARCHERS
from embdim.report.bench import write_report
from embdim.report.bench_sizes import (
    frequency_bins,
    learned_plans,
    plot_field_sizes_by_budget,
    plot_sizes_vs_frequency_by_budget,
)
from embdim.searchers.base import Searcher
from embdim.storage import STORAGE_KINDS

EXPERIMENT = Path(__file__).resolve().parents[1] / "configs" / "experiments" / "quickstart.yaml"
FIELDS = [FieldInfo("a", 30), FieldInfo("b", 400), FieldInfo("c", 2000)]
TINY = [
    *TINY_SYNTHETIC,
    "dataset.options.rows=3000",
    "model.hidden=[16]",
    "embedding.dim=8",
    "train.batch_size=256",
    "train.epochs=1",
    "train.progress=false",
]


def write_bench(tmp_path: Path, **changes) -> Path:
    data = {
        "name": "tiny",
        "experiment": str(EXPERIMENT),
        "overrides": [*TINY, f"cache_root={tmp_path / 'cache'}"],
        "methods": ["full", {"name": "mde", "label": "mde_a04", "alpha": 0.4}],
        "budgets": [0.5, 0.05],
        "seeds": [1, 2],
        "bench_root": str(tmp_path / "bench"),
    } | changes
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("method", ["full", "mde", "hash", "qr"])
@pytest.mark.parametrize("fraction", [0.5, 0.25])
def test_size_set_methods_land_on_budgets(method, fraction):
    cls = SEARCHERS.get(method)
    budget = Budget(value=fraction)
    dim, config = cls.for_budget(FIELDS, 16, cls.Config(), budget)
    plan = EmbeddingLayer(FIELDS, dim, method, config).plan()
    full_bytes = sum(f.vocab_size for f in FIELDS) * 16 * 4
    assert abs(plan.num_bytes - fraction * full_bytes) <= 0.1 * fraction * full_bytes


def test_unreachable_budget_is_an_explicit_error():
    with pytest.raises(BudgetUnreachable, match="no uniform width"):
        SEARCHERS.get("full").for_budget(FIELDS, 16, SEARCHERS.get("full").Config(), Budget(value=0.01))


def test_sweep_writes_results_and_report(tmp_path):
    cfg, base = load_bench(write_bench(tmp_path))
    results = run_bench(cfg, base)
    # 2 reference runs + 2 methods x 2 budgets x 2 seeds
    assert len(results) == 10
    assert set(results["label"]) == {"reference", "full", "mde_a04"}
    unreachable = results.filter(pl.col("status") == "unreachable")
    assert ("full", "0.05") in set(zip(unreachable["label"], unreachable["budget"], strict=True))
    assert all(unreachable.filter(pl.col("label") == "full")["reason"].str.contains("no uniform width"))
    done = results.filter(pl.col("status") == "done")
    assert {("full", "0.5"), ("mde_a04", "0.5")} <= set(zip(done["label"], done["budget"], strict=True))
    assert done["test_auc"].is_not_null().all() and done.filter(pl.col("label") != "reference")["landed"].all()
    on_disk = pl.read_csv(bench_dir(cfg) / "results.csv")
    assert on_disk.shape[0] == 10
    assert {"test_auc", "embedding_bytes", "seed", "budget", "method"} <= set(on_disk.columns)

    report = write_report(bench_dir(cfg), "tiny").read_text()
    table_rows = [line for line in report.splitlines() if line.startswith("| ") and "---" not in line][1:]
    # reference, full at 0.5, mde at 0.5 and 0.05 (if mde reaches it) or listed as unreachable
    labels = {row.split("|")[1].strip() for row in table_rows}
    assert {"reference", "full", "mde_a04"} <= labels
    assert "full at 0.05" in report
    # each cell's training minutes are its seeds' train_seconds summed, and the total adds the cells
    minutes = [float(row.split("|")[10]) for row in table_rows]
    assert sum(minutes) == pytest.approx(done["train_seconds"].sum() / 60, abs=0.05 * len(minutes) + 1e-9)
    assert f"{int(done.shape[0])} finished runs" in report
    png = bench_dir(cfg) / "pareto.png"
    assert png.stat().st_size > 5000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![width per field at each budget](field_sizes.png)" in report  # MDE's widths differ by field
    assert (bench_dir(cfg) / "field_sizes.png").stat().st_size > 5000


def test_interrupted_sweep_resumes_without_retraining(tmp_path, monkeypatch):
    cfg, base = load_bench(write_bench(tmp_path, methods=["full"], budgets=[0.5]))
    real = run_module.run_experiment
    calls = []

    def dies_on_third(config, *args, **kwargs):
        calls.append(config.name)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill")
        return real(config, *args, **kwargs)

    monkeypatch.setattr(run_module, "run_experiment", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        run_bench(cfg, base)
    partial = pl.read_csv(bench_dir(cfg) / "results.csv")
    assert len(partial) == 2
    finished = {p: p.stat().st_mtime_ns for p in (bench_dir(cfg) / "runs").glob("*/result.json")}
    assert len(finished) == 2

    monkeypatch.setattr(run_module, "run_experiment", real)
    results = run_bench(cfg, base)
    assert len(results) == 4 and (results["status"] == "done").all()
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime  # finished runs were read back, not trained again
    assert json.loads(next(iter(finished)).read_text())["test_auc"] in set(results["test_auc"])


def test_stale_runs_are_named_and_rerun_on_request(tmp_path):
    cfg, base = load_bench(write_bench(tmp_path, methods=["full"], budgets=[0.5], seeds=[1]))
    first = run_bench(cfg, base)
    assert (first["status"] == "done").all()
    runs = bench_dir(cfg) / "runs"
    finished = {p: p.stat().st_mtime_ns for p in runs.glob("*/result.json")}

    changed, _ = load_bench(write_bench(tmp_path, methods=["full"], budgets=[0.5], seeds=[1]), ["train.lr=0.01"])
    refused = run_bench(changed, base)
    assert (refused["status"] == "failed").all()
    assert refused["reason"].str.contains(r"train\.lr: 0\.001 -> 0\.01").all()
    assert refused["reason"].str.contains("--rerun-stale").all()
    assert {p: p.stat().st_mtime_ns for p in runs.glob("*/result.json")} == finished  # nothing touched

    rerun = run_bench(changed, base, rerun_stale=True)
    assert (rerun["status"] == "done").all()
    for path in finished:
        assert yaml.safe_load((path.parent / "config.yaml").read_text())["train"]["lr"] == 0.01
        kept = bench_dir(cfg) / "stale" / path.parent.name
        assert yaml.safe_load((kept / "config.yaml").read_text())["train"]["lr"] == 0.001
        assert json.loads((kept / "result.json").read_text())["test_auc"] in set(first["test_auc"])


def test_a_finished_sweep_resumed_with_other_threads_or_progress_trains_nothing_again(tmp_path):
    cfg, base = load_bench(write_bench(tmp_path, methods=["full"], budgets=[0.5], seeds=[1]))
    first = run_bench(cfg, base)
    finished = {p: p.stat().st_mtime_ns for p in (bench_dir(cfg) / "runs").glob("*/result.json")}
    # what --jobs 2 adds to every run: how it executes, not what it trains
    resumed, _ = load_bench(write_bench(tmp_path, methods=["full"], budgets=[0.5], seeds=[1]), ["train.threads=1"])
    resumed = resumed.model_copy(update={"overrides": [*resumed.overrides, "train.progress=true"]})
    again = run_bench(resumed, base, rerun_stale=True)
    assert again["test_auc"].to_list() == first["test_auc"].to_list() and (again["status"] == "done").all()
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # not trained again, nor moved aside
    assert not (bench_dir(cfg) / "stale").exists()


@pytest.mark.parametrize(
    "change, key",
    [({"methods": ["nope"]}, "methods"), ({"budgets": [-0.5]}, "budgets.0.value"), ({"bogus": 1}, "bogus")],
)
def test_bad_bench_config_names_the_key(tmp_path, change, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_bench(write_bench(tmp_path, **change))


def test_command_line_overrides_set_bench_keys_and_run_settings(tmp_path):
    cfg, _ = load_bench(write_bench(tmp_path), ["seeds=[7]", "train.threads=1"])
    assert cfg.seeds == [7]
    assert cfg.overrides[-1] == "train.threads=1"
    assert cfg.overrides[:-1] == [*TINY, f"cache_root={tmp_path / 'cache'}"]


@pytest.mark.parametrize("path", sorted((EXPERIMENT.parents[1] / "bench").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_bench_configs_validate(path):
    cfg, base = load_bench(path)
    assert (base / cfg.experiment).is_file()
    assert {m.name for m in cfg.methods} <= set(SEARCHERS.names())


# schedules short enough for a 6,000-row data set (the defaults are sized for real ones)
SHORT_SCHEDULES = {
    "pep": {"pull_doubling_epochs": 1, "pull_start_epochs": 0, "threshold_lr": 0.2, "s0": -8},
    "amtl": {"budget_rate": 1.0, "budget_interval": 2},
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(SEARCHERS.names()))
def test_every_method_lands_on_a_budget(tmp_path, method):
    """Each registered method aims at half the uniform bytes its own way and lands within 10 %."""
    overrides = [*TINY, f"cache_root={tmp_path / 'cache'}", "train.epochs=12", "train.patience=12"]
    entry = {"name": method, **SHORT_SCHEDULES.get(method, {})}
    path = write_bench(tmp_path, methods=[entry], budgets=[0.5], seeds=[1], overrides=overrides)
    results = run_bench(*load_bench(path))
    row = results.filter(pl.col("label") == method).row(0, named=True)
    cls = SEARCHERS.get(method)
    if not cls.steers_to_budget and cls.for_budget.__func__ is Searcher.for_budget.__func__:
        # a method with no way to aim at a budget (the tests' example method) is reported as such
        assert row["status"] == "unreachable" and "no way to aim at a memory budget" in row["reason"]
        return
    assert row["status"] == "done", row["reason"]
    assert row["landed"], f"{method}: {row['embedding_bytes']} bytes for a target of {row['budget_bytes']:.0f}"
    cfg, _ = load_bench(path)
    report = write_report(bench_dir(cfg)).read_text()
    plan = json.loads((bench_dir(cfg) / "runs" / row["run"] / "plan.json").read_text())
    value_level = STORAGE_KINDS[plan["storage"]].per_row  # sizes per row (ragged, csr), not per field
    field_level = not value_level and len(set(plan["field_dims"])) > 1
    assert ("sizes_vs_frequency.png" in report) == value_level
    assert ("field_sizes.png" in report) == field_level
    assert (bench_dir(cfg) / "sizes_vs_frequency.png").exists() == value_level


def test_a_failing_run_is_reported_and_the_sweep_goes_on(tmp_path, monkeypatch):
    cfg, base = load_bench(write_bench(tmp_path, methods=["full"], budgets=[0.5], seeds=[1]))
    real = run_module.run_experiment

    def breaks_full(config, *args, **kwargs):
        if config.name.startswith("full_"):
            raise ValueError("broken on purpose")
        return real(config, *args, **kwargs)

    monkeypatch.setattr(run_module, "run_experiment", breaks_full)
    results = run_bench(cfg, base)
    assert results["status"].to_list() == ["done", "failed"]
    assert "broken on purpose" in results["reason"][1]
    assert "full_b0.5_s1: ValueError: broken on purpose" in write_report(bench_dir(cfg)).read_text()


def test_a_sweep_where_every_run_failed_still_gets_its_report(tmp_path, monkeypatch):
    cfg, base = load_bench(write_bench(tmp_path, methods=["full"], budgets=[0.5], seeds=[1]))

    def no_space(config, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_module, "run_experiment", no_space)
    results = run_bench(cfg, base)
    assert results["status"].to_list() == ["failed", "failed"] and "test_auc" not in results.columns
    report = write_report(bench_dir(cfg)).read_text()
    assert "reference_b1_s1: OSError: [Errno 28] No space left on device" in report
    assert "All 0 cells: 0 finished runs" in report and not (bench_dir(cfg) / "pareto.png").exists()


def test_the_report_lists_what_finished_runs_warned_about(tmp_path):
    # PEP's default schedule starts its drift after 10 epochs, beyond this bench's one: the run warns
    pep = {"name": "pep", "fused_threshold": False}  # eager ops: no compile to wait for
    cfg, base = load_bench(write_bench(tmp_path, methods=[pep], budgets=[0.5], seeds=[1], precisions=["fp32", "int8"]))
    run_bench(cfg, base)
    report = write_report(bench_dir(cfg)).read_text()
    assert "Runs that finished with warnings" in report
    assert "- pep_b0.5_s1: pep: the drift starts after method.pull_start_epochs=10" in report  # once, not per precision
    assert not any(line.startswith("- reference_b1_s1") for line in report.splitlines())


@pytest.mark.slow  # multi-process / whole runs: CI runs the slow suite
def test_parallel_jobs_give_the_same_table_as_one_at_a_time(tmp_path):
    """Runs are deterministic on CPU: two worker processes reproduce the sequential sweep row for row."""
    changes = {"methods": ["full"], "budgets": [0.5, 0.05], "seeds": [1]}
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    cfg, base = load_bench(write_bench(tmp_path / "one", **changes))
    sequential = run_bench(cfg, base)
    cfg, base = load_bench(write_bench(tmp_path / "two", **changes))
    parallel = run_bench(cfg, base, jobs=2)
    assert parallel["run"].to_list() == sequential["run"].to_list()  # plan order, whatever finished first
    assert parallel["status"].to_list() == ["done", "done", "unreachable"]
    assert parallel["test_auc"].to_list() == sequential["test_auc"].to_list()
    assert pl.read_csv(bench_dir(cfg) / "results.csv")["run"].to_list() == parallel["run"].to_list()
    with pytest.raises(ValueError, match="jobs"):
        run_bench(cfg, base, jobs=0)


@pytest.mark.slow  # multi-process / whole runs: CI runs the slow suite
def test_workers_exit_when_the_sweep_process_is_killed(tmp_path):
    """A sweep killed by SIGKILL leaves no worker training on (they watch their parent)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import multiprocessing, os, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from embdim.bench import exit_with_parent\n"
        "if __name__ == '__main__':\n"
        "    ctx = multiprocessing.get_context('spawn')\n"
        "    pool = ProcessPoolExecutor(1, mp_context=ctx, initializer=exit_with_parent, initargs=(os.getpid(),))\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    pool.submit(time.sleep, 120)\n"
        "    time.sleep(120)\n"
    )
    (tmp_path / "sweep.py").write_text(script)
    parent = subprocess.Popen([sys.executable, str(tmp_path / "sweep.py")], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        status = Path(f"/proc/{worker}/status")
        if status.exists() and "\nState:\tZ" in status.read_text():  # exited, not yet reaped by init
            return
        time.sleep(0.2)
    os.kill(worker, signal.SIGKILL)
    pytest.fail("the worker outlived its killed sweep process")


def test_frequency_bins_average_sizes_per_power_of_two_of_the_count():
    counts = np.array([0, 0, 1, 2, 3, 4, 7, 8, 100])
    sizes = np.array([1.0, 3.0, 5.0, 6.0, 8.0, 2.0, 4.0, 9.0, 10.0])
    edges, means = frequency_bins(counts, sizes)
    # bins: {0}, [1, 2), [2, 4), [4, 8), [8, 16), [64, 128)
    assert edges.tolist() == [0.5, 1.0, 2.0, 4.0, 8.0, 64.0]
    assert means.tolist() == [2.0, 5.0, 7.0, 3.0, 9.0, 10.0]


def _plan(method: str, storage: str, field_dims: list[int], rows: list[np.ndarray] | None = None) -> EmbeddingPlan:
    return EmbeddingPlan(method, [f.name for f in FIELDS], [f.vocab_size for f in FIELDS], 8, field_dims, storage, rows)


def test_report_draws_sizes_per_field_and_against_frequency_for_every_budget(tmp_path):
    fields = [FieldInfo(f.name, f.vocab_size, np.arange(f.vocab_size)[::-1].copy()) for f in FIELDS]
    rng = np.random.default_rng(0)
    plans = {
        ("dml", "0.5"): _plan("dml", "dense", [4, 6, 2]),
        ("dml", "0.2"): _plan("dml", "dense", [1, 2, 1]),
        ("full", "0.5"): _plan("full", "dense", [4, 4, 4]),  # uniform: nothing to draw
        ("pep", "0.5"): _plan("pep", "csr", [8, 8, 8], [rng.integers(0, 9, f.vocab_size) for f in FIELDS]),
    }
    rows = []
    for (label, budget), plan in plans.items():
        run = f"{label}_b{budget}_s1"
        (tmp_path / "runs" / run).mkdir(parents=True)
        plan.save(tmp_path / "runs" / run / "plan.json")
        rows.append({"label": label, "budget": budget, "seed": 1, "status": "done", "run": run})
    field_level, value_level = learned_plans(pl.DataFrame(rows), tmp_path / "runs")
    assert {k: sorted(v) for k, v in field_level.items()} == {"dml": ["0.2", "0.5"]}
    assert list(value_level) == ["pep"]
    for path in (
        plot_field_sizes_by_budget(field_level, tmp_path / "fields.png"),
        plot_sizes_vs_frequency_by_budget(value_level, fields, tmp_path / "frequency.png"),
    ):
        assert path.stat().st_size > 5000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="rows"):
        plot_sizes_vs_frequency_by_budget(value_level, fields[:2], tmp_path / "bad.png")


def test_precisions_score_every_run_again_with_its_tables_quantised_once(tmp_path):
    path = write_bench(tmp_path, methods=["full"], budgets=[0.5], seeds=[1], precisions=["fp32", "int8"])
    cfg, base = load_bench(path)
    results = run_bench(cfg, base)
    done = results.filter(pl.col("status") == "done")
    assert set(done["label"]) == {"reference", "full", "reference+int8", "full+int8"}
    for label in ("reference", "full"):
        fp32, int8 = (done.filter(pl.col("label") == name).row(0, named=True) for name in (label, f"{label}+int8"))
        # int8 codes plus a float16 scale and bias per row: a quarter of the values' bytes and 4 bytes a row
        rows = fp32["embedding_bytes"] // (4 * fp32["dim"])
        assert int8["embedding_bytes"] == rows * fp32["dim"] + 4 * rows
        assert int8["bytes_ratio"] == pytest.approx(int8["embedding_bytes"] / fp32["full_embedding_bytes"])
        assert abs(int8["test_auc"] - fp32["test_auc"]) < 0.01 and int8["seed"] == fp32["seed"]
    stored = bench_dir(cfg) / "runs" / "full_b0.5_s1" / "quantised.json"
    first = stored.stat().st_mtime_ns
    run_bench(cfg, base)  # finished runs are not scored again
    assert stored.stat().st_mtime_ns == first
    report = write_report(bench_dir(cfg)).read_text()
    assert "| full+int8 | 0.5 |" in report
    with pytest.raises(ConfigError, match="list fp32"):
        load_bench(write_bench(tmp_path, precisions=["int8"]))
