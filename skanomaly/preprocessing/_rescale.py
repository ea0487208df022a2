"""Rescale pixel values to [0, 1]: per image, or by a known bit depth."""

from numbers import Integral

import numpy as np
from sklearn.utils._param_validation import Interval

from ._base import BaseImageTransformer
from ..utils.validation import validate_images

__all__ = ["Rescale"]


class Rescale(BaseImageTransformer):
    """Bring pixel values to [0, 1], the range the detectors expect.

    Detectors refuse float input outside [0, 1] (a network trained on [0, 1] scores
    0-255 or 0-4095 input as garbage). Put this step in front of them when the data
    come in another range.

    Parameters
    ----------
    bits_stored : int in [1, 32] or None, default=None
        ``None``: each image is min-max scaled over its region of interest, so its
        darkest pixel becomes 0 and its brightest 1 (an image whose ROI is constant
        becomes 0). An int: every image is divided by ``2 ** bits_stored - 1``, the
        largest value of that bit depth, which keeps exposure differences between
        images; use it for 12-bit radiographs stored in 16-bit arrays
        (``bits_stored=12``; DICOM's BitsStored). Values outside
        ``[0, 2 ** bits_stored - 1]`` raise a ``ValueError``.
    container_bits : int in [1, 32] or None, default=None
        With ``bits_stored``: the bit depth the values were *already* divided by.
        :func:`~skanomaly.datasets.read_image` scales a 16-bit file by 65535, so
        12-bit data read from 16-bit PNG or TIFF files (0 to 4095 / 65535) need
        ``Rescale(bits_stored=12, container_bits=16)``: values are brought back to
        integers (times 65535) and divided by 4095. This is what the command line's
        ``--bits-stored 12`` puts in front of the detector. ``None``: values are
        taken as they are.
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
    Unlike the other transformers, ``Rescale`` reads integer input as it is:
    ``uint16`` pixels holding 12-bit values are divided by 4095 with
    ``bits_stored=12``, not first by 65535. NaN (outside the region of interest)
    stays NaN.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.preprocessing import Rescale
    >>> X = np.array([[[0, 1000], [2000, 4095]]], dtype=np.uint16)  # 12-bit data
    >>> Rescale(bits_stored=12).fit_transform(X).astype(float).round(3).tolist()
    [[[0.0, 0.244], [0.488, 1.0]]]
    >>> Rescale().fit_transform(X.astype(np.float32) + 100).astype(float).round(3).tolist()
    [[[0.0, 0.244], [0.488, 1.0]]]
    """

    _parameter_constraints = {
        "bits_stored": [Interval(Integral, 1, 32, closed="both"), None],
        "container_bits": [Interval(Integral, 1, 32, closed="both"), None],
        "image_shape": [tuple, list, None],
    }

    def __init__(self, bits_stored=None, *, container_bits=None, image_shape=None):
        self.bits_stored = bits_stored
        self.container_bits = container_bits
        self.image_shape = image_shape

    def _validate(self, X, *, reset):
        images = validate_images(self, X, reset=reset, image_shape=self.image_shape, value_range=None)
        return np.ascontiguousarray(images)

    def _transform_images(self, images):
        if self.container_bits is not None:
            if self.bits_stored is None:
                raise ValueError(
                    f"Rescale(container_bits={self.container_bits}) needs bits_stored, the "
                    "data's own bit depth (e.g. bits_stored=12, container_bits=16)."
                )
            # The file reader divided integers by the container's range: undo it exactly
            # (float32 rounding of x / 65535 is far below 0.5).
            images = np.rint(images.astype(np.float64) * (2**self.container_bits - 1)).astype(np.float32)
        if self.bits_stored is not None:
            top = float(2**self.bits_stored - 1)
            low, high = float(np.nanmin(images)), float(np.nanmax(images))
            if low < 0 or high > top:
                raise ValueError(
                    f"Rescale(bits_stored={self.bits_stored}) expects values in [0, {top:g}] "
                    f"but X holds values in [{low:g}, {high:g}]. Set bits_stored to the "
                    "data's bit depth, or use Rescale() to min-max scale each image."
                )
            return images * np.float32(1.0 / top)
        flat = images.reshape(len(images), -1)
        low = np.nanmin(flat, axis=1)[:, None, None]
        span = (np.nanmax(flat, axis=1) - np.nanmin(flat, axis=1))[:, None, None]
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(span > 0, (images - low) / np.where(span > 0, span, 1), 0.0)
        return np.where(np.isnan(images), np.nan, out).astype(np.float32)
