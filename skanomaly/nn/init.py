"""Weight initialisation shared by the package's GAN-style networks."""

from torch import nn

__all__ = ["dcgan_init"]


def dcgan_init(module):
    """DCGAN's initialisation, for ``module.apply``: convolution and linear weights
    from N(0, 0.02) with zero biases, BatchNorm scales from N(1, 0.02) with zero
    shifts (AnoGAN's DCGAN; Tang et al.'s one-class networks)."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
