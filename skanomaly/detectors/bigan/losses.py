"""BiGAN's adversarial losses and its anomaly scores (the hand X-ray paper, Table 1),
as pure functions on tensors in the networks' range ([-1, 1]).

The discriminator D sees pairs: ``(x, E(x))`` for a real image and its code, and
``(G(z), z)`` for a sample and the latent it came from, z ~ N(0, I).

* ``adversarial_loss="bce"`` (the default): D minimises
  ``BCE(D(x, E(x)), 1) + BCE(D(G(z), z), 0)``; G and E minimise the same pairs with
  the labels swapped, ``BCE(D(G(z), z), 1) + BCE(D(x, E(x)), 0)``. The paper's
  appendix calls its adversarial loss "hinge"; that is the name of the code's option
  (``adv_loss='hinge'`` in its run settings), whose body is this cross-entropy, so
  this is what produced Table 1.
* ``adversarial_loss="hinge"``: the hinge loss the name suggests: D minimises
  ``mean relu(1 - D(x, E(x))) + mean relu(1 + D(G(z), z))`` on logits, G and E
  ``mean D(x, E(x)) - mean D(G(z), z)``.

Scores (Table 1's BiGAN rows), per image: ``"discriminator"``, ``1 - sigmoid(D(x,
E(x)))`` (a pair the discriminator finds unlike the real pairs it was trained on;
Table 1's best BiGAN score, AUC 0.549); the reconstruction scores of ``G(E(x))``:
``"mse"`` (masked mean squared error) and ``("topk", 200)`` (the mean of the 200
largest squared errors), from :func:`~skanomaly.detectors.autoencoders.losses.parse_score`,
the same paper's reconstruction scores.
"""

import torch
import torch.nn.functional as F

from .._handxray_gan import check_score, discriminator_score
from ..autoencoders.losses import reconstruction_anomaly

__all__ = ["ADVERSARIAL_LOSSES", "discriminator_terms", "generator_encoder_terms", "bigan_score"]

ADVERSARIAL_LOSSES = ("bce", "hinge")


def discriminator_terms(real_logits, fake_logits, loss="bce"):
    """D's terms: ``{"d_real": ..., "d_fake": ...}`` on the logits of
    ``D(x, E(x))`` and ``D(G(z), z)``."""
    if loss == "hinge":
        return {"d_real": F.relu(1.0 - real_logits).mean(), "d_fake": F.relu(1.0 + fake_logits).mean()}
    return {
        "d_real": F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)),
        "d_fake": F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)),
    }


def generator_encoder_terms(real_logits, fake_logits, loss="bce"):
    """G's and E's terms, the labels swapped: ``{"generator": ..., "encoder": ...}``
    (G fools D on ``(G(z), z)``, E on ``(x, E(x))``)."""
    if loss == "hinge":
        return {"generator": -fake_logits.mean(), "encoder": real_logits.mean()}
    return {
        "generator": F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits)),
        "encoder": F.binary_cross_entropy_with_logits(real_logits, torch.zeros_like(real_logits)),
    }


def bigan_score(score, x, x_rec, roi, logits):
    """Per-pixel squared error ``(B, 1, H, W)`` and per-image score ``(B,)``.

    Parameters
    ----------
    score : "discriminator", "mse", "l1" or ("topk", k[, "l1"])
    x, x_rec : torch.Tensor (B, 1, H, W)
        Images and ``G(E(x))``, in the same units (the map is in those units).
    roi : torch.Tensor of bool (B, 1, H, W)
    logits : torch.Tensor (B,)
        ``D(x, E(x))``.
    """
    spec = check_score(score, ("discriminator",))
    if spec is None:
        pixel = (x - x_rec).square()
        return pixel, discriminator_score(logits)
    return reconstruction_anomaly(spec, x, x_rec, roi)
