"""PEP's slim table: bytes and lookup time of compact storage against CSR, side by side.

Masks as PEP's byte budgets leave them (:func:`embdim.searchers.pep.budget_mask`) on a Criteo-shaped
vocabulary (26 fields, ids numbered by frequency) at budgets of 50, 10, 5, 2 and 1 % of the uniform
bytes, in two spreads of the kept values:

- ``uniform``: margins at random, so kept values scatter over the rows, most alone in theirs (compact's
  dearest case, the one the budget's sparsity is computed for);
- ``by row``: a row's margins follow its id's frequency rank (plus noise), so frequent ids keep most of
  their values and the others none, as PEP's pruning tends to.

For each mask: the parameters, and the bytes of compact, of CSR, and of the rank-bits index compact was
measured against (a bit per row and a count per 64 rows instead of row ids; the rest as compact). Then
lookups, side by side in one process, in a new order each round: a batch of Zipf-drawn ids and one row,
through compact, CSR and rank bits; medians of wall time and of the thread's CPU time.

    .venv/bin/python -W ignore benchmarks/pep_compact.py --vocab 100000 --rounds 30 --threads 1
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np
import torch
from torch import nn

from embdim.data.synthetic import criteo_cardinalities
from embdim.searchers.pep import budget_mask, storage_bytes
from embdim.slim import POPCOUNT, CompactGroup, CsrGroup
from embdim.storage import FLOAT_BYTES, CompactStorage, CsrStorage, bitmap_bytes

ZIPF_EXPONENT = 1.1
BUDGETS = (0.5, 0.1, 0.05, 0.02, 0.01)
RANK_BLOCK = 64


def margins_for(spread: str, rows: list[int], dim: int, gen: torch.Generator) -> torch.Tensor:
    """Margins ``[sum rows, d]`` whose order is the order PEP keeps entries in."""
    noise = torch.rand(sum(rows), dim, generator=gen)
    if spread == "uniform":
        return noise
    rank = torch.cat([torch.arange(n) / n for n in rows])  # an id's frequency rank in its field, 0 = most
    return noise - 4.0 * rank.unsqueeze(1)


def rank_bits_bytes(group: CompactGroup, num_rows: int) -> int:
    """Bytes of the rank-bits alternative: compact's index without its ids, plus a bit per row and an int32
    count of stored rows per block of 64 rows."""
    ids = sum(t.numel() * t.element_size() for k, t in group.tensors().items() if k.startswith("id_"))
    return group_bytes(group) - ids + -(-num_rows // 8) + -(-num_rows // RANK_BLOCK) * 4


def group_bytes(group: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in group.tensors().values())


class RankBits(nn.Module):
    """Compact's lookup with its rank found in a bit per row and a count per 64 rows (the alternative)."""

    def __init__(self, group: CompactGroup, num_rows: int) -> None:
        super().__init__()
        stored = torch.zeros(num_rows, dtype=torch.bool)
        stored[group.padded_row_ids[:-1].long()] = True
        blocks = nn.functional.pad(stored.long(), (0, -num_rows % RANK_BLOCK)).view(-1, RANK_BLOCK)
        self.words = (blocks << torch.arange(RANK_BLOCK)).sum(1)  # bit p of word b: row 64 b + p
        counts = blocks.sum(1)
        self.rank = (counts.cumsum(0) - counts).int()
        self.below = torch.tensor([(1 << p) - 1 for p in range(RANK_BLOCK)], dtype=torch.long)
        self.popcount = POPCOUNT.unsqueeze(1)
        self.group = group

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        g, group = ids + self.group.row_offsets, self.group
        block, p = g >> 6, g & 63
        word = self.words[block]
        bytes_before = (word & self.below[p]).view(torch.uint8).int()  # little-endian: this benchmark only
        before = nn.functional.embedding(bytes_before, self.popcount).view(*g.shape, 8).sum(-1)
        stored = ((word >> p) & 1).bool()
        s = torch.where(stored, self.rank[block] + before, group.num_stored)
        # from here as CompactGroup.forward (many ids: embedding and index_select)
        starts = torch.take(group.padded_starts, s)
        bitmaps = torch.take(group.bitmap_words, s).view(torch.uint8)
        table = nn.functional.embedding(bitmaps.int(), group._byte_positions).view(*s.shape, -1)
        if group.bitmap_width == 1:
            positions = table[..., : group.dim]
        else:
            table = table.view(*s.shape, group.bitmap_width, 9)
            before = table[..., 8].cumsum(-1) - table[..., 8]
            positions = (table[..., :8] + before.unsqueeze(-1)).flatten(-2)[..., : group.dim]
        where = positions.int().add_(starts.unsqueeze(-1)).clamp_max_(group.num_values)
        return group.padded_values.index_select(0, where.flatten()).view(where.shape)


def zipf_ids(rows: list[int], batch: int, rng: np.random.Generator) -> torch.Tensor:
    return torch.from_numpy(np.stack([(rng.zipf(ZIPF_EXPONENT, batch) - 1) % n for n in rows], 1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--calls", type=int, default=100, help="one-row lookups timed per round")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--spreads", nargs="+", default=["uniform", "by row"])
    ap.add_argument("--budgets", nargs="+", type=float, default=list(BUDGETS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [int(n) for n in criteo_cardinalities(args.vocab)]
    num_rows, dim = sum(rows), args.dim
    full = num_rows * dim * FLOAT_BYTES
    fields = tuple(range(len(rows)))
    print(f"{len(rows)} fields, {num_rows:,} rows, d={dim} (bitmaps of {bitmap_bytes(dim)} bytes)")
    print(
        "| spread | budget | params | compact | csr | rank bits | compact/csr | "
        "batch ms: compact / csr / rank bits | one row us: compact / csr / rank bits |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(num_rows, dim, generator=gen)
    for spread in args.spreads:
        margins = margins_for(spread, rows, dim, gen)
        for fraction in args.budgets:
            mask = budget_mask(margins, fraction * full)
            nnz, stored = int(mask.sum()), int(mask.any(1).sum())
            compact = CompactGroup.from_dense(fields, rows, table, mask, dim)
            csr = CsrGroup.from_dense(fields, rows, table, mask, dim)
            bits = RankBits(compact, num_rows)
            sizes = {"compact": group_bytes(compact), "csr": group_bytes(csr)}
            assert sizes["compact"] == CompactStorage.layout_bytes(num_rows, stored, nnz, dim)
            assert sizes["csr"] == CsrStorage.layout_bytes(num_rows, stored, nnz, dim)
            assert min(sizes.values()) == storage_bytes(num_rows, stored, nnz, dim) <= fraction * full
            lookups = {"compact": compact, "csr": csr, "rank bits": bits}
            batch_wall, batch_cpu, one_wall, one_cpu = ({k: [] for k in lookups} for _ in range(4))
            rng = np.random.default_rng(0)
            with torch.no_grad():
                for _ in range(args.rounds):
                    ids, one = zipf_ids(rows, args.batch, rng), zipf_ids(rows, 1, rng)
                    order = list(lookups.items())
                    random.shuffle(order)
                    outs = {}
                    for name, lookup in order:
                        wall, cpu = time.perf_counter(), time.thread_time()
                        outs[name] = lookup(ids)
                        batch_cpu[name].append(time.thread_time() - cpu)
                        batch_wall[name].append(time.perf_counter() - wall)
                        wall, cpu = time.perf_counter(), time.thread_time()
                        for _ in range(args.calls):
                            lookup(one)
                        one_cpu[name].append((time.thread_time() - cpu) / args.calls)
                        one_wall[name].append((time.perf_counter() - wall) / args.calls)
                    assert torch.equal(outs["compact"], outs["csr"]) and torch.equal(outs["rank bits"], outs["csr"])

            def med(times: dict[str, list[float]], scale: float) -> str:
                return " / ".join(f"{statistics.median(t) * scale:.1f}" for t in times.values())

            print(
                f"| {spread} | {fraction:.0%} | {nnz / (num_rows * dim):.4f} | {sizes['compact'] / full:.4f} "
                f"| {sizes['csr'] / full:.4f} | {rank_bits_bytes(compact, num_rows) / full:.4f} "
                f"| {sizes['compact'] / sizes['csr']:.2f} | wall {med(batch_wall, 1e3)}, cpu {med(batch_cpu, 1e3)} "
                f"| wall {med(one_wall, 1e6)}, cpu {med(one_cpu, 1e6)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
