"""HealthyGAN's composition, losses and score (Rahman Siddiquee et al., 2022, eqs.
1-9, with the constants of the authors' code), as pure functions on tensors in the
networks' range ([-1, 1]).

The generator gives, for an image x, a healthy image G_int(x) and a mask m in [0, 1]:

* translation (eq. 1): ``x^ = m G_int(x) + (1 - m) x``: the mask says where the image
  had to change to look healthy;
* its complement (eq. 2, the reconstruction of an unlabelled image):
  ``x~ = m x + (1 - m) G_int(x)``: outside the mask, G_int must reproduce the image.

With B the known-healthy batch and A the unlabelled mixed batch:

* critic (eq. 3, WGAN-GP): ``mean D(x^_A) - mean D(x_B) + 10 GP(x_B, x^_A)``, the
  mean over the PatchGAN's patch scores;
* generator (eqs. 4-9): ``-mean D(x^_A) - mean D(x^_B)`` (adversarial)
  ``+ mean|x_B - G_int(x_B)|`` (identity, before the mask)
  ``+ mean|x_A - x~_A|`` (reconstruction)
  ``+ 0.1 x 0.5 [focus(m_A) + focus(m_B)]``;
* focus (eq. 7): ``focus(m) = (mean m)^2 + mean 1 / (|m - 0.5| + 0.01) - 1 / 0.51``,
  means over the batch's ROI pixels pooled (the authors' code pools the whole batch):
  the first part keeps masks small, the second pushes each value to 0 or 1; it is 0
  for an all-zero mask.

The score of an image is ``mean|x - x^|`` over its region of interest (in pixel
units: the authors' code halves the [-1, 1] difference likewise); ``"mask"`` scores
by the mask's mean instead. Outside the region of interest ``x^`` is ``x``, and no
term counts those pixels.
"""

import torch

from ...training.losses import masked_mean, masked_reconstruction_loss

__all__ = [
    "SCORES",
    "translate",
    "reconstruct",
    "focus_loss",
    "critic_terms",
    "generator_terms",
    "healthygan_score",
]

SCORES = ("paper", "mask")

#: eq. 7's constants in the authors' code: the 0 / 1 attraction's epsilon and centre.
_FOCUS_EPSILON = 0.01
_FOCUS_CENTRE = 0.5


def translate(x, healthy, mask, roi):
    """Eq. 1: ``m G_int(x) + (1 - m) x`` inside ``roi``, ``x`` outside."""
    return torch.where(roi, mask * healthy + (1.0 - mask) * x, x)


def reconstruct(x, healthy, mask, roi):
    """Eq. 2: ``m x + (1 - m) G_int(x)`` inside ``roi``, ``x`` outside."""
    return torch.where(roi, mask * x + (1.0 - mask) * healthy, x)


def _pooled_mean(values, roi):
    roi = roi.to(values.dtype)
    return (values * roi).sum() / roi.sum().clamp_min(1.0)


def focus_loss(mask, roi, size_weight=1.0, binary_weight=1.0):
    """Eq. 7 over the batch's ROI pixels: ``size_weight (mean m)^2 + binary_weight
    (mean 1 / (|m - 0.5| + 0.01) - 1 / 0.51)``; 0 for a mask of zeros."""
    size = _pooled_mean(mask, roi).square()
    attraction = _pooled_mean(1.0 / ((mask - _FOCUS_CENTRE).abs() + _FOCUS_EPSILON), roi)
    binary = attraction - 1.0 / (_FOCUS_CENTRE + _FOCUS_EPSILON)
    return size_weight * size + binary_weight * binary


def critic_terms(real_scores, fake_scores):
    """The critic's Wasserstein terms: ``{"critic_real": -mean D(x_B),
    "critic_fake": mean D(x^_A)}`` (``fake_scores`` None: the first only)."""
    terms = {"critic_real": -real_scores.mean()}
    if fake_scores is not None:
        terms["critic_fake"] = fake_scores.mean()
    return terms


def generator_terms(normal, unlabelled, focus_weights=(1.0, 1.0)):
    """The generator's named terms (eqs. 4-7) from the two streams' forward passes.

    Parameters
    ----------
    normal : dict
        The known-healthy batch: ``x``, ``roi``, ``healthy`` (G_int(x)), ``mask``
        and ``critic`` (D's scores of the translation).
    unlabelled : dict or None
        The same for the unlabelled batch (None in validation, which has none).
    focus_weights : (float, float)
        The size and 0 / 1 weights of eq. 7 (1 and 1 in the paper).

    Returns
    -------
    terms : dict of str to scalar tensor
        ``adversarial_normal``, ``identity``, ``focus_normal`` and, with an
        unlabelled batch, ``adversarial_unlabelled``, ``reconstruction``,
        ``focus_unlabelled``.
    """
    terms = {
        "adversarial_normal": -normal["critic"].mean(),
        "identity": masked_reconstruction_loss(normal["x"], normal["healthy"], normal["roi"], kind="l1"),
        "focus_normal": focus_loss(normal["mask"], normal["roi"], *focus_weights),
    }
    if unlabelled is not None:
        x, roi = unlabelled["x"], unlabelled["roi"]
        terms["adversarial_unlabelled"] = -unlabelled["critic"].mean()
        terms["reconstruction"] = masked_reconstruction_loss(
            x, reconstruct(x, unlabelled["healthy"], unlabelled["mask"], roi), roi, kind="l1"
        )
        terms["focus_unlabelled"] = focus_loss(unlabelled["mask"], roi, *focus_weights)
    return terms


def healthygan_score(score, x, x_hat, mask, roi):
    """Per-image anomaly ``(B,)``: ``"paper"``, ``mean|x - x^|`` over the ROI in pixel
    units (half the [-1, 1] difference); ``"mask"``, the mask's mean over the ROI."""
    if score == "mask":
        return masked_mean(mask, roi)
    return masked_mean((x - x_hat).abs(), roi) / 2.0
