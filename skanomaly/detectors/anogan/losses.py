"""AnoGAN's search loss and scores (Schlegl et al., 2017, eqs. 3-6), as pure functions.

The latent search minimises, per image, ``(1 - lambda) R + lambda F`` with the
residual ``R = sum |x - G(z)|`` and the feature term ``F = sum |f(x) - f(G(z))|``
(``f``: the discriminator's last convolutional features); the anomaly score is the
same loss at the final ``z``. Sums, not means, as in the paper; both run over the
region of interest only: outside it ``G(z)`` takes the image's values before ``f``
sees it, so no ignored pixel reaches a term. The search
(:func:`skanomaly.training.latent_search.latent_search`) and the score call the same
:func:`search_terms`.
"""

import torch

__all__ = ["ANOGAN_SCORES", "search_terms", "anogan_score"]

ANOGAN_SCORES = ("anogan", "residual", "feature")


def search_terms(x, roi, x_hat, target_features, features):
    """``(R, F, x_hat)`` per image for generated ``x_hat``, with ``x_hat`` taking the
    values of ``x`` outside ``roi``.

    Parameters
    ----------
    x : torch.Tensor of shape (B, 1, H, W)
        The images in the networks' range, 0 outside the ROI.
    roi : torch.Tensor of bool, shape (B, 1, H, W)
    x_hat : torch.Tensor of shape (B, 1, H, W)
        ``G(z)``.
    target_features : torch.Tensor
        ``f(x)``, computed once without gradients.
    features : callable
        ``f``.
    """
    x_hat = torch.where(roi, x_hat, x)
    residual = (x - x_hat).abs().sum(dim=(1, 2, 3))
    feature = (target_features - features(x_hat)).abs().flatten(1).sum(1)
    return residual, feature, x_hat


def anogan_score(score, residual, feature, feature_weight):
    """The anomaly score ``score`` of :data:`ANOGAN_SCORES` from the two terms
    (``"anogan"`` is also the search's loss)."""
    if score == "residual":
        return residual
    if score == "feature":
        return feature
    return (1 - feature_weight) * residual + feature_weight * feature
