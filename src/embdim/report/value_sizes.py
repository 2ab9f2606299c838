"""Plots of value-level sizes (ragged or CSR plans: AMTL, PEP): size against id frequency, size histogram.

Both take any plan with per-row sizes (``plan.row_sizes``: the kept prefix for ``ragged``, the
number of kept values for ``csr``) and the fields' training counts (``FieldInfo.counts``).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from embdim.data.schema import FieldInfo
from embdim.measures import spearman
from embdim.plan import EmbeddingPlan

PANEL_INCHES = (3.2, 2.6)
MAX_COLUMNS = 4
JITTER = 0.15
"""Vertical jitter of the scatter points (sizes are integers; jitter shows how many share one)."""


def _row_sizes(plan: EmbeddingPlan) -> list[np.ndarray]:
    if plan.row_sizes is None:
        raise ValueError(f"a {plan.storage} plan has no per-row sizes; these plots need a ragged, csr or compact plan")
    return plan.row_sizes


def _grid(panels: int) -> tuple[plt.Figure, np.ndarray]:
    cols = min(MAX_COLUMNS, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(PANEL_INCHES[0] * cols, PANEL_INCHES[1] * rows), squeeze=False)
    for ax in axes.flat[panels:]:
        ax.set_visible(False)
    return fig, axes.flat


def plot_size_vs_frequency(plan: EmbeddingPlan, fields: list[FieldInfo], path: Path) -> Path:
    """One panel per field: each id's stored size against its training count (log x), with the
    Spearman rank correlation in the title. Ids never seen in training are drawn at count 0.5."""

    sizes = _row_sizes(plan)
    if len(fields) != plan.num_fields:
        raise ValueError(f"plan has {plan.num_fields} fields, {len(fields)} field infos given")
    rng = np.random.default_rng(0)
    fig, axes = _grid(plan.num_fields)
    for ax, field, name, rows in zip(axes, fields, plan.field_names, sizes, strict=False):
        if field.counts is None:
            ax.set_title(f"{name}: no counts")
            continue
        counts = np.maximum(field.counts.astype(float), 0.5)  # unseen ids stay on the log axis
        ax.scatter(counts, rows + rng.uniform(-JITTER, JITTER, len(rows)), s=4, alpha=0.4, linewidths=0)
        ax.set_xscale("log")
        ax.set_ylim(-0.5, plan.dim + 0.5)
        ax.set_title(f"{name} (n={len(rows)}, rho={spearman(rows, field.counts):.2f})", fontsize=9)
        ax.set_xlabel("training count", fontsize=8)
        ax.set_ylabel("size", fontsize=8)
    fig.suptitle(f"{plan.method}: size against frequency ({plan.storage})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_size_distribution(plan: EmbeddingPlan, fields: list[FieldInfo], path: Path) -> Path:
    """Histogram of the stored sizes 0..d over all ids, stacked by field, and the mean size."""
    sizes = _row_sizes(plan)
    bins = np.arange(plan.dim + 2) - 0.5
    fig, ax = plt.subplots(figsize=(6.0, 3.5))
    ax.hist(list(sizes), bins=bins, stacked=True, label=list(plan.field_names))
    mean = float(np.concatenate(sizes).mean()) if sizes else 0.0
    ax.axvline(mean, color="k", linestyle="--", linewidth=1)
    ax.set_xlabel("stored size per id")
    ax.set_ylabel("ids")
    ax.set_title(
        f"{plan.method}: mean size {mean:.2f} of {plan.dim}, {plan.num_bytes / plan.full_bytes:.1%} of full bytes",
        fontsize=10,
    )
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
