"""Training batches gathered ahead of the step that uses them, in a background thread.

Gathering a batch is a random read of the memory-mapped cache (``np.take`` of ``B`` rows, then the
int64 cast); at scale those reads miss the page cache and stall the step. numpy releases the GIL
while it copies, so a thread that gathers the next batches while torch computes the current one
hides that time. The batches and their order are exactly those of a gather in the loop: results are
bit-identical either way.

Example::

    order = np.random.default_rng(seed).permutation(len(train))
    with Prefetcher(train, order, batch_size=4096, first_batch=0) as batches:
        for ids, dense, labels in batches:
            ...  # one optimizer step
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch

from embdim.ahead import Ahead
from embdim.data.cache import SplitArrays
from embdim.train.evaluate import batch_tensors

PREFETCH_DEPTH = 2
"""Batches gathered ahead: one being used, one ready, one in the making at most."""

Batch = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]


class Prefetcher(Ahead[Batch]):
    """Iterates over the batches ``first_batch, first_batch + 1, ...`` of ``order`` cut in ``batch_size``
    rows, each as :func:`~embdim.train.evaluate.batch_tensors` gives it (ids int64 [B, F], dense
    float32 [B, Dn] or ``None``, labels float32 [B]), gathered by a daemon thread.

    Use it as a context manager: leaving the block (a finished stage, an early stop, an error)
    stops the thread. An error while gathering is raised by the iteration that would have used it.
    ``share`` picks this process's rows of each batch's row indices (a run on several processes).
    """

    def __init__(
        self,
        split: SplitArrays,
        order: np.ndarray,
        batch_size: int,
        first_batch: int = 0,
        share: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        batches = _batches(split, order, batch_size, first_batch, share)
        super().__init__(batches, PREFETCH_DEPTH, name="embdim-batches")


def _batches(
    split: SplitArrays, order: np.ndarray, size: int, first: int, share: Callable[[np.ndarray], np.ndarray] | None
) -> Iterator[Batch]:
    for start in range(first * size, len(order), size):
        rows = order[start : start + size]
        yield batch_tensors(split, rows if share is None else share(rows))
    split.release_pages()  # the epoch is done: its pages need not stay mapped through the evaluations
