"""Measures shared by methods and reports: the effective rank of a table, rank correlation, and
whether a tensor is finite.

:func:`effective_rank` is Roy & Vetterli's effective rank (2007): ``exp(H(p))`` with
``p_i = s_i / sum(s)`` the normalised singular values and ``H`` their Shannon entropy (natural
log). It lies in ``[1, min(n, d)]``: 1 for a rank-1 table, ``min(n, d)`` when every singular value
is equal. The MLET papers explain the method's gain by the higher effective rank of tables
trained as products.

This module imports nothing of embdim: every layer may use it.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr

GRAM_CHUNK_ROWS = 65536  # rows per float64 chunk when accumulating W^T W


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every value of ``tensor`` is finite (integer and empty tensors are).

    One reduction with no temporary the size of the tensor: ``aminmax`` carries a NaN or an infinity
    into its result, where ``isfinite(t).all()`` allocates the absolute values and two masks, about
    1.6x the tensor itself (gigabytes for a table of millions of rows, at every check)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor.detach())
    return bool(torch.isfinite(low) & torch.isfinite(high))


def singular_values(table: torch.Tensor | np.ndarray, chunk_rows: int = GRAM_CHUNK_ROWS) -> torch.Tensor:
    """Singular values of ``table`` ``[n, d]`` (float64, descending).

    Tall tables go through the ``d x d`` Gram matrix accumulated over row chunks in float64, so a
    table of millions of rows is never copied whole into float64; ``s = sqrt(eig(W^T W))``."""
    w = torch.as_tensor(table).detach()
    n, d = w.shape
    if n <= d:
        return torch.linalg.svdvals(w.double())
    gram = torch.zeros(d, d, dtype=torch.float64)
    for start in range(0, n, chunk_rows):
        part = w[start : start + chunk_rows].double()
        gram += part.T @ part
    return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(0)


def effective_rank(table: torch.Tensor | np.ndarray) -> float:
    """Roy & Vetterli's effective rank of ``table`` ``[n, d]``: ``exp`` of the entropy of its
    normalised singular values; 0.0 for an all-zero table."""
    s = singular_values(table)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]  # 0 * log 0 = 0
    return float(torch.exp(-(p * p.log()).sum()))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation; 0 when either side is constant (undefined)."""
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return 0.0
    return float(spearmanr(x, y).statistic)
