"""Slim ragged lookup: index bytes and lookup time, per-row offsets vs per-run index, side by side.

AMTL-like sizes on a Criteo-shaped vocabulary: ids are numbered by frequency (as the encoder does) and a
value's size is a step function of its frequency rank within its field, so equal sizes come in runs.

    .venv/bin/python -W ignore benchmarks/ragged_index.py --vocab 1000000 --steps 30
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from embdim.data.synthetic import criteo_cardinalities
from embdim.slim import RaggedGroup

ZIPF_EXPONENT = 1.1
SIZE_STEPS = (0.01, 0.05, 0.2, 0.5)  # rank quantiles where the size drops one notch


def step_sizes(rows: int, dim: int) -> torch.Tensor:
    """Sizes of one field's ids 0..rows-1 (most frequent first): d, then lower per rank quantile."""
    levels = [dim, *np.linspace(dim * 0.6, 1, len(SIZE_STEPS)).round().astype(int)]
    quantile = np.arange(rows) / max(rows, 1)
    return torch.from_numpy(np.array(levels)[np.searchsorted(np.array(SIZE_STEPS), quantile, side="right")])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [int(n) for n in criteo_cardinalities(args.vocab)]
    lengths = torch.cat([step_sizes(n, args.dim) for n in rows])
    table = torch.randn(sum(rows), args.dim)
    fields = tuple(range(len(rows)))
    by_runs = RaggedGroup.from_dense(fields, rows, table, lengths, args.dim)
    total = int(lengths.sum())
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    offsets[1:] = lengths.cumsum(0)
    keep = torch.arange(args.dim) < lengths.unsqueeze(1)
    by_rows = RaggedGroup(fields, rows, table[keep], {"offsets": offsets}, args.dim)
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {"offsets per row": [], "index per run": []}
    groups = {"offsets per row": by_rows, "index per run": by_runs}
    with torch.no_grad():
        for _ in range(args.steps):
            ids = torch.from_numpy(np.stack([(rng.zipf(ZIPF_EXPONENT, args.batch) - 1) % n for n in rows], 1))
            outs = []
            for name, group in groups.items():
                t0 = time.perf_counter()
                outs.append(group(ids))
                times[name].append(time.perf_counter() - t0)
            assert torch.equal(outs[0], outs[1])
    print(f"{len(rows)} fields, {sum(rows):,} rows, d={args.dim}, {total:,} values, batch {args.batch}")
    print("| index | index bytes | bytes / uniform table | median lookup (ms) | vs offsets per row |")
    print("|---|---|---|---|---|")
    base = statistics.median(times["offsets per row"])
    for name, group in groups.items():
        index = sum(t.numel() * t.element_size() for k, t in group.tensors().items() if k != "values")
        ratio = (total * 4 + index) / (sum(rows) * args.dim * 4)
        med = statistics.median(times[name])
        print(f"| {name} | {index:,} | {ratio:.3f} | {med * 1e3:.2f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
