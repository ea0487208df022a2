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


def test_the_intensity_baseline_is_the_mahalanobis_distance_of_mean_and_std():
    from sklearn.covariance import EmpiricalCovariance

    from skanomaly.metrics import intensity_baseline_scores, intensity_statistics

    rng = np.random.default_rng(0)
    normals = rng.uniform(0.1, 0.9, size=(20, 6, 6)) * rng.uniform(0.5, 1.0, size=(20, 1, 1))
    normals[0, :2] = np.nan  # NaN pixels (outside a ROI) count in neither statistic
    films = rng.uniform(size=(5, 6, 6))
    stats = intensity_statistics(normals)
    assert stats[0, 0] == pytest.approx(np.nanmean(normals[0])) and stats[0, 1] == pytest.approx(np.nanstd(normals[0]))
    model = EmpiricalCovariance().fit(stats)
    np.testing.assert_allclose(intensity_baseline_scores(normals, films),
                               -model.mahalanobis(intensity_statistics(films)), rtol=1e-8)
    # Leave-one-out: each normal film scored by a fit on the other 19.
    loo = [-EmpiricalCovariance().fit(np.delete(stats, i, 0)).mahalanobis(stats[i : i + 1])[0] for i in range(20)]
    np.testing.assert_allclose(intensity_baseline_scores(normals), loo, rtol=1e-8)
    with pytest.raises(ValueError, match="at least 3"):
        intensity_baseline_scores(normals[:2])
