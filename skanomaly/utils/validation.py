"""Input validation shared by every detector and transformer (the data contract).

Images are float arrays ``(n_samples, H, W)``; ``uint8``/``uint16`` inputs are scaled
to [0, 1] by their dtype range; a flattened ``(n_samples, H * W)`` array is accepted
(square, or with an explicit ``image_shape``); patch bags are ``(n_samples, P, p, p)``.
NaN marks pixels outside the region of interest (ROI); ``inf`` is always an error.

How a 4-D array is read (:func:`read_layout`), and the pixel range a detector expects
(``value_range``), are decided here once, so that every estimator agrees.
"""

from __future__ import annotations

import math
from numbers import Integral

import numpy as np
import scipy.sparse as sp
import warnings

from sklearn.utils.validation import _check_feature_names, check_array, validate_data

__all__ = [
    "PatchBags",
    "as_patch_bags",
    "validate_images",
    "read_layout",
    "input_ndim",
    "reshape_flat_images",
    "check_image_size",
    "check_widths",
    "roi_mask",
]

# Integer dtypes that radiograph files come in; their full range maps to [0, 1].
_DTYPE_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


class PatchBags(np.ndarray):
    """A NumPy array marked as patch bags ``(n_samples, P, p, p)``.

    :class:`~skanomaly.preprocessing.PatchExtractor` returns its bags with this mark.
    Most 4-D arrays are unambiguous by shape, but a bag of 3 or 4 patches has the
    shape of an RGB(A) batch in PyTorch's ``(N, C, H, W)`` layout, which detectors
    refuse; the mark (kept through slicing and indexing, lost by ``np.asarray`` or
    a round trip through a file) tells them it is a bag. Mark an array yourself with
    :func:`as_patch_bags`.

    Results that are not 4-D (reductions over the patch axes, such as
    ``np.isnan(bags).all(axis=(2, 3))``) come back as plain arrays.
    """

    def __array_wrap__(self, array, context=None, return_scalar=False):
        result = super().__array_wrap__(array, context, return_scalar)
        if isinstance(result, PatchBags) and result.ndim != 4:
            result = result.view(np.ndarray)
            return result[()] if return_scalar else result
        return result


def as_patch_bags(X):
    """Mark a ``(n_samples, P, p, p)`` array as patch bags (a view, no copy).

    Parameters
    ----------
    X : array-like of shape (n_samples, P, p, p)

    Returns
    -------
    bags : PatchBags

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.utils.validation import as_patch_bags, read_layout
    >>> bags = np.zeros((2, 3, 8, 8), dtype=np.float32)  # 3 patches, or RGB?
    >>> read_layout(as_patch_bags(bags))
    'bags'
    """
    array = np.asarray(X)
    if array.ndim != 4 or array.shape[-1] != array.shape[-2]:
        raise ValueError(
            f"Patch bags have shape (n_samples, P, p, p) with square patches; got shape "
            f"{array.shape}."
        )
    return array.view(PatchBags)


def read_layout(X, name="The estimator"):
    """How a detector reads array-like ``X``: ``"images"``, ``"bags"`` or a channel axis.

    * 2-D (flattened) and 3-D arrays are images.
    * 4-D arrays marked by :func:`as_patch_bags` (as :class:`PatchExtractor`'s
      output is) are bags.
    * ``(N, 1, H, W)`` (PyTorch's layout) and ``(N, H, W, 1)`` hold a grayscale
      channel axis: the result is ``1`` or ``3``, the axis to squeeze. A bag of one
      patch has the shape of the first and is scored the same either way.
    * ``(N, 3|4, H, W)`` and ``(N, H, W, 3|4)`` unmarked are colour images: refused.
    * Any other 4-D array with square last two axes is a bag; non-square ones are
      refused.

    Returns
    -------
    layout : "images", "bags" or int
    """
    shape = tuple(np.shape(X)) if not hasattr(X, "shape") else tuple(X.shape)
    if len(shape) != 4:
        return "images"
    _, axis1, height, width = shape
    marked = isinstance(X, PatchBags)
    if marked and height == width:
        return "bags"
    if axis1 == 1:
        return 1
    if width == 1 and height != 1:
        return 3
    if width in (3, 4) and height != width:
        raise ValueError(
            f"{name} expects grayscale images; got shape {shape}, which looks like "
            "RGB(A) colour images (n_samples, H, W, channels). Convert to grayscale "
            "first, e.g. X = X[..., :3] @ [0.299, 0.587, 0.114], or load files with "
            "skanomaly.datasets.load_images, which converts for you."
        )
    if axis1 in (3, 4):
        raise ValueError(
            f"{name} got shape {shape}, which reads as RGB(A) colour images in PyTorch's "
            "(n_samples, channels, H, W) layout; the package works on grayscale. "
            "Convert first, e.g. X = np.tensordot([0.299, 0.587, 0.114], X[:, :3], "
            "axes=(0, 1)). If it is a bag of patches instead, mark it with "
            "skanomaly.utils.validation.as_patch_bags(X) (PatchExtractor's output is "
            "marked already)."
        )
    if height != width:
        raise ValueError(
            f"{name} got a 4-D array of shape {shape}: patch bags (n_samples, P, p, p) "
            "hold square patches, and a grayscale channel axis must have size 1 "
            "((n_samples, 1, H, W) or (n_samples, H, W, 1))."
        )
    return "bags"


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
        # DataFrames stay as they are: validate_data records their column names. A
        # frame whose columns share one dtype is scaled like an array of that dtype.
        dtypes = getattr(X, "dtypes", None)
        kinds = set(np.atleast_1d(getattr(dtypes, "values", [getattr(X, "dtype", None)])))
        dtype = kinds.pop() if len(kinds) == 1 else None
        return X, (np.dtype(dtype) if isinstance(dtype, np.dtype) else None)
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
    value_range="dtype",
    raw_4d=False,
):
    """Validate images (or patch bags) against the package's data contract.

    Flattened 2-D input goes through :func:`sklearn.utils.validation.validate_data`, so
    ``n_features_in_`` and feature names behave as in scikit-learn. For ``(N, H, W)``
    images and ``(N, P, p, p)`` bags, ``n_features_in_`` is set to the pixels per image
    (per patch for bags) when ``reset`` is true, and feature names are checked (a
    refit on arrays forgets the names of an earlier DataFrame); size checks at predict
    time are the caller's business, because some estimators (stateless transformers,
    bag scoring) accept other sizes.

    Parameters
    ----------
    estimator : estimator instance or None
        Receives ``n_features_in_`` when ``reset`` is true.
    X : array-like
        ``(n_samples, H, W)``, ``(n_samples, H * W)`` or, with ``allow_bags``,
        ``(n_samples, P, p, p)``, ``(n_samples, 1, H, W)`` or ``(n_samples, H, W, 1)``
        (see :func:`read_layout`; a channel axis is squeezed).
    reset : bool
        True in ``fit``; False afterwards.
    image_shape : None or tuple, default=None
        How to unflatten 2-D input; see :func:`reshape_flat_images`.
    allow_bags : bool, default=False
        Accept 4-D input. Without it, 4-D input is refused with a message that
        says how to squeeze a channel axis.
    ensure_min_samples : int, default=1
        Fewer samples raise a ``ValueError``.
    allow_nan : bool, default=True
        NaN marks pixels outside the region of interest. An image with no pixel
        inside it is an error either way.
    value_range : "dtype", "auto", (low, high) or None, default="dtype"
        The pixel values the caller expects, and how they map to [0, 1]:
        ``"dtype"`` scales ``uint8`` / ``uint16`` by their dtype's maximum and passes
        anything else through unchecked (transformers that rescale each image
        anyway); ``"auto"`` does the same and requires other input to lie in [0, 1]
        (detectors); ``(low, high)`` requires every value to lie in that range,
        whatever the dtype, and maps it linearly to [0, 1] (e.g. ``(0, 4095)`` for
        12-bit data); ``None`` uses the values as they are, unchecked.
    raw_4d : bool, default=False
        Take 4-D input as it is, without :func:`read_layout` (for estimators whose
        4-D input means something else, such as MaskApplier's stacked image-mask
        pairs).

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
    if ndim > 4:
        raise ValueError(
            f"{name} expects images (n_samples, H, W) or patch bags (n_samples, P, p, p); "
            f"got a {ndim}-D array of shape {np.shape(X)}."
        )
    layout = read_layout(X, name) if ndim == 4 and not raw_4d else "images"
    if ndim == 4 and not allow_bags and not raw_4d:
        squeeze = {1: "X[:, 0]", 3: "X[..., 0]"}.get(layout)
        hint = (
            f"It holds a grayscale channel axis: squeeze it with {squeeze}."
            if squeeze
            else "Pass grayscale images (n_samples, H, W)."
        )
        raise ValueError(
            f"{name} takes images (n_samples, H, W); got a 4-D array of shape "
            f"{np.shape(X)}. {hint}"
        )

    X, dtype = _as_numeric_array(X)
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
        if estimator is not None:
            _check_feature_names(estimator, X, reset=reset)
        images = check_array(
            X,
            dtype=np.float32,
            ensure_all_finite=nan_policy,
            allow_nd=True,
            ensure_min_samples=ensure_min_samples,
            ensure_min_features=1,
            input_name="X",
        )
        if isinstance(layout, int):
            images = np.squeeze(images, axis=layout)
        if 0 in images.shape[1:]:
            raise ValueError(f"{name} got images with an empty dimension: shape {images.shape}.")
        if reset and estimator is not None:
            estimator.n_features_in_ = int(np.prod(images.shape[-2:]))
    # Before the value range: an image with no pixel in the ROI has no range to report.
    _check_values(images)
    images = _apply_value_range(images, dtype, value_range, name)
    return images


def _apply_value_range(images, dtype, value_range, name):
    """Map pixel values to [0, 1] as ``value_range`` says; see :func:`validate_images`."""
    dtype = np.dtype(dtype) if isinstance(dtype, np.dtype) else None
    if value_range is None:
        return images
    if isinstance(value_range, str):
        scale = _DTYPE_SCALE.get(dtype)
        if scale is not None:
            if dtype == np.uint16:
                _warn_if_12_bit(images, name)
            return images / np.float32(scale)
        if value_range == "dtype":
            return images
        low, high = 0.0, 1.0
    else:
        low, high = (float(v) for v in value_range)
    _check_range(images, low, high, name, value_range)
    if (low, high) == (0.0, 1.0):
        return images
    return (images - np.float32(low)) * np.float32(1.0 / (high - low))


def _check_range(images, low, high, name, value_range):
    # A relative slack of 1e-4 lets values that rounding moved off [0, 1] through.
    slack = 1e-4 * (high - low)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        seen_low, seen_high = float(np.nanmin(images)), float(np.nanmax(images))
    if seen_low >= low - slack and seen_high <= high + slack:
        return
    guess = next((bits for bits in (8, 10, 12, 14, 16) if seen_high <= 2**bits - 1), None)
    hint = (
        f" (for {guess}-bit data: X / {2**guess - 1})" if guess and seen_low >= 0 and seen_high > 1 else ""
    )
    raise ValueError(
        f"{name} expects pixel values in [{low:g}, {high:g}] (value_range={value_range!r}) "
        f"but X holds values in [{seen_low:g}, {seen_high:g}]. Scale the images to "
        f"[0, 1] first{hint}, e.g. with skanomaly.preprocessing.Rescale; or set "
        "value_range=(low, high) to the range your data comes in, which the detector "
        "maps to [0, 1]; value_range=None uses the values as they are (standardised "
        "data)."
    )


def _warn_if_12_bit(images, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        largest = float(np.nanmax(images)) if images.size else 0.0
    if 0 < largest <= 4095:
        warnings.warn(
            f"{name} got uint16 images whose largest value is {largest:.0f}: they look "
            "like 10- or 12-bit data stored in 16 bits, and scaled by 65535 they use "
            f"only {100 * largest / 65535:.1f} % of [0, 1]. Use "
            "skanomaly.preprocessing.Rescale(bits_stored=12) (or the detector's "
            "value_range=(0, 4095)) to scale them by their bit depth.",
            UserWarning,
            stacklevel=4,
        )


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


def check_widths(
    value, name, *, min_len=1, max_len=None, low=1, high=4096, context="", hint=""
):
    """Layer widths (a ``channels``-like parameter) as a tuple of ints.

    The one check of the package's width parameters: the detectors' parameters, the
    ``network_config_`` of a model file and the networks' own guards.

    Parameters
    ----------
    value : sequence of int
        The widths (a list or tuple; any iterable but a string or a mapping).
    name : str
        The parameter's name, for the message.
    min_len : int, default=1
        The fewest widths.
    max_len : int or None, default=None
        The most widths; ``None``: no limit.
    low : int, default=1
        The smallest width.
    high : int or None, default=4096
        The largest width; ``None``: no limit.
    context : str, default=""
        What the value was checked for, after "is not valid" in the message, e.g.
        ``" for generator='wgan-gp'"``.
    hint : str, default=""
        The end of the message, after the bounds: what the widths mean, an example.

    Returns
    -------
    widths : tuple of int

    Raises
    ------
    ValueError
        Naming the parameter, its value, the bounds and the ``hint``.

    Examples
    --------
    >>> from skanomaly.utils.validation import check_widths
    >>> check_widths([8, 16], "channels", max_len=8)
    (8, 16)
    >>> check_widths((8, 0), "channels", max_len=8)
    Traceback (most recent call last):
    ...
    ValueError: channels=(8, 0) is not valid: use 1 to 8 integer widths in [1, 4096].
    """
    widths = None
    if not isinstance(value, (str, bytes, dict)):
        try:
            widths = tuple(value)
        except TypeError:
            pass
    ok = (
        widths is not None
        and min_len <= len(widths)
        and (max_len is None or len(widths) <= max_len)
    )
    if not ok or not all(
        isinstance(w, Integral)
        and not isinstance(w, bool)
        and low <= w
        and (high is None or w <= high)
        for w in widths
    ):
        if max_len is None:
            count = "any number of" if min_len == 0 else f"{min_len} or more"
        else:
            count = str(min_len) if min_len == max_len else f"{min_len} to {max_len}"
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(
            f"{name}={_short_repr(value)} is not valid{context}: "
            f"use {count} integer widths {bounds}{hint}."
        )
    return tuple(int(w) for w in widths)


def _short_repr(value, limit=80):
    """``repr(value)``, cut to ``limit`` characters (a forged file's value may be huge)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def roi_mask(images):
    """Boolean mask of the region of interest: every pixel that is not NaN."""
    return ~np.isnan(images)
