"""The shared measures that are not a method's own (those are tested with their method)."""

import threading

import pytest
import torch

import embdim.measures as measures
from embdim.measures import all_finite, kth_largest


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_one_non_finite_value_anywhere_makes_a_tensor_not_finite(dtype, bad):
    torch.manual_seed(0)
    table = torch.randn(300, 7).to(dtype)
    assert all_finite(table)
    for row, col in [(0, 0), (137, 3), (299, 6)]:
        broken = table.clone()
        broken[row, col] = bad
        assert not all_finite(broken), (row, col)
        assert not all_finite(broken[:, :5] if col < 5 else broken[:, 5:])  # strided views too
        assert all_finite(broken[row + 1 :] if row < 299 else broken[:row])  # the rest is finite


def test_integer_empty_and_extreme_finite_tensors_are_finite():
    assert all_finite(torch.arange(10))
    assert all_finite(torch.empty(0, 4))
    big = torch.full((1000,), torch.finfo(torch.float32).max)  # a sum would overflow; min/max do not
    assert all_finite(big) and all_finite(-big)


@pytest.mark.parametrize("kind", ["normal", "ties", "signed_zeros", "wide_range", "negative"])
@pytest.mark.parametrize("block", [7, measures.SELECT_BLOCK])
def test_the_kth_largest_is_the_sorted_values_kth_for_every_k(kind, block, monkeypatch):
    monkeypatch.setattr(measures, "SELECT_BLOCK", block)  # blocks of a few values: the passes' seams
    torch.manual_seed(3)
    n = 257
    values = {
        "normal": torch.randn(n),
        "ties": torch.randint(-2, 3, (n,)).float() / 4,
        "signed_zeros": torch.where(torch.rand(n) < 0.5, torch.zeros(n), -torch.zeros(n)),
        "wide_range": torch.randn(n) * torch.exp(torch.randn(n) * 30),  # many exponents, subnormals to 1e38
        "negative": -torch.rand(n) - 1,
    }[kind]
    ordered = torch.sort(values, descending=True).values
    for k in [*range(1, n, 3), n]:
        assert kth_largest(values.view(1, n), k) == ordered[k - 1], k


def test_the_kth_largest_of_parts_whose_counts_are_summed_is_the_whole_ones():
    # two threads stand for two processes, each holding part of the values; `sums` is their all-reduce
    torch.manual_seed(4)
    values = torch.randn(100)
    parts = [values[:40], values[40:]]
    ordered = torch.sort(values, descending=True).values
    for k in (1, 17, 55, 100):
        shared: list[torch.Tensor] = []
        barrier = threading.Barrier(2)

        def all_reduce(counts: torch.Tensor, shared=shared, barrier=barrier) -> torch.Tensor:
            shared.append(counts)
            barrier.wait()
            total = shared[0] + shared[1]
            barrier.wait()
            if barrier.wait() == 0:  # one thread clears for the next pass, after both have read
                shared.clear()
            barrier.wait()
            return total

        answers: list[float] = [0.0, 0.0]

        def rank(r: int, k=k, answers=answers, all_reduce=all_reduce) -> None:
            answers[r] = kth_largest(parts[r], k, sums=all_reduce)

        threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert answers == [ordered[k - 1].item()] * 2, k


def test_the_kth_largest_refuses_what_it_cannot_answer():
    with pytest.raises(ValueError, match="k=0"):
        kth_largest(torch.ones(3), 0)
    with pytest.raises(ValueError, match="k=4"):
        kth_largest(torch.ones(3), 4)
    with pytest.raises(TypeError, match="float32"):
        kth_largest(torch.ones(3, dtype=torch.float64), 1)
