"""Batch data augmentation: the hand X-ray paper's ("default" / "advanced") and f-AnoGAN's
horizontal flips ("hflip").

Runs on the training device on ``(B, 1, H, W)`` tensors with NaN outside the region
of interest; geometric transforms move the ROI with the image. Random numbers come
from an explicit ``torch.Generator`` (the net's), never from torch's global one, so
detectors trained in parallel threads do not disturb each other's draws.
"""

import math

import torch
from torch.nn import functional as F

from .random import rand

__all__ = ["augment_batch", "AUGMENTATIONS"]

AUGMENTATIONS = ("default", "advanced", "hflip", "hflip-affine")


def _flip(x, dim, generator):
    chosen = rand(x.shape[0], generator, device=x.device) < 0.5
    return torch.where(chosen[:, None, None, None], x.flip(dim), x)


def augment_batch(x, mode, generator):
    """Augment a batch as the paper does.

    ``"hflip"``: horizontal flips with probability 0.5 (f-AnoGAN's GAN training).
    ``"hflip-affine"``: horizontal flips, then "advanced"'s scaling and rotation, with
    neither vertical flips nor brightness (anatomically plausible films: another
    patient's size and pose).
    ``"default"``: horizontal and vertical flips, each with probability 0.5.
    ``"advanced"``: the flips, then, each with probability 0.5, brightness x U(0.8, 1.2),
    independent x/y scaling by U(0.8, 1.2) and rotation by U(-20, 20) degrees.
    Pixels that a transform brings in from outside the image are NaN (outside the ROI).
    ``generator`` is a CPU ``torch.Generator`` that every random draw comes from.
    """
    if mode is None:
        return x
    if mode == "hflip":
        return _flip(x, -1, generator)
    if mode == "hflip-affine":
        return _scale_and_rotate(_flip(x, -1, generator), generator)
    x = _flip(_flip(x, -1, generator), -2, generator)
    if mode == "default":
        return x
    brightness = 1 + _coin(x, generator) * (_uniform(x, 0.8, 1.2, generator) - 1)
    return _scale_and_rotate(x * brightness[:, None, None, None], generator)


def _coin(x, generator):
    return (rand(x.shape[0], generator, device=x.device) < 0.5).to(x.dtype)


def _uniform(x, low, high, generator):
    return low + (high - low) * rand(x.shape[0], generator, device=x.device, dtype=x.dtype)


def _scale_and_rotate(x, generator):
    """Each with probability 0.5: x/y scaling by U(0.8, 1.2), rotation by U(-20, 20) degrees."""
    scale_on = _coin(x, generator)
    scale_x = 1 + scale_on * (_uniform(x, 0.8, 1.2, generator) - 1)
    scale_y = 1 + scale_on * (_uniform(x, 0.8, 1.2, generator) - 1)
    angle = _coin(x, generator) * _uniform(x, -20, 20, generator) * math.pi / 180
    cos, sin = torch.cos(angle), torch.sin(angle)
    # affine_grid maps output to input coordinates, hence the inverse scale.
    theta = torch.stack(
        [
            torch.stack([cos / scale_x, -sin / scale_x, torch.zeros_like(cos)], 1),
            torch.stack([sin / scale_y, cos / scale_y, torch.zeros_like(cos)], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    roi = (~torch.isnan(x)).to(x.dtype)
    # Normalised interpolation: the image's ROI pixels and the ROI's coverage are
    # interpolated alike and divided, so that pixels near the ROI's rim are not
    # darkened by the zeros that stand in for NaN outside it.
    values = F.grid_sample(torch.nan_to_num(x), grid, align_corners=False)
    coverage = F.grid_sample(roi, grid, align_corners=False)
    image = values / coverage.clamp_min(1e-6)
    inside = F.grid_sample(roi, grid, mode="nearest", align_corners=False)
    return image.masked_fill((inside < 0.5) | (coverage <= 1e-6), float("nan"))
