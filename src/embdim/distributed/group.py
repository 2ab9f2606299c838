"""The processes of a sharded run: who this one is, and the few collectives the trainer needs.

A run on several processes is one process per rank, each started by torch's elastic launcher (``embdim
run ... train.processes=N``, or ``torchrun`` around ``python -m embdim run``), which sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``.
:func:`join` opens the default process group from them (gloo: the trainer runs on the CPU) and returns
a :class:`Group`; every collective here must be called by every rank, in the same order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

#: The launcher's environment variables that make a process one rank of several.
RANK_ENV, WORLD_ENV, LOCAL_WORLD_ENV = "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"


def launched_world() -> int | None:
    """``WORLD_SIZE`` when a launcher started this process as one rank of several, else ``None``."""
    world = os.environ.get(WORLD_ENV)
    if world is None or RANK_ENV not in os.environ:
        return None
    return int(world) if int(world) > 1 else None


@dataclass(frozen=True)
class Group:
    """This process's place among the run's processes (``rank`` of ``world``; ``local_world`` on this machine).

    Objects and arrays pass through the default process group; a method that communicates says so.
    """

    rank: int
    world: int
    local_world: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes the run folder's shared files."""
        return self.rank == 0

    def barrier(self) -> None:
        dist.barrier()

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """``obj`` of rank ``src`` on every rank (pickled: for small objects)."""
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the ranks, in float64 (a loss, a count)."""
        tensor = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on some rank."""
        return self.sum([float(flag)])[0] > 0

    def gather_rows(self, local: np.ndarray, sizes: list[int]) -> np.ndarray:
        """Every rank's ``local`` [n_r] float32, concatenated in rank order ([sum n_r] on every rank);
        ``sizes`` are the n_r, known to all ranks."""
        longest = max(sizes)
        padded = torch.zeros(longest, dtype=torch.float32)
        padded[: len(local)] = torch.from_numpy(np.ascontiguousarray(local, dtype=np.float32))
        parts = [torch.empty(longest, dtype=torch.float32) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return np.concatenate([p[:n].numpy() for p, n in zip(parts, sizes, strict=True)])


def join(backend: str = "gloo", timeout: timedelta | None = None) -> tuple[Group, bool]:
    """The :class:`Group` of this launched process, opening the default process group if nobody has
    (``timeout``: how long a collective waits for the slowest rank); also whether this call opened it
    (and :func:`leave` should close it)."""
    opened = not dist.is_initialized()
    if opened:
        dist.init_process_group(backend, timeout=timeout)
    world = dist.get_world_size()
    local = int(os.environ.get(LOCAL_WORLD_ENV, world))
    return Group(dist.get_rank(), world, local), opened


def leave() -> None:
    """Close the default process group (after :func:`join` opened it)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def split_rows(n: int, world: int) -> list[int]:
    """How ``n`` rows fall to ``world`` ranks, as ``np.array_split`` cuts them: the first ``n % world``
    ranks take one more."""
    return [n // world + (1 if r < n % world else 0) for r in range(world)]
