"""The background batch gatherer: the same batches as a gather in the loop, and a thread that stops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embdim.data.cache import SplitArrays
from embdim.train.batches import Prefetcher
from embdim.train.evaluate import batch_tensors


def split_of(rows: int, dense: int = 2) -> SplitArrays:
    rng = np.random.default_rng(0)
    return SplitArrays(
        rng.integers(0, 50, size=(rows, 3)).astype(np.int32),
        rng.standard_normal((rows, dense)).astype(np.float32),
        rng.integers(0, 2, size=rows).astype(np.float32),
    )


@pytest.mark.parametrize(("rows", "dense", "first"), [(103, 2, 0), (103, 0, 3), (96, 1, 7)])
def test_the_prefetched_batches_are_the_batches_of_the_order(rows, dense, first):
    split, size = split_of(rows, dense), 16
    order = np.random.default_rng(1).permutation(rows)
    with Prefetcher(split, order, size, first_batch=first) as batches:
        got = list(batches)
    starts = range(first * size, rows, size)
    assert len(got) == len(starts)
    for (ids, dense_t, labels), start in zip(got, starts, strict=True):
        want = batch_tensors(split, order[start : start + size])
        assert torch.equal(ids, want[0]) and torch.equal(labels, want[2])
        assert (dense_t is None and want[1] is None) or torch.equal(dense_t, want[1])


def test_leaving_the_block_early_stops_the_gathering_thread():
    split = split_of(10_000)
    with Prefetcher(split, np.arange(10_000), 8) as batches:
        next(iter(batches))
        thread = batches._thread
        assert thread.is_alive()  # blocked on the full queue, many batches still to come
    assert not thread.is_alive()


def test_an_error_while_gathering_is_raised_where_its_batch_was_due():
    split = split_of(40)
    order = np.array([*range(16), 10_000, *range(17, 40)])  # the second batch reads past the end
    with Prefetcher(split, order, 16) as batches:
        it = iter(batches)
        next(it)
        with pytest.raises(IndexError):
            next(it)
