"""The three networks of Tang et al. (ISBI 2019): a U-Net autoencoder U = (U_E, U_D), a
second encoder E and a discriminator D.

For 64 x 64 images with the default ``channels=(64, 128, 256, 512)``:

* **U_E** (and **E**, the same layout with its own weights): 4 x 4 convolutions of
  stride 2 through 32 x 32 x 64 (LReLU 0.2, no BN after the first), 16 x 16 x 128,
  8 x 8 x 256 and 4 x 4 x 512 (BN, LReLU 0.2), then a 4 x 4 valid convolution to the
  latent ``z`` (100). The outputs of the stride-2 levels are the feature maps of the
  feature-consistency loss L_F.
* **U_D**: five transposed convolutions, ``z`` -> 4 x 4 x 512 (4 x 4 valid), then
  stride 2 through 8 x 8 x 256, 16 x 16 x 128, 32 x 32 x 64 to 64 x 64 x 1 with tanh;
  before each stride-2 one, U_E's feature map of that size is concatenated (the U-Net
  skips). BN + ReLU after each but the last: the paper says "U-Net like" and no more;
  these are pix2pix's U-Net conventions, which its conditional GAN follows.
* **D**: U_E's trunk ending in a 4 x 4 valid convolution to one logit ("real" when
  positive; the paper's sigmoid is applied in the loss and the score).

Weights start from N(0, 0.02) (BN scales from N(1, 0.02)). Each entry of
``channels`` is one stride-2 level, so the networks take squares of side
``4 * 2 ** len(channels)`` (64 px with four levels, 128 px with five).
"""

import torch
from torch import nn

from ...nn.init import dcgan_init

__all__ = ["OneClassEncoder", "UNetAutoencoder", "OneClassDiscriminator", "oneclass_side"]


def oneclass_side(channels):
    """The square side the networks take: four pixels after ``len(channels)`` halvings."""
    return 4 * 2 ** len(channels)


class _Trunk(nn.Module):
    """Stride-2 4 x 4 convolutions, LReLU 0.2, BN after all but the first; the last
    level's 4 x 4 map goes through a 4 x 4 valid convolution to ``out_channels``."""

    def __init__(self, channels, out_channels):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        self.levels = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(zip((1,) + channels[:-1], channels)):
            layers = [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=i == 0)]
            if i > 0:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            self.levels.append(nn.Sequential(*layers))
        self.head = nn.Conv2d(channels[-1], out_channels, 4, stride=1, padding=0)

    def forward(self, x):
        """``(head output (B, out_channels), [feature map of each level])``."""
        features = []
        for level in self.levels:
            x = level(x)
            features.append(x)
        return self.head(x).flatten(1), features


class OneClassEncoder(_Trunk):
    """U_E, or the second encoder E: images ``(B, 1, S, S)`` -> ``(z (B, latent_dim),
    [feature maps of the stride-2 levels])``.

    Parameters
    ----------
    latent_dim : int, default=100
    channels : tuple of int, default=(64, 128, 256, 512)
    """

    def __init__(self, latent_dim=100, channels=(64, 128, 256, 512)):
        super().__init__(channels, latent_dim)
        self.apply(dcgan_init)


class OneClassDiscriminator(nn.Module):
    """D: images ``(B, 1, S, S)`` -> one logit per image ``(B,)``.

    Parameters
    ----------
    channels : tuple of int, default=(64, 128, 256, 512)
    """

    def __init__(self, channels=(64, 128, 256, 512)):
        super().__init__()
        self.trunk = _Trunk(channels, 1)
        self.apply(dcgan_init)

    def forward(self, x):
        return self.trunk(x)[0][:, 0]


class UNetAutoencoder(nn.Module):
    """U = U_D(U_E(x)) with U-Net skips: images ``(B, 1, S, S)`` -> ``(x' in [-1, 1],
    z, [U_E's feature maps])``.

    Parameters
    ----------
    latent_dim : int, default=100
    channels : tuple of int, default=(64, 128, 256, 512)
    """

    def __init__(self, latent_dim=100, channels=(64, 128, 256, 512)):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        self.encoder = OneClassEncoder(latent_dim, channels)
        self.start = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, channels[-1], 4, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(channels[-1]),
            nn.ReLU(inplace=True),
        )
        self.up = nn.ModuleList()
        widths = list(reversed(channels))  # 512, 256, 128, 64
        for i, width in enumerate(widths):
            last = i == len(widths) - 1
            out = 1 if last else widths[i + 1]
            # Input: the decoder's map and U_E's map of the same size, concatenated.
            layers = [nn.ConvTranspose2d(2 * width, out, 4, stride=2, padding=1, bias=last)]
            layers += [nn.Tanh()] if last else [nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            self.up.append(nn.Sequential(*layers))
        self.apply(dcgan_init)

    def decode(self, z, features):
        h = self.start(z[:, :, None, None])
        for layer, skip in zip(self.up, reversed(features)):
            h = layer(torch.cat([h, skip], dim=1))
        return h

    def forward(self, x):
        z, features = self.encoder(x)
        return self.decode(z, features), z, features
