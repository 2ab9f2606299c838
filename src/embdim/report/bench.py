"""The report of an ``embdim bench`` sweep: a Markdown table and PNG plots a person can open anywhere.

``write_report(folder)`` reads ``folder/results.csv`` and writes ``report.md``, ``pareto.png``
(test AUC against embedding bytes, log scale, one line per method with std error bars) and the
learned sizes at every budget (``report/bench_sizes.py``: per field for field-level methods,
against training frequency for value-level ones).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import polars as pl
import yaml

from embdim.bench import RESULTS_FILE, RUNS_DIR, summarise
from embdim.config import ConfigError
from embdim.data.raw import DataError
from embdim.data.schema import FieldInfo
from embdim.report.bench_sizes import (
    FIELD_SIZES_FILE,
    FIGURE_DPI,
    SIZES_VS_FREQUENCY_FILE,
    learned_plans,
    plot_field_sizes_by_budget,
    plot_sizes_vs_frequency_by_budget,
)

PARETO_FILE = "pareto.png"
REPORT_FILE = "report.md"


def _pm(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def plot_pareto(summary: pl.DataFrame, path: Path, title: str) -> Path:
    """Test AUC (mean ± std over seeds) against embedding bytes, one line per method; a method's runs stored
    in another precision (``<method>+int8``) in its colour, dashed, with open markers."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labels = summary["label"].unique(maintain_order=True).to_list()
    methods = list(dict.fromkeys(label.split("+")[0] for label in labels))
    colours = {method: f"C{i % 10}" for i, method in enumerate(methods)}
    for label in labels:
        part = summary.filter(pl.col("label") == label).sort("bytes")
        std = part["auc_std"].fill_null(0.0).fill_nan(0.0).to_list()
        if label == "reference":
            ax.axhline(part["auc_mean"][0], color="grey", linestyle="--", linewidth=1)
        method, stored = label.split("+")[0], "+" in label
        ax.errorbar(
            part["bytes"],
            part["auc_mean"],
            yerr=std,
            marker="*" if method == "reference" else "o",
            color=colours[method],
            linestyle="--" if stored else "-",
            markerfacecolor="none" if stored else colours[method],
            capsize=3,
            label=label,
        )
    ax.set_xscale("log")
    ax.set_xlabel("embedding bytes of the slim model (log scale)")
    ax.set_ylabel("test AUC (mean ± std over seeds)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)
    return path


def _dataset_fields(results: pl.DataFrame, runs_dir: Path) -> list[FieldInfo]:
    """The sweep's encoded fields with training counts, from the dataset cache of its first run."""
    from embdim.config import validate
    from embdim.train.layout import CONFIG_FILE
    from embdim.train.run import prepare_dataset

    first = results.filter(pl.col("status") == "done")["run"][0]
    config = validate(yaml.safe_load((runs_dir / first / CONFIG_FILE).read_text()), source=f"{first}/{CONFIG_FILE}")
    return prepare_dataset(config, progress=False).schema.fields


def _size_plots(results: pl.DataFrame, folder: Path) -> list[str]:
    """Write the learned-size plots of the sweep; returns the report lines that show them."""
    runs_dir = folder / RUNS_DIR
    field_level, value_level = learned_plans(results, runs_dir)
    lines = []
    if field_level:
        plot_field_sizes_by_budget(field_level, folder / FIELD_SIZES_FILE)
        lines += ["", "## Sizes per field (field-level methods, first seed)", ""]
        lines += [f"![width per field at each budget]({FIELD_SIZES_FILE})"]
    if value_level:
        lines += ["", "## Size against frequency (value-level methods, first seed)", ""]
        try:
            fields = _dataset_fields(results, runs_dir)
        except (ConfigError, DataError, OSError) as err:
            return [*lines, f"Not drawn: the dataset's training counts could not be loaded ({err})."]
        plot_sizes_vs_frequency_by_budget(value_level, fields, folder / SIZES_VS_FREQUENCY_FILE)
        lines += [f"![mean stored size against training count]({SIZES_VS_FREQUENCY_FILE})"]
    return lines


def _warnings(results: pl.DataFrame) -> list[str]:
    """Report lines for what finished runs warned about (``result.json``'s ``warnings``, e.g. a search that
    ended short of its target), each message once with the runs that gave it."""
    if "warnings" not in results.columns:
        return []
    runs_by_message: dict[str, list[str]] = {}
    finished = results.filter(pl.col("status") == "done").unique("run", maintain_order=True)  # one row per precision
    for row in finished.iter_rows(named=True):
        for message in json.loads(row["warnings"] or "[]"):
            runs_by_message.setdefault(message, []).append(row["run"])
    if not runs_by_message:
        return []
    lines = ["", "Runs that finished with warnings (their `result.json` has them):", ""]
    return lines + [f"- {', '.join(runs)}: {message}" for message, runs in runs_by_message.items()]


def write_report(folder: str | Path, title: str | None = None) -> Path:
    """Write ``report.md`` and the plots for the sweep in ``folder``; returns the report's path."""
    folder = Path(folder)
    results = pl.read_csv(folder / RESULTS_FILE, infer_schema_length=None)
    title = title or folder.name
    summary = summarise(results)
    lines = [f"# Bench {title}", ""]
    if len(summary):
        plot_pareto(summary, folder / PARETO_FILE, title)
        lines += [f"![AUC against embedding bytes]({PARETO_FILE})", ""]
    lines += [
        "| method | budget | seeds | test AUC | test logloss | embedding bytes | bytes / full | model bytes "
        "| time / full | train min | landed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary.iter_rows(named=True):
        model_bytes = "-" if row["model_bytes"] is None else f"{row['model_bytes']:,.0f}"
        lines.append(
            f"| {row['label']} | {row['budget']} | {row['seeds']} | {_pm(row['auc_mean'], row['auc_std'])} "
            f"| {_pm(row['logloss_mean'], row['logloss_std'])} | {row['bytes']:,.0f} | {row['bytes_ratio']:.3f} "
            f"| {model_bytes} | {row['time_ratio']:.2f} | {row['train_seconds'] / 60:.1f} "
            f"| {'yes' if row['landed'] else 'no'} |"
        )
    unreachable = results.filter(pl.col("status") == "unreachable").unique(["label", "budget"], maintain_order=True)
    if len(unreachable):
        lines += ["", "Budgets a method cannot reach (not substituted):", ""]
        lines += [f"- {r['label']} at {r['budget']}: {r['reason']}" for r in unreachable.iter_rows(named=True)]
    diverged = results.filter(pl.col("status") == "diverged")
    if len(diverged):
        lines += ["", "Runs that diverged (no result; their cells leave these seeds out):", ""]
        lines += [f"- {r['run']}: {r['reason']}" for r in diverged.iter_rows(named=True)]
    failed = results.filter(pl.col("status") == "failed")
    if len(failed):
        lines += ["", "Runs that failed (see their run folders):", ""]
        lines += [f"- {r['run']}: {r['reason']}" for r in failed.iter_rows(named=True)]
    lines += _warnings(results)
    lines += [
        "",
        "Model bytes: the whole exported model (slim embedding and network). Time / full: the reference's "
        "samples per second over the method's (medians over seeds), measured in separate runs on the same "
        "machine. Train min: training minutes summed over the seeds. Each run's bundle is "
        f"`{RUNS_DIR}/<run>/model` (score raw rows with `embdim predict BUNDLE INPUT`).",
        f"All {len(summary)} cells: {summary['seeds'].sum()} finished runs, "
        f"{summary['train_seconds'].sum() / 60:.1f} training minutes in total (preprocessing excluded).",
    ]
    lines += _size_plots(results, folder)
    report = folder / REPORT_FILE
    report.write_text("\n".join(lines) + "\n")
    return report
