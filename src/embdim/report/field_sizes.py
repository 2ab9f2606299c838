"""Plot of the learned embedding size of every field next to its cardinality (any per-field plan)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # after choosing the backend
import numpy as np

from embdim.data.schema import FieldInfo
from embdim.plan import EmbeddingPlan

#: Figure width per field (inches) and its bounds, so long field lists stay readable.
INCH_PER_FIELD = 0.55
MIN_WIDTH, MAX_WIDTH, HEIGHT = 6.0, 18.0, 4.0
DPI = 120


def plot_field_sizes(plan: EmbeddingPlan, fields: list[FieldInfo], path: Path) -> Path:
    """Bars: kept width ``d_f`` per field (left axis, dashed line at the full ``d``); dots: cardinality
    ``n_f`` on a log scale (right axis). Fields are ordered by cardinality, largest first.

    For value-level plans (ragged, csr) the bar is the mean kept size per row. Returns ``path``.
    """
    if [f.name for f in fields] != list(plan.field_names):
        raise ValueError("fields and plan.field_names must name the same fields in the same order")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # kept values per row: a dense field's width, a value-level field's mean row size
    sizes = np.asarray([p / max(n, 1) for p, n in zip(plan.field_params(), plan.vocab_sizes, strict=True)])
    cards = np.asarray([f.vocab_size for f in fields], dtype=float)
    order = np.argsort(-cards, kind="stable")
    x = np.arange(len(order))
    width = min(MAX_WIDTH, max(MIN_WIDTH, INCH_PER_FIELD * len(order)))
    fig, ax = plt.subplots(figsize=(width, HEIGHT))
    ax.bar(x, sizes[order], color="tab:blue", label="learned size")
    ax.axhline(plan.dim, color="grey", linestyle="--", linewidth=1, label=f"full d = {plan.dim}")
    ax.set_ylabel("embedding size (dims)")
    ax.set_ylim(0, plan.dim * 1.05)
    ax.set_xticks(x, [plan.field_names[i] for i in order], rotation=45, ha="right")
    right = ax.twinx()
    right.plot(x, cards[order], "o", color="tab:orange", label="cardinality")
    right.set_yscale("log")
    right.set_ylabel("cardinality (ids)")
    handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    # below the axes: bars and dots fill the plot area
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3, fontsize="small")
    ax.set_title(f"{plan.method}: {plan.num_bytes / max(plan.full_bytes, 1):.0%} of the full embedding bytes")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
