"""skanomaly.model_selection: normal-only training folds, scorers, thresholds, caching.

The central claim is tested against hand-written folds: GridSearchCV with the
normal-only route (an imbalanced-learn pipeline with NormalOnly, or OneClassSplit with
refit=False) gives exactly the fold scores, best parameters and refitted scores of a
loop written by hand, and a detector that records what it is fitted on never sees an
abnormal image.
"""

import re
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
from imblearn.pipeline import make_pipeline as make_imblearn_pipeline
from numpy.testing import assert_array_equal
from sklearn.base import BaseEstimator, OutlierMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import (
    GridSearchCV,
    GroupKFold,
    KFold,
    ParameterGrid,
    StratifiedGroupKFold,
    StratifiedKFold,
    StratifiedShuffleSplit,
    cross_validate,
)
from sklearn.pipeline import Pipeline
from sklearn.pipeline import make_pipeline as make_sklearn_pipeline

from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import CAEDetector
from skanomaly.metrics import (
    anomaly_roc_auc,
    sensitivity_at_specificity,
    youden_cutoff,
)
from skanomaly.model_selection import (
    NormalOnly,
    OneClassSplit,
    ThresholdTuner,
    get_scorer,
    get_scorer_names,
    make_anomaly_scorer,
    tune_threshold,
)
from skanomaly.preprocessing import (
    CLAHE,
    FilmCrop,
    HandMasker,
    HistogramEqualization,
    LungMasker,
    MaskApplier,
    PatchExtractor,
    Rescale,
    Resize,
)
from skanomaly.utils.validation import PatchBags

FAST = dict(channels=(4,), max_epochs=2, batch_size=16, augment=None, random_state=0)

# What every RecordingCAE was fitted on: (X as an array, y), in fitting order.
SEEN = []


class RecordingCAE(CAEDetector):
    """A CAEDetector that records every X (and y) its fit receives."""

    def fit(self, X, y=None):
        SEEN.append((X, None if y is None else np.asarray(y)))
        return super().fit(X, y)


@pytest.fixture(autouse=True)
def _forget_seen():
    SEEN.clear()
    yield
    SEEN.clear()


@pytest.fixture(scope="module")
def phantoms():
    data = make_chest_phantoms(36, image_size=16, anomaly_fraction=0.5, random_state=0)
    groups = np.arange(36) // 2  # two films per "patient"
    return data.images, data.labels, groups


@pytest.fixture(scope="module")
def held_out():
    data = make_chest_phantoms(16, image_size=16, anomaly_fraction=0.5, random_state=1)
    return data.images, data.labels


def _rows(X):
    """Each row of X as bytes, to recognise images wherever they turn up."""
    X = np.asarray(X)
    return {row.tobytes() for row in X.reshape(len(X), -1)}


def _assert_only_normals_seen(abnormal_rows, n_fits):
    assert len(SEEN) == n_fits
    for X, y in SEEN:
        assert not (_rows(X) & abnormal_rows), "an abnormal image reached a detector's fit"
        assert y is None or not y.any()


# ------------------------------------------------------------------- grid search
GRID = {"lr": [1e-3, 1e-2]}


def _by_hand(X, y, groups, splitter, X_test):
    """Fold scores, best parameters and refitted test scores, with no GridSearchCV."""
    folds = [(tr[y[tr] == 0], va) for tr, va in splitter.split(X, y, groups)]
    scores = np.array(
        [
            [
                anomaly_roc_auc(y[va], CAEDetector(**FAST, **params).fit(X[tr]).score_samples(X[va]))
                for tr, va in folds
            ]
            for params in ParameterGrid(GRID)
        ]
    )
    best = list(ParameterGrid(GRID))[int(np.argmax(scores.mean(axis=1)))]
    refitted = CAEDetector(**FAST, **best).fit(X[y == 0])
    return scores, best, refitted.score_samples(X_test)


@pytest.fixture(scope="module")
def hand_results(phantoms, held_out):
    X, y, groups = phantoms
    return _by_hand(X, y, groups, StratifiedGroupKFold(3), held_out[0])


def _assert_same_as_by_hand(search, hand_results, prefix):
    scores, best, test_scores = hand_results
    assert search.best_params_ == {f"{prefix}{k}": v for k, v in best.items()}
    for i in range(scores.shape[1]):
        assert_array_equal(search.cv_results_[f"split{i}_test_score"], scores[:, i])
    assert_array_equal(search.cv_results_["mean_test_score"], scores.mean(axis=1))
    # The grid must make a difference, or the comparison of best parameters is empty.
    assert scores.mean(axis=1)[0] != scores.mean(axis=1)[1]
    return test_scores


def test_grid_search_with_normal_only_sampler_equals_hand_written_folds(phantoms, held_out, hand_results):
    X, y, groups = phantoms
    pipe = make_imblearn_pipeline(NormalOnly(), RecordingCAE(**FAST))
    search = GridSearchCV(
        pipe,
        {f"recordingcae__{k}": v for k, v in GRID.items()},
        scoring=get_scorer("roc_auc_anomaly"),
        cv=StratifiedGroupKFold(3),
    ).fit(X, y, groups=groups)
    test_scores = _assert_same_as_by_hand(search, hand_results, "recordingcae__")
    # refit=True is right on this route: the refit trains on the normal images only.
    assert_array_equal(search.best_estimator_.score_samples(held_out[0]), test_scores)
    _assert_only_normals_seen(_rows(X[y == 1]), n_fits=2 * 3 + 1)
    assert len(SEEN[-1][0]) == (y == 0).sum()  # the refit saw every normal image


def test_grid_search_with_one_class_split_equals_hand_written_folds(phantoms, held_out, hand_results):
    X, y, groups = phantoms
    pipe = make_sklearn_pipeline(RecordingCAE(**FAST))
    search = GridSearchCV(
        pipe,
        {f"recordingcae__{k}": v for k, v in GRID.items()},
        scoring=get_scorer("roc_auc_anomaly"),
        cv=OneClassSplit(StratifiedGroupKFold(3)),
        refit=False,
    ).fit(X, y, groups=groups)
    test_scores = _assert_same_as_by_hand(search, hand_results, "recordingcae__")
    best = clone(pipe).set_params(**search.best_params_).fit(X[y == 0])
    assert_array_equal(best.score_samples(held_out[0]), test_scores)
    _assert_only_normals_seen(_rows(X[y == 1]), n_fits=2 * 3 + 1)


def test_one_class_split_with_refit_true_is_refused_by_the_detector(phantoms):
    """The documented caveat: GridSearchCV refits on all of X, which the detector refuses."""
    X, y, groups = phantoms
    search = GridSearchCV(
        CAEDetector(**FAST), {"lr": [1e-3]}, scoring=get_scorer("roc_auc_anomaly"),
        cv=OneClassSplit(GroupKFold(2)),
    )
    with pytest.raises(ValueError, match="normal images only"):
        search.fit(X, y, groups=groups)


def test_normal_only_after_patch_extractor_keeps_the_bag_mark(phantoms):
    """16 px images in 8 px patches give bags of 4 patches, the shape of an RGBA batch:
    only the PatchBags mark, kept by NormalOnly's subsetting, lets the detector read them."""
    X, y, _ = phantoms
    pipe = make_imblearn_pipeline(PatchExtractor(8), NormalOnly(), RecordingCAE(**FAST)).fit(X, y)
    (seen, seen_y), = SEEN
    assert isinstance(seen, PatchBags) and seen.shape == ((y == 0).sum(), 4, 8, 8)
    assert not seen_y.any()
    assert_array_equal(np.asarray(seen), PatchExtractor(8).fit_transform(X[y == 0]))
    assert pipe.score_samples(X).shape == (len(X),)  # scoring sees every image
    assert pipe.named_steps["normalonly"].n_abnormal_ == (y == 1).sum()


def test_normal_only_with_dataframes_and_cross_validate(phantoms):
    X, y, _ = phantoms
    frame = pd.DataFrame(X.reshape(len(X), -1), index=[f"film{i}" for i in range(len(X))])
    frame.columns = [f"px{i}" for i in range(frame.shape[1])]
    labels = pd.Series(y, index=frame.index)
    X_normal, y_normal = NormalOnly().fit_resample(frame, labels)
    assert list(X_normal.index) == list(frame.index[y == 0]) and list(y_normal.index) == list(X_normal.index)
    pipe = make_imblearn_pipeline(NormalOnly(), RecordingCAE(**FAST))
    scoring = get_scorer(["roc_auc_anomaly", "average_precision_anomaly"])
    result = cross_validate(pipe, frame, labels, scoring=scoring, cv=StratifiedKFold(2))
    assert np.isfinite(result["test_roc_auc_anomaly"]).all()
    assert np.isfinite(result["test_average_precision_anomaly"]).all()
    _assert_only_normals_seen(_rows(X[y == 1]), n_fits=2)
    assert all(isinstance(X_seen, pd.DataFrame) for X_seen, _ in SEEN)


@pytest.mark.parametrize("shape", [(6, 16), (6, 4, 4), (6, 2, 3, 3)])
def test_normal_only_keeps_the_normal_rows_of_any_layout(shape):
    """2-D, 3-D and 4-D input, which imbalanced-learn's own validation would reject."""
    X = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    y = np.array([0, 1, 1, 0, 0, 1])
    X_normal, y_normal = NormalOnly().fit_resample(X, y)
    assert_array_equal(X_normal, X[[0, 3, 4]])
    assert_array_equal(y_normal, [0, 0, 0])
    assert NormalOnly().fit(X, y).n_normal_ == 3
    X_list, y_list = NormalOnly().fit_resample(X.tolist(), y.tolist())
    assert_array_equal(np.asarray(X_list), X[[0, 3, 4]]) and y_list == [0, 0, 0]


@pytest.mark.parametrize(
    "y, message",
    [
        (None, "needs the image labels y"),
        (np.array([0, 1, 2, 0]), r"1 \(abnormal\) and -1 \(unlabelled\) only; got the values \[0, 1, 2\]"),
        (np.array([1, -1, 1, 1]), "predict's \\+1 \\(inlier\\) / -1"),
        (np.array(["NORMAL", "PNEUMONIA"] * 2), "y = \\(labels == 'PNEUMONIA'\\)"),
        (np.array([1, 1, 1, 1]), "all 4 images abnormal"),
        (np.array([0, 1, 0]), "y has 3 labels but X has 4 images"),
    ],
)
def test_normal_only_errors(y, message):
    with pytest.raises(ValueError, match=message):
        NormalOnly().fit_resample(np.zeros((4, 4, 4)), y)


def test_normal_only_needs_y_in_a_pipeline(phantoms):
    X, _, _ = phantoms
    with pytest.raises(ValueError, match="pipe.fit\\(X, y\\)"):
        make_imblearn_pipeline(NormalOnly(), CAEDetector(**FAST)).fit(X)


# ----------------------------------------------------------------- OneClassSplit
@pytest.mark.filterwarnings("ignore:The groups parameter is ignored")
def test_one_class_split_drops_abnormal_training_images_only():
    X, y = np.zeros((12, 4)), np.array([0, 1] * 6)
    groups = np.arange(12) // 3
    for inner in [KFold(3), GroupKFold(4), StratifiedGroupKFold(2), 3,
                  [(np.arange(6), np.arange(6, 12))]]:
        splitter = OneClassSplit(inner)
        wrapped = list(
            (inner if not isinstance(inner, int) else StratifiedKFold(inner)).split(X, y, groups)
            if not isinstance(inner, list) else inner
        )
        folds = list(splitter.split(X, y, groups))
        assert splitter.get_n_splits(X, y, groups) == len(wrapped) == len(folds)
        for (train, valid), (inner_train, inner_valid) in zip(folds, wrapped):
            assert_array_equal(train, inner_train[y[inner_train] == 0])
            assert_array_equal(valid, inner_valid)
    assert repr(OneClassSplit(KFold(3))) == "OneClassSplit(cv=KFold(n_splits=3, random_state=None, shuffle=False))"


def test_one_class_split_errors():
    with pytest.raises(ValueError, match="needs the image labels y"):
        list(OneClassSplit(2).split(np.zeros((4, 2)), None))
    with pytest.raises(ValueError, match="fold 0 holds no normal image"):
        list(OneClassSplit([(np.array([1, 3]), np.array([0, 2]))]).split(np.zeros((4, 2)), [0, 1, 0, 1]))


class _CountsFits(OutlierMixin, BaseEstimator):
    """A detector that counts its fits (class attribute: clones share it)."""

    fits = 0

    def __init__(self, level=0):
        self.level = level

    def fit(self, X, y=None):
        type(self).fits += 1
        self.offset_ = 0.0
        return self

    def score_samples(self, X):
        return np.asarray(X, dtype=float).reshape(len(X), -1)[:, 0]


def test_a_fold_without_normal_images_is_refused_before_any_fit():
    """KFold on label-sorted data: fold 0 trains on abnormal images only. With
    NormalOnly alone GridSearchCV fits, scores that fold NaN and carries on; the
    sampler's message names the remedy, and OneClassSplit refuses before any fit."""
    X = np.random.default_rng(0).random((12, 4, 4))
    y = np.repeat([0, 1], [4, 8])
    pipe = make_imblearn_pipeline(NormalOnly(), _CountsFits())
    scoring = get_scorer("roc_auc_anomaly")
    with pytest.warns(Warning, match="wrap yours in OneClassSplit"):
        search = GridSearchCV(pipe, {"_countsfits__level": [0]}, scoring=scoring,
                              cv=KFold(2)).fit(X, y)
    assert np.isnan(search.cv_results_["split0_test_score"][0])
    _CountsFits.fits = 0
    with pytest.raises(ValueError, match="fold 0 holds no normal image"):
        GridSearchCV(pipe, {"_countsfits__level": [0]}, scoring=scoring,
                     cv=OneClassSplit(KFold(2))).fit(X, y)
    assert _CountsFits.fits == 0
    # A stratified splitter has normal images in every training part.
    GridSearchCV(pipe, {"_countsfits__level": [0]}, scoring=scoring,
                 cv=OneClassSplit(StratifiedKFold(2))).fit(X, y)


# ----------------------------------------------------------------------- scorers
class FixedScores(OutlierMixin, BaseEstimator):
    """A 'detector' whose normality score is the first feature: known scores."""

    def fit(self, X, y=None):
        self.offset_ = 0.0
        return self

    def score_samples(self, X):
        return np.asarray(X, dtype=float)[:, 0]

    def decision_function(self, X):
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        return np.where(self.decision_function(X) < 0, -1, 1)


def _sensitivity_by_hand(y, scores, specificity):
    best = 0.0  # flagging nothing always qualifies
    for cut in np.unique(scores):
        flagged = scores <= cut
        if (~flagged[y == 0]).mean() >= specificity - 1e-12:
            best = max(best, flagged[y == 1].mean())
    return best


def test_scorers_agree_with_sklearn_metrics_on_a_pipeline(phantoms, held_out):
    X, y, _ = phantoms
    X_test, y_test = held_out
    pipe = make_sklearn_pipeline(Rescale(), CAEDetector(**FAST)).fit(X[y == 0])
    s = pipe.score_samples(X_test)
    expected = {
        "roc_auc_anomaly": roc_auc_score(y_test, -s),
        "average_precision_anomaly": average_precision_score(y_test, -s),
        "partial_roc_auc_anomaly": roc_auc_score(y_test, -s, max_fpr=0.1),
        "sensitivity_at_90_specificity": _sensitivity_by_hand(y_test, s, 0.9),
        "sensitivity_at_95_specificity": _sensitivity_by_hand(y_test, s, 0.95),
    }
    for name, value in expected.items():
        assert get_scorer(name)(pipe, X_test, y_test) == pytest.approx(value, abs=1e-12), name
    # scikit-learn's "roc_auc" ranks decision_function (higher = normal) with label 1
    # positive: the mirror image of the anomaly AUC.
    assert get_scorer("roc_auc")(pipe, X_test, y_test) == pytest.approx(1 - expected["roc_auc_anomaly"])


def test_sensitivity_at_specificity_on_a_known_toy():
    y = np.array([0] * 10 + [1] * 4)
    scores = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, -3] + [-1, 0, -4, -5], dtype=float)
    # Flagging at most one normal (specificity 0.9): cut below 1, above -1 flags the
    # four abnormals and the normal at -3: 4 / 4.
    assert sensitivity_at_specificity(y, scores, specificity=0.9) == 1.0
    # No normal flagged: only the abnormals below -3, 2 / 4.
    assert sensitivity_at_specificity(y, scores, specificity=1.0) == 0.5
    scorer = make_anomaly_scorer(sensitivity_at_specificity, specificity=1.0)
    assert scorer(FixedScores().fit(None), scores[:, None], y) == 0.5
    for specificity in (0.8, 0.9, 1.0):
        assert sensitivity_at_specificity(y, scores, specificity=specificity) == _sensitivity_by_hand(
            y, scores, specificity
        )


def test_get_scorer_names_and_errors():
    assert {"roc_auc_anomaly", "average_precision_anomaly", "partial_roc_auc_anomaly",
            "sensitivity_at_90_specificity", "roc_auc"} <= set(get_scorer_names())
    assert get_scorer(None) is None
    assert get_scorer(anomaly_roc_auc) is anomaly_roc_auc
    assert set(get_scorer({"auc": "roc_auc_anomaly"})) == {"auc"}
    with pytest.raises(ValueError, match="not a scorer name.*roc_auc_anomaly"):
        get_scorer("roc_auc_anomalous")
    with pytest.raises(ValueError, match="distinct names"):
        get_scorer(["roc_auc_anomaly", "roc_auc_anomaly"])


# -------------------------------------------------------------------- thresholds
# Normal scores 5, 4, 3, 2; abnormal 2.5, 1, 0, -1, -2. Cutting between 1 and 2 flags
# 4 of 5 abnormals and no normal (J = 0.8); between 2.5 and 3 all abnormals and one
# normal (J = 0.75): Youden's cut is 1.5, halfway between 1 and 2.
TOY_Y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
TOY_SCORES = np.array([5, 4, 3, 2, 2.5, 1, 0, -1, -2], dtype=float)[:, None]


def test_youden_offset_on_a_known_toy():
    tuner = ThresholdTuner(FixedScores().fit(None), cv="prefit").fit(TOY_SCORES, TOY_Y)
    assert tuner.offset_ == 1.5
    assert tuner.validation_sensitivity_ == 0.8 and tuner.validation_fpr_ == 0.0
    assert_array_equal(tuner.predict(TOY_SCORES), [1, 1, 1, 1, 1, -1, -1, -1, -1])
    # The same operating point as metrics.youden_cutoff (which flags score <= 1).
    assert youden_cutoff(TOY_Y, TOY_SCORES[:, 0])["threshold"] == 1.0
    tuned = tune_threshold(FixedScores().fit(None), TOY_SCORES, TOY_Y)
    assert tuned.offset_ == 1.5
    assert_array_equal(tuned.decision_function(TOY_SCORES), TOY_SCORES[:, 0] - 1.5)


def test_target_sensitivity_and_fpr_on_a_known_toy():
    det = FixedScores().fit(None)
    # Every abnormal flagged at the fewest false alarms: cut between 2.5 and 3.
    assert tune_threshold(det, TOY_SCORES, TOY_Y, method="sensitivity", target=0.9).offset_ == 2.75
    # At most a quarter of the normals flagged, the most sensitive cut: also 2.75 ...
    assert tune_threshold(det, TOY_SCORES, TOY_Y, method="fpr", target=0.25).offset_ == 2.75
    # ... and below a quarter, none: the cut between 1 and 2.
    assert tune_threshold(det, TOY_SCORES, TOY_Y, method="fpr", target=0.2).offset_ == 1.5
    # A target FPR can be tuned on normal images alone (y=None).
    assert tune_threshold(det, TOY_SCORES[:4], None, method="fpr", target=0.3).offset_ == 2.5
    assert det.offset_ == 0.0  # copy=True left the original alone


def test_tune_threshold_sets_the_last_step_of_a_pipeline(phantoms, held_out):
    X, y, _ = phantoms
    pipe = make_sklearn_pipeline(Rescale(), CAEDetector(**FAST)).fit(X[y == 0])
    X_val, y_val = held_out
    tuned = tune_threshold(pipe, X_val, y_val, method="fpr", target=0.25)
    assert tuned is not pipe and tuned[-1].offset_ != pipe[-1].offset_
    flagged = tuned.predict(X_val) == -1
    assert flagged[y_val == 0].mean() <= 0.25
    # The most sensitive such cut: one more normal flagged would exceed the target.
    normal_scores = np.sort(tuned.score_samples(X_val[y_val == 0]))
    n_flagged = flagged[y_val == 0].sum()
    assert (n_flagged + 1) / (y_val == 0).sum() > 0.25
    assert normal_scores[n_flagged] > tuned[-1].offset_ > normal_scores[n_flagged - 1]


def test_threshold_tuner_reaches_the_target_fpr_on_its_validation_split(phantoms):
    X, y, _ = phantoms
    tuner = ThresholdTuner(RecordingCAE(**FAST), method="fpr", target=0.2, cv=0.5, random_state=0).fit(X, y)
    train, valid = next(StratifiedShuffleSplit(1, test_size=0.5, random_state=0).split(X, y))
    # Trained on the normal images of the training half, nothing else.
    (seen, seen_y), = SEEN
    assert_array_equal(seen, X[train[y[train] == 0]]) and not seen_y.any()
    flagged = tuner.predict(X[valid]) == -1
    fpr = flagged[y[valid] == 0].mean()
    assert fpr <= 0.2 and fpr == tuner.validation_fpr_
    assert flagged[y[valid] == 1].mean() == tuner.validation_sensitivity_
    assert_array_equal(tuner.decision_function(X), tuner.estimator_.score_samples(X) - tuner.offset_)


def test_threshold_tuner_with_folds_refits_on_every_normal(phantoms):
    X, y, groups = phantoms
    tuner = ThresholdTuner(
        make_imblearn_pipeline(NormalOnly(), RecordingCAE(**FAST)), cv=StratifiedGroupKFold(2), refit=True
    ).fit(X, y, groups=groups)
    assert tuner.fold_offsets_.shape == (2,) and tuner.offset_ == tuner.fold_offsets_.mean()
    _assert_only_normals_seen(_rows(X[y == 1]), n_fits=3)
    assert len(SEEN[-1][0]) == (y == 0).sum()
    for (train, _), (seen, _) in zip(StratifiedGroupKFold(2).split(X, y, groups), SEEN):
        assert_array_equal(seen, X[train[y[train] == 0]])


@pytest.mark.parametrize(
    "params, fit_y, error, message",
    [
        (dict(target=0.1), TOY_Y, ValueError, "method='youden' takes none"),
        (dict(method="fpr"), TOY_Y, ValueError, "needs target, the false-positive rate"),
        (dict(method="sensitivity", target=1.0), TOY_Y, ValueError, "'target' parameter"),
        (dict(method="kappa"), TOY_Y, ValueError, "'method' parameter"),
        (dict(), None, ValueError, "needs the image labels y"),
        (dict(method="sensitivity", target=0.5), np.zeros(9, int), ValueError, "needs abnormal images"),
        (dict(cv="prefit", refit=True), TOY_Y, ValueError, "set refit=False"),
        (dict(cv=3), TOY_Y, ValueError, "set refit=True"),
    ],
)
def test_threshold_tuner_errors(params, fit_y, error, message):
    settings = dict(cv="prefit", refit=False)
    settings.update(params)
    with pytest.raises(error, match=message):
        ThresholdTuner(FixedScores().fit(None), **settings).fit(TOY_SCORES, fit_y)


def test_threshold_tuner_unfitted_errors():
    with pytest.raises(NotFittedError, match="cv='prefit', estimator must be fitted"):
        ThresholdTuner(CAEDetector(**FAST), cv="prefit").fit(np.zeros((4, 16, 16)), [0, 0, 1, 1])
    with pytest.raises(NotFittedError):
        ThresholdTuner(CAEDetector(**FAST)).predict(np.zeros((4, 16, 16)))
    with pytest.raises(NotFittedError):
        tune_threshold(CAEDetector(**FAST), np.zeros((4, 16, 16)), [0, 0, 1, 1])


# ---------------------------------------------------------------------- caching
def _stacked(images, masks):
    return np.stack([images, masks.astype(np.float32)], axis=1)


CACHED = [
    (CLAHE(kernel_size=8), "images"),
    (HistogramEqualization(), "images"),
    (Resize(8), "images"),
    (Rescale(), "images"),
    (PatchExtractor(8, stride=4), "images"),
    (FilmCrop(), "images"),
    (HandMasker(), "images"),
    (LungMasker(device="cpu"), "images32"),
    (MaskApplier(), "stacked"),
]


@pytest.mark.parametrize("transformer, data", CACHED, ids=lambda p: type(p).__name__ if not isinstance(p, str) else "")
def test_transformers_are_cached_by_pipeline_memory(transformer, data, tmp_path, monkeypatch):
    size = 32 if data == "images32" else 16
    phantom = make_chest_phantoms(6, image_size=size, anomaly_fraction=0.5, random_state=0)
    X = _stacked(phantom.images, phantom.masks) if data == "stacked" else phantom.images
    calls = []
    cls = type(transformer)
    original = cls.fit_transform
    monkeypatch.setattr(cls, "fit_transform", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))

    def cached_pipeline():
        return Pipeline([("step", clone(transformer)), ("end", "passthrough")],
                        memory=joblib.Memory(tmp_path, verbose=0))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no film / lung found in a phantom
        uncached = clone(transformer).fit_transform(X)
        assert len(calls) == 1
        first = cached_pipeline().fit_transform(X)
        assert len(calls) == 2
        pipe = cached_pipeline()
        second = pipe.fit_transform(X)  # a new pipeline with the same steps: from the cache
        third = pipe.fit(X).transform(X)  # the same pipeline fitted again
    assert len(calls) == 2, f"{cls.__name__} was fitted again instead of loaded from the cache"
    for out in (first, second, third):
        assert_array_equal(out, uncached)  # NaN where NaN, same values elsewhere
        assert type(out) is type(uncached)
    # A changed parameter is a different step: fitted, not loaded.
    changed = Pipeline([("step", clone(transformer).set_params(image_shape=(-1, size))), ("end", "passthrough")],
                       memory=joblib.Memory(tmp_path, verbose=0))
    if data != "stacked":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            changed.fit_transform(X)
        assert len(calls) == 3


def test_grid_over_the_detector_reuses_cached_preprocessing(phantoms, tmp_path, monkeypatch):
    X, y, _ = phantoms
    calls = []
    original = CLAHE.fit_transform
    monkeypatch.setattr(CLAHE, "fit_transform", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    pipe = make_imblearn_pipeline(
        NormalOnly(), CLAHE(kernel_size=8), CAEDetector(**FAST), memory=joblib.Memory(tmp_path, verbose=0)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        GridSearchCV(pipe, {"caedetector__lr": [1e-3, 1e-2, 3e-2]}, scoring=get_scorer("roc_auc_anomaly"),
                     cv=StratifiedKFold(2)).fit(X, y)
    # CLAHE once per fold and once for the refit (whose training set differs), not
    # once per fold and grid point.
    assert len(calls) == 2 + 1


def test_module_is_exported():
    import skanomaly

    assert skanomaly.model_selection.NormalOnly is NormalOnly
    assert re.search(r"NormalOnly", skanomaly.model_selection.__doc__)


# ------------------------------------------------------- unlabelled images (y == -1)
def test_normal_only_keeps_unlabelled_images_and_counts_them():
    X = np.arange(6 * 2 * 2, dtype=np.float32).reshape(6, 2, 2)
    y = np.array([0, 1, -1, 0, -1, 1])
    X_kept, y_kept = NormalOnly().fit_resample(X, y)
    assert_array_equal(X_kept, X[[0, 2, 3, 4]])
    assert_array_equal(y_kept, [0, -1, 0, -1])
    sampler = NormalOnly().fit(X, y)
    assert (sampler.n_normal_, sampler.n_unlabelled_, sampler.n_abnormal_) == (2, 2, 2)


@pytest.mark.filterwarnings("ignore:The groups parameter is ignored")
def test_one_class_split_puts_unlabelled_images_in_training_parts_only():
    y = np.array([0] * 12 + [1] * 8 + [-1] * 10)
    groups = np.arange(30) // 2  # patients of two images each
    X = np.zeros((30, 4))
    for inner in [StratifiedKFold(4, shuffle=True, random_state=0), StratifiedGroupKFold(3), KFold(5, shuffle=True, random_state=1)]:
        seen_in_validation = []
        for train, valid in OneClassSplit(inner).split(X, y, groups):
            assert set(y[train]) <= {0, -1} and np.any(y[train] == 0)
            assert set(y[valid]) <= {0, 1}
            # Every unlabelled image trains, unless its patient is being validated.
            expected = [i for i in np.flatnonzero(y == -1) if groups[i] not in set(groups[valid])]
            assert set(expected) <= set(train)
            assert not set(groups[train[y[train] == -1]]) & set(groups[valid])
            seen_in_validation.extend(valid)
        # The labelled images are validated (KFold-type splitters: each once).
        assert set(seen_in_validation) == set(np.flatnonzero(y != -1))
    # Without groups, all unlabelled images join every training part.
    for train, _ in OneClassSplit(StratifiedKFold(3)).split(X, y):
        assert set(np.flatnonzero(y == -1)) <= set(train)


@pytest.mark.parametrize(
    "y, message",
    [
        (np.array([1, -1, 1, -1]), "predict's \\+1 \\(inlier\\) / -1"),
        (np.array([0, 1, 2, -1]), "0 \\(normal\\), 1 \\(abnormal\\) and -1 \\(unlabelled\\) only"),
    ],
)
def test_normal_only_unlabelled_errors(y, message):
    with pytest.raises(ValueError, match=message):
        NormalOnly().fit_resample(np.zeros((4, 4, 4)), y)


def test_scorers_refuse_unlabelled_images_naming_them():
    from skanomaly.metrics import anomaly_roc_auc

    with pytest.raises(ValueError, match="-1 marks unlabelled images"):
        anomaly_roc_auc([0, 1, -1], [0.1, 0.2, 0.3])
