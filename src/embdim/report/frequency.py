"""Embedding quality by id frequency, and the effective rank of a table.

:func:`frequency_report` scores any trained model (a :class:`~embdim.recommender.Recommender`,
factorised, masked or slim) on test rows grouped by how often their ids occurred in training:
rows whose id (in one field, or the rarest over all fields) was seen rarely fall in the low
buckets. The MLET 2023 paper claims rare ids gain most from factorised training; this is the
measurement.

:func:`effective_rank` is Roy & Vetterli's effective rank (2007): ``exp(H(p))`` with
``p_i = s_i / sum(s)`` the normalised singular values and ``H`` their Shannon entropy (natural
log). It lies in ``[1, min(n, d)]``: 1 for a rank-1 table, ``min(n, d)`` when every singular value
is equal. The MLET papers explain the method's gain by the higher effective rank of tables
trained as products.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from embdim.data.prepare import SplitArrays
from embdim.data.schema import FieldInfo
from embdim.train.metrics import log_loss, roc_auc

DEFAULT_BUCKET_EDGES = (0, 5, 20, 100, 1000)
GRAM_CHUNK_ROWS = 65536  # rows per float64 chunk when accumulating W^T W


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


def row_frequencies(ids: np.ndarray, fields: Sequence[FieldInfo], field: int | str | None = None) -> np.ndarray:
    """Training count of each row's id: ``[N]``.

    Args:
        ids: int [N, F] per-field ids.
        fields: the F fields, with training ``counts``.
        field: a field index or name, or ``None`` for the rarest id of the row (min over fields).
    """
    if any(f.counts is None for f in fields):
        raise ValueError("row_frequencies needs training counts on every field (FieldInfo.counts)")
    if field is None:
        per_field = np.stack([f.counts[ids[:, j]] for j, f in enumerate(fields)], axis=1)  # [N, F]
        return per_field.min(axis=1)
    j = field if isinstance(field, int) else [f.name for f in fields].index(field)
    return fields[j].counts[ids[:, j]]


def group_by_frequency(
    labels: np.ndarray, logits: np.ndarray, freq: np.ndarray, edges: Sequence[int] = DEFAULT_BUCKET_EDGES
) -> list[dict[str, Any]]:
    """AUC and logloss of rows grouped by training frequency.

    Args:
        labels: [N] 0/1; logits: [N]; freq: [N] training counts of the rows' ids.
        edges: increasing lower bounds; bucket i holds ``edges[i] <= freq < edges[i + 1]`` (the last
            is open-ended).
    Returns:
        one dict per non-empty bucket: ``lo``, ``hi`` (None = open), ``rows``, ``positives``,
        ``auc`` (NaN when the bucket has one class only), ``logloss``.
    """
    edges = list(edges)
    if edges != sorted(set(edges)):
        raise ValueError(f"bucket edges must be strictly increasing, got {edges}")
    out = []
    for i, lo in enumerate(edges):
        hi = edges[i + 1] if i + 1 < len(edges) else None
        sel = (freq >= lo) & (freq < hi) if hi is not None else freq >= lo
        if not sel.any():
            continue
        y, z = labels[sel], logits[sel]
        one_class = y.min() == y.max()
        out.append(
            {
                "lo": int(lo),
                "hi": None if hi is None else int(hi),
                "rows": int(sel.sum()),
                "positives": int(y.sum()),
                "auc": None if one_class else float(roc_auc(y, z)),  # undefined with one class
                "logloss": float(log_loss(y, z)),
            }
        )
    return out


def frequency_report(
    rec: torch.nn.Module,
    split: SplitArrays,
    fields: Sequence[FieldInfo],
    field: int | str | None = None,
    edges: Sequence[int] = DEFAULT_BUCKET_EDGES,
    batch_size: int = 16384,
) -> list[dict[str, Any]]:
    """Score ``rec`` on ``split`` (usually test) grouped by the training frequency of its rows' ids
    (see :func:`row_frequencies` for ``field``, :func:`group_by_frequency` for the output)."""
    from embdim.train.trainer import predict_logits  # the trainer imports reports, not the reverse

    logits = predict_logits(rec, split, batch_size)
    freq = row_frequencies(np.asarray(split.ids), fields, field)
    return group_by_frequency(np.asarray(split.labels), logits, freq, edges)
