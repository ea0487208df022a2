"""Common machinery of the image transformers: validation, layout, NaN-as-ROI."""

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
        return validate_images(
            self, X, reset=reset, image_shape=getattr(self, "image_shape", None)
        )

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
        self._validate_params()
        images = self._validate(X, reset=True)
        self.image_shape_ = images.shape[1:]
        self._fit_images(images)
        return self

    def _fit_images(self, images):
        """Hook for transformers that learn from the training images."""

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
        out = self._transform_images(images)
        if input_ndim(X) == 2 and out.shape == images.shape:
            return out.reshape(out.shape[0], -1)
        return out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags
