"""Global metrics over a whole split (never averaged per batch)."""

from __future__ import annotations

import numpy as np

LOGLOSS_EPS = 1e-7


class NonFiniteScores(ValueError):
    """Scores holding NaN or infinity: a diverged model, which has no AUC (sorting would rank by row order)."""


def _finite_scores(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    if bad:
        raise NonFiniteScores(f"{bad:,} of {scores.size:,} scores are not finite")
    return scores


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve over all rows, ties counted half (Mann-Whitney U).

    Args:
        labels: [N] 0/1.
        scores: [N] any monotone score (logits or probabilities).
    Returns:
        AUC in [0, 1]; NaN when only one class is present.
    Raises:
        NonFiniteScores: a score is NaN or infinite.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = _finite_scores(scores)
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    # average rank (1-based) of each run of tied scores
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [scores.size]))
    avg_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(scores.size, dtype=np.float64)
    ranks[order] = np.repeat(avg_rank, ends - starts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy of sigmoid(logits), probabilities clipped to [eps, 1 - eps]; raises
    :class:`NonFiniteScores` for a NaN or infinite logit."""
    labels = np.asarray(labels, dtype=np.float64).ravel()
    p = 1.0 / (1.0 + np.exp(-_finite_scores(logits)))
    p = np.clip(p, LOGLOSS_EPS, 1.0 - LOGLOSS_EPS)
    return float(-np.mean(labels * np.log(p) + (1.0 - labels) * np.log(1.0 - p)))
