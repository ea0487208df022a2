"""alpha-GAN's four networks (Rosca et al. 2017), as the hand X-ray paper's code builds
them (``alphagan.py``; the parts shared with BiGAN are :mod:`skanomaly.nn.sagan`).

For 128 x 128 images with ``channels=(64, 128, 256, 512, 1024)`` and ``latent_dim=100``:

* **G**: :class:`~skanomaly.nn.sagan.SAGANGenerator`, z -> 128 x 128, tanh.
* **E** (:class:`VariationalEncoder`): the SAGAN trunk to 4 x 4 x 1024, then two 4 x 4
  valid convolutions: the mean of q(z | x) through tanh (the code's), and its
  log-variance. The code also puts the log-variance through tanh and then uses it
  as the *standard deviation* (``z = mean + log_var * eps``); here the log-variance
  head is linear and ``z = mean + exp(log_var / 2) * eps``. (A tanh-bounded
  log-variance would keep the standard deviation above 0.61, which only went
  unnoticed in the code because it never exponentiated it.)
* **D** (:class:`ImageDiscriminator`): the trunk, minibatch discrimination (Salimans
  et al. 2016; the code adds it against mode collapse) on the flattened 4 x 4 x 1024
  map, appending 4 channels of 4 x 4, then a spectral-normalised 4 x 4 convolution
  to one logit.
* **C** (:class:`CodeDiscriminator`): linear layers ``latent_dim -> latent_dim / 2 ->
  latent_dim / 4 -> 1`` with LReLU 0.1 between them (100 -> 50 -> 25 -> 1).

D's and C's outputs are logits ("real" when positive); the code's sigmoids are in
the losses and the scores.
"""

import torch
from torch import nn

from ...nn.sagan import SAGANGenerator, SAGANTrunk, spectral

__all__ = ["AlphaGANGenerator", "VariationalEncoder", "MinibatchDiscrimination", "ImageDiscriminator",
           "CodeDiscriminator"]

AlphaGANGenerator = SAGANGenerator


class VariationalEncoder(nn.Module):
    """E: images ``(B, 1, S, S)`` -> ``(mean, log_var)``, each ``(B, latent_dim)``.

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
        self.mean = nn.Sequential(nn.Conv2d(widest, latent_dim, 4), nn.Tanh())
        self.log_var = nn.Conv2d(widest, latent_dim, 4)

    def forward(self, x):
        features = self.trunk(x)
        return self.mean(features).flatten(1), self.log_var(features).flatten(1)


class MinibatchDiscrimination(nn.Module):
    """Minibatch discrimination (Salimans et al. 2016), as ``torchgan``'s
    ``MinibatchDiscrimination1d`` that the code uses: ``(B, in_features)`` ->
    ``(B, in_features + out_features)``.

    Each row ``x_i`` is projected by a tensor ``T`` to ``M_i`` of shape
    ``(out_features, kernel_dims)``; feature ``b`` appended to row ``i`` is
    ``sum_{j != i} exp(-||M_i,b - M_j,b||_1)`` over the other rows of its batch. ``T``
    starts from N(0, 1), as there.

    **Eval mode.** An image's score must not depend on the other images it is scored
    with, so in eval mode each row is compared with a fixed *reference batch*
    instead: the inputs of the last batch of real images seen in training (stored
    while ``update_statistics`` is True, which the training loop sets for D's pass
    over real images, :func:`skanomaly.training.adversarial.real_batch_statistics`),
    scaled to the ``n - 1`` others a real image of that batch had. Before any real
    batch was seen the appended features are 0.

    Parameters
    ----------
    in_features, out_features, kernel_dims : int
    reference_size : int
        Rows kept for the reference batch (the training batch size).
    """

    # Class-level default: the training loop switches it on for real batches only.
    update_statistics = False

    def __init__(self, in_features, out_features, kernel_dims, reference_size):
        super().__init__()
        self.T = nn.Parameter(torch.empty(in_features, out_features, kernel_dims))
        nn.init.normal_(self.T)
        self.register_buffer("reference", torch.zeros(int(reference_size), in_features))
        self.register_buffer("reference_count", torch.zeros((), dtype=torch.long))

    def _kernels(self, x):
        return (x @ self.T.flatten(1)).view(len(x), *self.T.shape[1:])

    def forward(self, x):
        m = self._kernels(x)  # (B, out, kernel_dims)
        if self.training:
            # A full batch is kept over a later, smaller one (an epoch's last batch).
            if self.update_statistics and len(x) >= int(self.reference_count):
                count = min(len(x), len(self.reference))
                with torch.no_grad():
                    self.reference[:count] = x[:count].detach()
                    self.reference_count.fill_(count)
            closeness = torch.exp(-(m[:, None] - m[None]).abs().sum(-1))  # (B, B, out)
            # The diagonal (each row with itself) contributes exp(0) = 1.
            features = closeness.sum(1) - 1.0
        else:
            count = int(self.reference_count)
            if count == 0:
                features = x.new_zeros(len(x), m.shape[1])
            else:
                reference = self._kernels(self.reference[:count])
                closeness = torch.exp(-(m[:, None] - reference[None]).abs().sum(-1))  # (B, count, out)
                features = closeness.mean(1) * (count - 1)
        return torch.cat([x, features], dim=1)


class ImageDiscriminator(nn.Module):
    """D: images ``(B, 1, S, S)`` -> one logit per image ``(B,)``.

    Parameters
    ----------
    channels : tuple of int, default=(64, 128, 256, 512, 1024)
    attention : bool, default=True
    minibatch_channels : int, default=4
        Channels of 4 x 4 that minibatch discrimination appends (the code's 4).
    minibatch_kernel_dims : int, default=256
        Dimensions of each minibatch-discrimination kernel (the code's 256).
    reference_size : int, default=16
        Rows of minibatch discrimination's reference batch (the training batch size).
    latent_dim : int, optional
        Ignored (D does not see codes); accepted so that every network of the
        detector is built from the same parameters.
    """

    def __init__(self, channels=(64, 128, 256, 512, 1024), attention=True, minibatch_channels=4,
                 minibatch_kernel_dims=256, reference_size=16, latent_dim=None):
        super().__init__()
        self.trunk = SAGANTrunk(channels, attention)
        widest = self.trunk.out_channels
        self.minibatch = (
            MinibatchDiscrimination(widest * 16, int(minibatch_channels) * 16, int(minibatch_kernel_dims), reference_size)
            if minibatch_channels
            else nn.Identity()
        )
        self.head = spectral(nn.Conv2d(widest + int(minibatch_channels), 1, 4))

    def forward(self, x):
        features = self.minibatch(self.trunk(x).flatten(1))
        return self.head(features.view(len(x), -1, 4, 4)).flatten()


class CodeDiscriminator(nn.Module):
    """C: codes ``(B, latent_dim)`` -> one logit per code ``(B,)`` ("a draw of the prior"
    when positive).

    Parameters
    ----------
    latent_dim : int, default=100
    channels, attention : optional
        Ignored (C sees codes only); accepted so that every network of the detector is
        built from the same parameters.
    """

    def __init__(self, latent_dim=100, channels=None, attention=None):
        super().__init__()
        half, quarter = max(1, latent_dim // 2), max(1, latent_dim // 4)
        self.layers = nn.Sequential(
            nn.Linear(latent_dim, half),
            nn.LeakyReLU(0.1),
            nn.Linear(half, quarter),
            nn.LeakyReLU(0.1),
            nn.Linear(quarter, 1),
        )

    def forward(self, z):
        return self.layers(z).flatten()
