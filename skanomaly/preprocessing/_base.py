"""Common machinery of the image transformers: validation, layout, NaN-as-ROI.

Besides :class:`BaseImageTransformer`, this module holds the small NaN-aware image
helpers that several transformers share (Otsu thresholding inside the region of
interest, resampling that keeps NaN out of the interpolation, nearest-ROI filling).
"""

import itertools
from concurrent.futures import ThreadPoolExecutor
from numbers import Integral, Real

import cv2
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..utils.validation import input_ndim, validate_images


class BaseImageTransformer(TransformerMixin, BaseEstimator):
    """Base class of the per-image transformers.

    Subclasses implement ``_transform_images(images) -> images`` on float32
    ``(N, H, W)`` arrays with NaN outside the region of interest, and may override
    ``_fit_images(images)`` when they learn something. Flattened 2-D input comes back
    flattened when the output keeps the image size, so the transformers also work on
    the plain ``(n_samples, n_features)`` arrays that scikit-learn's tools pass around.
    Subclasses that take flattened input declare an ``image_shape`` parameter.
    """

    def _validate(self, X, *, reset):
        images = validate_images(
            self, X, reset=reset, image_shape=getattr(self, "image_shape", None)
        )
        # OpenCV takes C-ordered 2-D slices only; a no-op for the usual input.
        return np.ascontiguousarray(images)

    def fit(self, X, y=None):
        """Validate ``X`` and learn what the transformer needs (often nothing).

        Parameters
        ----------
        X : array-like of shape (n_samples, H, W) or (n_samples, H * W)
        y : ignored

        Returns
        -------
        self
        """
        self._fit(X)
        return self

    def _fit(self, X):
        self._validate_params()
        images = self._validate(X, reset=True)
        self.image_shape_ = images.shape[1:]
        self._fit_images(images)
        return images

    def _fit_images(self, images):
        """Hook for transformers that learn from the training images."""

    def fit_transform(self, X, y=None):
        """Fit, then transform ``X``, validating it only once.

        Parameters
        ----------
        X : array-like of shape (n_samples, H, W) or (n_samples, H * W)
        y : ignored

        Returns
        -------
        X_out : ndarray of float32
            Same as ``fit(X).transform(X)``.
        """
        cls, base = type(self), BaseImageTransformer
        if cls.fit is not base.fit or cls.transform is not base.transform:
            # A subclass with its own fit or transform must see both run.
            return self.fit(X, y).transform(X)
        # Validation copies and scans the whole array; on 1024x1024 radiographs doing
        # it twice is a noticeable share of a fast transformer's time.
        images = self._fit(X)
        return self._layout_output(X, images, self._transform_images(images))

    def transform(self, X):
        """Transform each image; NaN (outside the region of interest) stays NaN.

        Parameters
        ----------
        X : array-like of shape (n_samples, H, W) or (n_samples, H * W)

        Returns
        -------
        X_out : ndarray of float32
            Same layout as ``X`` when the transformer keeps the image size.
        """
        check_is_fitted(self)
        images = self._validate(X, reset=False)
        return self._layout_output(X, images, self._transform_images(images))

    # ------------------------------------------------------------- persistence
    # ``n_features_in_`` is this many times the pixels of ``image_shape_`` (MaskApplier's
    # flattened input holds an image and its mask: 1 or 2 planes).
    _fitted_planes = (1,)

    def _fitted_state(self):
        """JSON-serialisable fitted attributes (for :func:`skanomaly.io.save_model`).

        The transformers learn nothing from pixel values: their fitted state is the
        image size seen in ``fit`` (and feature names), from which ``_fit_images``
        derives the rest (a patch grid). A transformer that learns from pixel values
        must override this pair of methods.
        """
        state = {
            "image_shape_": [int(s) for s in self.image_shape_],
            "n_features_in_": int(self.n_features_in_),
        }
        if hasattr(self, "feature_names_in_"):
            state["feature_names_in_"] = [str(n) for n in self.feature_names_in_]
        return state

    def _set_fitted_state(self, state):
        """Set the fitted attributes from ``_fitted_state()`` output, checking types and
        ranges first (it may come from a file), then re-derive what ``fit`` derives
        from the image size; nothing of the image's size is allocated."""

        def fail(what):
            raise ValueError(f"invalid fitted state in the model file: {what}")

        known = {"image_shape_", "n_features_in_", "feature_names_in_"}
        if not isinstance(state, dict) or set(state) - known:
            fail(f"not a mapping of {sorted(known)}")
        shape = state.get("image_shape_")
        if not (
            isinstance(shape, list)
            and len(shape) == 2
            and all(type(s) is int and 1 <= s <= 2**16 for s in shape)
        ):
            fail(f"image_shape_={shape!r}")
        n_features = state.get("n_features_in_")
        pixels = shape[0] * shape[1]
        allowed = [k * pixels for k in self._fitted_planes]
        if type(n_features) is not int or n_features not in allowed:
            fail(f"n_features_in_={n_features!r} for images of {shape}")
        names = state.get("feature_names_in_")
        if names is not None and (
            not isinstance(names, list)
            or len(names) != n_features
            or not all(isinstance(n, str) for n in names)
        ):
            fail("feature_names_in_")
        # A read-only zero-stride view: _fit_images only looks at the image size.
        self._fit_images(np.broadcast_to(np.float32(0), (1, shape[0], shape[1])))
        self.image_shape_ = tuple(shape)
        self.n_features_in_ = int(n_features)
        if names is not None:
            self.feature_names_in_ = np.asarray(names, dtype=object)

    @staticmethod
    def _layout_output(X, images, out):
        if input_ndim(X) == 2 and out.shape == images.shape:
            return out.reshape(out.shape[0], -1)
        return out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        # Every transformer computes in float32 (the package's image dtype), whatever
        # the input dtype; advertising float64 would be a promise we do not keep.
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


# ----------------------------------------------------------------------------------
# Shared parameter checks
# ----------------------------------------------------------------------------------


def _check_size_pair(value, name, *, allow_minus_one=False, allow_fraction=False):
    """Return ``(h, w)`` from an int or a pair; raise a ValueError naming ``name``."""
    if isinstance(value, (Integral, Real)) and not isinstance(value, bool):
        value = (value, value)
    try:
        pair = tuple(value)
    except TypeError:
        pair = ()
    ok = len(pair) == 2
    for v in pair if ok else ():
        if isinstance(v, bool) or not isinstance(v, (Integral, Real)):
            ok = False
        elif float(v).is_integer():
            ok = ok and (v >= 1 or (allow_minus_one and v == -1))
        else:
            ok = ok and allow_fraction and 0 < v < 1
    if ok and allow_minus_one and pair[0] == pair[1] == -1:
        ok = False
    if not ok:
        accepted = "a positive int or a pair (h, w) of positive ints"
        if allow_fraction:
            accepted += " or floats in (0, 1) (fractions of the image size)"
        if allow_minus_one:
            accepted += "; one entry may be -1 to keep the aspect ratio"
        raise ValueError(f"{name} must be {accepted}; got {value!r}.")
    return tuple(int(v) if float(v).is_integer() else float(v) for v in pair)


# ----------------------------------------------------------------------------------
# NaN-aware image helpers (one 2-D float32 image at a time: OpenCV works per image)
# ----------------------------------------------------------------------------------


def _roi_to_uint8(image, roi):
    """Stretch the ROI's range to 0..255 (NaN -> 0); return ``(u8, constant)``."""
    values = image[roi]
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(image.shape, np.uint8), True
    scaled = (np.where(roi, image, lo) - lo) * np.float32(255.0 / (hi - lo))
    return np.rint(scaled).astype(np.uint8), False


def _otsu_foreground(image, roi, *, bright=True):
    """Otsu binarisation computed from the ROI pixels only; ``None`` if constant.

    OpenCV's Otsu runs on a histogram of all the pixels it is given, so it gets only
    the ROI's pixels (as a 1-row image): NaN fill must not sway the threshold.
    """
    u8, constant = _roi_to_uint8(image, roi)
    if constant:
        return None
    threshold, _ = cv2.threshold(
        np.ascontiguousarray(u8[roi]).reshape(1, -1), 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU
    )
    mask = (u8 > threshold) if bright else (u8 <= threshold)
    return mask & roi


def _fill_nearest(image, roi):
    """Copy of ``image`` with every NaN replaced by the value of the nearest ROI pixel.

    Local operations (CLAHE tiles, interpolation) then see a plausible continuation of
    the ROI instead of a constant that would spike their histograms. OpenCV labels the
    zero pixels of its input in row-major order, which is the order of ``image[roi]``.
    """
    _, labels = cv2.distanceTransformWithLabels(
        (~roi).view(np.uint8), cv2.DIST_L2, 3, labelType=cv2.DIST_LABEL_PIXEL
    )
    # Label 0 never occurs; a leading pad saves subtracting 1 from every label.
    values = np.concatenate([image[:1, :1].ravel(), image[roi]])
    return np.take(values, labels)


def _resample(image, warp, *, min_coverage=0.5):
    """Apply an OpenCV resampling ``warp(array) -> array`` to an image with NaN.

    Interpolating NaN would spread it; instead the zero-filled image and its ROI mask
    are resampled together (normalised convolution) and divided, and output pixels
    whose resampled ROI coverage is below ``min_coverage`` become NaN. Pixels that
    ``warp`` maps from outside the input get coverage 0, hence NaN.
    """
    roi = ~np.isnan(image)
    stacked = np.dstack([np.where(roi, image, 0.0).astype(np.float32), roi.astype(np.float32)])
    out = warp(stacked)
    value, coverage = out[..., 0], out[..., 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        result = value / coverage
    result[~(coverage >= min_coverage)] = np.nan
    return result.astype(np.float32, copy=False)


def _over_image_slices(func, n_images, *, min_bytes, bytes_per_image):
    """Call ``func(slice)`` on contiguous slices of ``range(n_images)``, in threads.

    For per-image work that NumPy and OpenCV do in one thread each, without the GIL
    (copies into large outputs, connected components): the slices run on up to
    ``cv2.getNumThreads()`` threads, so ``cv2.setNumThreads(1)`` (a process per core)
    keeps it serial. Work under ``min_bytes`` runs serially: a thread costs more than
    it saves there. The slices are disjoint, so the result does not depend on the
    thread count.
    """
    workers = min(max(cv2.getNumThreads(), 1), n_images)
    if workers <= 1 or n_images * bytes_per_image < min_bytes:
        func(slice(0, n_images))
        return
    bounds = np.linspace(0, n_images, workers + 1).round().astype(int)
    parts = [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # list(): re-raise the first exception of any slice here.
        list(pool.map(func, parts))
