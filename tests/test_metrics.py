import numpy as np
import pytest

from skanomaly.metrics import anomaly_roc_auc, dice_score, roc_auc_anomaly_scorer, youden_cutoff


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


def test_dice_score_single_and_batched():
    a = np.zeros((3, 4, 4), bool)
    b = np.zeros((3, 4, 4), bool)
    a[0, :2], b[0, 1:3] = True, True  # 4 shared of 8 + 8 pixels
    a[1], b[1] = True, True  # identical
    # image 2: both empty
    np.testing.assert_allclose(dice_score(a, b), [0.5, 1.0, 1.0])
    assert dice_score(a[0], b[0]) == 0.5
    assert dice_score(a[0], ~a[0]) == 0.0
    assert dice_score(a[0][b[0]], b[0][b[0]]) == 2 * 4 / (4 + 8)  # a pixel selection
    with pytest.raises(ValueError, match="same shape"):
        dice_score(a, b[:2])
