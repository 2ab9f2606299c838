"""The report of an ``embdim bench`` sweep: a Markdown table and PNG plots a person can open anywhere.

``write_report(folder)`` reads ``folder/results.csv`` and writes ``report.md``, ``pareto.png``
(test AUC against embedding bytes, log scale, one line per method with std error bars) and, where
runs hold them, plots of the learned sizes (per field for field-level methods, against frequency
for value-level ones).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import polars as pl

from embdim.bench import RESULTS_FILE, summarise

PARETO_FILE = "pareto.png"
REPORT_FILE = "report.md"
FIGURE_DPI = 110


def _pm(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def plot_pareto(summary: pl.DataFrame, path: Path, title: str) -> Path:
    """Test AUC (mean ± std over seeds) against embedding bytes, one line per method."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in summary["label"].unique(maintain_order=True):
        part = summary.filter(pl.col("label") == label).sort("bytes")
        std = part["auc_std"].fill_null(0.0).fill_nan(0.0).to_list()
        if label == "reference":
            ax.axhline(part["auc_mean"][0], color="grey", linestyle="--", linewidth=1)
        marker = "*" if label == "reference" else "o"
        ax.errorbar(part["bytes"], part["auc_mean"], yerr=std, marker=marker, capsize=3, label=label)
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
        "| method | budget | seeds | test AUC | test logloss | embedding bytes | bytes / full | time / full | landed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary.iter_rows(named=True):
        lines.append(
            f"| {row['label']} | {row['budget']} | {row['seeds']} | {_pm(row['auc_mean'], row['auc_std'])} "
            f"| {_pm(row['logloss_mean'], row['logloss_std'])} | {row['bytes']:,.0f} | {row['bytes_ratio']:.3f} "
            f"| {row['time_ratio']:.2f} | {'yes' if row['landed'] else 'no'} |"
        )
    unreachable = results.filter(pl.col("status") == "unreachable").unique(["label", "budget"], maintain_order=True)
    if len(unreachable):
        lines += ["", "Budgets a method cannot reach (not substituted):", ""]
        lines += [f"- {r['label']} at {r['budget']}: {r['reason']}" for r in unreachable.iter_rows(named=True)]
    failed = results.filter(pl.col("status") == "failed")
    if len(failed):
        lines += ["", "Runs that failed (see their run folders):", ""]
        lines += [f"- {r['run']}: {r['reason']}" for r in failed.iter_rows(named=True)]
    lines += [
        "",
        "Time / full: the reference's samples per second over the method's (medians over seeds), "
        "measured in separate runs on the same machine.",
    ]
    report = folder / REPORT_FILE
    report.write_text("\n".join(lines) + "\n")
    return report
