"""BiGAN's three networks (Donahue et al. 2017 / ALI), as the hand X-ray paper's code
builds them (:mod:`skanomaly.nn.sagan`; the code's ``sagan.py``).

For 128 x 128 images with ``channels=(64, 128, 256, 512, 1024)`` and ``latent_dim=100``:

* **G** (:class:`~skanomaly.nn.sagan.SAGANGenerator`): z -> 4 x 4 x 1024 -> 8 x 8 x 512
  -> 16 x 16 x 256 -> 32 x 32 x 128 (self-attention) -> 64 x 64 x 64 (self-attention)
  -> 128 x 128 x 1, tanh.
* **E**: the SAGAN trunk (128 -> 4 px, widths 64 ... 1024, self-attention on the last
  two levels), then a 4 x 4 valid convolution to z (linear).
* **D(x, z)**, the joint discriminator: the trunk on x, a spectral-normalised 4 x 4
  valid convolution keeping the widest width (LReLU 0.1); z through two 1 x 1
  convolutions of half that width (LReLU 0.1); the two concatenated through two
  1 x 1 convolutions of the widest width (LReLU 0.1) and a last one to one logit
  ("real pair" when positive; the code's sigmoid is in the losses and the score). The
  code fixes the z path at 512 and the joint path at 1024 channels, which is half
  and all of the widest width at 128 px; here they follow ``channels``, so small
  networks stay small.
"""

import torch
from torch import nn

from ...nn.sagan import SAGANGenerator, SAGANTrunk, spectral

__all__ = ["BiGANGenerator", "BiGANEncoder", "JointDiscriminator"]

BiGANGenerator = SAGANGenerator


class BiGANEncoder(nn.Module):
    """E: images ``(B, 1, S, S)`` -> latents ``(B, latent_dim)``.

    Parameters
    ----------
    latent_dim : int, default=100
    channels : tuple of int, default=(64, 128, 256, 512, 1024)
    attention : bool, default=True
    """

    def __init__(self, latent_dim=100, channels=(64, 128, 256, 512, 1024), attention=True):
        super().__init__()
        self.trunk = SAGANTrunk(channels, attention)
        self.head = nn.Conv2d(self.trunk.out_channels, latent_dim, 4)

    def forward(self, x):
        return self.head(self.trunk(x)).flatten(1)


class JointDiscriminator(nn.Module):
    """D: pairs ``(images (B, 1, S, S), latents (B, latent_dim))`` -> one logit per pair ``(B,)``.

    Parameters
    ----------
    latent_dim : int, default=100
    channels : tuple of int, default=(64, 128, 256, 512, 1024)
    attention : bool, default=True
    """

    def __init__(self, latent_dim=100, channels=(64, 128, 256, 512, 1024), attention=True):
        super().__init__()
        self.trunk = SAGANTrunk(channels, attention)
        widest = self.trunk.out_channels
        z_width = max(1, widest // 2)
        self.x_head = nn.Sequential(spectral(nn.Conv2d(widest, widest, 4)), nn.LeakyReLU(0.1))
        self.z_path = nn.Sequential(
            spectral(nn.Conv2d(latent_dim, z_width, 1)),
            nn.LeakyReLU(0.1),
            spectral(nn.Conv2d(z_width, z_width, 1)),
            nn.LeakyReLU(0.1),
        )
        self.joint = nn.Sequential(
            spectral(nn.Conv2d(widest + z_width, widest, 1)),
            nn.LeakyReLU(0.1),
            spectral(nn.Conv2d(widest, widest, 1)),
            nn.LeakyReLU(0.1),
            nn.Conv2d(widest, 1, 1),
        )

    def forward(self, x, z):
        features = self.x_head(self.trunk(x))  # (B, widest, 1, 1)
        code = self.z_path(z[:, :, None, None])
        return self.joint(torch.cat([features, code], dim=1)).flatten()
