"""Image-to-latent encoders of P-AnoGAN and f-AnoGAN.

P-AnoGAN encodes patches with torchvision's ResNet-50 or DenseNet-169 and a linear
head to the GAN's latent size. Here they are built with ``weights=None`` (nothing is
ever downloaded: the papers trained the encoders from scratch on radiograph patches),
with a one-channel stem in place of the RGB one (initialised as torchvision
initialises its convolutions), and the classifier replaced by a linear layer to
``latent_dim`` with no activation, since the progressive GAN's ``z`` is N(0, I).
``"resnet18"`` is the same construction at a size a CPU trains in minutes.
"""

from torch import nn

from .networks import CriticEncoder

__all__ = ["ENCODERS", "Encoder", "make_encoder"]

ENCODERS = ("resnet50", "densenet169", "resnet18", "critic")


def _grey_stem(conv):
    stem = nn.Conv2d(
        1, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding, bias=conv.bias is not None
    )
    nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")
    return stem


def make_encoder(name, latent_dim, channels=None):
    """Build an untrained encoder ``(B, 1, S, S) -> (B, latent_dim)``.

    Parameters
    ----------
    name : {"resnet50", "densenet169", "resnet18", "critic"}
    latent_dim : int
    channels : tuple of int, optional
        Widths per scale from 4 x 4 up, for ``"critic"`` (the critic's layout; see
        :class:`~skanomaly.detectors.fanogan.networks.CriticEncoder`).
    """
    if name == "critic":
        return CriticEncoder(latent_dim=latent_dim, channels=channels)
    from torchvision import models

    if name in ("resnet50", "resnet18"):
        network = getattr(models, name)(weights=None, num_classes=int(latent_dim))
        network.conv1 = _grey_stem(network.conv1)
        return network
    if name == "densenet169":
        network = models.densenet169(weights=None, num_classes=int(latent_dim))
        network.features.conv0 = _grey_stem(network.features.conv0)
        return network
    raise ValueError(f"encoder={name!r} is not supported: use one of {ENCODERS}.")


class Encoder(nn.Module):
    """:func:`make_encoder` as a module class, so skorch builds it (seeded) from parameters.

    Parameters
    ----------
    name : {"resnet50", "densenet169", "resnet18", "critic"}, default="resnet50"
    latent_dim : int, default=512
    channels : tuple of int, optional
        For ``"critic"``: the GAN's widths per scale from 4 x 4 up.
    """

    def __init__(self, name="resnet50", latent_dim=512, channels=None):
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.network = make_encoder(name, latent_dim, channels)

    def forward(self, x):
        return self.network(x)
