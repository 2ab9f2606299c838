"""RowwiseAdam: a lookup whose backward pass is an Adam step on the looked-up rows only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from embdim.rowwise import RowwiseAdam

ROWS, DIM, LR = 60, 4, 0.05


def _batches(steps: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Row ids ``[8, 3]`` (often a few hot rows, sometimes any row, with repeats) and upstream gradients."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for step in range(steps):
        high = ROWS if step % 4 == 0 else 10
        out.append((torch.randint(0, high, (8, 3), generator=gen), torch.randn(8, 3, DIM, generator=gen)))
    return out


@pytest.mark.parametrize("beta2", [0.999, 0.9])
def test_every_row_follows_dense_adam_without_momentum(beta2):
    """Rows a step does not look up are caught up later, so the result equals dense Adam(betas=(0, beta2))."""
    torch.manual_seed(0)
    start = torch.randn(ROWS, DIM)
    dense = nn.Parameter(start.clone())
    dense_opt = torch.optim.Adam([dense], lr=LR, betas=(0.0, beta2))
    weight = start.clone()
    rowwise = RowwiseAdam(ROWS, DIM, lr=LR, beta2=beta2)
    for rows, upstream in _batches(50):
        dense_opt.zero_grad()
        (nn.functional.embedding(rows, dense) * upstream).sum().backward()
        dense_opt.step()
        (rowwise(weight, rows) * upstream).sum().backward()
    assert int(rowwise.step) == 50
    assert (weight - start).abs().max() > 0.1  # it did train
    assert torch.allclose(weight, dense.detach(), rtol=0, atol=1e-5)


def test_only_looked_up_rows_change_and_repeats_add_their_gradients():
    weight = torch.zeros(ROWS, DIM)
    rowwise = RowwiseAdam(ROWS, DIM, lr=LR)
    rows = torch.tensor([[2, 2], [5, 2]])
    upstream = torch.tensor([[[1.0] * DIM, [2.0] * DIM], [[-1.0] * DIM, [3.0] * DIM]])
    (rowwise(weight, rows) * upstream).sum().backward()
    changed = (weight != 0).any(1)
    assert changed.nonzero().flatten().tolist() == [2, 5]
    # Adam's first step moves each entry by lr against the sign of its summed gradient (6 for row 2, -1 for row 5)
    assert torch.allclose(weight[2], torch.full((DIM,), -LR), atol=1e-6)
    assert torch.allclose(weight[5], torch.full((DIM,), LR), atol=1e-6)
    assert torch.allclose(rowwise.exp_avg_sq[2], torch.full((DIM,), 0.001 * 36.0))


def test_evaluation_and_no_grad_lookups_change_nothing():
    weight = torch.randn(ROWS, DIM)
    before = weight.clone()
    rowwise = RowwiseAdam(ROWS, DIM, lr=LR)
    rows = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(rowwise(weight, rows), before[rows])
    rowwise.eval()
    out = rowwise(weight, rows)
    assert not out.requires_grad and torch.equal(weight, before) and int(rowwise.step) == 0


def test_a_restored_state_continues_exactly():
    """Optimizer state lives in buffers: a state_dict round trip resumes to the same weights."""
    batches = _batches(30, seed=1)
    weight_a = torch.randn(ROWS, DIM)
    weight_b = weight_a.clone()
    run_a = RowwiseAdam(ROWS, DIM, lr=LR)
    for rows, upstream in batches:
        (run_a(weight_a, rows) * upstream).sum().backward()
    run_b = RowwiseAdam(ROWS, DIM, lr=LR)
    for rows, upstream in batches[:12]:
        (run_b(weight_b, rows) * upstream).sum().backward()
    resumed = RowwiseAdam(ROWS, DIM, lr=LR)
    resumed.load_state_dict(run_b.state_dict())
    for rows, upstream in batches[12:]:
        (resumed(weight_b, rows) * upstream).sum().backward()
    assert torch.equal(weight_a, weight_b)
    assert set(resumed.state_dict()) == {"exp_avg_sq", "last_step", "step"}


@pytest.mark.parametrize(("options", "word"), [({"lr": 0.0}, "lr"), ({"lr": 0.1, "beta2": 1.0}, "beta2")])
def test_bad_settings_fail(options, word):
    with pytest.raises(ValueError, match=word):
        RowwiseAdam(ROWS, DIM, **options)


def test_the_sort_free_unique_finds_each_row_once_and_maps_every_position_to_it():
    opt = RowwiseAdam(1000, 4, lr=0.1)
    gen = torch.Generator().manual_seed(0)
    for size in (1, 7, 5000):  # 5000 draws from 1000 rows: many repeats
        rows = torch.randint(0, 1000, (size,), generator=gen)
        unique, inverse = opt._unique(rows)
        assert torch.equal(unique[inverse], rows)
        assert torch.equal(torch.sort(unique).values, torch.unique(rows))
