"""``embdim bench``: every method x memory budget x seed on one dataset and model, as ordinary runs.

A bench config names an experiment (dataset, model, training settings) and sweeps over it::

    name: frappe_deepfm
    experiment: ../experiments/quickstart.yaml    # relative to this file
    overrides: [train.epochs=20]                  # applied to every run
    methods: [full, mde, {name: pep, label: pep_fast, threshold_lr: 0.1}]
    budgets: [0.5, 0.2, 0.1, 0.05]                # fractions of the uniform model's embedding bytes
    seeds: [1, 2, 3]
    precisions: [fp32, int8]                      # also score every run with its tables stored in int8

Each (method, budget, seed) is a normal run folder under ``<bench_root>/<name>/runs/``, so a killed
sweep resumes where it stopped and finished runs are never trained again. Every method aims at a
budget through its own ``Searcher.for_budget`` (uniform by width, MDE by scale, PEP by sparsity
target, DML / AMTL by a penalty controller, MLET by width); where a method cannot reach a budget,
the row says so instead of substituting another. The uniform model at the experiment's width is
run once per seed as the reference (budget 1.0) that sizes and times are compared with.

``precisions`` beyond ``fp32`` (what the runs train) score every finished run again post hoc with its
slim embedding's values stored in that precision (fp16, or int8 row-wise): rows labelled
``<label>+<precision>`` with their own bytes and test metrics, computed once per run and kept in its
folder (``quantised.json``). Learned sizes and quantisation multiply: a method's int8 row sits at about a
quarter of its fp32 row's bytes.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import yaml
from pydantic import Field, ValidationError, field_validator

from embdim.budget import LANDING_TOLERANCE, Budget, BudgetUnreachable, uniform_bytes
from embdim.config import ConfigError, RunConfig, _format_errors, check_folder_name, load_config
from embdim.errors import DivergedError
from embdim.options import Options
from embdim.plugins import SEARCHERS
from embdim.storage import VALUE_PRECISIONS

RESULTS_FILE = "results.csv"
RUNS_DIR = "runs"  # the sweep's run folders, under its bench folder
STALE_DIR = "stale"  # run folders of an earlier config, moved aside by --rerun-stale
REFERENCE_METHOD = "full"
REFERENCE_BUDGET = 1.0
PARENT_POLL_SECONDS = 1.0  # how often a worker checks that its sweep process is still alive


class MethodEntry(Options):
    """One method of the sweep: a registered name, a label for reports, and its options."""

    name: str
    label: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def tag(self) -> str:
        return self.label or self.name


class BenchConfig(Options):
    """A sweep of methods x budgets x seeds over one experiment."""

    name: str = Field(description="bench name: folder <bench_root>/<name>")
    experiment: str = Field(description="experiment YAML (dataset, model, training), relative to the bench file")
    overrides: list[str] = Field(default_factory=list, description="key=value overrides for every run")
    methods: list[MethodEntry] = Field(min_length=1, description="methods to compare")
    budgets: list[Budget] = Field(min_length=1, description="memory budgets (a number is a fraction)")
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=1, description="training seeds")
    precisions: list[str] = Field(
        default_factory=lambda: ["fp32"],
        description="stored precisions every run is scored at: fp32 (as trained), and post hoc fp16 / int8",
    )
    bench_root: str = Field("runs/bench", description="where bench folders go")

    @field_validator("precisions")
    @classmethod
    def _known_precisions(cls, precisions: list[str]) -> list[str]:
        if unknown := [p for p in precisions if p not in VALUE_PRECISIONS]:
            raise ValueError(f"unknown precision(s) {unknown}; use {', '.join(VALUE_PRECISIONS)}")
        if "fp32" not in precisions or len(set(precisions)) != len(precisions):
            raise ValueError(f"list fp32 (what the runs train) and each precision once, got {precisions}")
        return precisions

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return check_folder_name(name)

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, value: Any) -> Any:
        out = []
        for item in value or []:
            if isinstance(item, str):
                item = {"name": item}
            elif isinstance(item, dict) and "options" not in item:
                item = dict(item)
                item = {"name": item.pop("name", None), "label": item.pop("label", None), "options": item}
            out.append(item)
        return out

    @field_validator("methods")
    @classmethod
    def _known(cls, methods: list[MethodEntry]) -> list[MethodEntry]:
        for m in methods:
            if m.name not in SEARCHERS:
                raise ValueError(f"unknown method {m.name!r}; registered: {', '.join(SEARCHERS.names())}")
        tags = [m.tag for m in methods]
        if len(set(tags)) != len(tags):
            raise ValueError(f"method labels must be unique, got {tags} (add label: ...)")
        return methods


@dataclass
class PlannedRun:
    """One cell of the sweep: a validated run config, or the reason it cannot be run."""

    method: MethodEntry
    budget: Budget
    seed: int
    config: RunConfig | None
    unreachable: str | None = None
    target_bytes: float = math.nan  # the budget in bytes, relative to the reference (uniform at the experiment's d)

    @property
    def run_name(self) -> str:
        return f"{self.method.tag}_b{budget_label(self.budget)}_s{self.seed}"


def budget_label(budget: Budget) -> str:
    if budget.kind == "fraction":
        return f"{budget.value:g}"
    return f"{budget.value:g}{budget.kind}"


def load_bench(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[BenchConfig, Path]:
    """Read and validate a bench YAML.

    ``overrides`` (``key=value``) set the bench's own top-level keys (``seeds=[1]``); a dotted key
    (``train.threads=1``) is a run setting and is appended to the overrides of every run.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"bench config not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    for assignment in overrides:
        key, sep, value = assignment.partition("=")
        if not sep:
            raise ConfigError(f"override {assignment!r} must look like key=value")
        key = key.strip()
        if "." in key:
            data["overrides"] = [*(data.get("overrides") or []), f"{key}={value}"]
        else:
            data[key] = yaml.safe_load(value)
    try:
        cfg = BenchConfig(**data)
    except ValidationError as err:
        raise ConfigError(f"{path}: invalid bench configuration\n{_format_errors(err)}") from None
    return cfg, path.resolve().parent


def bench_dir(cfg: BenchConfig) -> Path:
    return Path(cfg.bench_root) / cfg.name


def plan_runs(cfg: BenchConfig, base: Path) -> list[PlannedRun]:
    """Every (method, budget, seed) of the sweep plus the uniform reference per seed, budgets resolved.

    Resolving a budget needs the dataset's vocabulary sizes, so the dataset is prepared (or loaded
    from its cache) once here.
    """
    from embdim.train.run import prepare_dataset

    experiment = base / cfg.experiment
    run_root = str(bench_dir(cfg) / RUNS_DIR)

    def config_for(entry: MethodEntry, seed: int, name: str, extra: list[str]) -> RunConfig:
        overrides = [*cfg.overrides, f"method={entry.name}", f"train.seed={seed}", f"name={name}"]
        overrides.append(f"run_root={run_root}")
        overrides += [f"method.{k}={json.dumps(v)}" for k, v in entry.options.items()]
        return load_config(experiment, [*overrides, *extra])

    reference = MethodEntry(name=REFERENCE_METHOD, label="reference")
    first = config_for(reference, cfg.seeds[0], "probe", [])
    fields = prepare_dataset(first, progress=first.train.progress).schema.fields
    full_bytes = uniform_bytes(fields, first.embedding.dim)
    runs: list[PlannedRun] = []
    for seed in cfg.seeds:
        ref = PlannedRun(reference, Budget(value=REFERENCE_BUDGET), seed, None, target_bytes=full_bytes)
        ref.config = config_for(reference, seed, ref.run_name, [])
        runs.append(ref)
    for entry in cfg.methods:
        cls = SEARCHERS.get(entry.name)
        for budget in cfg.budgets:
            probe = config_for(entry, cfg.seeds[0], "probe", [])
            try:  # whether the method can aim at it; each run resolves its budget itself, as embdim run does
                cls.for_budget(fields, probe.embedding.dim, probe.method_options(), budget)
                reason = None
            except BudgetUnreachable as err:
                reason = str(err)
            for seed in cfg.seeds:
                planned = PlannedRun(entry, budget, seed, None, reason, budget.target_bytes(full_bytes))
                if reason is None:
                    extra = [f"method.budget={json.dumps(budget.model_dump(mode='json'))}"]
                    planned.config = config_for(entry, seed, planned.run_name, extra)
                runs.append(planned)
    return runs


def _flatten(result: dict[str, Any]) -> dict[str, Any]:
    """Scalars as they are; nested values (stages, field dims, method details) as JSON text."""
    return {k: v if isinstance(v, int | float | str | bool) or v is None else json.dumps(v) for k, v in result.items()}


def run_bench(cfg: BenchConfig, base: Path, jobs: int = 1, rerun_stale: bool = False) -> pl.DataFrame:
    """Run (or resume) the sweep, ``jobs`` runs at a time; writes and returns ``results.csv`` (one row
    per planned run, in plan order).

    With ``jobs > 1`` every run trains in a worker process of its own, without progress bars, on
    ``cpu_count // jobs`` threads unless the bench's overrides set ``train.threads``.

    A run folder whose stored config differs from the sweep's (the bench config or a method's
    options changed since) is stale: its row fails, naming the keys that changed, unless
    ``rerun_stale`` moves the folder to ``<bench>/stale/`` and trains the run again.
    """
    from tqdm.auto import tqdm

    from embdim.train import run as run_module

    if jobs < 1:
        raise ValueError(f"jobs: need at least 1, got {jobs}")
    if jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        cfg = cfg.model_copy(update={"overrides": [f"train.threads={threads}", *cfg.overrides, "train.progress=false"]})
    runs = plan_runs(cfg, base)
    folder = bench_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    rows: dict[int, dict[str, Any]] = {}

    def finish(index: int, outcome: dict[str, Any] | Exception | None) -> None:
        rows[index] = _result_row(runs[index], outcome)
        _write_results(folder, [rows[i] for i in sorted(rows)])  # after every run: a killed sweep keeps its table

    todo = []
    for i, planned in enumerate(runs):
        if planned.config is None:
            finish(i, None)
        elif (stale := _stale(planned.config, folder, rerun_stale)) is not None:
            finish(i, stale)
        else:
            todo.append(i)
    progress = runs[0].config.train.progress if runs[0].config else True
    bar = tqdm(total=len(todo), desc=f"bench {cfg.name}", unit="run", disable=not progress)
    if jobs == 1:
        for i in todo:
            finish(i, _attempt(run_module.run_experiment, runs[i].config))
            bar.update()
    else:
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(jobs, mp_context=spawn, initializer=exit_with_parent, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(_attempt, run_module.run_experiment, runs[i].config): i for i in todo}
            for future in as_completed(futures):
                finish(futures[future], future.result())
                bar.update()
    bar.close()
    done = [rows[i] for i in sorted(rows)]
    extra = [
        _quantised_row(row, bench_dir(cfg) / RUNS_DIR / row["run"], precision)
        for precision in cfg.precisions
        if precision != "fp32"
        for row in done
        if row["status"] == "done"
    ]
    if extra:
        _write_results(folder, done + extra)
    return pl.DataFrame(done + extra, infer_schema_length=None)


def _quantised_row(row: dict[str, Any], run_dir: Path, precision: str) -> dict[str, Any]:
    """The results.csv row of a finished run scored with its tables stored in ``precision``: its own
    label (``<label>+<precision>``), bytes and test metrics; the rest (budget, seed, time, landing) is the
    run's. Computed once and kept in the run's ``quantised.json``."""
    from embdim.serve import Bundle
    from embdim.train.checkpoint import atomic_write_json
    from embdim.train.evaluate import predict_logits
    from embdim.train.layout import RunFolder
    from embdim.train.metrics import log_loss, roc_auc
    from embdim.train.run import prepare_dataset

    folder = RunFolder(run_dir)
    stored = json.loads(folder.quantised.read_text()) if folder.quantised.is_file() else {}
    if precision not in stored:
        bundle = Bundle.load(folder.model)
        model = bundle.model
        slim = model.embedding.with_precision(precision)
        model.embedding = slim
        test = prepare_dataset(bundle.config, progress=False).splits["test"]
        logits = predict_logits(model, test, bundle.config.train.eval_batch_size)
        network = sum(t.numel() * t.element_size() for t in model.model.state_dict().values())
        stored[precision] = {
            "test_auc": roc_auc(test.labels, logits),
            "test_logloss": log_loss(test.labels, logits),
            "embedding_bytes": slim.stored_bytes(),
            "model_bytes": slim.stored_bytes() + network,
        }
        atomic_write_json(folder.quantised, stored)
    measured = stored[precision]
    full = row["full_embedding_bytes"]
    return row | measured | {"label": f"{row['label']}+{precision}", "bytes_ratio": measured["embedding_bytes"] / full}


def exit_with_parent(parent: int) -> None:
    """Worker initializer: exit as soon as the sweep process ``parent`` is gone. A sweep killed by a
    signal (not Ctrl-C, which reaches the workers too) would otherwise leave its workers training
    into run folders that nobody collects."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _stale(config: RunConfig, folder: Path, rerun: bool) -> ConfigError | None:
    """The error of a run whose folder holds another config, or None when it may (re)run; with
    ``rerun`` such a folder is moved to ``folder/stale/`` (replacing an older copy) instead."""
    from embdim.train.run import describe_changes, run_dir_for, stored_config_changes

    changes = stored_config_changes(config)
    if not changes:
        return None
    run_dir = run_dir_for(config)
    if rerun:
        target = folder / STALE_DIR / run_dir.name
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        run_dir.rename(target)
        return None
    return ConfigError(
        f"{run_dir} holds a different config ({describe_changes(changes, '; ')}); --rerun-stale trains it again"
    )


def _attempt(train: Callable[[RunConfig], dict[str, Any]], config: RunConfig) -> dict[str, Any] | Exception:
    """``train(config)``, or the exception it raised: one broken run is reported and the sweep goes on
    (a kill, ``KeyboardInterrupt``, still stops it)."""
    try:
        return train(config)
    except Exception as err:
        return err


def _result_row(planned: PlannedRun, outcome: dict[str, Any] | Exception | None) -> dict[str, Any]:
    """The results.csv row of a run: its ``result.json`` fields, or why it has none (``outcome`` None:
    unreachable; an exception: failed)."""
    row: dict[str, Any] = {
        "label": planned.method.tag,
        "budget": budget_label(planned.budget),
        "budget_kind": planned.budget.kind,
        "budget_value": planned.budget.value,
        "seed": planned.seed,
        "status": "unreachable" if planned.unreachable else "done",
        "reason": planned.unreachable or "",
        "run": planned.run_name,
    }
    if isinstance(outcome, Exception):
        status = "diverged" if isinstance(outcome, DivergedError) else "failed"
        reason = f"{type(outcome).__name__}: {outcome}"
        return row | {"status": status, "reason": reason, "method": planned.method.name}
    if outcome is not None:
        target = planned.target_bytes
        row |= _flatten({k: v for k, v in outcome.items() if k != "status"}) | {"budget_bytes": target}
        if planned.budget.kind == "params":
            got, want = outcome["embedding_params"], planned.budget.value
        else:
            got, want = outcome["embedding_bytes"], target
        row["landed"] = abs(got - want) <= LANDING_TOLERANCE * want
    return row | {"method": planned.method.name}


def _write_results(folder: Path, rows: list[dict[str, Any]]) -> None:
    from embdim.train.checkpoint import atomic_write_text

    frame = pl.DataFrame(rows, infer_schema_length=None)
    atomic_write_text(folder / RESULTS_FILE, frame.write_csv())


SUMMARISED = {
    "test_auc": pl.Float64,
    "test_logloss": pl.Float64,
    "embedding_bytes": pl.Float64,
    "full_embedding_bytes": pl.Float64,
    "model_bytes": pl.Float64,
    "landed": pl.Boolean,
    "samples_per_second": pl.Float64,
    "train_seconds": pl.Float64,
}
"""The columns of finished runs that :func:`summarise` reads, with their types."""


def summarise(results: pl.DataFrame) -> pl.DataFrame:
    """Mean and std over seeds per (label, budget), with size and speed relative to the reference.

    ``train_seconds`` is the sum over the cell's seeds: what the cell cost to train.
    """
    done = results.filter(pl.col("status") == "done")
    # a sweep where no run finished has none of the runs' columns, and one recorded before runs reported
    # their whole model's size has no model_bytes: an empty value is what they summarise to
    done = done.with_columns(
        pl.lit(None, dtype=dtype).alias(name) for name, dtype in SUMMARISED.items() if name not in done.columns
    )
    ref = done.filter(pl.col("label") == "reference")
    ref_sps = ref["samples_per_second"].median() if len(ref) else math.nan
    ref_bytes = ref["full_embedding_bytes"].median() if len(ref) else math.nan
    summary = (
        done.group_by("label", "method", "budget", "budget_value", maintain_order=True)
        .agg(
            pl.len().alias("seeds"),
            pl.col("test_auc").mean().alias("auc_mean"),
            pl.col("test_auc").std().alias("auc_std"),
            pl.col("test_logloss").mean().alias("logloss_mean"),
            pl.col("test_logloss").std().alias("logloss_std"),
            pl.col("embedding_bytes").mean().alias("bytes"),
            pl.col("model_bytes").mean().alias("model_bytes"),
            pl.col("landed").all().alias("landed"),
            pl.col("samples_per_second").median().alias("samples_per_second"),
            pl.col("train_seconds").sum().alias("train_seconds"),
        )
        .with_columns(
            (pl.col("bytes") / ref_bytes).alias("bytes_ratio"),
            (ref_sps / pl.col("samples_per_second")).alias("time_ratio"),
        )
    )
    return summary
