"""Reductions, losses and per-image scores over the region of interest, shared by detectors.

Every function takes ``roi``, a boolean tensor of the image's shape that is False
outside the region of interest (NaN pixels of the input): those pixels count in no
loss and no score, as in the hand X-ray paper's masked reconstruction loss.
"""

import torch

__all__ = [
    "masked_mean",
    "masked_topk_mean",
    "masked_reconstruction_loss",
    "pixel_error",
    "MaskedReconstructionLoss",
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


class MaskedReconstructionLoss(torch.nn.Module):
    """Criterion module of :func:`masked_reconstruction_loss` (for skorch)."""

    def __init__(self, kind="mse"):
        super().__init__()
        self.kind = kind

    def forward(self, x_hat, x, roi):
        return masked_reconstruction_loss(x, x_hat, roi, self.kind)
