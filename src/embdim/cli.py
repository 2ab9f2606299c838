"""Command line: ``embdim prepare | run | bench | predict | evaluate | export | inspect | generate | list |
options``."""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from embdim.config import load_config
from embdim.errors import ConfigError, EmbdimError, shorten

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
    "end_to_end_samples_per_second",
)


DEBUG_ENV = "EMBDIM_DEBUG"  # set to 1 to see the traceback of an unexpected error
EXIT_ERROR = 2  # a user-facing error (config, data, divergence, damaged files, disk)
EXIT_INTERNAL = 3  # a bug: the message asks for EMBDIM_DEBUG=1
EXIT_INTERRUPTED = 130  # SIGINT or SIGTERM
MAX_LINE_CHARS = 500  # error lines are cut to this length (a bad value can be megabytes long)
OS_HINTS = {
    errno.ENOSPC: "the disk is full: free space there (a run needs room for its checkpoint and model)",
    errno.EROFS: "the file system is read-only: choose another run_root / cache_root",
    errno.EACCES: "permission denied: choose a folder you can write to",
    errno.EDQUOT: "disk quota exceeded: free space there",
}

F = TypeVar("F", bound=Callable[..., Any])


def _print_error(message: str) -> None:
    lines = [shorten(line, MAX_LINE_CHARS) for line in str(message).splitlines() or [""]]
    rank = _launched_rank()
    if rank:  # one rank of several (torchrun): say which
        lines[0] = f"rank {rank}: {lines[0]}"
    console.print("[bold red]error:[/] " + escape("\n".join(lines)), soft_wrap=True)


def _fail(err: Exception | str, code: int = EXIT_ERROR) -> None:
    _print_error(str(err))
    raise typer.Exit(code=code)


def _os_message(err: OSError) -> str:
    where = f"{err.filename}: " if err.filename else ""
    hint = OS_HINTS.get(err.errno or 0)
    return f"{where}{err.strerror or err}" + (f" ({hint})" if hint else "")


def _launched_rank() -> int | None:
    """This process's rank when a launcher (torchrun) started it as one of several, else ``None``."""
    from embdim.distributed.group import RANK_ENV, launched_world

    return int(os.environ[RANK_ENV]) if launched_world() else None


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record is emitted: a caller that runs several
    commands in one process (a test runner, a notebook) swaps and closes the stream between them."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler's __init__ sets it: always sys.stderr instead
        pass


def _log_warnings_to_stderr() -> None:
    """embdim's warnings (``logging.getLogger("embdim")``) as ``warning: ...`` lines on stderr, once."""
    logger = logging.getLogger("embdim")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def user_errors(command: F) -> F:
    """Turn every failure of ``command`` into one ``error:`` line and an exit code, never a traceback:
    embdim's own errors and OS errors as they are, an interrupt (SIGINT, and SIGTERM likewise) as
    "interrupted", anything else as an internal error (``EMBDIM_DEBUG=1`` re-raises it)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _log_warnings_to_stderr()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.exceptions.TyperException):
            raise
        except EmbdimError as err:
            _fail(err)
        except OSError as err:
            _fail(_os_message(err))
        except KeyboardInterrupt:
            _fail("interrupted; run the same command again to resume where it stopped", EXIT_INTERRUPTED)
        except Exception as err:
            if os.environ.get(DEBUG_ENV):
                raise
            _fail(f"internal error ({type(err).__name__}: {err}); {DEBUG_ENV}=1 shows the traceback", EXIT_INTERNAL)

    return wrapper  # type: ignore[return-value]


@app.command()
@user_errors
def run(
    config: ConfigArg,
    overrides: OverridesArg = None,
    force: Annotated[bool, typer.Option(help="delete an existing run folder of this name first")] = False,
    progress: Annotated[bool, typer.Option(help="progress bars")] = True,
    memory_check: Annotated[
        bool, typer.Option(help="refuse a run whose memory estimate exceeds the free memory")
    ] = True,
) -> None:
    """Train (or resume) the experiment; prints result.json and writes runs/<name>/. With train.processes=N it
    trains on N local processes (tables sharded by TorchRec); torchrun ... -m embdim run CONFIG starts the
    processes from outside (docs/scale.md)."""
    from embdim.train.checkpoint import strict_json
    from embdim.train.run import run_dir_for, run_experiment

    cfg = load_config(config, [*(overrides or []), *([] if progress else ["train.progress=false"])])
    result = run_experiment(cfg, force=force, memory_check=memory_check)
    if _launched_rank():
        return  # one rank of several (torchrun): rank 0 reports
    from embdim.report.plots import plot_run
    from embdim.train.run import prepare_dataset

    plot_run(run_dir_for(cfg), prepare_dataset(cfg, progress=False).schema.fields)  # sizes per field / vs frequency
    table = Table(title=f"{cfg.name}: {cfg.model.name} + {cfg.method.name} on {cfg.dataset.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in RESULT_KEYS:
        value = result.get(key)
        table.add_row(key, f"{value:.6g}" if isinstance(value, float) else str(value))
    console.print(table)
    console.print(f"run folder: {run_dir_for(cfg)}")
    print(strict_json({k: result.get(k) for k in RESULT_KEYS}))


@app.command()
@user_errors
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

    cfg, base = load_bench(config, overrides or [])
    if not progress:
        cfg.overrides.append("train.progress=false")
    if not report_only:
        run_bench(cfg, base, jobs=jobs, rerun_stale=rerun_stale)
    try:
        report = write_report(bench_dir(cfg), cfg.name)
    except FileNotFoundError as err:
        raise ConfigError(f"nothing to report yet: {err.filename} (run the sweep first)") from None
    console.print(f"report: {report}")
    print(report.read_text())


BundleArg = Annotated[Path, typer.Argument(help="a bundle (runs/<name>/model) or the run folder that holds it")]
InputArg = Annotated[Path, typer.Argument(help="raw rows in the format the model was trained on, or a table")]
BatchOption = Annotated[int, typer.Option(min=1, help="rows scored at a time")]
InputFormatOption = Annotated[
    str,
    typer.Option(
        help="reader: the training reader's format; table: CSV/TSV/Parquet with the model's input columns; "
        "auto: reader where it can read a single file, else table"
    ),
]


def _input_format(value: str) -> str:
    from embdim.serve import INPUT_FORMATS

    if value not in INPUT_FORMATS:
        raise ConfigError(f"--input-format {shorten(repr(value))}: use one of {', '.join(INPUT_FORMATS)}")
    return value


@app.command()
@user_errors
def predict(
    bundle: BundleArg,
    input: InputArg,
    output: Annotated[Path | None, typer.Option(help="scores.csv or scores.parquet (default: CSV on stdout)")] = None,
    batch_size: BatchOption = 4096,
    input_format: InputFormatOption = "auto",
) -> None:
    """Score raw rows with a trained model: one click probability per input row, in input order (and the
    row's label next to it when the input has one)."""
    import polars as pl

    from embdim.serve import load

    fmt = _input_format(input_format)
    if output is not None and output.suffix not in (".csv", ".parquet"):
        raise ConfigError(f"--output {output}: write .csv or .parquet")
    scored = load(bundle).score(input, batch_size, fmt)
    frame = pl.DataFrame({"score": scored.scores})
    if scored.labelled:
        frame = frame.with_columns(pl.Series("label", scored.labels).fill_nan(None))
    if output is None:
        sys.stdout.write(frame.write_csv())
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    try:  # written next to its place and renamed: a failure leaves no half-written file
        frame.write_parquet(tmp) if output.suffix == ".parquet" else frame.write_csv(tmp)
        tmp.replace(output)
    finally:
        tmp.unlink(missing_ok=True)
    console.print(f"{len(frame):,} scores written to {output}")


@app.command()
@user_errors
def evaluate(
    bundle: BundleArg,
    input: InputArg,
    batch_size: BatchOption = 16384,
    input_format: InputFormatOption = "auto",
) -> None:
    """Global AUC and logloss of a trained model on labelled raw rows, and both by how often the rows'
    ids were seen in training; prints JSON."""
    from embdim.serve import load
    from embdim.train.checkpoint import strict_json

    metrics = load(bundle).evaluate(input, batch_size, _input_format(input_format))
    console.print(f"AUC {metrics['auc']}, logloss {metrics['logloss']:.6g} on {metrics['rows']:,} rows")
    print(strict_json(metrics, indent=1))


@app.command()
@user_errors
def export(
    run: Annotated[Path, typer.Argument(help="a run folder (runs/<name>) or a bundle")],
    format: Annotated[str, typer.Option(help="bundle, torchrec, torchscript or onnx")] = "bundle",
    output: Annotated[Path | None, typer.Option(help="folder to write (default: <run>/export-<format>)")] = None,
    precision: Annotated[str, typer.Option(help="stored embedding values: fp32, fp16 or int8 (row-wise)")] = "fp32",
    force: Annotated[bool, typer.Option(help="replace an existing output folder")] = False,
) -> None:
    """Export a trained model: a bundle (optionally with fp16 or int8 tables), TorchRec tables with their
    weights, or the network as TorchScript or ONNX; prints what was written and its size."""
    from embdim.serve import EXPORT_FORMATS, export_bundle
    from embdim.storage import VALUE_PRECISIONS

    if format not in EXPORT_FORMATS:
        raise ConfigError(f"--format {shorten(repr(format))}: use one of {', '.join(EXPORT_FORMATS)}")
    if precision not in VALUE_PRECISIONS:
        raise ConfigError(f"--precision {shorten(repr(precision))}: use one of {', '.join(VALUE_PRECISIONS)}")
    target = output or Path(run) / (f"export-{format}" + ("" if precision == "fp32" else f"-{precision}"))
    if target.exists() and not force:
        raise ConfigError(f"{target} exists: use --force to replace it")
    report = export_bundle(run, target, format, precision)
    console.print(f"{format} export ({precision}) written to {target}: {report['bytes']:,} bytes")
    print(json.dumps(report))


@app.command()
@user_errors
def prepare(config: ConfigArg, overrides: OverridesArg = None) -> None:
    """Read, split, encode and cache the experiment's dataset."""
    from embdim.train.run import prepare_dataset

    data = prepare_dataset(load_config(config, overrides or []))
    for warning in data.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")
    console.print(f"cached in {data.cache_dir}: " + ", ".join(f"{k} {len(v):,} rows" for k, v in data.splits.items()))


@app.command()
@user_errors
def inspect(config: ConfigArg, overrides: OverridesArg = None) -> None:
    """Dataset statistics: rows, fields, vocabulary sizes, OOV share, frequency skew."""
    from embdim.data.stats import dataset_stats, format_stats
    from embdim.train.run import prepare_dataset

    data = prepare_dataset(load_config(config, overrides or []))
    Console().print(format_stats(dataset_stats(data)))


@app.command()
@user_errors
def generate(
    out: Annotated[Path, typer.Argument(help="Criteo-format text file to write (.gz: gzip-compressed)")],
    rows: Annotated[int, typer.Option(min=1, help="rows to write")] = 1_000_000,
    profile: Annotated[
        str, typer.Option(help="criteo-kaggle: Criteo Kaggle's real cardinalities; criteo-like: scaled to --vocab")
    ] = "criteo-kaggle",
    vocab: Annotated[int, typer.Option(min=26, help="criteo-like: distinct values in all")] = 1_000_000,
    seed: Annotated[int, typer.Option(min=0, help="seed of the rows and the planted teacher")] = 0,
    force: Annotated[bool, typer.Option(help="replace an existing file")] = False,
    progress: Annotated[bool, typer.Option(help="progress bar")] = True,
) -> None:
    """Write synthetic Criteo-format text with a planted teacher (read it with the criteo reader);
    the spec and its planted truth go to OUT.spec.json."""
    from embdim.data.synthetic import criteo_kaggle, criteo_like, write_criteo_text

    profiles = {
        "criteo-kaggle": lambda: criteo_kaggle(rows, seed),
        "criteo-like": lambda: criteo_like(rows, vocab, seed),
    }
    if profile not in profiles:
        raise ConfigError(f"--profile {shorten(repr(profile))}: use {' or '.join(profiles)}")
    if out.exists() and not force:
        raise ConfigError(f"{out} exists: use --force to replace it")
    spec = profiles[profile]()
    spec_path = out.with_name(out.name + ".spec.json")
    write_criteo_text(out, rows, seed, spec=spec, progress=progress)
    text = json.dumps({"profile": profile, "spec": spec.model_dump(mode="json"), "truth": spec.truth()}, indent=1)
    spec_path.write_text(text + "\n")
    console.print(f"wrote {rows:,} rows to {out} (spec and planted truth: {spec_path})")


@app.command(name="list")
@user_errors
def list_plugins() -> None:
    """Registered readers, models and methods."""
    from embdim.plugins import MODELS, READERS, SEARCHERS

    for title, reg in (("readers", READERS), ("models", MODELS), ("methods", SEARCHERS)):
        print(f"{title}: {', '.join(reg.names())}")


@app.command()
@user_errors
def options(name: Annotated[str, typer.Argument(help="a registered method, model or reader (embdim list)")]) -> None:
    """The options of a method, model or reader: key, default and what it does (set them in a config
    or as method.KEY=VALUE / model.KEY=VALUE / dataset.options.KEY=VALUE)."""
    from embdim.plugins import MODELS, READERS, SEARCHERS

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
