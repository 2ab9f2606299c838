"""The bench report's size plots: how each method spends each budget (the first finished seed's plan).

- ``field_sizes.png``: field-level methods (dense plans whose widths differ by field: DML, MDE), one
  panel per method, a group of bars per field (largest vocabulary first), one bar per budget.
- ``sizes_vs_frequency.png``: value-level methods (ragged, csr or compact plans: AMTL, PEP), one panel per
  method, the mean stored size of the ids in each training-count bin (powers of two), one line per
  budget.

Uniform plans (``full``, ``mlet``, the reference) have nothing to show and are left out.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from embdim.data.schema import FieldInfo
from embdim.plan import EmbeddingPlan

FIELD_SIZES_FILE = "field_sizes.png"
SIZES_VS_FREQUENCY_FILE = "sizes_vs_frequency.png"
FIGURE_DPI = 110
BAR_GROUP_WIDTH = 0.8  # share of a field's slot taken by its bars
INCH_PER_FIELD = 0.5
MIN_WIDTH, MAX_WIDTH, PANEL_HEIGHT = 6.0, 18.0, 3.2
FREQUENCY_PANEL_INCHES = (4.5, 3.4)

Plans = dict[str, dict[str, EmbeddingPlan]]  # method label -> budget label -> plan


def learned_plans(results: pl.DataFrame, runs_dir: Path) -> tuple[Plans, Plans]:
    """The plans of the sweep's non-uniform runs, first finished seed per (label, budget), split into
    field-level (dense, widths differ by field) and value-level (ragged, csr) ones."""
    from embdim.train.layout import PLAN_FILE

    done = results.filter((pl.col("status") == "done") & (pl.col("label") != "reference")).sort("seed")
    field_level: Plans = {}
    value_level: Plans = {}
    for row in done.unique(["label", "budget"], keep="first", maintain_order=True).iter_rows(named=True):
        path = runs_dir / row["run"] / PLAN_FILE
        if not path.exists():
            continue
        plan = EmbeddingPlan.load(path)
        if not plan.kind.per_row:
            if len(set(plan.field_dims)) > 1:
                field_level.setdefault(row["label"], {})[str(row["budget"])] = plan
        else:
            value_level.setdefault(row["label"], {})[str(row["budget"])] = plan
    return field_level, value_level


def _budget_colors(budgets: list[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("viridis")
    return {b: cmap(i / max(len(budgets) - 1, 1)) for i, b in enumerate(budgets)}


def _sorted_budgets(plans: Plans) -> list[str]:
    return sorted({b for by_budget in plans.values() for b in by_budget}, key=float, reverse=True)


def plot_field_sizes_by_budget(plans: Plans, path: Path) -> Path:
    """Per method a panel: width ``d_f`` per field (bars, one per budget); fields by vocabulary size,
    largest first. Returns ``path``."""
    budgets = _sorted_budgets(plans)
    colors = _budget_colors(budgets)
    first = next(iter(next(iter(plans.values())).values()))
    order = np.argsort(-np.asarray(first.vocab_sizes), kind="stable")
    width = min(MAX_WIDTH, max(MIN_WIDTH, INCH_PER_FIELD * len(order)))
    fig, axes = plt.subplots(len(plans), 1, figsize=(width, PANEL_HEIGHT * len(plans)), squeeze=False)
    x = np.arange(len(order))
    bar = BAR_GROUP_WIDTH / len(budgets)
    for ax, (label, by_budget) in zip(axes[:, 0], plans.items(), strict=True):
        for i, budget in enumerate(budgets):
            plan = by_budget.get(budget)
            if plan is None:
                continue
            sizes = np.asarray(plan.field_dims)[order]
            ax.bar(x - BAR_GROUP_WIDTH / 2 + (i + 0.5) * bar, sizes, bar, color=colors[budget], label=budget)
        ax.axhline(first.dim, color="grey", linestyle="--", linewidth=1)
        ax.set_ylabel("size (dims)")
        ax.set_ylim(0, first.dim * 1.05)
        ax.set_title(f"{label}: width per field (fields by vocabulary size, largest first)", fontsize=10)
        ax.set_xticks(x, [first.field_names[i] for i in order], rotation=45, ha="right", fontsize=8)
        ax.legend(title="budget", fontsize=7, title_fontsize=7, ncol=len(budgets), loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)
    return path


def frequency_bins(counts: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``sizes`` per training-count bin ``[2^k, 2^(k+1))`` (count 0 in a bin of its own, drawn
    at 0.5); returns (bin left edges, means) for the non-empty bins."""
    bins = np.where(counts > 0, np.floor(np.log2(np.maximum(counts, 1))).astype(np.int64) + 1, 0)
    sums = np.bincount(bins, weights=sizes)
    seen = np.bincount(bins)
    keep = seen > 0
    edges = np.where(np.arange(len(seen)) == 0, 0.5, 2.0 ** (np.arange(len(seen)) - 1))
    return edges[keep], sums[keep] / seen[keep]


def plot_sizes_vs_frequency_by_budget(plans: Plans, fields: list[FieldInfo], path: Path) -> Path:
    """Per method a panel: mean stored size of the ids against their training count (all fields
    pooled, log-2 bins), one line per budget. Returns ``path``."""
    counts = np.concatenate([f.counts for f in fields])
    budgets = _sorted_budgets(plans)
    colors = _budget_colors(budgets)
    cols = min(len(plans), 2)
    rows = math.ceil(len(plans) / cols)
    w, h = FREQUENCY_PANEL_INCHES
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False)
    for ax in axes.flat[len(plans) :]:
        ax.set_visible(False)
    for ax, (label, by_budget) in zip(axes.flat, plans.items(), strict=False):
        dim = 0
        for budget in budgets:
            plan = by_budget.get(budget)
            if plan is None or plan.row_sizes is None:
                continue
            dim = plan.dim
            sizes = np.concatenate([np.asarray(s, dtype=float) for s in plan.row_sizes])
            if sizes.shape != counts.shape:
                raise ValueError(f"{label} at {budget}: plan has {sizes.size} rows, the dataset {counts.size}")
            edges, means = frequency_bins(counts, sizes)
            ax.plot(edges, means, "o-", markersize=3, color=colors[budget], label=budget)
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, dim * 1.05 if dim else None)
        ax.set_xlabel("training count of the id (bin start)", fontsize=8)
        ax.set_ylabel("mean stored size", fontsize=8)
        ax.set_title(f"{label}: size against frequency", fontsize=10)
        ax.legend(title="budget", fontsize=7, title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=FIGURE_DPI)
    plt.close(fig)
    return path
