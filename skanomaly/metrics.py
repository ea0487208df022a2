"""Evaluation helpers for anomaly detectors (labels: 1 = abnormal, 0 = normal).

The detectors' ``score_samples`` is higher for more normal images (scikit-learn's
convention), while medical-imaging papers report ROC AUC with abnormal as the positive
class; these helpers do the sign bookkeeping in one place.
"""

from numbers import Real

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from sklearn.utils.validation import column_or_1d

__all__ = [
    "anomaly_roc_auc",
    "anomaly_average_precision",
    "partial_anomaly_roc_auc",
    "sensitivity_at_specificity",
    "youden_cutoff",
    "roc_auc_anomaly_scorer",
    "dice_score",
    "intensity_statistics",
    "intensity_baseline_scores",
]


def _check_labels(y_true):
    y_true = column_or_1d(y_true)
    values = set(np.unique(y_true).tolist())
    if not values <= {0, 1} or len(values) < 2:
        hint = (
            " -1 marks unlabelled images (semi-supervised training): they have no truth to "
            "score against; keep them out of validation and test sets (OneClassSplit does)."
            if -1 in values and 0 in values
            else ""
        )
        raise ValueError(
            f"y_true must hold both labels 0 (normal) and 1 (abnormal); got {sorted(values)}.{hint}"
        )
    return y_true.astype(int)


def anomaly_roc_auc(y_true, normality_scores):
    """ROC AUC of detecting abnormal images (label 1) from ``score_samples`` output.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        1 = abnormal, 0 = normal.
    normality_scores : array-like of shape (n_samples,)
        ``score_samples`` output: higher means more normal.

    Returns
    -------
    auc : float

    Examples
    --------
    >>> anomaly_roc_auc([0, 0, 1], [-0.1, -0.2, -0.9])
    1.0
    """
    return float(roc_auc_score(_check_labels(y_true), -np.asarray(normality_scores, dtype=float)))


def anomaly_average_precision(y_true, normality_scores):
    """Average precision of detecting abnormal images (label 1) from ``score_samples``.

    The area under the precision-recall curve with abnormal as the positive class
    (:func:`sklearn.metrics.average_precision_score` of the negated scores). Unlike ROC
    AUC it depends on the share of abnormal images: chance level is that share.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        1 = abnormal, 0 = normal.
    normality_scores : array-like of shape (n_samples,)
        ``score_samples`` output: higher means more normal.

    Returns
    -------
    average_precision : float

    Examples
    --------
    >>> anomaly_average_precision([0, 0, 1, 1], [-0.1, -0.5, -0.3, -0.9])
    0.8333333333333333
    """
    return float(
        average_precision_score(_check_labels(y_true), -np.asarray(normality_scores, dtype=float))
    )


def partial_anomaly_roc_auc(y_true, normality_scores, *, max_fpr=0.1):
    """Standardised partial ROC AUC over false-positive rates up to ``max_fpr``.

    Screening works at low false-positive rates, where the full AUC says little. This
    is :func:`sklearn.metrics.roc_auc_score` with ``max_fpr`` (McClish's
    standardisation: 0.5 is chance, 1.0 perfect) on abnormal-as-positive scores.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        1 = abnormal, 0 = normal.
    normality_scores : array-like of shape (n_samples,)
        ``score_samples`` output: higher means more normal.
    max_fpr : float in (0, 1], default=0.1
        Largest false-positive rate (share of normal images flagged) the area covers.

    Returns
    -------
    auc : float

    Examples
    --------
    >>> partial_anomaly_roc_auc([0, 0, 1, 1], [-0.1, -0.2, -0.8, -0.9], max_fpr=0.1)
    1.0
    """
    if not isinstance(max_fpr, Real) or isinstance(max_fpr, bool) or not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be a float in (0, 1]; got {max_fpr!r}.")
    return float(
        roc_auc_score(
            _check_labels(y_true), -np.asarray(normality_scores, dtype=float), max_fpr=max_fpr
        )
    )


def sensitivity_at_specificity(y_true, normality_scores, *, specificity=0.9):
    """Best sensitivity among cut-offs whose specificity is at least ``specificity``.

    The share of abnormal images flagged when at most ``1 - specificity`` of the normal
    images are: the highest point of the ROC curve at or left of that false-positive
    rate (flagging nothing always qualifies, so the result is defined).

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        1 = abnormal, 0 = normal.
    normality_scores : array-like of shape (n_samples,)
        ``score_samples`` output: higher means more normal.
    specificity : float in [0, 1], default=0.9
        Required share of normal images left unflagged.

    Returns
    -------
    sensitivity : float

    Examples
    --------
    >>> sensitivity_at_specificity([0, 0, 0, 0, 1, 1], [-1, -2, -3, -4, -3.5, -5], specificity=0.75)
    1.0
    >>> sensitivity_at_specificity([0, 0, 0, 0, 1, 1], [-1, -2, -3, -4, -3.5, -5], specificity=1.0)
    0.5
    """
    if (
        not isinstance(specificity, Real)
        or isinstance(specificity, bool)
        or not 0 <= specificity <= 1
    ):
        raise ValueError(f"specificity must be a float in [0, 1]; got {specificity!r}.")
    fpr, tpr, _ = roc_curve(
        _check_labels(y_true), -np.asarray(normality_scores, dtype=float), drop_intermediate=False
    )
    # A small tolerance: 1 - 0.9 is 0.09999999999999998, and an FPR of exactly 1/10
    # must count as a specificity of 0.9.
    return float(tpr[fpr <= 1.0 - specificity + 1e-12].max())


def youden_cutoff(y_true, normality_scores):
    """Operating point that maximises Youden's J = sensitivity + specificity - 1.

    P-AnoGAN reports sensitivity and specificity at this cut-off. Choose it on a
    validation split, never on the test set.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        1 = abnormal, 0 = normal.
    normality_scores : array-like of shape (n_samples,)
        ``score_samples`` output (higher = more normal).

    Returns
    -------
    result : dict
        ``threshold`` (flag an image when its normality score is <= threshold, i.e. use
        it as a detector's ``offset_``-like cut: ``score - threshold <= 0``),
        ``sensitivity``, ``specificity`` and ``youden_j``.

    Examples
    --------
    >>> youden_cutoff([0, 0, 1, 1], [-0.1, -0.2, -0.8, -0.9])["youden_j"]
    1.0
    """
    y_true = _check_labels(y_true)
    anomaly = -np.asarray(normality_scores, dtype=float)
    fpr, tpr, thresholds = roc_curve(y_true, anomaly)
    best = int(np.argmax(tpr - fpr))
    return {
        "threshold": float(-thresholds[best]),
        "sensitivity": float(tpr[best]),
        "specificity": float(1.0 - fpr[best]),
        "youden_j": float(tpr[best] - fpr[best]),
    }


def roc_auc_anomaly_scorer(estimator, X, y):
    """Scorer for ``GridSearchCV(scoring=...)``: ROC AUC of abnormal (1) vs normal (0).

    scikit-learn's ``"roc_auc"`` would rank ``decision_function`` with label 1 as the
    positive class, i.e. reward detectors that call abnormal images *normal*.
    """
    return anomaly_roc_auc(y, estimator.score_samples(X))


def dice_score(mask_true, mask_pred):
    """Dice overlap ``2 |A & B| / (|A| + |B|)`` of boolean masks, per image.

    Parameters
    ----------
    mask_true, mask_pred : array-like of shape (n_pixels,), (H, W) or (n_samples, H, W)
        Masks of the same shape; nonzero means inside. A 1-D pair is a selection of
        pixels of one image (e.g. ``mask[region]``).

    Returns
    -------
    dice : float, or ndarray of float64 of shape (n_samples,) for 3-D input
        1.0 where both masks are empty.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.metrics import dice_score
    >>> a = np.zeros((4, 4), bool); a[:2] = True
    >>> b = np.zeros((4, 4), bool); b[1:3] = True
    >>> float(dice_score(a, b))
    0.5
    """
    mask_true = np.asarray(mask_true).astype(bool, copy=False)
    mask_pred = np.asarray(mask_pred).astype(bool, copy=False)
    if mask_true.shape != mask_pred.shape or mask_true.ndim not in (1, 2, 3):
        raise ValueError(
            "dice_score takes two masks of the same shape, (n_pixels,), (H, W) or "
            f"(n_samples, H, W); got {mask_true.shape} and {mask_pred.shape}."
        )
    axes = (1, 2) if mask_true.ndim == 3 else None
    overlap = np.logical_and(mask_true, mask_pred).sum(axis=axes)
    total = mask_true.sum(axis=axes) + mask_pred.sum(axis=axes)
    dice = np.where(total == 0, 1.0, 2.0 * overlap / np.maximum(total, 1))
    return float(dice) if dice.ndim == 0 else dice


# ------------------------------------------------------ the exposure baseline
def intensity_statistics(images):
    """Each film's mean and standard deviation of intensity over its non-NaN pixels,
    ``(n_films, 2)``: the two numbers exposure and contrast set."""
    flat = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    return np.column_stack([np.nanmean(flat, axis=1), np.nanstd(flat, axis=1)])


def _mahalanobis(points, mean, cov):
    # Batched 2 x 2 inverses; a tiny ridge keeps a degenerate set (all films alike)
    # finite instead of raising.
    cov = cov + 1e-12 * np.eye(cov.shape[-1])
    diff = points - mean
    return np.einsum("...i,...ij,...j->...", diff, np.linalg.inv(cov), diff)


def intensity_baseline_scores(train_images, images=None):
    """Normality scores of the trivial one-class baseline: minus the squared
    Mahalanobis distance of each film's (mean, standard deviation) of intensity from
    those of the normal training films.

    Every benchmark of the package reports it beside the detectors: it sees exposure
    and contrast only, so a detector that does not beat it has learned exposure, not
    anatomy.

    Parameters
    ----------
    train_images : array-like of shape (n_train, H, W)
        Normal films (NaN outside a region of interest is left out).
    images : array-like of shape (n_films, H, W) or None, default=None
        Films to score. ``None`` scores the training films themselves, each by a
        baseline fitted on the *other* training films (leave-one-out), so no film is
        scored by statistics that include it.

    Returns
    -------
    scores : ndarray of shape (n_films,) or (n_train,)
        Higher = more normal, as ``score_samples``.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.metrics import intensity_baseline_scores
    >>> rng = np.random.default_rng(0)
    >>> normals = rng.uniform(0.2, 0.8, size=(50, 8, 8))
    >>> bright = rng.uniform(0.6, 1.0, size=(5, 8, 8))
    >>> bool(intensity_baseline_scores(normals, bright).max() < intensity_baseline_scores(normals).min())
    True
    """
    train = intensity_statistics(train_images)
    if len(train) < 3:
        raise ValueError(f"the intensity baseline needs at least 3 normal films; got {len(train)}.")
    if images is not None:
        mean = train.mean(0)
        return -_mahalanobis(intensity_statistics(images), mean, np.cov(train.T, bias=True))
    n = len(train)
    total, outer = train.sum(0), np.einsum("ni,nj->ij", train, train)
    means = (total - train) / (n - 1)
    second = (outer - np.einsum("ni,nj->nij", train, train)) / (n - 1)
    covs = second - np.einsum("ni,nj->nij", means, means)
    return -_mahalanobis(train, means, covs)
