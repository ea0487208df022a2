"""Convolutional autoencoders of the hand X-ray paper (Davletshina et al., 2020).

Pure torch modules. Both networks take ``(B, 1, H, W)`` images in [0, 1] with any
``H, W`` at least ``2 ** depth``: the input is padded (edge replicate) up to a multiple
of ``2 ** depth`` so every stride-2 level halves exactly, and the output is cropped back.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ConvAutoencoder", "ConvVAE", "padded_size"]


def padded_size(size, depth):
    """Smallest multiple of ``2 ** depth`` that is at least ``size``."""
    step = 2**depth
    return int(math.ceil(size / step) * step)


def _conv_block(in_channels, out_channels, kernel_size, stride, padding):
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def _up_block(in_channels, out_channels):
    return [
        nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class _PadCrop(nn.Module):
    """Pads inputs to a multiple of ``2 ** depth`` and crops outputs back."""

    depth = 0

    def _pad(self, x):
        height, width = x.shape[-2:]
        pad_h = padded_size(height, self.depth) - height
        pad_w = padded_size(width, self.depth) - width
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        return x, (height, width)


class ConvAutoencoder(_PadCrop):
    """Convolutional autoencoder (CAE) of the hand X-ray paper's appendix.

    ``channels[0]`` is the width of a 3x3 stem convolution; each later entry adds a
    level: a 4x4 stride-2 convolution to that width, followed (except at the
    bottleneck) by a 3x3 convolution. The decoder mirrors the levels with 4x4 stride-2
    transposed convolutions and ends in a 3x3 convolution and a sigmoid. Batch norm and
    ReLU follow every convolution. The default reproduces the paper: 512x512 input,
    16x16x512 bottleneck.

    Parameters
    ----------
    channels : sequence of int, default=(16, 32, 64, 128, 256, 512)
    in_channels : int, default=1
    """

    def __init__(self, channels=(16, 32, 64, 128, 256, 512), in_channels=1):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        self.depth = len(channels) - 1
        layers = _conv_block(in_channels, channels[0], 3, 1, 1)
        for level, width in enumerate(channels[1:], start=1):
            layers += _conv_block(channels[level - 1], width, 4, 2, 1)
            if level < self.depth:
                layers += _conv_block(width, width, 3, 1, 1)
        self.encoder = nn.Sequential(*layers)
        layers = []
        for level in range(self.depth, 0, -1):
            layers += _up_block(channels[level], channels[level - 1])
        layers.append(nn.Conv2d(channels[0], in_channels, 3, 1, 1))
        self.decoder = nn.Sequential(*layers)

    def forward(self, x):
        x, (height, width) = self._pad(x)
        out = torch.sigmoid(self.decoder(self.encoder(x)))
        return out[..., :height, :width]


class ConvVAE(_PadCrop):
    """Convolutional variational autoencoder of the hand X-ray paper's appendix.

    Each entry of ``channels`` is a 4x4 stride-2 convolution (batch norm, ReLU); the
    bottleneck is flattened into fully connected ``mu`` and ``log_var`` heads of size
    ``latent_dim``; the decoder maps ``z`` back with a fully connected layer and
    mirrors the encoder with 4x4 stride-2 transposed convolutions, ending in a 3x3
    convolution and a sigmoid. With ``channels=()`` it is a fully connected VAE.

    The paper's table uses unpadded convolutions (512 -> 255 -> ... -> 2); padded ones
    halve exactly, so any input size works and 512x512 gives a 4x4x512 bottleneck.

    Parameters
    ----------
    image_shape : tuple of int
        ``(H, W)`` of the training images (the fully connected layers depend on it).
    channels : sequence of int, default=(8, 16, 32, 64, 128, 256, 512)
    latent_dim : int, default=1024
    in_channels : int, default=1

    Notes
    -----
    ``forward`` returns ``(reconstruction, mu, log_var)``. In training mode ``z`` is
    sampled with the reparameterisation trick, from ``noise_generator`` when it is set
    (a CPU ``torch.Generator``; the training net sets its own) and from torch's global
    generator otherwise; in eval mode ``z = mu``, which makes scores deterministic.
    """

    def __init__(
        self, image_shape, channels=(8, 16, 32, 64, 128, 256, 512), latent_dim=1024, in_channels=1
    ):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        self.depth = len(channels)
        self.in_channels = in_channels
        height, width = (padded_size(s, self.depth) for s in image_shape)
        self.bottleneck_shape = (
            channels[-1] if channels else in_channels,
            height // 2**self.depth,
            width // 2**self.depth,
        )
        flat = math.prod(self.bottleneck_shape)
        layers, previous = [], in_channels
        for width_out in channels:
            layers += _conv_block(previous, width_out, 4, 2, 1)
            previous = width_out
        self.encoder = nn.Sequential(*layers)
        self.fc_mu = nn.Linear(flat, latent_dim)
        self.fc_log_var = nn.Linear(flat, latent_dim)
        self.fc_decode = nn.Linear(latent_dim, flat)
        layers = []
        for level in range(self.depth - 1, 0, -1):
            layers += _up_block(channels[level], channels[level - 1])
        if channels:
            layers += _up_block(channels[0], channels[0])
            layers.append(nn.Conv2d(channels[0], in_channels, 3, 1, 1))
        self.decoder = nn.Sequential(*layers)
        self.noise_generator = None

    def encode(self, x):
        h = self.encoder(x).flatten(1)
        return self.fc_mu(h), self.fc_log_var(h)

    def decode(self, z):
        h = self.fc_decode(z).view(-1, *self.bottleneck_shape)
        return torch.sigmoid(self.decoder(h))

    def forward(self, x):
        x, (height, width) = self._pad(x)
        mu, log_var = self.encode(x)
        if self.training:
            if self.noise_generator is None:
                noise = torch.randn_like(mu)
            else:
                noise = torch.randn(mu.shape, generator=self.noise_generator, dtype=mu.dtype)
                noise = noise.to(mu.device)
            z = mu + noise * torch.exp(0.5 * log_var)
        else:
            z = mu
        return self.decode(z)[..., :height, :width], mu, log_var
