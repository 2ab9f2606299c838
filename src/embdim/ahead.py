"""Items of an iterable made ahead of their use, by a daemon thread.

The work behind each item (a batch gathered from a memory-mapped cache, a chunk of text parsed by
polars) runs in numpy or polars code that releases the GIL, so a thread that makes the next items
while the caller uses the current one keeps a second core busy. Items arrive in their order, and
exactly the items the iterable gives: results are the same as iterating it in the caller.

Example::

    with Ahead(parse(chunk) for chunk in chunks, depth=1) as parsed:
        for frame in parsed:
            ...  # counted while the next chunk is parsed
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")
_DONE = object()  # the producer's last item
_POLL_SECONDS = 0.1  # how often a blocked put or drain looks at the stop flag


class Ahead(Generic[T]):
    """Iterates over ``items``, which a daemon thread advances up to ``depth`` items ahead.

    Use it as a context manager: leaving the block (the end, an early stop, an error) stops the
    thread. An error raised by ``items`` is raised by the iteration that would have given its item.
    """

    def __init__(self, items: Iterable[T], depth: int, name: str = "embdim-ahead") -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._items = items
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name=name, daemon=True)

    def __enter__(self) -> Ahead[T]:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        while self._thread.is_alive():  # a producer blocked on a full queue sees the stop once it can put
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=_POLL_SECONDS)
        self._thread.join()

    def __iter__(self) -> Iterator[T]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _produce(self) -> None:
        try:
            for item in self._items:
                if self._stop.is_set():
                    return
                self._put(item)
            self._put(_DONE)
        except BaseException as error:  # handed to the consumer, which raises it where the item was due
            self._put(error)

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue
