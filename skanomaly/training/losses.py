"""Loss functions and per-image anomaly scores that respect the region of interest.

Every function takes ``roi``, a boolean tensor of the image's shape that is False
outside the region of interest (NaN pixels of the input): those pixels count in no
loss and no score, as in the hand X-ray paper's masked reconstruction loss.
"""

import torch

__all__ = [
    "masked_mean",
    "masked_topk_mean",
    "masked_reconstruction_loss",
    "kl_divergence",
    "vae_loss",
    "pixel_error",
]


def _per_image(t):
    return t.flatten(1)


def masked_mean(values, roi):
    """Mean of ``values`` over the ROI pixels of each image: shape ``(B,)``."""
    roi = _per_image(roi).to(values.dtype)
    return (_per_image(values) * roi).sum(1) / roi.sum(1).clamp_min(1.0)


def masked_topk_mean(values, roi, k):
    """Mean of the ``k`` largest ROI values of each image (all of them if fewer)."""
    flat = _per_image(values).masked_fill(~_per_image(roi), float("-inf"))
    k = min(int(k), flat.shape[1])
    top = torch.topk(flat, k, dim=1).values
    finite = torch.isfinite(top)
    return torch.where(finite, top, 0.0).sum(1) / finite.sum(1).clamp_min(1)


def pixel_error(x, x_hat, kind="mse"):
    """Per-pixel reconstruction error: squared (``"mse"``) or absolute (``"l1"``)."""
    diff = x - x_hat
    return diff.square() if kind == "mse" else diff.abs()


def masked_reconstruction_loss(x, x_hat, roi, kind="mse"):
    """Masked reconstruction loss over a batch: ``sum(m * err) / sum(m)``.

    This is the hand X-ray paper's reference implementation (pixels of every image in
    the batch pooled), so images with a larger ROI weigh more, as there.
    """
    roi = roi.to(x.dtype)
    return (pixel_error(x, x_hat, kind) * roi).sum() / roi.sum().clamp_min(1.0)


def kl_divergence(mu, log_var):
    """KL divergence of ``N(mu, exp(log_var))`` from ``N(0, I)``, per image: ``(B,)``."""
    return 0.5 * (mu.square() + log_var.exp() - 1.0 - log_var).sum(1)


def vae_loss(x, x_hat, mu, log_var, roi, kld_weight=1.0):
    """Per-image negative ELBO divided by the number of ROI pixels, shape ``(B,)``.

    ``masked mean squared error + kld_weight * KL / n_roi_pixels``: the sum-form ELBO
    (squared error summed over pixels plus KL) scaled by ``1 / n_pixels`` so that the
    learning rate does not depend on the image size.
    """
    n_roi = _per_image(roi).sum(1).clamp_min(1).to(x.dtype)
    return masked_mean(pixel_error(x, x_hat), roi) + kld_weight * kl_divergence(mu, log_var) / n_roi


class MaskedReconstructionLoss(torch.nn.Module):
    """Criterion module of :func:`masked_reconstruction_loss` (for skorch)."""

    def __init__(self, kind="mse"):
        super().__init__()
        self.kind = kind

    def forward(self, x_hat, x, roi):
        return masked_reconstruction_loss(x, x_hat, roi, self.kind)


class VAELoss(torch.nn.Module):
    """Criterion module of :func:`vae_loss`, averaged over the batch (for skorch)."""

    def __init__(self, kld_weight=1.0):
        super().__init__()
        self.kld_weight = kld_weight

    def forward(self, output, x, roi):
        x_hat, mu, log_var = output
        return vae_loss(x, x_hat, mu, log_var, roi, self.kld_weight).mean()
