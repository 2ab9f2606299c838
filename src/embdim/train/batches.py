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

import contextlib
import queue
import threading
from collections.abc import Iterator
from types import TracebackType

import numpy as np
import torch

from embdim.data.cache import SplitArrays
from embdim.train.evaluate import batch_tensors

PREFETCH_DEPTH = 2
"""Batches gathered ahead: one being used, one ready, one in the making at most."""

Batch = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]
_DONE = object()  # the producer's last item
_POLL_SECONDS = 0.1  # how often a blocked put or drain looks at the stop flag


class Prefetcher:
    """Iterates over the batches ``first_batch, first_batch + 1, ...`` of ``order`` cut in ``batch_size``
    rows, each as :func:`~embdim.train.evaluate.batch_tensors` gives it (ids int64 [B, F], dense
    float32 [B, Dn] or ``None``, labels float32 [B]), gathered by a daemon thread.

    Use it as a context manager: leaving the block (a finished stage, an early stop, an error)
    stops the thread. An error while gathering is raised by the iteration that would have used it.
    """

    def __init__(self, split: SplitArrays, order: np.ndarray, batch_size: int, first_batch: int = 0) -> None:
        self._split, self._order, self._size = split, order, batch_size
        self._first = first_batch
        self._queue: queue.Queue = queue.Queue(maxsize=PREFETCH_DEPTH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="embdim-batches", daemon=True)

    def __enter__(self) -> Prefetcher:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        while self._thread.is_alive():  # a producer blocked on a full queue sees the stop once it can put
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=_POLL_SECONDS)
        self._thread.join()

    def __iter__(self) -> Iterator[Batch]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _produce(self) -> None:
        n = len(self._order)
        try:
            for start in range(self._first * self._size, n, self._size):
                if self._stop.is_set():
                    return
                self._put(batch_tensors(self._split, self._order[start : start + self._size]))
            self._put(_DONE)
        except BaseException as error:  # handed to the consumer, which raises it where the batch was due
            self._put(error)

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue
