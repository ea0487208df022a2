"""The loss and score equations of f-AnoGAN's and P-AnoGAN's encoder, as pure functions.

Training (:class:`~.training.EncoderNet`), epoch selection
(:class:`~.training.BestValidationAUC`) and the detector's scoring all call these.

With a trained generator ``G`` and discriminator ``D`` frozen, an encoder ``E`` learns
to map images to latents, ``x~ = G(E(x))``. The losses (P-AnoGAN's names; ``D_f`` is
the discriminator's feature layer, ``kappa`` the feature weight):

* ``"izi"``: ``MSE(x, x~)``;
* ``"ziz"``: ``MSE(z, E(G(z)))`` for ``z`` drawn from the prior (no real image used);
* ``"izif"``: ``izi + kappa MSE(D_f(x), D_f(x~))`` (f-AnoGAN's training loss);
* ``"izizf"``: ``izif + MSE(E(x), E(x~))``.

Scores of an image (higher = more abnormal; P-AnoGAN eqs. 5 and 6, f-AnoGAN):

* ``"izizf"``: ``mean|x - x~| + mean|E(x) - E(x~)|``;
* ``"residual"``: ``mean|x - x~|``;
* ``"izif"``: ``mean (x - x~)^2 + kappa mean (D_f(x) - D_f(x~))^2``.

Pixel means and squared errors run over the region of interest only: outside it,
``x~`` takes the input's values before ``D_f`` or ``E`` sees it, so nothing the
detector was told to ignore reaches a loss or a score.
"""

import torch
from torch.nn import functional as F

from ...training.losses import masked_mean

__all__ = ["ENCODER_LOSSES", "ENCODER_SCORES", "encode_decode", "encoder_loss", "encoder_scores"]

ENCODER_LOSSES = ("izi", "ziz", "izif", "izizf")
ENCODER_SCORES = ("izizf", "residual", "izif")


def encode_decode(x, roi, encoder, generator):
    """``(z, x~)`` with ``z = E(x)``, ``x~ = G(z)`` taking ``x``'s values outside the ROI."""
    z = encoder(x)
    return z, torch.where(roi, generator(z), x)


def encoder_loss(loss, x, roi, encoder, generator, discriminator, feature_weight, prior_latents=None):
    """Batch loss of the encoder (see the module docstring).

    ``x`` is in the networks' range with 0 outside ``roi``; ``prior_latents`` are the
    ``z`` of ``"ziz"``. Pixel terms average over the ROI pixels of the batch.
    """
    if loss == "ziz":
        return F.mse_loss(encoder(generator(prior_latents)), prior_latents)
    z, x_hat = encode_decode(x, roi, encoder, generator)
    roi_f = roi.to(x.dtype)
    total = ((x - x_hat).square() * roi_f).sum() / roi_f.sum().clamp_min(1.0)
    if loss in ("izif", "izizf"):
        with torch.no_grad():
            target = discriminator.features(x)
        total = total + feature_weight * F.mse_loss(discriminator.features(x_hat), target)
    if loss == "izizf":
        total = total + F.mse_loss(encoder(x_hat), z)
    return total


def encoder_scores(score, x, roi, encoder, generator, discriminator, feature_weight):
    """``(x~, anomaly (B,))`` of a batch for ``score`` in :data:`ENCODER_SCORES`."""
    z, x_hat = encode_decode(x, roi, encoder, generator)
    if score == "izif":
        # One pass over both halves: the discriminator scores in eval mode, where no
        # layer mixes samples, and one batch of 2B runs its kernels faster than two.
        real, fake = discriminator.features(torch.cat([x, x_hat])).chunk(2)
        features = (real - fake).square().flatten(1).mean(1)
        return x_hat, masked_mean((x - x_hat).square(), roi) + feature_weight * features
    residual = masked_mean((x - x_hat).abs(), roi)
    if score == "izizf":
        return x_hat, residual + (z - encoder(x_hat)).abs().flatten(1).mean(1)
    return x_hat, residual
