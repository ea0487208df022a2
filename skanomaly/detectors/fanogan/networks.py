"""The residual WGAN-GP generator, critic and encoder of the f-AnoGAN code.

f-AnoGAN (Schlegl et al., 2019) trains the 64 x 64 residual WGAN-GP of Gulrajani et
al. and an encoder that mirrors its critic. With ``channels`` the width of each scale
from 4 x 4 up (the code's ``(8, 8, 4, 2, 1) x 64`` = ``(512, 512, 256, 128, 64)``):

* **Generator**: ``z`` (128, N(0, I)) -> Linear -> 4 x 4 x ``channels[0]``; one
  residual "up" block per further scale (BN, ReLU, nearest upsample + 3 x 3 conv, BN,
  ReLU, 3 x 3 conv; shortcut nearest upsample + 1 x 1 conv); BN, ReLU, 3 x 3 conv to
  one channel, tanh.
* **Critic**: 3 x 3 conv 1 -> ``channels[-1]``; one residual "down" block per scale
  (LayerNorm, ReLU, 3 x 3 conv, LayerNorm, ReLU, 3 x 3 conv + 2 x 2 mean pool;
  shortcut mean pool + 1 x 1 conv) down to 4 x 4 x ``channels[0]``; the flattened map
  (8192 values by default) is the feature vector ``f(x)`` of izif; Linear -> 1. The
  code's LayerNorm normalises each image over (C, H, W) with a per-channel scale and
  shift, which is ``GroupNorm(1, C)``: no statistic is shared between images, as the
  per-sample gradient penalty requires.
* **Encoder** (``CriticEncoder``): the critic's layout with BatchNorm in place of
  LayerNorm, then Linear -> ``latent_dim`` with a linear output, the code's default
  (``Z_REG_TYPE = None``): ``z`` is N(0, I), so a tanh would keep every latent below 1
  in magnitude, beyond which about a third of the prior lies. ``output="tanh"`` is the
  code's tanh option.
"""

import torch
from torch import nn
from torch.nn import functional as F

from ...utils.validation import check_widths

__all__ = ["ResidualGenerator", "ResidualCritic", "CriticEncoder", "residual_image_size", "upsample_nearest2x"]


def upsample_nearest2x(x):
    """Nearest-neighbour upsampling by 2 of ``(B, C, H, W)``, as ``F.interpolate``.

    One broadcast copy: torch's CPU ``upsample_nearest2d`` spent a quarter of the
    f-AnoGAN generator's and critic's scoring time in a memory copy (profiled at width
    16); this is the same result (a test checks it) at the cost of one write.
    """
    n, c, h, w = x.shape
    return x[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)


def residual_image_size(channels):
    """Side of the images a residual GAN with these per-scale widths works on."""
    return 4 * 2 ** (len(channels) - 1)


def _check_channels(channels):
    return check_widths(
        channels,
        "channels",
        min_len=2,
        high=None,
        hint=", one per scale from 4 x 4 up (two scales: 8 x 8 images)",
    )


class _UpBlock(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        up = upsample_nearest2x(x)
        h = upsample_nearest2x(F.relu(self.norm1(x)))
        h = self.conv2(F.relu(self.norm2(self.conv1(h))))
        return self.shortcut(up) + h


class _DownBlock(nn.Module):
    def __init__(self, c_in, c_out, norm):
        super().__init__()
        self.norm1 = norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_in, 3, padding=1, bias=False)
        self.norm2 = norm(c_in)
        self.conv2 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        h = self.conv1(F.relu(self.norm1(x)))
        h = F.avg_pool2d(self.conv2(F.relu(self.norm2(h))), 2)
        return self.shortcut(F.avg_pool2d(x, 2)) + h


def _layer_norm(channels):
    return nn.GroupNorm(1, channels)


class ResidualGenerator(nn.Module):
    """``z (B, latent_dim)`` -> images ``(B, 1, S, S)`` in [-1, 1].

    Parameters
    ----------
    latent_dim : int, default=128
    channels : tuple of int, default=(512, 512, 256, 128, 64)
        Width of each scale from 4 x 4 up; ``S = 4 * 2 ** (len(channels) - 1)``.
    """

    def __init__(self, latent_dim=128, channels=(512, 512, 256, 128, 64)):
        super().__init__()
        channels = _check_channels(channels)
        self.latent_dim = int(latent_dim)
        self.channels = channels
        self.input = nn.Linear(self.latent_dim, 16 * channels[0])
        self.blocks = nn.Sequential(*(_UpBlock(a, b) for a, b in zip(channels[:-1], channels[1:])))
        self.output_norm = nn.BatchNorm2d(channels[-1])
        self.output = nn.Conv2d(channels[-1], 1, 3, padding=1)

    def forward(self, z):
        x = self.input(z).reshape(len(z), self.channels[0], 4, 4)
        x = self.blocks(x)
        return torch.tanh(self.output(F.relu(self.output_norm(x))))


class _CriticBody(nn.Module):
    def __init__(self, channels, norm):
        super().__init__()
        channels = _check_channels(channels)
        self.channels = channels
        self.input = nn.Conv2d(1, channels[-1], 3, padding=1)
        widths = channels[::-1]
        self.blocks = nn.Sequential(*(_DownBlock(a, b, norm) for a, b in zip(widths[:-1], widths[1:])))

    def features(self, x):
        """The flattened 4 x 4 x ``channels[0]`` map before the final Linear."""
        return self.blocks(self.input(x)).flatten(1)


class ResidualCritic(_CriticBody):
    """Images ``(B, 1, S, S)`` -> one critic score per image ``(B,)``.

    Parameters
    ----------
    channels : tuple of int, default=(512, 512, 256, 128, 64)
        Widths per scale from 4 x 4 up, as the generator's.
    """

    def __init__(self, channels=(512, 512, 256, 128, 64)):
        super().__init__(channels, _layer_norm)
        self.output = nn.Linear(16 * self.channels[0], 1)

    def forward(self, x):
        return self.output(self.features(x)).reshape(len(x))


class CriticEncoder(_CriticBody):
    """f-AnoGAN's encoder: the critic's layout with BatchNorm, then Linear.

    Parameters
    ----------
    latent_dim : int, default=128
    channels : tuple of int, default=(512, 512, 256, 128, 64)
    output : {"linear", "tanh"}, default="linear"
        The output activation. ``"linear"`` is the f-AnoGAN code's default and fits
        its N(0, I) prior; ``"tanh"`` (one of the code's options) bounds ``z`` to
        (-1, 1), which suits a uniform prior only.
    """

    def __init__(self, latent_dim=128, channels=(512, 512, 256, 128, 64), output="linear"):
        if output not in ("linear", "tanh"):
            raise ValueError(f"output={output!r} is not supported: use 'linear' or 'tanh'.")
        super().__init__(channels, nn.BatchNorm2d)
        self.output_activation = output
        self.output = nn.Linear(16 * self.channels[0], int(latent_dim))

    def forward(self, x):
        z = self.output(self.features(x))
        return torch.tanh(z) if self.output_activation == "tanh" else z
