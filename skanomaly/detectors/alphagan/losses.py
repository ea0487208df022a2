"""alpha-GAN's losses (Rosca et al. 2017, as the hand X-ray paper's code trains them) and
its anomaly scores (the paper's Table 1), as pure functions on tensors in the
networks' range ([-1, 1]).

With ``z_hat = mean(x) + exp(log_var(x) / 2) * eps`` the encoder's code, ``x_rec =
G(z_hat)``, ``z ~ N(0, I)`` a prior draw and ``x_gen = G(z)``; D and C output logits,
``D = sigmoid(logit)``:

* **E** minimises ``lambda * L1(x, x_rec) + BCE(C(z_hat), 1) - BCE(C(z_hat), 0)``;
* **G** minimises ``lambda * L1(x, x_rec) + [BCE(D(x_rec), 1) - BCE(D(x_rec), 0)] +
  [BCE(D(x_gen), 1) - BCE(D(x_gen), 0)]``;
* **D** minimises ``BCE(D(x), 1) + BCE(D(x_rec), 0) + BCE(D(x_gen), 0)``;
* **C** minimises ``BCE(C(z), 1) + BCE(C(z_hat), 0)`` (prior draws are C's "real").

``BCE(s, 1) - BCE(s, 0) = -log s + log(1 - s)`` is Rosca et al.'s sum of the
non-saturating and the saturating generator loss; on a logit ``l`` it equals ``-l``.
``lambda`` is 0.01 on the mean absolute error (the code's; the paper gives none).
L1 is over the region of interest, as the package's other reconstruction losses.

Scores, per image: ``"paper"``, the mean of ``1 - D(x)`` and ``1 - C(mean(x))`` (the
paper: "the mean over code discriminator and discriminator probability", Table 1's
"C + D", AUC 0.607 on MURA hands); ``"discriminator"``, ``1 - D(x)``; ``"code"``,
``1 - C(mean(x))``; and the reconstruction scores of ``G(mean(x))`` (``"mse"``,
``("topk", 200)``). Scores use the code's mean, not a draw, so they are deterministic.
"""

import torch
import torch.nn.functional as F

from ...training.losses import masked_reconstruction_loss
from .._handxray_gan import check_score, discriminator_score
from ..autoencoders.losses import reconstruction_anomaly

__all__ = [
    "DISCRIMINATOR_SCORES",
    "reconstruction_term",
    "fooling_term",
    "real_term",
    "fake_term",
    "alphagan_score",
]

DISCRIMINATOR_SCORES = ("paper", "discriminator", "code")


def reconstruction_term(x, x_rec, roi):
    """Mean absolute error over the ROI pixels of the batch (before ``lambda``)."""
    return masked_reconstruction_loss(x, x_rec, roi, kind="l1")


def fooling_term(logits):
    """``BCE(s, 1) - BCE(s, 0)`` for ``s = sigmoid(logits)``, batch mean: what E (on C)
    and G (on D) minimise."""
    ones, zeros = torch.ones_like(logits), torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, ones) - F.binary_cross_entropy_with_logits(logits, zeros)


def real_term(logits):
    """``BCE(s, 1)``: a discriminator's term for what it should call real."""
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))


def fake_term(logits):
    """``BCE(s, 0)``: a discriminator's term for what it should call fake."""
    return F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits))


def alphagan_score(score, x, x_rec, roi, image_logits, code_logits):
    """Per-pixel error ``(B, 1, H, W)`` and per-image score ``(B,)``.

    Parameters
    ----------
    score : "paper", "discriminator", "code", "mse", "l1" or ("topk", k[, "l1"])
    x, x_rec : torch.Tensor (B, 1, H, W)
        Images and ``G(mean(x))`` in the same units (the map is in those units).
    roi : torch.Tensor of bool (B, 1, H, W)
    image_logits, code_logits : torch.Tensor (B,) or None
        ``D(x)`` and ``C(mean(x))``; only those the score needs.
    """
    spec = check_score(score, DISCRIMINATOR_SCORES)
    if spec is not None:
        return reconstruction_anomaly(spec, x, x_rec, roi)
    pixel = (x - x_rec).square()
    if score == "discriminator":
        return pixel, discriminator_score(image_logits)
    if score == "code":
        return pixel, discriminator_score(code_logits)
    return pixel, 0.5 * (discriminator_score(image_logits) + discriminator_score(code_logits))
