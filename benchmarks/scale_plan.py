"""The worked Criteo-Terabyte plan of docs/scale.md, derived (nothing here is measured).

Inputs: the 26 categorical features of Criteo 1TB at their cardinalities without a frequency threshold
(882.8M rows in all; MLPerf's DLRM-DCNv2 reference caps each at 40M), width ``d = 128`` as MLPerf's
DLRM, float32 values. For each method, its training memory comes from the method's own pre-flight
estimate (``Searcher.training_memory``, the numbers embdim's memory check uses), split into what
follows the table rows onto their shards and what every rank holds (its parameters and
``MethodMemory.replicated``); the tables' optimizer state is
counted for exact Adagrad (one value per table value: fbgemm's CPU kernels, embdim's fused optimizer
today) and for row-wise Adagrad (one value per row: TorchRec's usual GPU choice). Per rank is an even
share of the sharded part plus the replicated part. The pooled-embedding all-to-all of a step carries
``batch x (sum of the widths the lookup returns) x 4`` bytes each way, ``(world - 1) / world`` of it
between ranks.

    .venv/bin/python benchmarks/scale_plan.py
"""

from __future__ import annotations

from embdim.budget import Budget
from embdim.data.schema import FieldInfo
from embdim.plugins import SEARCHERS
from embdim.searchers.mde import MDEConfig, mde_dims

#: Criteo 1TB, C1..C26: distinct values over the 24 days, no frequency threshold.
CRITEO_1TB = [
    227605432, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 130229467, 3067956, 405282, 10,
    2209, 11938, 155, 4, 976, 14, 292775614, 40790948, 187188510, 590152, 12973, 108, 36,
]  # fmt: skip
DIM = 128
FLOAT = 4
GLOBAL_BATCH = 65536  # MLPerf DLRM's global batch
WORLDS = (8, 64)
GB = 1e9


def main() -> None:
    fields = [FieldInfo(f"C{i + 1}", n) for i, n in enumerate(CRITEO_1TB)]
    rows = sum(CRITEO_1TB)
    print(f"rows {rows:,}; largest tables (M rows): {[round(n / 1e6, 1) for n in sorted(CRITEO_1TB)[-6:]]}")
    for n in sorted(CRITEO_1TB)[-5:]:
        weights, state = n * DIM * FLOAT / GB, n * FLOAT / GB
        print(f"  {n / 1e6:.1f}M rows at d={DIM}: {weights:.1f} GB of weights, {state:.2f} GB of row-wise state")
    mde_budget = SEARCHERS.get("mde").for_budget(fields, DIM, MDEConfig(), Budget(value=0.25))[1]
    methods = {
        "full": ("full", SEARCHERS.get("full").Config(), [DIM] * len(fields)),
        "mde (alpha 0.3)": ("mde", MDEConfig(), _mde_widths(MDEConfig())),
        f"mde (budget 1/4: base_dim {mde_budget.base_dim})": ("mde", mde_budget, _mde_widths(mde_budget)),
        "pep": ("pep", SEARCHERS.get("pep").Config(), [DIM] * len(fields)),
        "dml": ("dml", SEARCHERS.get("dml").Config(), [DIM] * len(fields)),
        "amtl": ("amtl", SEARCHERS.get("amtl").Config(), [DIM] * len(fields)),
        "mlet": ("mlet", SEARCHERS.get("mlet").Config(), None),
    }
    header = "| method | tables | + exact Adagrad | + row-wise Adagrad | method state (sharded) | replicated |"
    print(header + " " + " | ".join(f"per rank, {w} (exact / row-wise)" for w in WORLDS) + " |")
    for label, (name, config, _) in methods.items():
        memory = SEARCHERS.get(name).training_memory(fields, DIM, config)
        exact, rowwise = memory.tables, rows * FLOAT
        state = 0 if name == "mlet" else memory.state  # MLET's state is the export's collapse, not training's
        state -= memory.replicated
        every_rank = memory.parameters + memory.replicated
        sharded_exact = memory.tables + exact + state
        sharded_rowwise = memory.tables + rowwise + state
        per_rank = [
            f"{(sharded_exact / w + every_rank) / GB:.1f} / {(sharded_rowwise / w + every_rank) / GB:.1f}"
            for w in WORLDS
        ]
        print(
            f"| {label} | {memory.tables / GB:.1f} | {exact / GB:.1f} | {rowwise / GB:.1f} | {state / GB:.1f} | "
            f"{every_rank / GB:.3f} | " + " | ".join(per_rank) + " |"
        )
    print("\nall-to-all of the pooled vectors per step (each way):")
    mlet_k = SEARCHERS.get("mlet").Config().resolve_inner_dim(DIM)
    for label, (_, _, widths) in methods.items():
        widths = widths or [mlet_k] * len(fields)
        step = GLOBAL_BATCH * sum(widths) * FLOAT
        print(f"  {label}: sum of widths {sum(widths)}, {step / 1e6:.0f} MB per step of {GLOBAL_BATCH:,} rows")
    print(f"  ids (int64): {GLOBAL_BATCH * len(fields) * 8 / 1e6:.1f} MB per step, whatever the widths")
    for label, (_, _, widths) in methods.items():
        if label.startswith("mde"):
            stored = sum(n * w for n, w in zip(CRITEO_1TB, widths, strict=True)) * FLOAT
            print(f"  {label}: widths {widths}; stored tables {stored / GB:.1f} GB")


def _mde_widths(config: MDEConfig) -> list[int]:
    return mde_dims(CRITEO_1TB, DIM, config.alpha, config.base_dim or DIM, config.min_dim, config.round_to_power_of_two)


if __name__ == "__main__":
    main()
