"""The segmentation network of :class:`~skanomaly.detectors.SyntheticAnomalyDetector`.

A U-Net (:class:`skanomaly.nn.unet.UNet`) behind an intensity normalisation that
removes exposure and contrast before the network sees a film. Detectors trained on
raw pixels learn the exposure of their training machine: their scores track mean
intensity and contrast, and fail on films from another acquisition (the pediatric
shift protocol, ``benchmarks/bench_shift.py``). Histogram equalisation inside the
region of interest maps every monotone change of the grey scale (exposure, gamma,
window, detector gain) to the same input, so only the spatial arrangement of grey
levels, the anatomy, is left to learn from.
"""

import copy

import torch
from torch import nn
from torch.nn import functional as F

from ...nn.unet import UNet

__all__ = ["NORMALIZATIONS", "normalize_intensity", "SegmentationNetwork"]

NORMALIZATIONS = ("equalize", "standardize", None)

# Uniform ranks on [0, 1] have standard deviation 1 / sqrt(12): scaled by sqrt(12) they
# enter the network with unit variance, as standardised films do.
_RANK_SCALE = 12.0**0.5


def normalize_intensity(x, roi, mode="equalize"):
    """Per-image intensity normalisation over the region of interest.

    Parameters
    ----------
    x : torch.Tensor of shape (B, 1, H, W)
        Filled images (any value outside the ROI).
    roi : torch.Tensor of bool, same shape
    mode : {"equalize", "standardize"} or None
        ``"equalize"``: each ROI pixel becomes its mid-rank among the image's ROI
        pixels, scaled to zero mean and unit variance (histogram equalisation; tied
        grey levels share their mean rank, so a flat region stays flat).
        ``"standardize"``: zero mean, unit standard deviation over the ROI.
        ``None``: unchanged.

    Returns
    -------
    torch.Tensor of shape (B, 1, H, W)
        0 outside the ROI (the mean of the normalised ROI pixels).
    """
    if mode is None:
        return torch.where(roi, x, torch.zeros_like(x))
    flat = x.flatten(1)
    inside = roi.flatten(1)
    count = inside.sum(1, keepdim=True).to(x.dtype).clamp_min(1)
    if mode == "standardize":
        weights = inside.to(x.dtype)
        mean = (flat * weights).sum(1, keepdim=True) / count
        var = ((flat - mean).square() * weights).sum(1, keepdim=True) / count
        out = (flat - mean) / var.sqrt().clamp_min(1e-3)
    else:
        mid_rank = _twice_mid_ranks(flat, inside).to(x.dtype) / 2
        out = (mid_rank / (count - 1).clamp_min(1) - 0.5) * _RANK_SCALE
    out = torch.where(inside, out, torch.zeros_like(out))
    return out.view_as(x)


def _twice_mid_ranks(flat, inside):
    """Twice the rank of each ROI value among its row's ROI values (0-based), ties
    sharing their mean rank; integers, so exact at any image size; arbitrary outside
    the ROI.

    One sort per row and linear passes over it: each run of equal sorted values gets
    the sum of its first and last position (about twice as fast on a CPU as locating
    every pixel in the sorted row with two binary searches)."""
    # Pixels outside the ROI sort after every ROI pixel and count in no rank.
    keys = torch.where(inside, flat, torch.full_like(flat, float("inf")))
    ordered, order = keys.sort(1)
    length = ordered.shape[1]
    positions = torch.arange(length, device=flat.device).expand_as(order)
    starts = torch.ones_like(inside)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = torch.ones_like(inside)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, positions, torch.zeros_like(positions)).cummax(1).values
    last = torch.where(ends, positions, torch.full_like(positions, length))
    last = last.flip(1).cummin(1).values.flip(1)
    return torch.empty_like(first).scatter_(1, order, first + last)


class SegmentationNetwork(nn.Module):
    """Intensity normalisation, then a U-Net giving per-pixel anomaly logits.

    Parameters
    ----------
    base_channels, depth, max_channels : int
        The U-Net's widths and number of 2x downsamplings
        (:class:`skanomaly.nn.unet.UNet`).
    normalization : {"equalize", "standardize"} or None
        See :func:`normalize_intensity`.

    Inputs of any size are padded (with the normalised background, 0) at the bottom and
    right to a multiple of ``2 ** depth``, and the logits cropped back.
    """

    def __init__(self, base_channels=16, depth=4, max_channels=128, normalization="equalize"):
        super().__init__()
        self.depth = int(depth)
        self.normalization = normalization
        self.unet = UNet(1, 1, base_channels=int(base_channels), depth=self.depth, max_channels=int(max_channels))

    def inference_copy(self):
        """A frozen copy for scoring: the U-Net's BatchNorm folded into its
        convolutions, weights channels-last (:meth:`skanomaly.nn.unet.UNet.inference_copy`).

        This network is left as it is (it can still be trained and saved). The copy
        computes the same eval-mode function up to float32 rounding, with fewer
        operations (``benchmarks/README.md``, "Scoring speed")."""
        net = copy.deepcopy(self).eval().requires_grad_(False)
        net.unet = net.unet.fuse_batchnorm().to(memory_format=torch.channels_last)
        return net

    def forward(self, x, roi):
        height, width = x.shape[-2:]
        multiple = 2**self.depth
        z = normalize_intensity(x, roi, self.normalization)
        z = F.pad(z, (0, -width % multiple, 0, -height % multiple))
        return self.unet(z)[..., :height, :width]
