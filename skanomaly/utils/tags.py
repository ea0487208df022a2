"""The package's own detector tags, beside scikit-learn's.

scikit-learn's :class:`~sklearn.utils.Tags` is a slotted dataclass: no attribute can
be added to it, and meta-estimators (``Pipeline``) build their own from scratch, so
a subclass would not survive them either. The package's tags therefore come from a
method of their own, ``__skanomaly_tags__``, read by :func:`get_detector_tags`, as
scikit-learn's come from ``__sklearn_tags__`` through ``get_tags``. A detector
extends its parent's::

    def __skanomaly_tags__(self):
        tags = super().__skanomaly_tags__()
        tags.training_tolerance = Tolerance(1e-3, "a GAN amplifies ...")
        return tags

The detector checks (:mod:`skanomaly.utils.estimator_checks`) read them: label
semantics decide what ``fit(X, y)`` must accept and refuse, and the tolerances how
closely two computations of the same scores must agree.
"""

import math
from dataclasses import dataclass, field

from .validation import check_widths

__all__ = ["LABEL_SEMANTICS", "DetectorTags", "Tolerance", "float32_rtol", "get_detector_tags"]

#: ``"normal-only"``: ``y`` may only say 0 (normal); ``"semi-supervised"``: 0 (normal)
#: and -1 (unlabelled), as HealthyGAN trains.
LABEL_SEMANTICS = ("normal-only", "semi-supervised")

# float32's unit roundoff: the networks compute in float32.
_UNIT_ROUNDOFF = 2.0**-24
# A score's mean over the pixels of a 64 x 64 patch (P-AnoGAN's size; the checks'
# images are 16 x 16) is one more reduction of this many terms.
_SCORE_PIXELS = 64 * 64


def float32_rtol(reductions, widest):
    """Relative tolerance between two float32 computations of the same score.

    Batching differently (another batch size, order or subset) changes only how
    float32 kernels group their reductions (GEMM and convolution tiles, vector
    tails, which differ between AVX2 and AVX-512), not what they sum. A reduction
    of ``k`` terms regrouped rounds differently by about ``sqrt(k) * 2**-24``
    relative to the sum of its terms (the probabilistic bound of Higham and Mary,
    2019; the worst case ``k * 2**-24`` is never approached by independent
    roundings); a score computed through ``reductions`` of them in sequence adds
    them at most linearly. Hence ``reductions * sqrt(k) * 2**-24`` with ``k`` the
    longer of the widest inner product (``widest``: input channels x kernel area,
    or a Linear layer's inputs) and the score's mean over 4096 pixels.

    Parameters
    ----------
    reductions : int
        Reductions (convolutions, linear layers, the score's pixel mean) a score
        passes through in sequence.
    widest : int
        Terms of the widest inner product of the networks.

    Returns
    -------
    rtol : float

    Examples
    --------
    >>> from skanomaly.utils.tags import float32_rtol
    >>> float(f"{float32_rtol(6, 128):.2g}")  # 6 reductions of at most 4096 terms
    2.3e-05
    """
    length = max(int(widest), _SCORE_PIXELS)
    return float(reductions) * math.sqrt(length) * _UNIT_ROUNDOFF


def _widths(channels):
    """The integer widths of a ``channels`` parameter, ``(1,)`` for a value ``fit``
    will refuse: tags are read from any parameters, and must not raise."""
    try:
        return check_widths(channels, "channels", high=None)
    except ValueError:
        return (1,)


@dataclass(frozen=True)
class Tolerance:
    """A relative tolerance and why it is what it is.

    Parameters
    ----------
    rtol : float
    reason : str
        One line: the arithmetic or the measurement it comes from.
    """

    rtol: float
    reason: str


def _default_score_tolerance():
    return Tolerance(float32_rtol(16, 0), "16 float32 reductions of up to 4096 terms (no detector-specific count)")


def _default_training_tolerance():
    return Tolerance(2e-2, "no detector-specific measurement; the widest the package's GANs need")


@dataclass
class DetectorTags:
    """What the detector checks need to know about a detector.

    Parameters
    ----------
    labels : {"normal-only", "semi-supervised"}, default="normal-only"
        What ``fit(X, y)`` accepts: ``"normal-only"`` refuses any ``y`` other than 0
        (normal); ``"semi-supervised"`` takes 0 (normal) and -1 (unlabelled) and
        refuses 1 (abnormal) as well.
    score_tolerance : Tolerance
        How closely two computations of the same scores by the same fitted networks
        agree when they are batched differently (batch size, order, subsets, a
        one-patch bag, pixels mapped by ``value_range``): float32 rounding only.
    training_tolerance : Tolerance
        How closely the scores of two fits agree whose training images differ in
        their last bits (``(x - 0) / 255`` against ``x / 255``): training carries and
        amplifies them.
    """

    labels: str = "normal-only"
    score_tolerance: Tolerance = field(default_factory=_default_score_tolerance)
    training_tolerance: Tolerance = field(default_factory=_default_training_tolerance)

    def __post_init__(self):
        if self.labels not in LABEL_SEMANTICS:
            raise ValueError(f"labels={self.labels!r} is not one of {LABEL_SEMANTICS}.")


def get_detector_tags(detector):
    """The :class:`DetectorTags` of a detector instance.

    Parameters
    ----------
    detector : estimator instance
        A detector of the package (or any estimator with ``__skanomaly_tags__``).

    Returns
    -------
    tags : DetectorTags
    """
    if isinstance(detector, type):
        raise TypeError(f"get_detector_tags takes a detector instance ({detector.__name__}()), not the class.")
    method = getattr(detector, "__skanomaly_tags__", None)
    if method is None:
        raise TypeError(
            f"{type(detector).__name__} has no __skanomaly_tags__: derive detectors from "
            "skanomaly.base.BaseDeepDetector, which defines it."
        )
    tags = method()
    if not isinstance(tags, DetectorTags):
        raise TypeError(
            f"{type(detector).__name__}.__skanomaly_tags__ returned {type(tags).__name__}, not DetectorTags."
        )
    # A validated copy: __post_init__ runs again on what a subclass changed.
    return DetectorTags(tags.labels, tags.score_tolerance, tags.training_tolerance)
