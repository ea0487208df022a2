"""Conformal calibration: the false-alarm guarantee itself, its failure under shift and
its restoration by recalibrating, FDR control, and ConformalDetector as an estimator
(Pipeline, GridSearchCV, both persistence routes).

The guarantee is tested against its exact distribution. If the scores of ``n``
calibration images and ``m`` test images are exchangeable and do not tie, the ranks
of the ``n + m`` scores are a uniformly random permutation, and the number of test
images flagged at ``alpha`` (fewer than ``k = floor(alpha (n + 1))`` calibration
scores at or below theirs) is beta-binomial(m, k, n + 1 - k): a Polya urn. Random
splits of a pool of phantom scores are exactly such draws, so the counts below are
compared with that distribution's 1e-6 tails: a correct implementation fails these
tests about once in a million runs, one off by a single rank fails them at once.
"""

import math
import os
import warnings

import joblib
import numpy as np
import pytest
from scipy.stats import betabinom
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline

from skanomaly.conformal import ConformalDetector, benjamini_hochberg, conformal_pvalues
from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import CAEDetector
from skanomaly.io import load_model, save_model
from skanomaly.model_selection import get_scorer
from skanomaly.preprocessing import CLAHE

TAIL = 1e-6
SIZE = 24


def _roi(data):
    return np.where(data.masks, data.images, np.nan).astype(np.float32)


def _normals(n, seed):
    return _roi(make_chest_phantoms(n, image_size=SIZE, anomaly_fraction=0.0, random_state=seed))


def _cae(**params):
    return CAEDetector(channels=(4, 8), max_epochs=4, batch_size=16, lr=2e-3, random_state=0, **params)


@pytest.fixture(scope="module")
def trained():
    """A CAE trained on 80 normal phantoms, and the scores of 400 others (the pool)."""
    detector = _cae().fit(_normals(80, seed=0))
    pool = detector.score_samples(_normals(400, seed=1))
    assert np.unique(pool).size == pool.size  # no ties: the exact distribution applies
    return detector, pool


def _sum_of_betabinomials(n_draws, m, k, n):
    """pmf of the total flags over ``n_draws`` independent splits."""
    pmf = betabinom.pmf(np.arange(m + 1), m, k, n + 1 - k)
    total = np.array([1.0])
    for _ in range(n_draws):
        total = np.convolve(total, pmf)
    return total


def _tails(pmf, tail=TAIL):
    cdf = np.cumsum(pmf)
    low = int(np.searchsorted(cdf, tail))
    high = int(np.searchsorted(cdf, 1 - tail))
    return low, high


class _Lookup(OutlierMixin, BaseEstimator):
    """A fitted "detector" whose images are indices into fixed scores: calibrating the
    real ConformalDetector on thousands of splits costs microseconds each."""

    def __init__(self, scores=None):
        self.scores = scores

    def fit(self, X, y=None):
        self.fitted_indices_ = np.asarray(X).ravel().astype(int)
        return self

    def score_samples(self, X):
        return np.asarray(self.scores)[np.asarray(X).ravel().astype(int)]


@pytest.mark.parametrize("alpha, n_cal", [(0.05, 39), (0.1, 49), (0.05, 100)])
def test_false_alarm_rate_over_random_splits_follows_its_exact_distribution(trained, alpha, n_cal):
    _, pool = trained
    rng = np.random.default_rng(int(1000 * alpha) + n_cal)
    n_splits, m = 300, 40
    lookup = _Lookup(pool).fit(np.arange(pool.size)[:, None])
    flags = 0
    for _ in range(n_splits):
        order = rng.permutation(pool.size)
        cal, test = order[:n_cal, None], order[n_cal:n_cal + m, None]
        detector = ConformalDetector(lookup, calibration="prefit", alpha=alpha).fit(cal)
        flags += int((detector.predict(test) == -1).sum())
    k = math.floor(alpha * (n_cal + 1))
    low, high = _tails(_sum_of_betabinomials(n_splits, m, k, n_cal))
    rate = flags / (n_splits * m)
    assert low <= flags <= high, (rate, low / (n_splits * m), high / (n_splits * m))
    # The guarantee: the expected rate k / (n + 1) is at most alpha, and close to it.
    assert k / (n_cal + 1) <= alpha < (k + 1) / (n_cal + 1)


def test_one_fit_holds_out_calibration_images_and_keeps_its_promise_on_new_normals():
    normals = _normals(120, seed=2)
    detector = ConformalDetector(_cae(), calibration=0.5, alpha=0.1, random_state=0).fit(normals)
    n = detector.n_calibration_
    assert n == 60 and detector.estimator_.n_iter_ == 4
    new = _normals(300, seed=3)
    flags = int((detector.predict(new) == -1).sum())
    k = math.floor(0.1 * (n + 1))
    low, high = _tails(betabinom.pmf(np.arange(301), 300, k, n + 1 - k))
    assert low <= flags <= high
    # Held out means not trained on: the calibration scores are those of 60 of the
    # images, scored by the fitted detector, and no training image is among them.
    all_scores = detector.estimator_.score_samples(normals)
    held = np.isin(all_scores, detector.calibration_scores_)
    assert held.sum() == 60


# Two exposure shifts of another "site": the same anatomy, films 0.1 brighter (they
# score as less normal than any calibration film of the old site) or with 30 % less
# contrast (they score as more normal: nothing is flagged, as the VAE's training offset
# flagged none of 100 pediatric films of another day).
SHIFTS = {
    "brighter": lambda images: np.clip(images + 0.1, 0, 1),
    "flatter": lambda images: 0.7 * images + 0.15,
}


@pytest.mark.parametrize("shift", sorted(SHIFTS))
def test_shift_breaks_the_guarantee_and_recalibration_restores_it(trained, shift):
    detector, _ = trained
    alpha, n, m = 0.1, 300, 600
    conformal = ConformalDetector(detector, calibration="prefit", alpha=alpha).fit(_normals(n, seed=4))
    k = math.floor(alpha * (n + 1))
    low, high = _tails(betabinom.pmf(np.arange(m + 1), m, k, n + 1 - k))
    assert low / m > 0.02 and high / m < 0.23  # 1e-6 tails of one calibration set of 300

    def flagged(model, images):
        return int((model.predict(images.astype(np.float32)) == -1).sum())

    test = _normals(m, seed=5)
    assert low <= flagged(conformal, test) <= high  # same site: the guarantee holds
    shifted_test = SHIFTS[shift](test)
    # Calibrated on the old site's films, the rate is far from alpha; the detector's
    # own training offset is no better.
    assert not low <= flagged(conformal, shifted_test) <= high
    assert not low <= flagged(detector, shifted_test) <= high
    # n normal films of the new site (not the test films) restore it.
    conformal.calibrate(SHIFTS[shift](_normals(n, seed=7)).astype(np.float32))
    assert low <= flagged(conformal, shifted_test) <= high


def test_pvalues_are_ranks_among_the_calibration_scores():
    calibration = np.array([0.3, 0.1, 0.2, 0.2])  # n = 4; sorted 0.1 0.2 0.2 0.3
    scores = np.array([0.05, 0.1, 0.2, 0.25, 0.4, np.nan])
    expected = np.array([1, 2, 4, 4, 5, np.nan]) / 5  # ties count against the image
    np.testing.assert_array_equal(conformal_pvalues(calibration, scores), expected)
    with pytest.raises(ValueError, match="finite scores"):
        conformal_pvalues([0.1, np.nan], [0.2])
    with pytest.raises(ValueError, match="non-empty"):
        conformal_pvalues([], [0.2])


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.07, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9])
def test_decision_is_negative_exactly_where_the_pvalue_is_at_most_alpha(alpha):
    rng = np.random.default_rng(0)
    for n in (1, 9, 19, 20, 29, 99, 257):
        pool = np.round(rng.normal(size=n + 500), 2)  # ties on purpose
        lookup = _Lookup(pool).fit(np.arange(pool.size)[:, None])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # alpha below 1 / (n + 1) for small n
            detector = ConformalDetector(lookup, calibration="prefit", alpha=alpha).fit(np.arange(n)[:, None])
        test = np.arange(n, n + 500)[:, None]
        pvalues = detector.score_pvalues(test)
        np.testing.assert_array_equal(detector.decision_function(test) < 0, pvalues <= alpha * (1 + 1e-9))
        np.testing.assert_array_equal(detector.predict(test) == -1, detector.decision_function(test) < 0)


def test_benjamini_hochberg_is_the_step_up_rule():
    rng = np.random.default_rng(1)
    for m in (1, 2, 10, 200):
        for q in (0.05, 0.2):
            p = rng.uniform(size=m) ** 3
            rejected = benjamini_hochberg(p, q)
            # Definition: reject the k smallest, k the largest i with p_(i) <= i q / m.
            sorted_p = np.sort(p)
            ok = [i for i in range(1, m + 1) if sorted_p[i - 1] <= i * q / m]
            k = max(ok, default=0)
            assert rejected.sum() == k
            if k:
                assert p[rejected].max() <= sorted_p[k - 1] and (p[~rejected] >= sorted_p[k - 1]).all()
    assert not benjamini_hochberg([np.nan, 0.5], 0.1).any()
    with pytest.raises(ValueError, match="fdr must be"):
        benjamini_hochberg([0.1], 1.5)


def test_fdr_is_controlled_over_random_batches(trained):
    """Batches of 30 normal and 10 clearly abnormal "images": the false-discovery
    proportion averaged over 400 batches stays below q (Bates et al. 2023)."""
    _, pool = trained
    rng = np.random.default_rng(2)
    outliers = pool.min() - np.abs(rng.normal(0, np.std(pool), 4000))  # far below every normal
    scores = np.concatenate([pool, outliers])
    lookup = _Lookup(scores).fit(np.arange(scores.size)[:, None])
    q, proportions, power = 0.2, [], []
    for _ in range(400):
        order = rng.permutation(pool.size)
        cal = order[:99, None]
        normal_test = order[99:129]
        abnormal_test = pool.size + rng.choice(outliers.size, 10, replace=False)
        test = np.concatenate([normal_test, abnormal_test])[:, None]
        detector = ConformalDetector(lookup, calibration="prefit", fdr=q).fit(cal)
        flagged = detector.predict(test) == -1
        proportions.append(flagged[:30].sum() / max(flagged.sum(), 1))
        power.append(flagged[30:].mean())
    # FDR <= q * (normal share) = 0.15; the mean of 400 proportions in [0, 1] has a
    # standard error below 0.025 here, so 0.15 + 5 standard errors is a safe bound.
    assert np.mean(proportions) < 0.15 + 5 * np.std(proportions) / np.sqrt(400)
    assert np.mean(power) > 0.9


def test_predict_with_fdr_depends_on_the_batch_and_says_so():
    lookup = _Lookup(np.linspace(0, 1, 200)).fit(np.arange(200)[:, None])
    detector = ConformalDetector(lookup, calibration="prefit", fdr=0.1).fit(np.arange(100)[:, None])
    suspect = np.array([[4]])  # 5 calibration scores at or below it: p = 6/101
    assert detector.score_pvalues(suspect)[0] == pytest.approx(6 / 101)
    assert detector.predict(suspect)[0] == -1  # alone: p <= 0.1
    # Among 20 clearly normal images (p = 1) the same p-value is no discovery:
    # 6/101 > 1 * 0.1 / 21. The rule is batch-wise, as documented.
    batch = np.concatenate([suspect, np.arange(150, 170)[:, None]])
    assert (detector.predict(batch) == 1).all()
    assert "images passed together" in " ".join(ConformalDetector.__doc__.split())


def test_too_few_calibration_images_for_alpha_warn_and_flag_nothing():
    lookup = _Lookup(np.linspace(0, 1, 50)).fit(np.arange(50)[:, None])
    with pytest.warns(UserWarning, match="Calibrate on at least 19 normal images"):
        detector = ConformalDetector(lookup, calibration="prefit", alpha=0.05).fit(np.arange(10, 28)[:, None])
    assert detector.offset_ == -math.inf and (detector.predict(np.arange(10)[:, None]) == 1).all()
    detector.set_params(alpha=0.06)  # read when predicting: 0.06 * 19 = 1.14 -> one rank
    assert (detector.predict(np.arange(10)[:, None]) == -1).all()


def test_bad_calibration_input_is_refused_and_leaves_nothing():
    detector = _cae().fit(_normals(30, seed=8))
    conformal = ConformalDetector(detector, calibration="prefit")
    flat = np.full((2, SIZE, SIZE), np.nan, dtype=np.float32)
    with pytest.raises(ValueError):
        conformal.fit(flat)
    assert not [name for name in vars(conformal) if name.endswith("_")]  # nothing of the fit stays
    with pytest.raises(Exception, match="must be fitted already"):
        ConformalDetector(_cae(), calibration="prefit").fit(_normals(5, seed=8))
    with pytest.raises(ValueError, match="no normal image"):
        ConformalDetector(_cae()).fit(_normals(4, seed=8), y=[1, 1, 1, 1])
    with pytest.raises(ValueError, match="at least 2 normal images"):
        ConformalDetector(_cae()).fit(_normals(1, seed=8))


def test_abnormal_images_and_groups_stay_out_of_training_and_calibration():
    n = 60
    scores = np.arange(n, dtype=float)
    groups = np.repeat(np.arange(20), 3)  # three images per patient
    y = (np.arange(n) % 10 == 0).astype(int)
    detector = ConformalDetector(_Lookup(scores), calibration=0.25, alpha=0.1, random_state=0).fit(
        np.arange(n)[:, None], y, groups=groups
    )
    trained_on = detector.estimator_.fitted_indices_
    calibrated_on = detector.calibration_scores_.astype(int)  # score = index
    assert not set(trained_on) & set(calibrated_on)
    assert not set(groups[trained_on]) & set(groups[calibrated_on])
    assert y[trained_on].sum() == 0 and y[calibrated_on].sum() == 0
    assert set(trained_on) | set(calibrated_on) == set(np.flatnonzero(y == 0))


def test_in_pipelines_grid_search_and_both_persistence_routes(tmp_path):
    normal = _normals(60, seed=9)
    abnormal = _roi(make_chest_phantoms(20, image_size=SIZE, anomaly_fraction=1.0, random_state=10))
    X = np.concatenate([normal, abnormal])
    y = np.repeat([0, 1], [60, 20])
    # Labelled folds: the wrapper trains and calibrates on each training fold's normals.
    search = GridSearchCV(
        ConformalDetector(make_pipeline(CLAHE(kernel_size=8), _cae()), calibration=0.3, alpha=0.1,
                          random_state=0),
        {"estimator__caedetector__channels": [(4,), (4, 8)]},
        scoring=get_scorer("roc_auc_anomaly"),
        cv=StratifiedKFold(2, shuffle=True, random_state=0),
    ).fit(X, y)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    best = search.best_estimator_
    assert best.n_calibration_ == math.ceil(0.3 * 60)  # the refit's normals only
    last_step = make_pipeline(
        CLAHE(kernel_size=8), ConformalDetector(_cae(), calibration=0.3, alpha=0.1, random_state=0)
    ).fit(X, y)
    assert last_step[-1].n_calibration_ == 18 and last_step[-1].estimator_.n_iter_ == 4
    for model in (best, last_step):
        conformal = model[-1] if hasattr(model, "steps") else model
        expected = conformal.pvalues_of_scores(model.score_samples(X))
        save_model(model, tmp_path / "m.skan")
        joblib.dump(model, tmp_path / "m.joblib")
        for loaded in (load_model(tmp_path / "m.skan"), joblib.load(tmp_path / "m.joblib")):
            np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
            reloaded = loaded[-1] if hasattr(loaded, "steps") else loaded
            np.testing.assert_array_equal(reloaded.pvalues_of_scores(loaded.score_samples(X)), expected)


def test_model_files_with_edited_calibration_are_refused(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from skanomaly.io import _digest

    model = ConformalDetector(_cae(), calibration=0.5, random_state=0).fit(_normals(40, seed=11))
    path = tmp_path / "m.skan"
    save_model(model, path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    header = json.loads(metadata["header"])
    header["fitted"]["calibration_scores_"] = header["fitted"]["calibration_scores_"][::-1]
    metadata["header"] = json.dumps(header, sort_keys=True)
    metadata["sha256"] = _digest(tensors, metadata["header"])
    edited = tmp_path / "edited.skan"
    save_file(tensors, str(edited), metadata=metadata)
    with pytest.raises(ValueError, match="calibration scores finite, sorted"):
        load_model(edited)
    assert os.path.getsize(path) > 0
