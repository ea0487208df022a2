"""HealthyGAN's two networks (Rahman Siddiquee et al., 2022), laid out as the authors'
StarGAN-derived code: a translator that outputs an image and an attention mask, and a
PatchGAN critic.

For 256 x 256 images with the defaults (``width=64``, six residual blocks, six critic
layers):

* **Generator**: 7 x 7 convolution to 64 channels, then two 4 x 4 stride-2
  convolutions to 128 and 256 (each InstanceNorm + ReLU); six residual blocks of two
  3 x 3 convolutions at 256 (InstanceNorm, ReLU between them, the input added back);
  two 4 x 4 stride-2 transposed convolutions back to 128 and 64 (InstanceNorm + ReLU);
  a 7 x 7 convolution to ``channels + 1`` maps. The first ``channels`` maps through
  tanh are the healthy image G_int(x); the last through ``(tanh + 1) / 2`` is the mask
  m in [0, 1]. Convolutions have no bias (InstanceNorm follows them), as there.
* **Critic** (PatchGAN): 4 x 4 stride-2 convolutions (with bias) doubling from 64
  channels, LReLU 0.01, no normalisation (a WGAN-GP critic must not couple samples),
  then a 3 x 3 convolution without bias to one score per patch. The paper uses six
  layers at 256 and at 128 px (the authors' code's default); ``critic_layers="auto"``
  keeps six and removes one per halving below 128 px, so the output stays at least
  2 x 2.

InstanceNorm has learnt scale and shift (``affine=True``) and always normalises with
the statistics of the image itself. The authors' layers track running statistics but
their generator is never put in eval mode, so it too always used each image's own;
here that holds in scoring as well, so a score does not depend on the other images
of its batch. Weights keep PyTorch's default initialisation, as the authors' code.
"""

import math

from torch import nn

__all__ = ["HealthyGenerator", "PatchCritic", "auto_critic_layers"]

#: The paper's critic depth (six stride-2 layers at 256 and 128 px).
PAPER_CRITIC_LAYERS = 6


def auto_critic_layers(side):
    """Critic depth for ``side`` px: six, one less per halving below 128 px (at
    least one layer), so the patch map is at least 2 x 2."""
    return max(1, min(PAPER_CRITIC_LAYERS, int(math.log2(max(side, 2))) - 1))


def _norm(channels):
    return nn.InstanceNorm2d(channels, affine=True)


class _ResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False),
            _norm(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False),
            _norm(channels),
        )

    def forward(self, x):
        return x + self.body(x)


class HealthyGenerator(nn.Module):
    """Images ``(B, C, S, S)`` (S a multiple of 4) -> ``(G_int(x) in [-1, 1], m in [0, 1])``,
    shapes ``(B, C, S, S)`` and ``(B, 1, S, S)``.

    Parameters
    ----------
    channels : int, default=1
        Image channels (1 for radiographs; the paper's code took RGB).
    width : int, default=64
        Channels after the stem; the bottleneck has ``4 * width``.
    n_residual_blocks : int, default=6
    """

    def __init__(self, channels=1, width=64, n_residual_blocks=6):
        super().__init__()
        self.channels = int(channels)
        w = int(width)
        layers = [nn.Conv2d(self.channels, w, 7, stride=1, padding=3, bias=False), _norm(w), nn.ReLU(inplace=True)]
        for c_in in (w, 2 * w):
            layers += [nn.Conv2d(c_in, 2 * c_in, 4, stride=2, padding=1, bias=False), _norm(2 * c_in), nn.ReLU(inplace=True)]
        layers += [_ResidualBlock(4 * w) for _ in range(int(n_residual_blocks))]
        for c_in in (4 * w, 2 * w):
            layers += [
                nn.ConvTranspose2d(c_in, c_in // 2, 4, stride=2, padding=1, bias=False),
                _norm(c_in // 2),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(w, self.channels + 1, 7, stride=1, padding=3, bias=False))
        self.main = nn.Sequential(*layers)

    def forward(self, x):
        out = self.main(x)
        image = out[:, : self.channels].tanh()
        mask = (out[:, self.channels :].tanh() + 1.0) / 2.0
        return image, mask


class PatchCritic(nn.Module):
    """Images ``(B, C, S, S)`` -> critic scores ``(B, 1, S / 2**L, S / 2**L)``, one per
    patch (higher = more like the healthy set).

    Parameters
    ----------
    channels : int, default=1
    width : int, default=64
        Channels of the first layer; each further layer doubles them.
    n_layers : int, default=6
        Stride-2 layers (``L``).
    """

    def __init__(self, channels=1, width=64, n_layers=PAPER_CRITIC_LAYERS):
        super().__init__()
        layers, c_in = [], int(channels)
        for i in range(int(n_layers)):
            c_out = int(width) * 2**i
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.01)]
            c_in = c_out
        self.main = nn.Sequential(*layers)
        self.head = nn.Conv2d(c_in, 1, 3, stride=1, padding=1, bias=False)

    def forward(self, x):
        return self.head(self.main(x))
