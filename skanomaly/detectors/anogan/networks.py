"""DCGAN generator and discriminator for square single-channel images (AnoGAN).

The architecture of the DCGAN code that AnoGAN adapted, for 64 x 64 images with the
default ``channels=(64, 128, 256, 512)``: ``z`` (100) -> Linear -> 4 x 4 x 512, BN,
ReLU -> 5 x 5 transposed convolutions of stride 2 through 8 x 8 x 256, 16 x 16 x 128
and 32 x 32 x 64 (BN, ReLU) to 64 x 64 x 1 with tanh. The discriminator mirrors it:
5 x 5 convolutions of stride 2, 1 -> 64 (LReLU 0.2, no BN) -> 128 -> 256 -> 512 (BN,
LReLU 0.2), whose 4 x 4 x 512 output is the feature map ``f(x)`` of AnoGAN's
discrimination loss, then Linear -> one logit. Weights start from N(0, 0.02) (BN
scales from N(1, 0.02)), as in DCGAN.

Each entry of ``channels`` is one stride-2 level, so the image side must be a multiple
of ``2 ** len(channels)``; larger images (128 px) take one more level per doubling, or
start from a larger map (``image_size / 2 ** len(channels)`` pixels a side).
"""

import torch
from torch import nn

from ...nn.init import dcgan_init

__all__ = ["DCGANGenerator", "DCGANDiscriminator", "check_dcgan_size"]


def check_dcgan_size(image_size, channels):
    """The side of the smallest feature map; raise if ``image_size`` does not fit."""
    levels = 2 ** len(channels)
    if image_size % levels or image_size < levels:
        raise ValueError(
            f"DCGAN with {len(channels)} stride-2 levels (channels={tuple(channels)}) needs "
            f"square images whose side is a multiple of {levels}; got {image_size}. Resize "
            "the images or patches (skanomaly.preprocessing.Resize / PatchExtractor) or "
            "change the number of channels entries."
        )
    return image_size // levels


class DCGANGenerator(nn.Module):
    """``z (B, latent_dim)`` -> images ``(B, 1, image_size, image_size)`` in [-1, 1].

    Parameters
    ----------
    latent_dim : int, default=100
    image_size : int, default=64
    channels : tuple of int, default=(64, 128, 256, 512)
        Widths from the output side to the latent side (the generator starts at
        ``channels[-1]``).
    """

    def __init__(self, latent_dim=100, image_size=64, channels=(64, 128, 256, 512)):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        self.start = check_dcgan_size(image_size, channels)
        self.width = channels[-1]
        self.project = nn.Linear(latent_dim, self.width * self.start * self.start)
        self.project_norm = nn.Sequential(nn.BatchNorm2d(self.width), nn.ReLU(inplace=True))
        layers = []
        widths = list(reversed(channels)) + [1]
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.ConvTranspose2d(c_in, c_out, 5, stride=2, padding=2, output_padding=1))
            last = i == len(widths) - 2
            layers += [nn.Tanh()] if last else [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.deconv = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z):
        h = self.project(z).view(-1, self.width, self.start, self.start)
        return self.deconv(self.project_norm(h))


class DCGANDiscriminator(nn.Module):
    """Images ``(B, 1, S, S)`` -> one logit per image ``(B,)`` ("real" when positive).

    :meth:`features` returns the last convolutional feature map, AnoGAN's ``f(x)``.
    """

    def __init__(self, image_size=64, channels=(64, 128, 256, 512)):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        end = check_dcgan_size(image_size, channels)
        layers = []
        for i, (c_in, c_out) in enumerate(zip((1,) + channels[:-1], channels)):
            layers.append(nn.Conv2d(c_in, c_out, 5, stride=2, padding=2))
            if i > 0:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        self.conv = nn.Sequential(*layers)
        self.classify = nn.Linear(channels[-1] * end * end, 1)
        self.apply(dcgan_init)

    def features(self, x):
        """``f(x)``: the last convolutional feature map ``(B, C, s, s)``."""
        return self.conv(x)

    def forward(self, x):
        return self.classify(torch.flatten(self.features(x), 1))[:, 0]
