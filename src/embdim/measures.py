"""Measures shared by methods and reports: the effective rank of a table, rank correlation, whether a
tensor is finite, and the k-th largest of many values.

:func:`effective_rank` is Roy & Vetterli's effective rank (2007): ``exp(H(p))`` with
``p_i = s_i / sum(s)`` the normalised singular values and ``H`` their Shannon entropy (natural
log). It lies in ``[1, min(n, d)]``: 1 for a rank-1 table, ``min(n, d)`` when every singular value
is equal. The MLET papers explain the method's gain by the higher effective rank of tables
trained as products.

This module imports nothing of embdim: every layer may use it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
import torch
from scipy.stats import spearmanr

GRAM_CHUNK_ROWS = 65536  # rows per float64 chunk when accumulating W^T W
SELECT_BLOCK = 1 << 22  # values per block in kth_largest's passes
SELECT_DIGIT_BITS = 8  # radix of kth_largest: one byte of the 32-bit keys per pass
SELECT_DIGITS = 1 << SELECT_DIGIT_BITS
LOW_31_BITS = 0x7FFFFFFF


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every value of ``tensor`` is finite (integer and empty tensors are).

    One reduction with no temporary the size of the tensor: ``aminmax`` carries a NaN or an infinity
    into its result, where ``isfinite(t).all()`` allocates the absolute values and two masks, more than
    the tensor itself (gigabytes for a table of millions of rows, at every check; BENCHMARKS.md, issue 19)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor.detach())
    return bool(torch.isfinite(low) & torch.isfinite(high))


def order_keys(values: torch.Tensor) -> torch.Tensor:
    """float32 ``values`` as int32 keys that order as the values do (-0.0 as 0.0): a negative float's
    magnitude bits are flipped, so that a larger magnitude gives a smaller key."""
    bits = (values.float() + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into 0.0
    return bits ^ ((bits >> 31) & LOW_31_BITS)


def kth_largest(values: torch.Tensor, k: int, sums: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """The ``k``-th largest of float32 ``values`` (any shape, finite; ``1 <= k <=`` their number), exactly.

    A radix selection on :func:`order_keys`: four passes over blocks of :data:`SELECT_BLOCK` values, each
    counting the next byte of the keys that share the bytes chosen so far. No temporary is larger than a
    block, where ``torch.topk`` on the CPU copies every value with an int64 index (16 bytes a value:
    gigabytes for a table of hundreds of millions of entries). With ``sums`` (e.g. an all-reduce), the
    values are one process's part of a whole whose counts ``sums`` adds up, and ``k`` counts in the whole.

    >>> kth_largest(torch.tensor([0.5, -2.0, 3.0, 0.5]), 2)
    0.5
    """
    flat = values.detach().reshape(-1)
    if flat.dtype != torch.float32:
        raise TypeError(f"kth_largest needs float32 values, got {flat.dtype}")
    if k < 1 or (sums is None and k > flat.numel()):
        raise ValueError(f"k={k} must lie in [1, {flat.numel()}]")
    top_shift = 32 - SELECT_DIGIT_BITS
    key = 0  # the signed key chosen so far, byte by byte from the top
    for shift in range(top_shift, -1, -SELECT_DIGIT_BITS):
        counts = torch.zeros(SELECT_DIGITS, dtype=torch.int64)
        for start in range(0, flat.numel(), SELECT_BLOCK):
            keys = order_keys(flat[start : start + SELECT_BLOCK])
            if shift == top_shift:
                digits = (keys >> shift) + SELECT_DIGITS // 2  # the signed top byte, -128..127 -> 0..255
            else:  # only the keys that share the chosen higher bytes
                keys = keys[(keys >> (shift + SELECT_DIGIT_BITS)) == (key >> (shift + SELECT_DIGIT_BITS))]
                digits = (keys >> shift) & (SELECT_DIGITS - 1)
            counts += torch.bincount(digits.long(), minlength=SELECT_DIGITS)
        if sums is not None:
            counts = sums(counts)
        from_top = counts.flip(0).cumsum(0)  # [i]: keys whose digit is SELECT_DIGITS - 1 - i or larger
        i = int(torch.searchsorted(from_top, torch.tensor([k])))
        if i == SELECT_DIGITS:
            raise ValueError(f"k={k} exceeds the {int(from_top[-1])} values")
        k -= int(from_top[i - 1]) if i else 0
        digit = SELECT_DIGITS - 1 - i
        key += (digit - SELECT_DIGITS // 2 if shift == top_shift else digit) << shift
    bits = key ^ ((key >> 31) & LOW_31_BITS)
    return struct.unpack("<f", struct.pack("<i", bits))[0]


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
