"""State laid out like a sharded table: per-row values that live on the ranks holding the table's columns.

A method may keep state with one value per table value (PEP's ``feature_dim`` thresholds, their optimizer
state, its masks) or one per row (``feature`` thresholds). On several processes such state must be sharded
with the table, or it would hold a whole table's worth on every rank. TorchRec shards a table on the CPU
by columns only (table-wise: all columns on one rank; column-wise: blocks of columns), every shard holding
all the rows, so :class:`ColumnShards` lays the state out the same way: a rank holds, for every row, the
state of the columns it holds of the table (``width == dim``), or one copy of the row's value if it holds
any column (``width == 1``). The values sit next to the weights they apply to, so whole-table measures
(how many values a threshold keeps) run where the weights are and only their totals cross ranks.

A batch looks up rows on every rank: :meth:`ColumnShards.requests` gathers every rank's rows (the global
batch's, in rank order), each holder answers for its columns (:meth:`ColumnShards.fetch`, an all-to-all),
and in a training step the gradients travel back the same way (:meth:`ColumnShards.gradients`) to the
holders, which update their part with the rows of the whole global batch, as one process does.

Every method here is a collective of :attr:`ColumnShards.group` (a process group of its own, so that
these exchanges never interleave with data parallelism's on the default group): every rank calls them in
the same order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist


class ColumnShards:
    """The ranks' column blocks of one table of ``dim`` columns, and the exchanges of state laid out like it.

    Args:
        blocks: ``(rank, first column, end column)`` of every shard (padding left out), covering every column
            of the table once (:meth:`~embdim.distributed.torchrec_lookup.TorchRecLookup.column_blocks`).
        dim: the table's width.
        group: the process group of the exchanges (default: a new one, made by every rank alike).

    A rank's part of state of width ``dim`` is ``[rows, len(columns)]``: its columns (:attr:`columns`, the
    table's columns it holds, in its blocks' order) side by side; of width 1, ``[rows, 1]`` on every rank
    that holds a column (:attr:`holds`), ``[rows, 0]`` elsewhere.
    """

    def __init__(self, blocks: Sequence[tuple[int, int, int]], dim: int, group: dist.ProcessGroup | None = None):
        self.group = dist.new_group(backend="gloo") if group is None else group
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.dim = dim
        per_rank: list[list[int]] = [[] for _ in range(self.world)]
        for rank, first, end in sorted(blocks, key=lambda b: b[1]):
            per_rank[rank].extend(range(first, end))
        held = sorted(c for cols in per_rank for c in cols)
        if held != list(range(dim)):
            raise ValueError(f"the blocks {list(blocks)} do not cover the {dim} columns once each")
        #: the table's columns each rank holds, in the order its part stores them
        self.columns_of = [torch.tensor(cols, dtype=torch.long) for cols in per_rank]
        self.columns = self.columns_of[self.rank]
        self.holds = len(self.columns) > 0
        #: the ranks that hold columns; the first answers for state of width 1
        self.holders = [r for r in range(self.world) if len(per_rank[r])]
        # position of each table column among the holders' columns put side by side in rank order
        self._order = torch.argsort(torch.cat(self.columns_of))

    # ------------------------------------------------------------------ layout
    def local_width(self, width: int) -> int:
        """Columns of this rank's part of state of ``width`` (``dim`` or 1)."""
        return self._widths(width)[self.rank]

    def _widths(self, width: int) -> list[int]:
        if width == self.dim:
            return [len(c) for c in self.columns_of]
        if width == 1:
            return [1 if r in self.holders else 0 for r in range(self.world)]
        raise ValueError(f"state of width {width} is not laid out like a table of {self.dim} columns")

    def local_part(self, whole: torch.Tensor) -> torch.Tensor:
        """This rank's part of ``whole`` [rows, dim | 1] (a copy)."""
        if whole.shape[1] == self.dim:
            return whole[:, self.columns].clone()
        return whole.clone() if self.holds else whole[:, :0].clone()

    def local_slices(self, first_columns: Sequence[tuple[int, int]]) -> list[slice]:
        """The columns of this rank's part of width-``dim`` state that hold each of its blocks
        ``(first column, end column)`` (in the order of :attr:`columns`)."""
        out, at = [], 0
        for first, end in first_columns:
            out.append(slice(at, at + end - first))
            at += end - first
        return out

    # ------------------------------------------------------------------ batches
    def requests(self, rows: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """Every rank's looked-up ``rows`` (int64, any shape), flattened and put end to end in rank order,
        and how many each rank looked up."""
        flat = rows.reshape(-1).long()
        counts = [torch.zeros(1, dtype=torch.long) for _ in range(self.world)]
        dist.all_gather(counts, torch.tensor([flat.numel()]), group=self.group)
        sizes = [int(c) for c in counts]
        longest = max(sizes)
        padded = torch.zeros(longest, dtype=torch.long)
        padded[: flat.numel()] = flat
        parts = [torch.empty(longest, dtype=torch.long) for _ in range(self.world)]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]), sizes

    def fetch(self, local: torch.Tensor, all_rows: torch.Tensor, sizes: list[int], width: int) -> torch.Tensor:
        """The rows this rank asked for (its span of ``all_rows``, from :meth:`requests`) of the state of
        ``width`` whose part on this rank is ``local``: ``[n_r, width]``, in the table's column order."""
        senders = self._senders(width)
        mine = senders[self.rank]
        if mine:
            send = [p.reshape(-1) for p in local.index_select(0, all_rows).split(sizes)]
        else:
            send = [local.new_empty(0)] * self.world
        n = sizes[self.rank]
        received = self._exchange(send, [n * senders[r] for r in range(self.world)], local.dtype)
        parts = [p.view(n, senders[r]) for r, p in enumerate(received) if senders[r]]
        return parts[0] if width == 1 else torch.cat(parts, dim=1)[:, self._order]

    def gradients(self, grad: torch.Tensor, sizes: list[int], width: int) -> torch.Tensor:
        """The way back of :meth:`fetch`: this rank's ``grad`` [n_r, width] of the rows it asked for goes to
        the ranks holding them; returns this rank's part of every rank's gradients, in the order of
        :meth:`requests`: ``[sum n_r, local width]`` (no columns on a rank that holds none). A row of width-1
        state gets its gradient on every holder (each keeps a copy, updated alike)."""
        widths = self._widths(width)
        if width == self.dim:
            send = [grad[:, self.columns_of[r]].reshape(-1) for r in range(self.world)]
        else:
            send = [grad.reshape(-1) if widths[r] else grad.new_empty(0) for r in range(self.world)]
        mine = widths[self.rank]
        received = self._exchange(send, [n * mine for n in sizes], grad.dtype)
        return torch.cat([p.view(n, mine) for p, n in zip(received, sizes, strict=True)])

    def _senders(self, width: int) -> list[int]:
        """Columns each rank answers a lookup of width-``width`` state with (width 1: the first holder alone)."""
        widths = self._widths(width)
        return widths if width == self.dim else [int(r == self.holders[0]) for r in range(self.world)]

    # ------------------------------------------------------------------ whole tensors
    def gather(self, local: torch.Tensor, width: int, rows: int, dst: int = 0) -> torch.Tensor | None:
        """State of ``width`` and ``rows`` rows whose part on this rank is ``local``, whole (``[rows, width]``) on
        rank ``dst``; ``None`` on the others. Every rank must call it."""
        senders = self._senders(width)
        mine = senders[self.rank]
        send = [local.reshape(-1) if r == dst and mine else local.new_empty(0) for r in range(self.world)]
        receive = [rows * senders[r] if self.rank == dst else 0 for r in range(self.world)]
        received = self._exchange(send, receive, local.dtype)
        if self.rank != dst:
            return None
        parts = [p.view(rows, senders[r]) for r, p in enumerate(received) if senders[r]]
        return parts[0] if width == 1 else torch.cat(parts, dim=1)[:, self._order]

    def sum(self, value: float | int) -> float:
        """``value`` summed over the ranks (float64)."""
        tensor = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(tensor, group=self.group)
        return float(tensor)

    def sums(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed element-wise over the ranks (in place; returned)."""
        dist.all_reduce(values, group=self.group)
        return values

    def _exchange(self, send: list[torch.Tensor], receive: list[int], dtype: torch.dtype) -> list[torch.Tensor]:
        """One all-to-all: ``send[r]`` (flat) to rank ``r``; the flat tensors of ``receive[r]`` values from each."""
        wire = torch.uint8 if dtype == torch.bool else dtype
        flat = torch.cat([s.to(wire) for s in send]) if send else torch.empty(0, dtype=wire)
        out = torch.empty(sum(receive), dtype=wire)
        dist.all_to_all_single(out, flat, receive, [s.numel() for s in send], group=self.group)
        return [p.to(dtype) for p in out.split(receive)]
