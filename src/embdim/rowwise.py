"""Row-wise Adam fused into the backward pass of a lookup: a step costs the looked-up rows, not the table.

A large ``[n, d]`` tensor that only a batch's rows reach (PEP's ``feature_dim`` thresholds) pays two
whole-table passes per step under a dense optimizer: autograd's dense gradient (``n x d`` zeros,
then a scatter) and the optimizer's update of every entry. :class:`RowwiseAdam` instead updates the
looked-up rows inside the lookup's backward, as TorchRec's fused table optimizers do.

The update is Adam without momentum (``beta1 = 0``), and that is what makes it exact: a row that
a batch does not look up has a zero gradient, so dense Adam leaves it where it is and only decays
its ``exp_avg_sq`` by ``beta2``. Each row remembers the step it was last updated at and catches that
decay up (``beta2 ** lag``) when it is next looked up, so every row follows dense
``torch.optim.Adam(betas=(0, beta2))`` step for step (up to float rounding). With momentum this
would not hold: dense Adam keeps moving a row for steps after its lookup, a lazy update cannot.
Per lookup a rare row still moves as far as under dense Adam with momentum (about
``lr / sqrt(1 - beta2)`` for the first lookup), which is why lazy momentum Adam (``SparseAdam``)
leaves rare rows behind and this one does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from embdim.distributed.rows import ColumnShards


class RowwiseAdam(nn.Module):
    """Adam (``beta1 = 0``) on the rows of one ``[n, d]`` tensor, applied in its lookups' backward.

    The tensor itself is the caller's (a frozen parameter or a buffer, ``requires_grad=False``, so no
    other optimizer touches it); this module holds the optimizer state as persistent buffers, so a
    checkpoint restores it exactly: ``exp_avg_sq`` ``[n, d]``, ``last_step`` ``[n]`` (the step each row
    was last updated at) and ``step`` (backward passes so far). One backward pass is one step.

    Args:
        num_rows: rows of the tensor it trains (n).
        dim: its width (d).
        lr: learning rate.
        beta2: decay of the squared-gradient average.
        eps: added to the denominator, as in ``torch.optim.Adam``.
    """

    def __init__(self, num_rows: int, dim: int, lr: float, beta2: float = 0.999, eps: float = 1e-8) -> None:
        super().__init__()
        if lr <= 0 or not 0.0 <= beta2 < 1.0 or eps < 0:
            raise ValueError(f"RowwiseAdam: need lr > 0, 0 <= beta2 < 1, eps >= 0; got {lr}, {beta2}, {eps}")
        self.lr, self.beta2, self.eps = lr, beta2, eps
        self.register_buffer("exp_avg_sq", torch.zeros(num_rows, dim))
        self.register_buffer("last_step", torch.zeros(num_rows, dtype=torch.long))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        # scratch for the sort-free unique of a step's rows (contents never read before written)
        self.register_buffer("_slot", torch.zeros(num_rows, dtype=torch.int32), persistent=False)
        # autograd calls a Function's backward only when one of its inputs requires a gradient
        self._anchor = torch.zeros((), requires_grad=True)

    def forward(self, weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``weight[rows]``: ``[..., d]`` for ``rows`` of any shape; training with gradients on, the
        backward pass updates the looked-up rows of ``weight`` in place."""
        if not (self.training and torch.is_grad_enabled()):
            return nn.functional.embedding(rows, weight)
        return _RowwiseLookup.apply(weight, rows, self._anchor, self)

    @torch.no_grad()
    def apply_gradient(self, weight: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor) -> None:
        """One Adam step on ``weight`` from the gradient of its lookup ``weight[rows]``.

        Args:
            weight: ``[n, d]``, updated in place.
            rows: int64 ``[N]`` looked-up rows (repeats allowed: their gradients add up).
            grad: ``[N, d]`` gradient of the loss with respect to each looked-up row.
        """
        self.step += 1
        step = int(self.step)
        unique, inverse = self._unique(rows)  # [U], [N]
        g = torch.zeros(unique.numel(), weight.shape[1], dtype=grad.dtype).index_add_(0, inverse, grad)
        lag = (step - self.last_step.index_select(0, unique)).to(g.dtype).unsqueeze(1)  # [U, 1], >= 1
        avg_sq = self.exp_avg_sq.index_select(0, unique).mul_(torch.pow(self.beta2, lag))
        avg_sq.addcmul_(g, g, value=1.0 - self.beta2)
        bias_correction2 = 1.0 - self.beta2**step
        denom = avg_sq.div(bias_correction2).sqrt_().add_(self.eps)
        new_rows = weight.index_select(0, unique).addcdiv_(g, denom, value=-self.lr)
        weight.index_copy_(0, unique, new_rows)
        self.exp_avg_sq.index_copy_(0, unique, avg_sq)
        self.last_step.index_fill_(0, unique, step)

    def _unique(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The distinct ``rows`` [U] (in no particular order) and each position's index into them [N].

        O(N), no sort (``torch.unique`` sorts): every position writes itself into its row's scratch
        slot; one write per row lands, and that position represents the row.
        """
        positions = torch.arange(rows.numel(), dtype=self._slot.dtype, device=rows.device)
        self._slot.index_put_((rows,), positions)
        representative = self._slot[rows].long()  # [N]
        first = representative == positions  # [N], one True per distinct row
        compact = first.cumsum(0) - 1  # position -> index among the distinct rows
        return rows[first], compact[representative]

    def extra_repr(self) -> str:
        return f"lr={self.lr}, beta2={self.beta2}, eps={self.eps}"


class _RowwiseLookup(torch.autograd.Function):
    """``weight[rows]`` whose backward is a :meth:`RowwiseAdam.apply_gradient` step (no gradient flows on)."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, rows: torch.Tensor, anchor: torch.Tensor, opt: RowwiseAdam):
        ctx.weight, ctx.opt = weight, opt
        ctx.save_for_backward(rows)
        return nn.functional.embedding(rows, weight.detach())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        (rows,) = ctx.saved_tensors
        ctx.opt.apply_gradient(ctx.weight, rows.reshape(-1), grad.reshape(-1, grad.shape[-1]))
        return None, None, None, None


def sharded_rowwise_lookup(
    weight: torch.Tensor, rows: torch.Tensor, opt: RowwiseAdam, shards: ColumnShards, width: int
) -> torch.Tensor:
    """``weight[rows]`` of a ``[n, width]`` tensor sharded like a table over several processes (``weight`` and
    ``opt``'s state: this rank's part, see :class:`~embdim.distributed.rows.ColumnShards`): ``[..., width]``
    for ``rows`` of any shape, fetched from the ranks holding them. Every rank must call it (and, after it,
    backward). The backward pass sends each rank's gradients to the holders, and each holder takes one
    :meth:`RowwiseAdam.apply_gradient` step on its part with the rows of every rank, in rank order, their
    gradients averaged over the ranks: the rows and gradients of the global batch, as one process steps."""
    return _ShardedRowwiseLookup.apply(weight, rows, opt._anchor, opt, shards, width)


class _ShardedRowwiseLookup(torch.autograd.Function):
    """:func:`sharded_rowwise_lookup`: an all-to-all forward whose backward is an all-to-all and a row-wise step."""

    @staticmethod
    def forward(ctx: Any, weight, rows, anchor, opt: RowwiseAdam, shards: ColumnShards, width: int):
        all_rows, sizes = shards.requests(rows)
        ctx.weight, ctx.opt, ctx.shards, ctx.width, ctx.sizes = weight, opt, shards, width, sizes
        ctx.save_for_backward(all_rows)
        return shards.fetch(weight.detach(), all_rows, sizes, width).view(*rows.shape, width)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        (all_rows,) = ctx.saved_tensors
        shards = ctx.shards
        mine = shards.gradients(grad.reshape(-1, ctx.width), ctx.sizes, ctx.width)
        if mine.shape[1]:  # each rank differentiated its share times the ranks: their mean is the batch's
            ctx.opt.apply_gradient(ctx.weight, all_rows, mine / shards.world)
        return None, None, None, None, None, None
