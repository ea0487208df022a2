"""Calibrated thresholds: conformal p-values, a guaranteed false-alarm rate, and FDR control.

A detector's ``offset_`` is learned from its own training scores. Those scores are
optimistic (the network has seen the images) and they describe the films of one
machine on one day: on films from another acquisition, the same offset can flag
nothing, or everything. Split-conformal calibration replaces the learned offset by
a statement that holds without any model of the scores:

* hold out normal images the detector never trains on (the *calibration set*) and
  keep their scores ``s_1 .. s_n``;
* the conformal p-value of a new image with score ``s`` is
  ``p = (1 + #{i : s_i <= s}) / (n + 1)``: the rank of its score among the
  calibration scores (a low normality score is a small p-value);
* if the new image is normal and *exchangeable* with the calibration images (drawn
  from the same distribution, e.g. the same site and protocol), then
  ``P(p <= alpha) <= alpha`` for every ``alpha``, whatever the detector, the data or
  ``n`` (Vovk et al. 2005; Bates et al., *Testing for outliers with conformal
  p-values*, Ann. Statist. 2023). :meth:`ConformalDetector.predict` flags the images
  with ``p <= alpha``: its false-alarm rate on normal images is at most ``alpha``,
  and at least ``alpha - 1 / (n + 1)`` when scores do not tie;
* for a batch screened together, :func:`benjamini_hochberg` on the p-values controls
  the false-discovery rate (the expected share of normal images among those flagged),
  because conformal p-values from one calibration set are positively dependent in the
  way Benjamini-Hochberg needs (Bates et al. 2023).

**The assumption is exchangeability, and acquisition shift breaks it.** The guarantee
is about normal films like the calibration films. Films from another scanner,
exposure, hospital or period score differently (the pediatric benchmark's second
acquisition batch is one example), and then the false-alarm rate can be far above
or below ``alpha``. What to do: recalibrate on a few dozen normal films of the new
site or period (:meth:`ConformalDetector.calibrate`, or ``skanomaly calibrate MODEL
--data normals/``), which restores the guarantee for that site without retraining.
With ``n`` calibration images no p-value is below ``1 / (n + 1)``, so ``alpha = 0.05``
needs at least 19 and ``alpha = 0.01`` at least 99; more calibration images make the
false-alarm rate of one calibration closer to ``alpha`` (its spread is about
``sqrt(alpha (1 - alpha) / n)``).
"""

import math
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, MetaEstimatorMixin, OutlierMixin, _fit_context, clone
from sklearn.model_selection import GroupShuffleSplit, ShuffleSplit
from sklearn.utils import _safe_indexing
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import _num_samples, check_is_fitted, indexable

from .model_selection import _check_labels, _WrappedDetectorMixin

__all__ = ["ConformalDetector", "benjamini_hochberg", "conformal_pvalues"]

# alpha * (n + 1) in floating point may land just below the integer it stands for
# (0.1 * 30 = 3.0000000000000004 is above, 0.7 * 10 = 6.999999999999999 below): a
# relative nudge keeps floor() at that integer, which moves the flag rate by far less
# than one image in a billion.
_RELATIVE_TOLERANCE = 1e-9


def conformal_pvalues(calibration_scores, scores):
    """Split-conformal p-values of ``scores`` against normal ``calibration_scores``.

    ``p = (1 + #{calibration scores <= score}) / (n + 1)``, with normality scores
    (higher = more normal, as ``score_samples``): small p-values are anomalous. If a
    scored image and the ``n`` calibration images are exchangeable normal images,
    ``P(p <= alpha) <= alpha`` for every ``alpha`` (ties count against the image, so
    the bound holds with ties too).

    Parameters
    ----------
    calibration_scores : array-like of shape (n_calibration,)
        Normality scores of held-out normal images; finite.
    scores : array-like of shape (n_samples,)
        Normality scores to turn into p-values; NaN gives NaN.

    Returns
    -------
    pvalues : ndarray of float64, shape (n_samples,)
        In ``[1 / (n + 1), 1]``.
    """
    calibration = np.sort(np.asarray(calibration_scores, dtype=np.float64).ravel())
    if calibration.size == 0 or not np.all(np.isfinite(calibration)):
        raise ValueError(
            "calibration_scores must be a non-empty array of finite scores; got "
            f"{calibration.size} scores, {int(np.sum(~np.isfinite(calibration)))} not finite."
        )
    scores = np.asarray(scores, dtype=np.float64)
    at_or_below = np.searchsorted(calibration, scores, side="right")
    pvalues = (1.0 + at_or_below) / (calibration.size + 1.0)
    return np.where(np.isnan(scores), np.nan, pvalues)


def benjamini_hochberg(pvalues, fdr):
    """Which hypotheses the Benjamini-Hochberg procedure rejects at false-discovery rate ``fdr``.

    With ``m`` p-values sorted ``p_(1) <= ... <= p_(m)``, let ``k`` be the largest
    ``i`` with ``p_(i) <= i * fdr / m``; the ``k`` smallest p-values are rejected
    (here: the images are flagged abnormal). The expected share of normal images
    among those flagged is then at most ``fdr`` for p-values that are independent or
    positively dependent, as conformal p-values from one calibration set are.

    Parameters
    ----------
    pvalues : array-like of shape (m,)
        NaN (an image without a score) is never rejected and counts in ``m``.
    fdr : float in (0, 1)

    Returns
    -------
    rejected : ndarray of bool, shape (m,)
    """
    if not (isinstance(fdr, Real) and 0 < fdr < 1):
        raise ValueError(f"fdr must be a number in (0, 1); got {fdr!r}.")
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    m = p.size
    if m == 0:
        return np.zeros(0, dtype=bool)
    p = np.where(np.isnan(p), np.inf, p)
    order = np.argsort(p, kind="stable")
    passes = p[order] <= fdr * np.arange(1, m + 1) / m
    rejected = np.zeros(m, dtype=bool)
    if passes.any():
        k = int(np.flatnonzero(passes)[-1]) + 1
        rejected[order[:k]] = True
    return rejected


class ConformalDetector(_WrappedDetectorMixin, MetaEstimatorMixin, OutlierMixin, BaseEstimator):
    """A detector whose cut-off has a guaranteed false-alarm rate on new normal images.

    ``fit`` holds out a ``calibration`` share of the normal training images (whole
    patients together when ``groups`` are given), fits a clone of ``estimator`` on
    the rest and keeps the held-out images' scores. :meth:`score_pvalues` gives
    conformal p-values, and :meth:`predict` flags the images with ``p <= alpha``:
    on normal images exchangeable with the calibration images, at most an ``alpha``
    share are flagged (in expectation over the calibration set). With ``fdr``,
    :meth:`predict` instead flags by Benjamini-Hochberg across the images passed
    together, so at most an ``fdr`` share of the flagged images are expected to be
    normal. See :mod:`skanomaly.conformal` for the assumptions, and recalibrate
    (:meth:`calibrate`) on normal films of a new site or acquisition period, where
    they break.

    Use :class:`~skanomaly.model_selection.ThresholdTuner` instead to choose a
    cut-off on labelled validation data (Youden's J, a sensitivity); it makes no
    promise about new data.

    Parameters
    ----------
    estimator : detector or Pipeline ending in one
        Anything with ``fit`` and ``score_samples`` (higher = more normal).
    calibration : float in (0, 1), int >= 1 or "prefit", default=0.2
        The share (float) or number (int) of the normal training images held out to
        calibrate; ``"prefit"``: ``estimator`` is fitted already (on other images)
        and all normal images given to ``fit`` calibrate it; nothing is trained.
    alpha : float in (0, 1), default=0.05
        The false-alarm rate of :meth:`predict` and :meth:`decision_function`. It is
        read when predicting, so it may be changed after ``fit`` without refitting.
    fdr : float in (0, 1) or None, default=None
        When set, :meth:`predict` flags the Benjamini-Hochberg discoveries at this
        false-discovery rate among the images of one call: an image's prediction
        then depends on the other images of the batch. ``None``: per-image
        predictions at ``alpha``.
    random_state : int, RandomState instance or None, default=None
        Seeds the calibration split.

    Attributes
    ----------
    estimator_ : estimator
        The fitted detector (``estimator`` itself with ``calibration="prefit"``).
    calibration_scores_ : ndarray of float64, shape (n_calibration,)
        The calibration images' normality scores, sorted.
    n_calibration_ : int
    offset_ : float
        The score cut-off at the current ``alpha``: ``decision_function =
        score_samples - offset_`` is negative exactly where the p-value is at most
        ``alpha``; ``-inf`` when ``alpha < 1 / (n_calibration_ + 1)`` (no image can
        be flagged).
    n_features_in_ : int
        From ``estimator_``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.ensemble import IsolationForest
    >>> from skanomaly.conformal import ConformalDetector
    >>> rng = np.random.default_rng(0)
    >>> detector = ConformalDetector(IsolationForest(random_state=0), calibration=0.5,
    ...                              alpha=0.1, random_state=0).fit(rng.normal(size=(400, 2)))
    >>> new_normals = rng.normal(size=(2000, 2))
    >>> bool(abs((detector.predict(new_normals) == -1).mean() - 0.1) < 0.05)
    True
    """

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit", "score_samples"])],
        "calibration": [
            Interval(Real, 0, 1, closed="neither"),
            Interval(Integral, 1, None, closed="left"),
            StrOptions({"prefit"}),
        ],
        "alpha": [Interval(Real, 0, 1, closed="neither")],
        "fdr": [None, Interval(Real, 0, 1, closed="neither")],
        "random_state": ["random_state"],
    }

    def __init__(self, estimator, *, calibration=0.2, alpha=0.05, fdr=None, random_state=None):
        self.estimator = estimator
        self.calibration = calibration
        self.alpha = alpha
        self.fdr = fdr
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None, *, groups=None):
        """Fit the detector on normal images and calibrate it on held-out normal images.

        Parameters
        ----------
        X : array-like
            Normal images (what ``estimator`` takes).
        y : array-like of shape (n_samples,) or None
            0 = normal, 1 = abnormal; abnormal images are left out of training and
            calibration (as :class:`~skanomaly.model_selection.NormalOnly` does), so
            labelled cross-validation folds work. ``None``: all normal.
        groups : array-like of shape (n_samples,), default=None
            Patient ids: every patient's images are on one side of the split.

        Returns
        -------
        self : object
        """
        (X,) = indexable(X)
        n_samples = _num_samples(X)
        labels = _check_labels(y, n_samples, type(self).__name__, allow_none=True)
        # A failed fit must not leave the previous fit's state behind.
        for name in [n for n in vars(self) if n.endswith("_") and not n.startswith("_")]:
            delattr(self, name)
        normal = np.flatnonzero(labels == 0)
        if normal.size == 0:
            raise ValueError(
                f"{type(self).__name__}.fit got no normal image (y == 0) among its "
                f"{n_samples} sample{'' if n_samples == 1 else 's'}."
            )
        if groups is not None:
            groups = np.asarray(groups)
            if groups.shape[0] != n_samples:
                raise ValueError(f"groups has {groups.shape[0]} entries but X has {n_samples} images.")

        if isinstance(self.calibration, str):  # "prefit"
            try:
                check_is_fitted(self.estimator)
            except Exception as err:
                raise type(err)(
                    "With calibration='prefit', estimator must be fitted already (on other "
                    f"images than the calibration images passed to fit): {err}"
                ) from err
            estimator, calibrate = self.estimator, normal
        else:
            train, calibrate = self._split(normal, groups)
            estimator = clone(self.estimator).fit(_safe_indexing(X, train), np.zeros(train.size, dtype=int))
        self.estimator_ = estimator
        for name in ("n_features_in_", "feature_names_in_"):
            if hasattr(estimator, name):
                setattr(self, name, getattr(estimator, name))
        try:
            self.calibrate(_safe_indexing(X, calibrate))
        except BaseException:
            # Nothing of this fit stays behind (estimator_, n_features_in_, ...).
            for name in [n for n in vars(self) if n.endswith("_") and not n.startswith("_")]:
                delattr(self, name)
            raise
        return self

    def _split(self, normal, groups):
        n = normal.size
        if n < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 normal images (one to train on, one to "
                f"calibrate with); got {n} sample."
            )
        if groups is None:
            splitter = ShuffleSplit(n_splits=1, test_size=self.calibration, random_state=self.random_state)
            split_groups = None
        else:
            splitter = GroupShuffleSplit(n_splits=1, test_size=self.calibration, random_state=self.random_state)
            split_groups = groups[normal]
        try:
            train, calibrate = next(splitter.split(np.zeros((n, 1)), groups=split_groups))
        except ValueError as err:
            raise ValueError(
                f"calibration={self.calibration!r} leaves no image on one side of the split of "
                f"{n} normal images{'' if groups is None else ' (by group)'}: {err}"
            ) from None
        return normal[train], normal[calibrate]

    def calibrate(self, X_calibration):
        """Replace the calibration set by normal images ``X_calibration``; no retraining.

        Use it when the films to screen come from another site, scanner or period
        than the calibration images: a few dozen normal films of the new setting
        restore the false-alarm guarantee there. The images must not be ones the
        detector was trained on (their scores are optimistic).

        Parameters
        ----------
        X_calibration : array-like
            Normal images only, at least ``ceil(1 / alpha) - 1`` of them for
            :meth:`predict` to be able to flag anything.

        Returns
        -------
        self : object
        """
        check_is_fitted(self, "estimator_")
        scores = np.asarray(self.estimator_.score_samples(X_calibration), dtype=np.float64).ravel()
        bad = np.flatnonzero(~np.isfinite(scores))
        if scores.size == 0:
            raise ValueError("calibrate needs at least one normal image; got none.")
        if bad.size:
            raise ValueError(
                f"{bad.size} of the {scores.size} calibration images have no finite score "
                f"(first at index {bad[0]}): an image without a region of interest, or NaN "
                "pixels; leave them out of the calibration set."
            )
        self.calibration_scores_ = np.sort(scores)
        self.n_calibration_ = int(scores.size)
        self._warn_if_alpha_unreachable()
        return self

    def _flag_count(self, alpha):
        """How many calibration scores lie at or below the cut-off: ``floor(alpha (n + 1))``."""
        return int(math.floor(alpha * (self.n_calibration_ + 1) * (1 + _RELATIVE_TOLERANCE)))

    def _warn_if_alpha_unreachable(self):
        if self._flag_count(self.alpha) == 0:
            needed = math.ceil(1 / self.alpha) - 1
            warnings.warn(
                f"With {self.n_calibration_} calibration images the smallest possible "
                f"p-value is 1/{self.n_calibration_ + 1} = {1 / (self.n_calibration_ + 1):.3g}, "
                f"above alpha={self.alpha}: predict can flag no image. Calibrate on at "
                f"least {needed} normal images (or raise alpha).",
                UserWarning,
                stacklevel=3,
            )

    @property
    def offset_(self):
        if not hasattr(self, "calibration_scores_"):
            raise AttributeError(f"{type(self).__name__} is not fitted (no calibration scores).")
        k = self._flag_count(self.alpha)
        # p <= alpha  <=>  #{s_i <= s} <= k - 1  <=>  s < (k-th smallest calibration score).
        return float(self.calibration_scores_[k - 1]) if k >= 1 else -math.inf

    def score_pvalues(self, X):
        """Conformal p-values: small means anomalous (see :func:`conformal_pvalues`).

        Parameters
        ----------
        X : array-like

        Returns
        -------
        pvalues : ndarray of float64, shape (n_samples,)
            In ``[1 / (n_calibration_ + 1), 1]``.
        """
        return self.pvalues_of_scores(self.score_samples(X))

    def pvalues_of_scores(self, scores):
        """Conformal p-values of normality scores already computed with ``estimator_``.

        Parameters
        ----------
        scores : array-like of shape (n_samples,)

        Returns
        -------
        pvalues : ndarray of float64, shape (n_samples,)
        """
        check_is_fitted(self)
        return conformal_pvalues(self.calibration_scores_, scores)

    def decision_function(self, X):
        """``score_samples(X) - offset_``: negative exactly where the p-value is at most ``alpha``.

        Parameters
        ----------
        X : array-like

        Returns
        -------
        decision : ndarray of shape (n_samples,)
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """+1 normal, -1 flagged: p-value at most ``alpha`` (or a Benjamini-Hochberg
        discovery at ``fdr`` among the images of this call, when ``fdr`` is set).

        Parameters
        ----------
        X : array-like

        Returns
        -------
        labels : ndarray of int, shape (n_samples,)
        """
        return self.predict_from_scores(self.score_samples(X))

    def predict_from_scores(self, scores):
        """:meth:`predict` for normality scores already computed with ``estimator_``.

        Parameters
        ----------
        scores : array-like of shape (n_samples,)

        Returns
        -------
        labels : ndarray of int, shape (n_samples,)
        """
        check_is_fitted(self)
        scores = np.asarray(scores, dtype=np.float64)
        if self.fdr is not None:
            flagged = benjamini_hochberg(conformal_pvalues(self.calibration_scores_, scores), self.fdr)
        else:
            flagged = scores - self.offset_ < 0
        return np.where(flagged, -1, 1)

    def __sklearn_is_fitted__(self):
        return hasattr(self, "calibration_scores_")
