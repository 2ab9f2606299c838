"""Global AUC and logloss agree with scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from embdim.train.metrics import NonFiniteScores, log_loss, roc_auc


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_logloss_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 2000)
    logits = rng.normal(size=2000) + labels * 0.7
    logits[:300] = np.round(logits[:300])  # ties
    assert roc_auc(labels, logits) == pytest.approx(roc_auc_score(labels, logits), abs=1e-12)
    probs = 1 / (1 + np.exp(-logits))
    assert log_loss(labels, logits) == pytest.approx(sk_log_loss(labels, probs), abs=1e-9)


def test_auc_single_class_is_nan():
    assert np.isnan(roc_auc(np.ones(5), np.arange(5)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_metrics_refuse_non_finite_scores_instead_of_ranking_them(bad):
    labels = np.array([0, 1, 0, 1])
    scores = np.array([0.1, bad, 0.3, 0.4])
    with pytest.raises(NonFiniteScores, match="1 of 4 scores"):
        roc_auc(labels, scores)
    with pytest.raises(NonFiniteScores):
        log_loss(labels, scores)
