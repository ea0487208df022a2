import numpy as np
import pytest

from skanomaly.metrics import anomaly_roc_auc, roc_auc_anomaly_scorer, youden_cutoff


def test_auc_treats_low_normality_as_abnormal():
    y = [0, 0, 0, 1, 1]
    assert anomaly_roc_auc(y, [0.9, 0.8, 0.7, 0.1, 0.2]) == 1.0
    assert anomaly_roc_auc(y, [0.1, 0.2, 0.3, 0.9, 0.8]) == 0.0


def test_youden_cutoff_separates_and_reports_rates():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.9, 0.8, 0.7, 0.15, 0.4, 0.2, 0.1, 0.05])  # unique optimum at 0.4
    cut = youden_cutoff(y, scores)
    flagged = scores <= cut["threshold"]
    assert cut["sensitivity"] == flagged[y == 1].mean() == 1.0
    assert cut["specificity"] == 1 - flagged[y == 0].mean() == 0.75
    assert cut["youden_j"] == pytest.approx(0.75)


def test_labels_must_be_binary_with_both_classes():
    with pytest.raises(ValueError, match="both labels 0"):
        anomaly_roc_auc([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="both labels 0"):
        youden_cutoff([0, 2], [0.1, 0.2])


def test_scorer_uses_score_samples():
    class Fixed:
        def score_samples(self, X):
            return -np.asarray(X, dtype=float).ravel()

    assert roc_auc_anomaly_scorer(Fixed(), [[0.0], [1.0]], [0, 1]) == 1.0
