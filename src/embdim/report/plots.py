"""The plots a run folder gets for its plan: sizes per field, or sizes against id frequency."""

from __future__ import annotations

from pathlib import Path

from embdim.data.schema import FieldInfo
from embdim.plan import EmbeddingPlan

FIELD_SIZES_FILE = "field_sizes.png"
SIZE_VS_FREQUENCY_FILE = "sizes_vs_frequency.png"
SIZE_DISTRIBUTION_FILE = "size_distribution.png"


def plot_run(run_dir: Path, fields: list[FieldInfo]) -> list[Path]:
    """The plots of a finished run folder's plan (``plan.json``), written into the folder."""
    from embdim.train.layout import RunFolder

    folder = RunFolder(Path(run_dir))
    return plot_plan(EmbeddingPlan.load(folder.plan), fields, folder.root)


def plot_plan(plan: EmbeddingPlan, fields: list[FieldInfo], folder: Path) -> list[Path]:
    """Write the plots that show ``plan``'s learned sizes into ``folder``; returns their paths.

    Field-level plans (dense storage) that are not uniform get sizes per field next to cardinality;
    value-level plans (ragged, csr) get size against training frequency and the size distribution
    when the fields carry training counts. A uniform plan has nothing to show.
    """
    if not plan.kind.per_row:
        if all(d == plan.dim for d in plan.field_dims):
            return []
        from embdim.report.field_sizes import plot_field_sizes

        return [plot_field_sizes(plan, fields, folder / FIELD_SIZES_FILE)]
    from embdim.report.value_sizes import plot_size_distribution, plot_size_vs_frequency

    paths = [plot_size_distribution(plan, fields, folder / SIZE_DISTRIBUTION_FILE)]
    if all(f.counts is not None for f in fields):
        paths.append(plot_size_vs_frequency(plan, fields, folder / SIZE_VS_FREQUENCY_FILE))
    return paths
