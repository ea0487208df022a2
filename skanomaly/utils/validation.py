"""Input validation shared by every detector and transformer (the data contract).

Images are float arrays ``(n_samples, H, W)``; ``uint8``/``uint16`` inputs are scaled
to [0, 1] by their dtype range; a flattened ``(n_samples, H * W)`` array is accepted
(square, or with an explicit ``image_shape``); patch bags are ``(n_samples, P, p, p)``.
NaN marks pixels outside the region of interest (ROI); ``inf`` is always an error.
"""

from __future__ import annotations

import math
from numbers import Integral

import numpy as np
import scipy.sparse as sp
from sklearn.utils.validation import check_array, validate_data

__all__ = [
    "validate_images",
    "input_ndim",
    "reshape_flat_images",
    "check_image_size",
    "roi_mask",
]

# Integer dtypes that radiograph files come in; their full range maps to [0, 1].
_DTYPE_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def _input_name(estimator):
    return type(estimator).__name__ if estimator is not None else "the estimator"


def input_ndim(X):
    """Number of dimensions of array-like ``X`` (lists, DataFrames, sparse, arrays)."""
    ndim = getattr(X, "ndim", None)
    return int(ndim) if ndim is not None else np.asarray(X).ndim


def _as_numeric_array(X):
    """Return ``X`` as an ndarray of numbers, with a clear error for non-numeric input."""
    if sp.issparse(X):
        # validate_data raises scikit-learn's standard "dense data is required" error.
        return X, X.dtype
    if hasattr(X, "iloc") or hasattr(X, "to_numpy"):
        # DataFrames stay as they are: validate_data records their column names.
        return X, getattr(X, "dtypes", None)
    array = np.asarray(X)
    if array.dtype.kind in "USV":
        raise ValueError(
            f"Images must hold numbers, got an array of dtype {array.dtype}. Load image "
            "files with skanomaly.datasets.load_images, or convert with X.astype(np.float32)."
        )
    if array.dtype.kind == "c":
        raise ValueError(
            "Complex data not supported: images must be real-valued (float, uint8 or uint16)."
        )
    if array.dtype.kind == "O":
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError) as err:
            # Keep the exception type: scikit-learn's tools expect TypeError for
            # unconvertible objects and ValueError for unparsable strings.
            raise type(err)(
                "Images must hold numbers (float, uint8 or uint16), but converting the "
                f"object array to float failed: {err}"
            ) from err
    return array, array.dtype


def reshape_flat_images(X, image_shape=None):
    """Reshape a flattened ``(n_samples, n_features)`` array into ``(n_samples, H, W)``.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    image_shape : None or tuple of two ints
        ``None`` requires ``n_features`` to be a perfect square. A tuple works like
        :func:`numpy.reshape`: one entry may be ``-1`` and is then inferred, so
        ``(1, -1)`` reads each row as a one-pixel-high strip.

    Returns
    -------
    images : ndarray of shape (n_samples, H, W)
    """
    n_samples, n_features = X.shape
    if image_shape is None:
        side = math.isqrt(n_features)
        if side * side != n_features:
            raise ValueError(
                f"X is a flattened array with {n_features} features per sample, which is "
                "not a square image. Pass the images as (n_samples, H, W), or set "
                "image_shape=(H, W) on the estimator (one entry may be -1, as in numpy)."
            )
        return X.reshape(n_samples, side, side)
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 2 or any(s == 0 or s < -1 for s in shape) or shape.count(-1) > 1:
        raise ValueError(
            f"image_shape must be (H, W) with positive sizes (one may be -1), got {image_shape!r}."
        )
    if -1 in shape:
        known = shape[0] if shape[1] == -1 else shape[1]
        if n_features % known:
            raise ValueError(
                f"X has {n_features} features per sample, which image_shape={image_shape!r} "
                f"cannot divide into rows of {known} pixels."
            )
        shape = (known, n_features // known) if shape[1] == -1 else (n_features // known, known)
    if shape[0] * shape[1] != n_features:
        raise ValueError(
            f"image_shape={image_shape!r} holds {shape[0] * shape[1]} pixels but X has "
            f"{n_features} features per sample."
        )
    return X.reshape(n_samples, *shape)


def validate_images(
    estimator,
    X,
    *,
    reset,
    image_shape=None,
    allow_bags=False,
    ensure_min_samples=1,
    allow_nan=True,
):
    """Validate images (or patch bags) against the package's data contract.

    Flattened 2-D input goes through :func:`sklearn.utils.validation.validate_data`, so
    ``n_features_in_`` and feature names behave as in scikit-learn. For ``(N, H, W)``
    images and ``(N, P, p, p)`` bags, ``n_features_in_`` is set to the pixels per image
    (per patch for bags) when ``reset`` is true; size checks at predict time are the
    caller's business, because some estimators (stateless transformers, bag scoring)
    accept other sizes.

    Parameters
    ----------
    estimator : estimator instance
        Receives ``n_features_in_`` when ``reset`` is true.
    X : array-like
        ``(n_samples, H, W)``, ``(n_samples, H * W)`` or, with ``allow_bags``,
        ``(n_samples, P, p, p)``. ``uint8`` / ``uint16`` are scaled to [0, 1].
    reset : bool
        True in ``fit``; False afterwards.
    image_shape : None or tuple, default=None
        How to unflatten 2-D input; see :func:`reshape_flat_images`.
    allow_bags : bool, default=False
        Accept 4-D patch bags.
    ensure_min_samples : int, default=1
        Fewer samples raise a ``ValueError``.
    allow_nan : bool, default=True
        NaN marks pixels outside the region of interest. An image with no pixel
        inside it is an error either way.

    Returns
    -------
    images : ndarray of float32, shape (N, H, W) or (N, P, p, p)
    """
    name = _input_name(estimator)
    ndim = input_ndim(X)
    if ndim < 2:
        raise ValueError(
            f"{name} expects images of shape (n_samples, H, W) or a flattened "
            f"(n_samples, H * W) array; got a {ndim}-D array. Reshape your data: "
            "X.reshape(1, -1) if it is a single flattened image, X.reshape(-1, 1) "
            "if it holds one pixel per sample."
        )
    if ndim == 4 and not allow_bags:
        raise ValueError(
            f"{name} does not take 4-D input (patch bags (n_samples, P, p, p) or RGB "
            f"(n_samples, H, W, 3)); got shape {np.shape(X)}. Pass grayscale images "
            "(n_samples, H, W)."
        )
    if ndim == 4 and np.shape(X)[-1] in (3, 4) and np.shape(X)[-2] != np.shape(X)[-1]:
        raise ValueError(
            f"{name} expects grayscale images; got shape {np.shape(X)}, which looks like "
            "RGB(A) colour images. Convert to grayscale first, e.g. "
            "X = X[..., :3] @ [0.299, 0.587, 0.114], or load files with "
            "skanomaly.datasets.load_images, which converts for you."
        )
    if ndim > 4:
        raise ValueError(
            f"{name} expects images (n_samples, H, W) or patch bags (n_samples, P, p, p); "
            f"got a {ndim}-D array of shape {np.shape(X)}."
        )

    X, dtype = _as_numeric_array(X)
    scale = _DTYPE_SCALE.get(np.dtype(dtype), None) if isinstance(dtype, np.dtype) else None
    nan_policy = "allow-nan" if allow_nan else True
    if ndim == 2:
        array = validate_data(
            estimator,
            X,
            reset=reset,
            dtype=np.float32,
            ensure_all_finite=nan_policy,
            ensure_min_samples=ensure_min_samples,
        )
        images = reshape_flat_images(array, image_shape)
    else:
        images = check_array(
            X,
            dtype=np.float32,
            ensure_all_finite=nan_policy,
            allow_nd=True,
            ensure_min_samples=ensure_min_samples,
            ensure_min_features=1,
            input_name="X",
        )
        if 0 in images.shape[1:]:
            raise ValueError(f"{name} got images with an empty dimension: shape {images.shape}.")
        if reset:
            estimator.n_features_in_ = int(np.prod(images.shape[-2:]))
    if scale is not None:
        images = images / np.float32(scale)
    _check_values(images)
    return images


def _check_values(images):
    """Reject ``inf`` and images with no pixel inside the region of interest."""
    if np.isinf(images).any():
        raise ValueError(
            "Input contains inf; inf is not a pixel value. Use NaN for pixels outside "
            "the region of interest, or clip the images to a finite range."
        )
    per_image = images.reshape(images.shape[0], -1)
    empty = np.flatnonzero(np.isnan(per_image).all(axis=1))
    if empty.size:
        shown = ", ".join(str(i) for i in empty[:10]) + (" ..." if empty.size > 10 else "")
        raise ValueError(
            f"{empty.size} image(s) are entirely NaN, i.e. have no pixel inside the region "
            f"of interest (indices {shown}). Drop them, or check the mask or "
            "PatchExtractor(min_roi_fraction=...) that produced them."
        )


def check_image_size(image_shape, min_size, *, hint):
    """Raise if an image is smaller than a network's minimum input size."""
    if isinstance(min_size, Integral):
        min_size = (int(min_size), int(min_size))
    if image_shape[0] < min_size[0] or image_shape[1] < min_size[1]:
        raise ValueError(
            f"Images of {image_shape[0]}x{image_shape[1]} pixels are smaller than this "
            f"network's minimum input of {min_size[0]}x{min_size[1]}. {hint}"
        )


def roi_mask(images):
    """Boolean mask of the region of interest: every pixel that is not NaN."""
    return ~np.isnan(images)
