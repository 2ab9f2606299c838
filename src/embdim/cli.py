"""Command line: ``embdim prepare | run | bench | inspect | list | options``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from embdim.config import ConfigError, load_config
from embdim.data.raw import DataError

app = typer.Typer(
    help="Learn embedding sizes for CTR models and export slim models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

ConfigArg = Annotated[Path, typer.Argument(help="experiment YAML (configs/experiments/...)")]
OverridesArg = Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. train.lr=0.01")]
RESULT_KEYS = (
    "test_auc",
    "test_logloss",
    "valid_auc",
    "embedding_params",
    "embedding_bytes",
    "full_embedding_params",
    "bytes_ratio",
    "train_seconds",
    "samples_per_second",
)


def _fail(err: Exception) -> None:
    console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(code=2)


@app.command()
def run(
    config: ConfigArg,
    overrides: OverridesArg = None,
    force: Annotated[bool, typer.Option(help="delete an existing run folder of this name first")] = False,
    progress: Annotated[bool, typer.Option(help="progress bars")] = True,
) -> None:
    """Train (or resume) the experiment; prints result.json and writes runs/<name>/."""
    from embdim.train.run import run_dir_for, run_experiment

    try:
        cfg = load_config(config, [*(overrides or []), *([] if progress else ["train.progress=false"])])
        result = run_experiment(cfg, force=force)
    except (ConfigError, DataError) as err:
        _fail(err)
    table = Table(title=f"{cfg.name}: {cfg.model.name} + {cfg.method.name} on {cfg.dataset.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in RESULT_KEYS:
        value = result.get(key)
        table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
    console.print(table)
    console.print(f"run folder: {run_dir_for(cfg)}")
    print(json.dumps({k: result.get(k) for k in RESULT_KEYS}))


@app.command()
def bench(
    config: Annotated[Path, typer.Argument(help="bench YAML (configs/bench/...)")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="key=value: bench keys (seeds=[1]) or, dotted, settings for every run (train.threads=1)"),
    ] = None,
    report_only: Annotated[bool, typer.Option(help="rewrite the report from results.csv, train nothing")] = False,
    progress: Annotated[bool, typer.Option(help="progress bars")] = True,
    jobs: Annotated[
        int, typer.Option(min=1, help="runs trained at once, each in a process of its own (cores / jobs threads)")
    ] = 1,
    rerun_stale: Annotated[
        bool, typer.Option(help="train again the runs whose folder holds an older config (moved to <bench>/stale/)")
    ] = False,
) -> None:
    """Sweep methods x budgets x seeds (resuming finished runs) and write results.csv + report.md with plots."""
    from embdim.bench import bench_dir, load_bench, run_bench
    from embdim.report.bench import write_report

    try:
        cfg, base = load_bench(config, overrides or [])
        if not progress:
            cfg.overrides.append("train.progress=false")
        if not report_only:
            run_bench(cfg, base, jobs=jobs, rerun_stale=rerun_stale)
        report = write_report(bench_dir(cfg), cfg.name)
    except (ConfigError, DataError) as err:
        _fail(err)
    except FileNotFoundError as err:
        _fail(ConfigError(f"nothing to report yet: {err.filename}"))
    console.print(f"report: {report}")
    print(report.read_text())


@app.command()
def prepare(config: ConfigArg, overrides: OverridesArg = None) -> None:
    """Read, split, encode and cache the experiment's dataset."""
    from embdim.train.run import prepare_dataset

    try:
        data = prepare_dataset(load_config(config, overrides or []))
    except (ConfigError, DataError) as err:
        _fail(err)
    console.print(f"cached in {data.cache_dir}: " + ", ".join(f"{k} {len(v):,} rows" for k, v in data.splits.items()))


@app.command()
def inspect(config: ConfigArg, overrides: OverridesArg = None) -> None:
    """Dataset statistics: rows, fields, vocabulary sizes, OOV share, frequency skew."""
    from embdim.data.stats import dataset_stats, format_stats
    from embdim.train.run import prepare_dataset

    try:
        data = prepare_dataset(load_config(config, overrides or []))
    except (ConfigError, DataError) as err:
        _fail(err)
    Console().print(format_stats(dataset_stats(data)))


@app.command(name="list")
def list_plugins() -> None:
    """Registered readers, models and methods."""
    from embdim.registry import MODELS, READERS, SEARCHERS

    for title, reg in (("readers", READERS), ("models", MODELS), ("methods", SEARCHERS)):
        print(f"{title}: {', '.join(reg.names())}")


@app.command()
def options(name: Annotated[str, typer.Argument(help="a registered method, model or reader (embdim list)")]) -> None:
    """The options of a method, model or reader: key, default and what it does (set them in a config
    or as method.KEY=VALUE / model.KEY=VALUE / dataset.options.KEY=VALUE)."""
    from embdim.registry import MODELS, READERS, SEARCHERS

    kinds = [("method", SEARCHERS, "Config"), ("model", MODELS, "Config"), ("reader", READERS, "Options")]
    found = [(kind, getattr(reg.get(name), attr)) for kind, reg, attr in kinds if name in reg]
    if not found:
        _fail(ConfigError(f"no method, model or reader named {name!r} (embdim list shows them)"))
    for kind, config_cls in found:
        table = Table(title=f"{kind} {name}")
        for column in ("key", "default", "description"):
            table.add_column(column, overflow="fold")
        for key, field in config_cls.model_fields.items():
            default = field.get_default(call_default_factory=True)
            table.add_row(key, json.dumps(default, default=str), field.description or "")
        Console().print(table)


def main() -> None:  # pragma: no cover
    sys.exit(app())
