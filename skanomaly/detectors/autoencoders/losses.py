"""The losses and scores of the hand X-ray paper's autoencoders, as pure functions.

Training (the criteria) and scoring (:func:`reconstruction_anomaly`) share them; the
ROI reductions they build on are :mod:`skanomaly.training.losses`.
"""

import warnings
from collections import namedtuple
from numbers import Integral

import torch

from ...training.losses import masked_mean, masked_topk_mean, pixel_error

__all__ = ["kl_divergence", "vae_loss", "VAELoss", "parse_score", "reconstruction_anomaly"]


def kl_divergence(mu, log_var):
    """KL divergence of ``N(mu, exp(log_var))`` from ``N(0, I)``, per image: ``(B,)``."""
    return 0.5 * (mu.square() + log_var.exp() - 1.0 - log_var).sum(1)


def vae_loss(x, x_hat, mu, log_var, roi, kld_weight=1.0):
    """Per-image negative ELBO divided by the number of ROI pixels, shape ``(B,)``.

    ``masked mean squared error + kld_weight * KL / n_roi_pixels``: the sum-form ELBO
    (squared error summed over pixels plus KL) scaled by ``1 / n_pixels`` so that the
    learning rate does not depend on the image size.
    """
    n_roi = roi.flatten(1).sum(1).clamp_min(1).to(x.dtype)
    return masked_mean(pixel_error(x, x_hat), roi) + kld_weight * kl_divergence(mu, log_var) / n_roi


class VAELoss(torch.nn.Module):
    """Criterion module of :func:`vae_loss`, averaged over the batch (for skorch)."""

    def __init__(self, kld_weight=1.0):
        super().__init__()
        self.kld_weight = kld_weight

    def forward(self, output, x, roi):
        x_hat, mu, log_var = output
        return vae_loss(x, x_hat, mu, log_var, roi, self.kld_weight).mean()


_ScoreSpec = namedtuple("_ScoreSpec", "error reduction k kld")

def parse_score(score, *, allow_kld):
    """Turn the ``anomaly_score`` parameter into a ``_ScoreSpec``, or raise a clear error.

    Strings: ``"mse"``, ``"l1"`` (and with ``allow_kld``: ``"kld"``, ``"mse+kld"``,
    ``"l1+kld"``). Tuples: ``("topk", k)`` (squared error) or ``("topk", k, "l1")``.
    """
    names = ["mse", "l1"] + (["kld", "mse+kld", "l1+kld"] if allow_kld else [])
    if isinstance(score, str) and score in names:
        error, _, kld = score.partition("+")
        if error == "kld":
            return _ScoreSpec("mse", "none", None, True)
        return _ScoreSpec(error, "mean", None, bool(kld))
    if (
        isinstance(score, tuple)
        and len(score) in (2, 3)
        and score[0] == "topk"
        and isinstance(score[1], Integral)
        and score[1] >= 1
        and (len(score) == 2 or score[2] in ("mse", "l1"))
    ):
        return _ScoreSpec(score[2] if len(score) == 3 else "mse", "topk", int(score[1]), False)
    options = ", ".join(repr(n) for n in names)
    raise ValueError(
        f"anomaly_score={score!r} is not valid: use one of {options}, ('topk', k) or "
        "('topk', k, 'l1') with an integer k >= 1."
    )


def reconstruction_anomaly(spec, x, x_hat, roi, kld_term=None):
    """Per-pixel and per-image anomaly of a reconstruction, as ``spec`` says."""
    pixel = pixel_error(x, x_hat, spec.error)
    if spec.reduction == "topk":
        if bool((roi.flatten(1).sum(1) < spec.k).any()):
            # One fixed message: Python shows it once per session, not once per batch.
            warnings.warn(
                f"anomaly_score=('topk', {spec.k}): some images or patches have fewer than "
                f"{spec.k} pixels in the region of interest; each is scored by the mean "
                "error over all of its pixels. Lower k to compare like with like.",
                UserWarning,
                stacklevel=2,
            )
        image = masked_topk_mean(pixel, roi, spec.k)
    elif spec.reduction == "mean":
        image = masked_mean(pixel, roi)
    else:
        image = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
    if spec.kld:
        image = image + kld_term
    return pixel, image
