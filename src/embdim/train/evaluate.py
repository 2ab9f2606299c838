"""Scoring a model on a split: logits, global AUC and logloss, and the same grouped by id frequency.

:func:`frequency_report` scores any trained model (a :class:`~embdim.recommender.Recommender`,
factorised, masked or slim) on rows grouped by how often their ids occurred in training: rows
whose id (in one field, or the rarest over all fields) was seen rarely fall in the low buckets.
The MLET 2023 paper claims rare ids gain most from factorised training; this is the measurement.
Reports may import this module; it imports nothing above ``train/``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from embdim.data.prepare import SplitArrays
from embdim.data.schema import FieldInfo
from embdim.train.metrics import log_loss, roc_auc

DEFAULT_BUCKET_EDGES = (0, 5, 20, 100, 1000)


def batch_tensors(split: SplitArrays, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Rows ``idx`` [B] of a split as tensors: ids int64 [B, F], dense float32 [B, Dn] (``None`` without
    dense features), labels float32 [B]."""
    ids = torch.from_numpy(np.take(split.ids, idx, axis=0).astype(np.int64))
    dense = torch.from_numpy(np.take(split.dense, idx, axis=0)) if split.dense.shape[1] else None
    labels = torch.from_numpy(np.take(split.labels, idx, axis=0))
    return ids, dense, labels


def module_device(module: torch.nn.Module) -> torch.device:
    """Where ``module``'s weights are (the CPU for a module without any)."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def predict_logits(rec: torch.nn.Module, split: SplitArrays, batch_size: int) -> np.ndarray:
    """Logits [N] for a whole split, in row order (batches go to the model's device, logits come back)."""
    was_training = rec.training
    rec.eval()
    device = module_device(rec)
    logits = np.empty(len(split), dtype=np.float32)  # filled in place: no per-batch arrays kept alive
    for start in range(0, len(split), batch_size):
        stop = min(start + batch_size, len(split))
        ids, dense, _ = batch_tensors(split, np.arange(start, stop))
        dense = None if dense is None else dense.to(device)
        logits[start:stop] = rec(ids.to(device), dense).float().cpu().numpy()
    split.release_pages()
    rec.train(was_training)
    return logits


def evaluate(rec: torch.nn.Module, split: SplitArrays, batch_size: int) -> dict[str, float]:
    return scores_metrics(split.labels, predict_logits(rec, split, batch_size))


def scores_metrics(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Global AUC and logloss of logits [N] against 0/1 labels [N] (:class:`NonFiniteScores` for a
    non-finite logit)."""
    return {"auc": roc_auc(labels, logits), "logloss": log_loss(labels, logits)}


def row_frequencies(ids: np.ndarray, fields: Sequence[FieldInfo], field: int | str | None = None) -> np.ndarray:
    """Training count of each row's id: ``[N]``.

    Args:
        ids: int [N, F] per-field ids.
        fields: the F fields, with training ``counts``.
        field: a field index or name, or ``None`` for the rarest id of the row (min over fields).
    """
    if any(f.counts is None for f in fields):
        raise ValueError("row_frequencies needs training counts on every field (FieldInfo.counts)")
    if field is None:  # a running minimum: [N] at a time, never [N, F]
        rarest = fields[0].counts[ids[:, 0]]
        for j, f in enumerate(fields[1:], start=1):
            np.minimum(rarest, f.counts[ids[:, j]], out=rarest)
        return rarest
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
    logits = predict_logits(rec, split, batch_size)
    freq = row_frequencies(np.asarray(split.ids), fields, field)
    return group_by_frequency(np.asarray(split.labels), logits, freq, edges)
