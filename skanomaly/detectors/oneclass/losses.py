"""Tang et al.'s four training losses (eqs. 1-5) and their anomaly score (eq. 6), as
pure functions on tensors in the networks' range ([-1, 1]).

* L_R = mean |x - x'| over the region of interest (the batch's ROI pixels pooled);
* L_A: the discriminator minimises BCE(D(x), 1) + BCE(D(x'), 0); the autoencoder
  minimises BCE(D(x'), 1) (the non-saturating form of eq. 2's min over U);
* L_E = MSE(U_E(x), E(x'));
* L_F = sum over the stride-2 levels l of MSE(F_l(U_E(x)), F_l(E(x')));
* total (eq. 5): ``20 L_R + 4 L_A + 8 L_E + L_F`` by default.

The score of an image (eq. 6) is ``20 mean|x - x'| + 4 (1 - D(x')) + 8 MSE(z, z')``
with ``D(x')`` the sigmoid of the logit and ``z' = E(x')``. The paper then min-max
scales the scores over the whole test set; that changes no ranking (no AUC), and a
threshold on scaled scores would depend on which other images were scored, so it is
not done. A component an ablation leaves out (no D, or no E) drops its term from
the loss and from the score.
"""

import torch
import torch.nn.functional as F

from ...training.losses import masked_mean, masked_reconstruction_loss

__all__ = [
    "COMPONENTS",
    "SCORES",
    "reconstruction_loss",
    "discriminator_terms",
    "adversarial_term",
    "encoding_loss",
    "feature_loss",
    "oneclass_score",
]

# The paper's ablations: the U-Net autoencoder alone, with the second encoder, with
# the discriminator, and the full model.
COMPONENTS = ("U", "U+E", "U+D", "U+D+E")
SCORES = ("paper", "reconstruction", "discriminator", "latent")


def reconstruction_loss(x, x_rec, roi):
    """L_R: mean absolute error over the ROI pixels of the batch."""
    return masked_reconstruction_loss(x, x_rec, roi, kind="l1")


def discriminator_terms(real_logits, fake_logits):
    """D's terms of L_A: ``{"d_real": BCE(D(x), 1), "d_fake": BCE(D(x'), 0)}``."""
    return {
        "d_real": F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits)),
        "d_fake": F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)),
    }


def adversarial_term(fake_logits):
    """U's term of L_A: BCE(D(x'), 1)."""
    return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))


def encoding_loss(z, z_prime):
    """L_E: MSE between U_E(x) and E(x')."""
    return F.mse_loss(z_prime, z)


def feature_loss(features, features_prime):
    """L_F: the sum over levels of the MSE between U_E's and E's feature maps."""
    return sum(F.mse_loss(b, a) for a, b in zip(features, features_prime, strict=True))


def oneclass_score(score, x, x_rec, roi, fake_logits, z, z_prime, weights):
    """Per-image anomaly score ``(B,)``.

    Parameters
    ----------
    score : str in :data:`SCORES`
        ``"paper"``: eq. 6 over the terms given (``fake_logits`` or ``z_prime`` None
        for an ablation without D or E); ``"reconstruction"``: ``mean|x - x'|``;
        ``"discriminator"``: ``1 - D(x')``; ``"latent"``: ``MSE(z, z')``.
    x, x_rec : torch.Tensor (B, 1, H, W)
        Input and reconstruction in the networks' range.
    roi : torch.Tensor of bool (B, 1, H, W)
    fake_logits : torch.Tensor (B,) or None
        ``D(x')``'s logits.
    z, z_prime : torch.Tensor (B, d); ``z_prime`` may be None
    weights : (float, float, float)
        lambda_1, lambda_2, lambda_3 (20, 4, 8 in the paper).
    """
    terms = {"reconstruction": masked_mean((x - x_rec).abs(), roi)}
    if fake_logits is not None:
        terms["discriminator"] = 1.0 - torch.sigmoid(fake_logits)
    if z_prime is not None:
        terms["latent"] = (z - z_prime).square().mean(dim=1)
    if score != "paper":
        return terms[score]
    total = weights[0] * terms["reconstruction"]
    if "discriminator" in terms:
        total = total + weights[1] * terms["discriminator"]
    if "latent" in terms:
        total = total + weights[2] * terms["latent"]
    return total
