"""NaN-aware resizing: area averaging going down, bilinear going up."""

from numbers import Integral

import cv2
import numpy as np
from sklearn.utils._param_validation import Interval

from ._base import BaseImageTransformer, _check_size_pair, _resample

__all__ = ["Resize"]


def _output_shape(size, image_shape):
    """``(h, w)`` for ``size`` = int or (h, w) with at most one -1 (aspect kept)."""
    out_h, out_w = _check_size_pair(size, "size", allow_minus_one=True)
    height, width = image_shape
    if out_h == -1:
        out_h = max(1, round(height * out_w / width))
    elif out_w == -1:
        out_w = max(1, round(width * out_h / height))
    return out_h, out_w


def _resize_plain(image, out_h, out_w):
    """OpenCV resize of a NaN-free ``(H, W[, C])`` array, interpolation per direction."""
    height, width = image.shape[:2]
    if (out_h, out_w) == (height, width):
        return image.copy()
    # Area averaging is the anti-aliased choice when shrinking, bilinear when
    # enlarging; OpenCV's INTER_AREA silently turns bilinear as soon as one axis
    # grows, so mixed cases go one axis at a time.
    shrink = out_h < height or out_w < width
    grow = out_h > height or out_w > width
    if not (shrink and grow):
        flag = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        return cv2.resize(image, (out_w, out_h), interpolation=flag)
    # Rows first (only they change), then columns (only they change).
    return _resize_plain(_resize_plain(image, out_h, width), out_h, out_w)


def _resize_image(image, out_h, out_w):
    """Resize one float32 image; NaN-aware (coverage below 0.5 becomes NaN)."""
    if not np.isnan(image).any():
        return _resize_plain(image, out_h, out_w)
    return _resample(image, lambda stacked: _resize_plain(stacked, out_h, out_w))


class Resize(BaseImageTransformer):
    """Resize images, area-averaging when shrinking and bilinear when enlarging.

    NaN marks pixels outside the region of interest and does not bleed into it:
    the zero-filled image and its ROI mask are resized alike and divided
    (normalised convolution), and an output pixel whose resampled ROI coverage is
    below 0.5 becomes NaN. Without NaN this is plain ``cv2.resize`` with
    ``INTER_AREA`` (shrinking) or ``INTER_LINEAR`` (enlarging); when one axis
    shrinks and the other grows, each axis gets its own interpolation. Stateless:
    ``fit`` only validates.

    Parameters
    ----------
    size : int or tuple (h, w)
        Output size; an int gives square images. One entry of the tuple may be -1:
        it is then computed from the input's aspect ratio (rounded), as when the
        hand X-ray paper scales the longer side to 128 pixels.
    image_shape : tuple (H, W) or None, default=None
        Shape of the images when ``X`` is flattened ``(n_samples, H * W)``; one entry
        may be -1. ``None`` expects square images.

    Attributes
    ----------
    image_shape_ : tuple of int
        ``(H, W)`` of the images seen in ``fit``.
    n_features_in_ : int
        Pixels per image seen in ``fit``.

    Notes
    -----
    Flattened input comes back flattened only when the size does not change;
    otherwise the output is ``(n_samples, h, w)``.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.preprocessing import Resize
    >>> X = np.arange(32, dtype=np.float32).reshape(2, 4, 4)
    >>> X[0, :2, :2] = np.nan  # top-left block outside the ROI
    >>> Resize(2).fit_transform(X)[0]
    array([[ nan,  4.5],
           [10.5, 12.5]], dtype=float32)
    >>> Resize((8, -1)).fit_transform(X).shape
    (2, 8, 8)
    """

    _parameter_constraints = {
        "size": [Interval(Integral, 1, None, closed="left"), tuple, list],
        "image_shape": [tuple, list, None],
    }

    def __init__(self, size, *, image_shape=None):
        self.size = size
        self.image_shape = image_shape

    def _fit_images(self, images):
        _output_shape(self.size, images.shape[1:])

    def _transform_images(self, images):
        out_h, out_w = _output_shape(self.size, images.shape[1:])
        out = np.empty((images.shape[0], out_h, out_w), dtype=np.float32)
        for image, result in zip(images, out):
            result[:] = _resize_image(image, out_h, out_w)
        return out
