"""Model selection for one-class detectors: normal-only training folds, scorers, thresholds.

The detectors learn from normal images only, while validation needs abnormal images
too. scikit-learn's tools assume that the training part of a fold is a sample of the
same distribution as its validation part, so a plain ``GridSearchCV`` would hand the
abnormal images of every training fold to the detector (which refuses them). This
module makes the normal-only protocol first-class:

* :class:`NormalOnly`, an imbalanced-learn sampler: in an
  :class:`imblearn.pipeline.Pipeline` it keeps the normal images (``y == 0``) when the
  pipeline is fitted and does nothing when it scores, so ``GridSearchCV`` (its folds
  *and* its refit) and ``cross_validate`` work unchanged;
* :class:`OneClassSplit`, a splitter for plain scikit-learn pipelines that drops the
  abnormal images from every training fold (mind the refit caveat in its docstring);
* scorers on ``score_samples`` with abnormal (``y == 1``) as the positive class,
  resolved by name with :func:`get_scorer`;
* :func:`acquisition_shift_split`, a test split that a random patient split hides:
  the films at one end of the main acquisition axis (exposure and contrast), as the
  films of another machine or period would be;
* :class:`ThresholdTuner` and :func:`tune_threshold`, which choose the detector's
  cut-off (``offset_``) on validation data: Youden's J, a target false-positive rate or
  a target sensitivity.

Labels are 0 = normal, 1 = abnormal throughout, as in the rest of the package.
"""

import copy
from numbers import Integral, Real

import numpy as np
from imblearn.base import BaseSampler
from sklearn.base import BaseEstimator, MetaEstimatorMixin, OutlierMixin, _fit_context, clone
from sklearn.metrics import get_scorer as _sklearn_get_scorer
from sklearn.metrics import get_scorer_names as _sklearn_get_scorer_names
from sklearn.metrics import make_scorer
from sklearn.model_selection import (
    ShuffleSplit,
    StratifiedGroupKFold,
    StratifiedShuffleSplit,
    check_cv,
)
from sklearn.utils import _safe_indexing, get_tags
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import _num_samples, check_is_fitted, column_or_1d, indexable

from .metrics import (
    anomaly_average_precision,
    anomaly_roc_auc,
    partial_anomaly_roc_auc,
    sensitivity_at_specificity,
)

__all__ = [
    "NormalOnly",
    "acquisition_features",
    "acquisition_shift_split",
    "OneClassSplit",
    "ThresholdTuner",
    "get_scorer",
    "get_scorer_names",
    "make_anomaly_scorer",
    "tune_threshold",
]


# ------------------------------------------------------------------------- labels
def _check_labels(y, n_samples, who, *, allow_none=False, allow_unlabelled=False):
    """``y`` as an int array of 0 (normal) / 1 (abnormal), and -1 (unlabelled) with
    ``allow_unlabelled``; clear errors otherwise."""
    if y is None:
        if allow_none:
            return np.zeros(n_samples, dtype=int)
        raise ValueError(
            f"{who} needs the image labels y (0 = normal, 1 = abnormal) to tell the normal "
            "images apart: pass them to fit, e.g. pipe.fit(X, y) or search.fit(X, y)."
        )
    labels = column_or_1d(y)
    if labels.shape[0] != n_samples:
        raise ValueError(f"{who}: y has {labels.shape[0]} labels but X has {n_samples} images.")
    if labels.dtype.kind not in "biuf":
        shown = sorted(map(str, np.unique(labels.astype(str))))[:5]
        raise ValueError(
            f"{who}: y must hold 0 (normal) and 1 (abnormal); got labels {shown} of dtype "
            f"{labels.dtype}. Convert them first, e.g. y = (labels == 'PNEUMONIA').astype(int)."
        )
    values = np.unique(labels)
    allowed = [0, 1, -1] if allow_unlabelled else [0, 1]
    if not np.isin(values, allowed).all():
        hint = (
            " These look like predict's +1 (inlier) / -1 (outlier) convention; the "
            "labels here are y = (y == -1).astype(int)."
            if set(values.tolist()) <= {-1, 1} and not allow_unlabelled
            else ""
        )
        meaning = "0 (normal), 1 (abnormal) and -1 (unlabelled)" if allow_unlabelled else "0 (normal) and 1 (abnormal)"
        if -1 in values and not allow_unlabelled and 0 in values:
            hint = (
                " -1 marks unlabelled images (semi-supervised training, HealthyGAN): they have "
                "no label to be scored or thresholded on; keep them in training parts only "
                "(OneClassSplit does so)."
            )
        raise ValueError(f"{who}: y must hold {meaning} only; got the values {values[:10].tolist()}.{hint}")
    return labels.astype(int)


# ---------------------------------------------------------------------- NormalOnly
class NormalOnly(BaseSampler):
    """Keep the normal images (``y == 0``) when a pipeline is fitted; score everything.

    An imbalanced-learn sampler for :class:`imblearn.pipeline.Pipeline` (or
    :func:`imblearn.pipeline.make_pipeline`): samplers act in ``fit`` only, so the steps
    after it, the detector above all, are fitted on the normal images of whatever is
    passed to ``fit``, while ``score_samples``, ``decision_function`` and ``predict``
    see every image. In :class:`~sklearn.model_selection.GridSearchCV` and
    :func:`~sklearn.model_selection.cross_validate` this gives normal-only training
    folds, validation on normal and abnormal images, and a normal-only ``refit``,
    with nothing else to change.

    ``X`` may be anything the package's estimators read, and it is only indexed along
    its first axis: images ``(n_samples, H, W)``, flattened ``(n_samples, H * W)``
    arrays, patch bags ``(n_samples, P, p, p)`` (the
    :class:`~skanomaly.utils.validation.PatchBags` mark of ``PatchExtractor``'s output is
    kept), DataFrames and lists. Place it first, so that the preprocessing steps do not
    transform abnormal images for nothing (or learn from them, for a transformer that
    learns).

    Labels: ``y`` is 0 for normal and 1 for abnormal images, the package's convention,
    and -1 for unlabelled images (scikit-learn's semi-supervised convention), which are
    kept with the normal ones for a detector that trains on an unlabelled mix
    (:class:`~skanomaly.detectors.HealthyGAN`); a normal-only detector refuses them. ``y``
    is required; any other value (class names) is an error, and so is a ``y`` without
    a normal image.

    Attributes
    ----------
    n_normal_ : int
        Normal images kept by the last ``fit_resample``.
    n_abnormal_ : int
        Abnormal images left out by the last ``fit_resample``.
    n_unlabelled_ : int
        Unlabelled images (``y == -1``) kept by the last ``fit_resample``.

    See Also
    --------
    OneClassSplit : Normal-only training folds for a plain scikit-learn Pipeline.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.model_selection import NormalOnly
    >>> X = np.arange(4 * 2 * 2, dtype=np.float32).reshape(4, 2, 2) / 16
    >>> X_normal, y_normal = NormalOnly().fit_resample(X, [0, 1, 0, 1])
    >>> X_normal.shape, y_normal
    ((2, 2, 2), [0, 0])

    In a pipeline (``pipe.fit(X, y)`` trains the detector on ``X[y == 0]``)::

        from imblearn.pipeline import make_pipeline
        pipe = make_pipeline(NormalOnly(), CLAHE(), PatchExtractor(64), CAEDetector())
        GridSearchCV(pipe, grid, scoring=get_scorer("roc_auc_anomaly"), cv=5).fit(X, y)
    """

    _sampling_type = "bypass"
    _parameter_constraints: dict = {}

    def __init__(self):
        # No parameters; BaseSampler's sampling_strategy means nothing here.
        pass

    def fit(self, X, y):
        """Check ``y`` (0 = normal, 1 = abnormal) against ``X``; use ``fit_resample``.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
        y : array-like of shape (n_samples,)

        Returns
        -------
        self : object
        """
        self._normal_indices(X, y)
        return self

    def fit_resample(self, X, y):
        """The normal images of ``X`` and their labels.

        Parameters
        ----------
        X : array-like of shape (n_samples, H, W), (n_samples, H * W) or (n_samples, P, p, p)
            Images, flattened images or patch bags; DataFrames and lists too.
        y : array-like of shape (n_samples,)
            0 = normal, 1 = abnormal.

        Returns
        -------
        X_normal : same type as ``X``, shape (n_normal, ...)
            The rows with ``y == 0`` (and the unlabelled ones, ``y == -1``), in their
            order (a ``PatchBags`` stays marked).
        y_normal : same type as ``y``, shape (n_normal,)
            Their labels (0, and -1 for unlabelled images).
        """
        (X,) = indexable(X)  # array-likes without __getitem__, COO matrices
        normal = self._normal_indices(X, y)
        return _safe_indexing(X, normal), _safe_indexing(y, normal)

    def _normal_indices(self, X, y):
        labels = _check_labels(y, _num_samples(X), "NormalOnly", allow_unlabelled=True)
        normal = np.flatnonzero(labels != 1)
        if not np.any(labels == 0) and np.any(labels == -1):
            raise ValueError(
                f"NormalOnly: y holds no normal image (0), only {np.unique(labels).tolist()}. If "
                "these are predict's +1 (inlier) / -1 (outlier) convention, the labels here are "
                "y = (y == -1).astype(int); -1 marks unlabelled images, which a detector trains on "
                "beside normal ones, never alone."
            )
        if not np.any(labels == 0):
            raise ValueError(
                f"NormalOnly: y marks all {labels.size} images abnormal, so no image is "
                "left to train on. Check the labels (0 = normal, 1 = abnormal). In a grid "
                "search, a training fold without normal images fails alone and the search "
                "goes on with a NaN score: use a stratified splitter (StratifiedGroupKFold), "
                "or wrap yours in OneClassSplit, which refuses such a fold before any fit."
            )
        self.n_normal_ = int(np.sum(labels == 0))
        self.n_unlabelled_ = int(np.sum(labels == -1))
        self.n_abnormal_ = int(np.sum(labels == 1))
        return normal

    def _fit_resample(self, X, y):
        normal = np.flatnonzero(np.asarray(y) != 1)
        return _safe_indexing(X, normal), _safe_indexing(y, normal)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.three_d_array = True
        return tags


# ------------------------------------------------------------------- OneClassSplit
class OneClassSplit:
    """Drop the abnormal images from the training part of every fold of a splitter.

    Wraps any cross-validation strategy that
    :func:`sklearn.model_selection.check_cv` accepts (an int, a splitter, grouped or
    not, an iterable of ``(train, validation)`` pairs) and yields ``(train[y[train] ==
    0], validation)``: the training part keeps its normal images only, the validation
    part is unchanged. An int means
    :class:`~sklearn.model_selection.StratifiedKFold`, so that every validation part
    holds abnormal images.

    **Unlabelled images** (``y == -1``, for a detector that trains on an unlabelled
    mix, :class:`~skanomaly.detectors.HealthyGAN`) have no label to be scored on: they
    join every training part and no validation part, except that with ``groups`` an
    unlabelled image of a patient in the validation part stays out of that fold's
    training part, so no patient is on both sides.

    Every training part must hold a normal image; a fold without one is refused when
    the folds are made, which ``GridSearchCV`` does before it fits anything (it would
    otherwise fit and score that fold as NaN and carry on). That check is worth having
    with :class:`NormalOnly` pipelines too, with splitters that are not stratified
    (``KFold`` on data sorted by label, ``GroupKFold``).

    .. warning::
       ``GridSearchCV`` and ``RandomizedSearchCV`` *refit* on all of ``X``, which no
       splitter controls. A detector refuses a ``y`` that marks images abnormal, so
       ``refit=True`` fails after the whole search has run. Use ``refit=False`` and
       refit by hand on the normal images,
       ``pipe.set_params(**search.best_params_).fit(X[y == 0])``, or the
       :class:`NormalOnly` route, under which ``refit=True`` is right.

    Parameters
    ----------
    cv : int, cross-validation generator or iterable, default=5
        The splitter whose folds are filtered.

    See Also
    --------
    NormalOnly : Normal-only fitting inside an imbalanced-learn pipeline.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.model_selection import KFold
    >>> from skanomaly.model_selection import OneClassSplit
    >>> y = np.array([0, 0, 1, 0, 1, 0])
    >>> for train, valid in OneClassSplit(KFold(2)).split(np.zeros((6, 4)), y):
    ...     print(train, valid)
    [3 5] [0 1 2]
    [0 1] [3 4 5]
    """

    def __init__(self, cv=5):
        self.cv = cv

    def split(self, X, y, groups=None):
        """Yield ``(normal training indices, validation indices)`` per fold.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
        y : array-like of shape (n_samples,)
            0 = normal, 1 = abnormal, -1 = unlabelled; required.
        groups : array-like of shape (n_samples,), default=None
            Passed to the wrapped splitter (patient ids for a group splitter).

        Yields
        ------
        train : ndarray of int
            The normal images of the fold's training part, and the unlabelled ones.
        validation : ndarray of int
            The fold's validation part, normal and abnormal.
        """
        labels = _check_labels(y, _num_samples(X), "OneClassSplit", allow_unlabelled=True)
        unlabelled = np.flatnonzero(labels == -1)
        patients = None if groups is None else column_or_1d(groups)
        cv = check_cv(self.cv, labels, classifier=True)
        for i, (train, validation) in enumerate(cv.split(X, labels, groups)):
            train, validation = np.asarray(train), np.asarray(validation)
            normal = train[labels[train] == 0]
            if unlabelled.size:
                validation = validation[labels[validation] != -1]
                joining = unlabelled
                if patients is not None:
                    joining = unlabelled[~np.isin(patients[unlabelled], patients[validation])]
                normal = np.union1d(normal, joining)
            if not np.any(labels[normal] == 0):
                raise ValueError(
                    f"OneClassSplit: the training part of fold {i} holds no normal image "
                    "(y == 0), so a detector has nothing to train on. Use a stratified "
                    "splitter (StratifiedKFold, StratifiedGroupKFold), or shuffle."
                )
            yield normal, np.asarray(validation)

    def get_n_splits(self, X=None, y=None, groups=None):
        """Number of folds of the wrapped splitter.

        Returns
        -------
        n_splits : int
        """
        labels = None if y is None else column_or_1d(y)
        return check_cv(self.cv, labels, classifier=True).get_n_splits(X, labels, groups)

    def __repr__(self):
        return f"{type(self).__name__}(cv={self.cv!r})"


# ------------------------------------------------------------------------- scorers
_SCORERS = {
    "roc_auc_anomaly": (anomaly_roc_auc, {}),
    "average_precision_anomaly": (anomaly_average_precision, {}),
    "partial_roc_auc_anomaly": (partial_anomaly_roc_auc, {"max_fpr": 0.1}),
    "sensitivity_at_90_specificity": (sensitivity_at_specificity, {"specificity": 0.9}),
    "sensitivity_at_95_specificity": (sensitivity_at_specificity, {"specificity": 0.95}),
}


def make_anomaly_scorer(metric, **kwargs):
    """A scorer that calls ``metric(y, estimator.score_samples(X), **kwargs)``.

    :func:`sklearn.metrics.make_scorer` with ``response_method="score_samples"``: the
    metric gets labels (0 = normal, 1 = abnormal) and normality scores (higher = more
    normal), like the functions of :mod:`skanomaly.metrics`. Several such scorers in
    one search (a dict or list ``scoring``) share one ``score_samples`` call per fold.

    Parameters
    ----------
    metric : callable
        ``metric(y_true, normality_scores, **kwargs) -> float``, greater is better.
    **kwargs
        Passed to ``metric``.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y) -> float``.

    Examples
    --------
    >>> from skanomaly.metrics import sensitivity_at_specificity
    >>> from skanomaly.model_selection import make_anomaly_scorer
    >>> scorer = make_anomaly_scorer(sensitivity_at_specificity, specificity=0.98)
    """
    # make_scorer takes only its three classifier methods as a plain string; a tuple
    # of method names may hold any (scikit-learn calls the first one present).
    return make_scorer(metric, response_method=("score_samples",), **kwargs)


def get_scorer(scoring):
    """The scorer for a name (the package's or scikit-learn's), or several.

    scikit-learn has no public way to add names to its own scorer table, so
    ``GridSearchCV(scoring="roc_auc_anomaly")`` cannot work; pass
    ``scoring=get_scorer("roc_auc_anomaly")`` instead (also in ``cross_validate``). The
    package's names score ``score_samples`` with abnormal (``y == 1``) as the positive
    class:

    ====================================  ======================================================
    ``"roc_auc_anomaly"``                 :func:`~skanomaly.metrics.anomaly_roc_auc`
    ``"average_precision_anomaly"``       :func:`~skanomaly.metrics.anomaly_average_precision`
    ``"partial_roc_auc_anomaly"``         :func:`~skanomaly.metrics.partial_anomaly_roc_auc`,
                                          ``max_fpr=0.1``
    ``"sensitivity_at_90_specificity"``   :func:`~skanomaly.metrics.sensitivity_at_specificity`,
                                          ``specificity=0.9``
    ``"sensitivity_at_95_specificity"``   the same at ``specificity=0.95``
    ====================================  ======================================================

    scikit-learn's own ``"roc_auc"`` and ``"average_precision"`` rank a detector's
    ``decision_function`` (higher = normal) with label 1 as the positive class: they
    reward detectors that call abnormal images normal. Other settings:
    :func:`make_anomaly_scorer`.

    Parameters
    ----------
    scoring : str, list or tuple of str, dict, callable or None
        A name; a list or tuple of names (gives a ``{name: scorer}`` dict, the
        multi-metric form ``GridSearchCV`` takes, then with ``refit=<name>``); a dict
        whose values are names or scorers; a callable (returned as it is); ``None``.

    Returns
    -------
    scorer : callable, dict or None

    Examples
    --------
    >>> from skanomaly.model_selection import get_scorer
    >>> get_scorer("roc_auc_anomaly")
    make_scorer(anomaly_roc_auc, response_method=('score_samples',))
    >>> sorted(get_scorer(["roc_auc_anomaly", "partial_roc_auc_anomaly"]))
    ['partial_roc_auc_anomaly', 'roc_auc_anomaly']
    """
    if isinstance(scoring, str):
        if scoring in _SCORERS:
            metric, kwargs = _SCORERS[scoring]
            return make_anomaly_scorer(metric, **kwargs)
        try:
            return _sklearn_get_scorer(scoring)
        except ValueError as err:
            raise ValueError(
                f"{scoring!r} is not a scorer name. The package's names are "
                f"{sorted(_SCORERS)}; scikit-learn's are listed by "
                "sklearn.metrics.get_scorer_names()."
            ) from err
    if isinstance(scoring, (list, tuple, set, frozenset)):
        names = list(scoring)
        if not all(isinstance(name, str) for name in names) or len(set(names)) != len(names):
            raise ValueError(f"A list of scorers must hold distinct names; got {scoring!r}.")
        return {name: get_scorer(name) for name in names}
    if isinstance(scoring, dict):
        return {key: get_scorer(value) for key, value in scoring.items()}
    if scoring is None or callable(scoring):
        return scoring
    raise ValueError(
        f"scoring must be a name, a list of names, a dict, a callable or None; got {scoring!r}."
    )


def get_scorer_names():
    """Every name :func:`get_scorer` resolves: the package's and scikit-learn's.

    Returns
    -------
    names : list of str

    Examples
    --------
    >>> from skanomaly.model_selection import get_scorer_names
    >>> "roc_auc_anomaly" in get_scorer_names()
    True
    """
    return sorted(set(_SCORERS) | set(_sklearn_get_scorer_names()))


# ---------------------------------------------------------------------- thresholds
_METHODS = ("youden", "fpr", "sensitivity")


def _check_method(method, target):
    if method not in _METHODS:
        raise ValueError(f"method must be one of {list(_METHODS)}; got {method!r}.")
    if method == "youden":
        if target is not None:
            raise ValueError(
                "target is the false-positive rate (method='fpr') or the sensitivity "
                "(method='sensitivity') to reach; method='youden' takes none (target=None)."
            )
        return
    what = "false-positive rate" if method == "fpr" else "sensitivity"
    if (
        not isinstance(target, Real)
        or isinstance(target, bool)
        or not 0 < target < 1
    ):
        raise ValueError(
            f"method={method!r} needs target, the {what} to reach, a float in (0, 1); "
            f"got target={target!r}."
        )


def _choose_offset(labels, scores, method, target):
    """Cut-off on normality scores chosen on ``(labels, scores)``.

    Images with ``score < offset`` are flagged (``predict`` gives -1). Candidate cuts
    lie halfway between neighbouring distinct scores, below the lowest and above the
    highest: the same operating point as flagging ``score <= s`` for a seen score
    ``s``, but with a margin on both sides for new images. Returns ``(offset,
    sensitivity, false_positive_rate)`` on these data (sensitivity NaN without
    abnormal images).

    * ``"youden"``: the cut with the largest sensitivity - FPR (the lowest such cut
      on ties, i.e. the fewest false alarms);
    * ``"fpr"``: the highest cut whose FPR is at most ``target`` (the best
      sensitivity at that FPR);
    * ``"sensitivity"``: the lowest cut whose sensitivity is at least ``target`` (the
      fewest false alarms at that sensitivity).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or scores.shape[0] != labels.shape[0]:
        raise ValueError("score_samples must return one score per image.")
    if not np.isfinite(scores).all():
        raise ValueError("The validation scores hold NaN or inf; no cut-off can be chosen.")
    normal, abnormal = scores[labels == 0], scores[labels == 1]
    if normal.size == 0:
        raise ValueError("The validation data hold no normal image (y == 0); no cut-off can be chosen.")
    if method != "fpr" and abnormal.size == 0:
        raise ValueError(
            f"method={method!r} needs abnormal images (y == 1) in the validation data; "
            "only method='fpr' works from normal images alone."
        )
    values = np.unique(scores)
    gaps = np.diff(values)
    margin = gaps.min() / 2 if gaps.size else max(abs(values[0]) * 1e-3, 1e-6)
    cuts = np.concatenate([[values[0] - margin], values[:-1] + gaps / 2, [values[-1] + margin]])
    fpr = np.searchsorted(np.sort(normal), cuts, side="left") / normal.size
    if abnormal.size:
        tpr = np.searchsorted(np.sort(abnormal), cuts, side="left") / abnormal.size
    else:
        tpr = np.full(cuts.shape, np.nan)
    tolerance = 1e-12  # 0.1 must accept an FPR of exactly 1/10
    if method == "youden":
        best = int(np.argmax(tpr - fpr))
    elif method == "fpr":
        best = int(np.flatnonzero(fpr <= target + tolerance)[-1])
    else:
        best = int(np.flatnonzero(tpr >= target - tolerance)[0])
    return float(cuts[best]), float(tpr[best]), float(fpr[best])


def _final_step(estimator):
    return estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator


def tune_threshold(estimator, X, y, *, method="youden", target=None, copy=True):
    """A fitted detector (or pipeline) whose ``offset_`` is chosen on validation data.

    ``predict`` and ``decision_function`` then use the tuned cut-off: an image is
    flagged (-1) when its ``score_samples`` is below ``offset_``. ``X, y`` must be
    validation data the detector was not trained on, never the test set.

    Parameters
    ----------
    estimator : fitted detector or Pipeline ending in one
        Anything whose ``decision_function`` is ``score_samples - offset_`` (every
        detector of the package and scikit-learn's outlier detectors); for a pipeline,
        its last step's ``offset_`` is set.
    X : array-like
        Validation images, in what ``estimator.score_samples`` takes.
    y : array-like of shape (n_samples,) or None
        0 = normal, 1 = abnormal. ``None`` (all normal) only with ``method="fpr"``.
    method : {"youden", "fpr", "sensitivity"}, default="youden"
        ``"youden"`` maximises sensitivity + specificity - 1 (the papers' choice);
        ``"fpr"`` flags at most a ``target`` share of the normal images (the most
        sensitive such cut); ``"sensitivity"`` flags at least a ``target`` share of the
        abnormal images (with the fewest false alarms).
    target : float in (0, 1) or None, default=None
        The false-positive rate or sensitivity to reach; ``None`` for Youden's J.
    copy : bool, default=True
        Return a deep copy and leave ``estimator`` as it is; ``False`` sets the
        offset in place.

    Returns
    -------
    tuned : estimator
        With ``offset_`` set on it (or its last step).

    See Also
    --------
    ThresholdTuner : Fits the detector and tunes the cut-off on a validation split.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.ensemble import IsolationForest
    >>> from skanomaly.model_selection import tune_threshold
    >>> rng = np.random.default_rng(0)
    >>> forest = IsolationForest(random_state=0).fit(rng.normal(size=(100, 2)))
    >>> X_val = np.vstack([rng.normal(size=(20, 2)), rng.normal(4, 1, size=(20, 2))])
    >>> y_val = np.repeat([0, 1], 20)
    >>> tuned = tune_threshold(forest, X_val, y_val, method="fpr", target=0.05)
    >>> float((tuned.predict(X_val[:20]) == -1).mean()) <= 0.05
    True
    """
    _check_method(method, target)
    check_is_fitted(estimator)
    final = _final_step(estimator)
    if not hasattr(final, "offset_"):
        raise ValueError(
            f"{type(final).__name__} has no offset_, so predict would not use a tuned "
            "cut-off; wrap it in ThresholdTuner(estimator, cv='prefit', refit=False) instead."
        )
    labels = _check_labels(y, _num_samples(X), "tune_threshold", allow_none=method == "fpr")
    offset, _, _ = _choose_offset(labels, estimator.score_samples(X), method, target)
    tuned = _deepcopy(estimator) if copy else estimator
    _final_step(tuned).offset_ = offset
    return tuned


def _deepcopy(estimator):
    return copy.deepcopy(estimator)


def _estimator_has(attr):
    """For ``available_if``: the fitted ``estimator_``, else ``estimator``, has ``attr``."""

    def check(self):
        return hasattr(self.estimator_ if hasattr(self, "estimator_") else self.estimator, attr)

    return check


class _WrappedDetectorMixin:
    """What a meta-detector around ``estimator`` (fitted as ``estimator_``) passes
    through unchanged: scores, maps and the input tags. Shared by
    :class:`ThresholdTuner` and :class:`skanomaly.conformal.ConformalDetector`,
    which differ only in how they set the cut-off."""

    def score_samples(self, X):
        """Normality scores of the fitted detector (higher = more normal).

        Parameters
        ----------
        X : array-like

        Returns
        -------
        scores : ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        return self.estimator_.score_samples(X)

    @available_if(_estimator_has("anomaly_map"))
    def anomaly_map(self, X):
        """The fitted detector's per-pixel anomaly maps.

        Parameters
        ----------
        X : array-like

        Returns
        -------
        maps : ndarray
        """
        check_is_fitted(self)
        return self.estimator_.anomaly_map(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        try:
            inner = get_tags(self.estimator)
        except Exception:  # an invalid estimator parameter; fit will say so
            return tags
        tags.input_tags = copy.deepcopy(inner.input_tags)
        tags.non_deterministic = inner.non_deterministic
        return tags


class ThresholdTuner(_WrappedDetectorMixin, MetaEstimatorMixin, OutlierMixin, BaseEstimator):
    """A detector whose cut-off (``offset_``) is chosen on validation data.

    The one-class counterpart of scikit-learn's
    :class:`~sklearn.model_selection.TunedThresholdClassifierCV`: ``fit(X, y)`` splits
    ``X`` into a training and a validation part, fits a clone of ``estimator`` on the
    *normal* images of the training part, and picks the cut-off on the validation
    part, normal and abnormal; ``predict`` and ``decision_function`` then use it.
    Pass training + validation data to ``fit``, never the test set.

    Parameters
    ----------
    estimator : detector or Pipeline ending in one
        Anything with ``fit`` and ``score_samples`` (higher = more normal). It is
        fitted as ``fit(X_train, y_train)`` with ``y_train`` all 0, so an imbalanced-learn
        pipeline with :class:`NormalOnly` works too.
    method : {"youden", "fpr", "sensitivity"}, default="youden"
        ``"youden"`` maximises sensitivity + specificity - 1 (the papers' choice);
        ``"fpr"`` flags at most a ``target`` share of the validation normals (the most
        sensitive such cut); ``"sensitivity"`` flags at least a ``target`` share of the
        validation abnormals (with the fewest false alarms). The cut lies halfway
        between neighbouring validation scores.
    target : float in (0, 1) or None, default=None
        The false-positive rate or sensitivity to reach; ``None`` for Youden's J.
    cv : float, int, cross-validation generator, iterable or "prefit", default=0.25
        * a float in (0, 1): one split with that share of ``X`` for validation,
          stratified by ``y`` (with ``groups``, the first fold of
          ``StratifiedGroupKFold(round(1 / cv), shuffle=True)``);
        * an int, a splitter or an iterable of ``(train, validation)``: those folds
          (an int means ``StratifiedKFold``), abnormal images dropped from each training
          part; the cut-off is the mean of the folds' cut-offs, and ``refit=True`` is
          required;
        * ``"prefit"``: ``estimator`` is fitted already (on other data); all of ``X`` is
          validation data and nothing is fitted (``refit=False`` required).

        The default is one split, not scikit-learn's five folds: every fold is the
        training of a network.
    refit : bool, default=False
        Refit the detector on all normal images of ``X`` once the cut-off is chosen,
        and use the cut-off with it. ``False`` (the default, unlike scikit-learn's)
        keeps the model the cut-off was chosen for: a deep detector retrained on more
        data scores on a somewhat different scale, so the tuned rates hold for the
        model that was tuned.
    random_state : int, RandomState instance or None, default=None
        Seeds the split when ``cv`` is a float.

    Attributes
    ----------
    estimator_ : estimator
        The fitted detector that scores.
    offset_ : float
        The cut-off: ``decision_function = score_samples - offset_``, and images with a
        negative decision are outliers (-1).
    fold_offsets_ : ndarray of shape (n_folds,)
        The cut-off chosen on each validation part.
    validation_sensitivity_ : float
        Mean share of validation abnormals flagged at each fold's cut-off (NaN without
        abnormal images).
    validation_fpr_ : float
        Mean share of validation normals flagged at each fold's cut-off.
    n_features_in_ : int
        From ``estimator_``.

    See Also
    --------
    tune_threshold : Set the cut-off of a fitted detector from validation data.
    sklearn.model_selection.TunedThresholdClassifierCV : The classifier analogue.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.ensemble import IsolationForest
    >>> from skanomaly.model_selection import ThresholdTuner
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(size=(200, 2)), rng.normal(4, 1, size=(40, 2))])
    >>> y = np.repeat([0, 1], [200, 40])
    >>> tuner = ThresholdTuner(IsolationForest(random_state=0), method="fpr", target=0.05,
    ...                        random_state=0).fit(X, y)
    >>> bool(tuner.validation_fpr_ <= 0.05)
    True
    """

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit", "score_samples"])],
        "method": [StrOptions(set(_METHODS))],
        "target": [None, Interval(Real, 0, 1, closed="neither")],
        "cv": ["cv_object", Interval(Real, 0, 1, closed="neither"), StrOptions({"prefit"})],
        "refit": ["boolean"],
        "random_state": ["random_state"],
    }

    def __init__(self, estimator, *, method="youden", target=None, cv=0.25, refit=False, random_state=None):
        self.estimator = estimator
        self.method = method
        self.target = target
        self.cv = cv
        self.refit = refit
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None, *, groups=None):
        """Fit the detector on training normals and choose the cut-off on validation data.

        Parameters
        ----------
        X : array-like
            Training and validation images (what ``estimator`` takes), not test data.
        y : array-like of shape (n_samples,) or None
            0 = normal, 1 = abnormal. ``None`` means all normal, which only
            ``method="fpr"`` can work with.
        groups : array-like of shape (n_samples,), default=None
            Patient ids (or other groups) for the split: no group on both sides.

        Returns
        -------
        self : object
        """
        _check_method(self.method, self.target)
        (X,) = indexable(X)  # array-likes without __getitem__, COO matrices
        labels = _check_labels(y, _num_samples(X), type(self).__name__, allow_none=self.method == "fpr")
        # A failed refit must not leave the previous fit's state behind.
        for name in [n for n in vars(self) if n.endswith("_") and not n.startswith("_")]:
            delattr(self, name)

        if isinstance(self.cv, str):  # "prefit"
            if self.refit:
                raise ValueError("With cv='prefit' nothing is fitted: set refit=False.")
            try:
                check_is_fitted(self.estimator)
            except Exception as err:
                raise type(err)(
                    "With cv='prefit', estimator must be fitted already (on other data than "
                    f"the validation data passed to fit): {err}"
                ) from err
            estimator = self.estimator
            offset, sensitivity, fpr = _choose_offset(
                labels, estimator.score_samples(X), self.method, self.target
            )
            results = [(estimator, offset, sensitivity, fpr)]
        else:
            splits = list(self._splits(X, labels, groups))
            if len(splits) > 1 and not self.refit:
                raise ValueError(
                    f"cv gives {len(splits)} folds, hence {len(splits)} fitted detectors: set "
                    "refit=True to fit the one that scores on all normal images, or use a "
                    "float cv (one validation split)."
                )
            results = []
            for train, validation in splits:
                normal = train[labels[train] == 0]
                if normal.size == 0:
                    raise ValueError("A training part holds no normal image (y == 0).")
                model = clone(self.estimator).fit(_safe_indexing(X, normal), labels[normal])
                scores = model.score_samples(_safe_indexing(X, validation))
                results.append((model, *_choose_offset(labels[validation], scores, self.method, self.target)))
            if self.refit:
                normal = np.flatnonzero(labels == 0)
                estimator = clone(self.estimator).fit(_safe_indexing(X, normal), labels[normal])
            else:
                estimator = results[0][0]

        self.fold_offsets_ = np.array([r[1] for r in results])
        self.validation_sensitivity_ = float(np.mean([r[2] for r in results]))
        self.validation_fpr_ = float(np.mean([r[3] for r in results]))
        self.estimator_ = estimator
        for name in ("n_features_in_", "feature_names_in_"):
            if hasattr(estimator, name):
                setattr(self, name, getattr(estimator, name))
        self.offset_ = float(self.fold_offsets_.mean())
        return self

    def _splits(self, X, labels, groups):
        n = _num_samples(X)
        if isinstance(self.cv, Real) and not isinstance(self.cv, Integral) and 0 < self.cv < 1:
            if groups is not None:
                cv = StratifiedGroupKFold(
                    n_splits=max(2, int(round(1 / self.cv))), shuffle=True, random_state=self.random_state
                )
                return [next(iter(cv.split(np.zeros(n), labels, groups)))]
            if np.bincount(labels, minlength=2).min() >= 2:
                cv = StratifiedShuffleSplit(n_splits=1, test_size=self.cv, random_state=self.random_state)
            else:
                cv = ShuffleSplit(n_splits=1, test_size=self.cv, random_state=self.random_state)
            return list(cv.split(np.zeros(n), labels))
        cv = check_cv(self.cv, labels, classifier=True)
        return [(np.asarray(tr), np.asarray(va)) for tr, va in cv.split(np.zeros(n), labels, groups)]

    def decision_function(self, X):
        """``score_samples(X) - offset_``: negative for outliers.

        Parameters
        ----------
        X : array-like

        Returns
        -------
        decision : ndarray of shape (n_samples,)
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """+1 for inliers (normal), -1 for outliers, at the tuned cut-off.

        Parameters
        ----------
        X : array-like

        Returns
        -------
        labels : ndarray of int, shape (n_samples,)
        """
        return np.where(self.decision_function(X) < 0, -1, 1)

    def __sklearn_is_fitted__(self):
        return hasattr(self, "offset_")


# ------------------------------------------------------------ acquisition shift
ACQUISITION_FEATURES = ("mean", "std", "p1", "p5", "p50", "p95", "p99")


def acquisition_features(images):
    """Per-film grey-level statistics that the acquisition sets: mean, standard
    deviation and the 1st, 5th, 50th, 95th and 99th percentiles over the non-NaN
    pixels, ``(n_films, 7)`` in the order of ``ACQUISITION_FEATURES``."""
    flat = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    percentiles = np.nanpercentile(flat, [1, 5, 50, 95, 99], axis=1).T
    return np.column_stack([np.nanmean(flat, axis=1), np.nanstd(flat, axis=1), percentiles])


def acquisition_shift_split(images, labels, groups=None, *, held_out_fraction=0.25, side="bright"):
    """Hold out the films at one end of the main acquisition axis, class by class.

    A random patient split puts films of every exposure and contrast on both sides, so
    it cannot show what a detector does on films from another machine or period.
    This split can: each film gets grey-level statistics (:func:`acquisition_features`),
    the first principal component of those statistics over the normal films
    (standardised) is the main acquisition axis (oriented so that brighter films lie
    higher), each group (patient) is placed on it by the mean of its films, and in
    each class the ``held_out_fraction`` of groups furthest to one end is held out.
    Holding out per class keeps both classes in the held-out films; no label is used
    to find the axis.

    Parameters
    ----------
    images : array-like of shape (n_films, H, W)
        Films (NaN outside a region of interest is allowed).
    labels : array-like of shape (n_films,)
        0 = normal, 1 = abnormal.
    groups : array-like of shape (n_films,), default=None
        Patient of each film; a patient's films are held out together. ``None``: each
        film is its own group.
    held_out_fraction : float in (0, 1), default=0.25
        Share of each class's groups to hold out.
    side : {"bright", "dark"}, default="bright"
        End of the axis to hold out.

    Returns
    -------
    train : ndarray of int
        Indices of the normal films not held out (train and validate on these, and on
        abnormal films not held out, never on ``held_out``).
    held_out : ndarray of int
        Indices of the held-out films of both classes: the test set.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.model_selection import acquisition_shift_split
    >>> rng = np.random.default_rng(0)
    >>> images = rng.uniform(size=(40, 8, 8)) * rng.uniform(0.5, 1.0, size=(40, 1, 1))
    >>> labels = np.r_[np.zeros(30, int), np.ones(10, int)]
    >>> train, held_out = acquisition_shift_split(images, labels, held_out_fraction=0.25)
    >>> len(train), len(held_out), int(labels[held_out].sum())
    (22, 10, 2)
    >>> bool(images[held_out][labels[held_out] == 0].mean() > images[train].mean())
    True
    """
    images = np.asarray(images)
    labels = column_or_1d(labels)
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(
            f"acquisition_shift_split takes images (n_films, H, W) and one label per film; "
            f"got images of shape {images.shape} and {len(labels)} labels."
        )
    if not set(np.unique(labels).tolist()) <= {0, 1} or not np.any(labels == 0):
        raise ValueError("labels must be 0 (normal) or 1 (abnormal), with at least one normal film.")
    if not (isinstance(held_out_fraction, Real) and 0 < held_out_fraction < 1):
        raise ValueError(f"held_out_fraction must be in (0, 1); got {held_out_fraction!r}.")
    if side not in ("bright", "dark"):
        raise ValueError(f"side must be 'bright' or 'dark'; got {side!r}.")
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    if len(groups) != len(labels):
        raise ValueError(f"groups has {len(groups)} entries but there are {len(labels)} films.")
    features = acquisition_features(images)
    normal = labels == 0
    centre, scale = features[normal].mean(0), features[normal].std(0)
    standard = (features - centre) / np.where(scale > 0, scale, 1.0)
    _, _, components = np.linalg.svd(standard[normal] - standard[normal].mean(0), full_matrices=False)
    axis = components[0] * (1.0 if components[0][0] >= 0 else -1.0)  # brighter = higher
    position = standard @ axis * (1.0 if side == "bright" else -1.0)
    held = np.zeros(len(labels), dtype=bool)
    for label in (0, 1):
        films = np.flatnonzero(labels == label)
        if not films.size:
            continue
        names, owner = np.unique(groups[films], return_inverse=True)
        group_position = np.bincount(owner, weights=position[films]) / np.bincount(owner)
        n_held = int(round(held_out_fraction * len(names)))
        chosen = np.argsort(-group_position, kind="stable")[:n_held]
        held[films] = np.isin(owner, chosen)
    train = np.flatnonzero(normal & ~held)
    if not train.size:
        raise ValueError("held_out_fraction leaves no normal film to train on; use a smaller fraction.")
    return train, np.flatnonzero(held)
