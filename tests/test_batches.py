"""The background batch gatherer: the same batches as a gather in the loop, and a thread that stops."""

from __future__ import annotations

import mmap
import os

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


def mapped_file_bytes() -> int:
    """Resident bytes of the file pages this process maps (``/proc/self/statm``'s third field)."""
    return int(open("/proc/self/statm").read().split()[2]) * mmap.PAGESIZE


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc/self/statm")
def test_a_split_lets_its_mapped_pages_go_after_a_pass_and_reads_the_same_after(tmp_path):
    ids = np.arange(4 * 1024 * 1024, dtype=np.int32).reshape(-1, 4)  # 16 MiB
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "dense.npy", np.zeros((len(ids), 0), np.float32))
    np.save(tmp_path / "labels.npy", np.ones(len(ids), np.float32))
    split = SplitArrays(*(np.load(tmp_path / f"{n}.npy", mmap_mode="r") for n in ("ids", "dense", "labels")))
    before = mapped_file_bytes()
    with Prefetcher(split, np.random.default_rng(0).permutation(len(split))[:20_000], 4096) as prefetched:
        batches = list(prefetched)
    assert len(batches) == 5
    assert mapped_file_bytes() < before + ids.nbytes // 4  # the random pass made them resident, then let go
    assert int(split.ids.sum(dtype=np.int64)) == int(ids.sum(dtype=np.int64))  # every page read again
    read = mapped_file_bytes()
    assert read - before >= ids.nbytes // 2
    split.release_pages()
    assert mapped_file_bytes() <= read - ids.nbytes // 2
    assert np.array_equal(split.ids[::997], ids[::997])  # read back from the page cache
    in_memory = SplitArrays(ids, np.zeros((len(ids), 0), np.float32), np.ones(len(ids), np.float32))
    in_memory.release_pages()  # nothing mapped: a no-op
    assert np.array_equal(in_memory.ids, ids)
