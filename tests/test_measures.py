"""The shared measures that are not a method's own (those are tested with their method)."""

import pytest
import torch

from embdim.measures import all_finite


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
