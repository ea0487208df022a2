"""Self-attention GAN building blocks of the hand X-ray paper's BiGAN and alpha-GAN.

Davletshina et al. (2020) give no architecture for their BiGAN and alpha-GAN beyond
the networks' roles; their public code (Valentyn1997/xray, ``sagan.py`` and
``alphagan.py``) builds both from the same self-attention GAN parts, which live here
once:

* :class:`SelfAttention`: SAGAN's attention layer (query and key 1 x 1 convolutions
  to ``channels // 8``, value to ``channels``, softmax over positions, output
  ``gamma * attention + x`` with ``gamma`` starting at 0, so a fresh layer is the
  identity);
* :class:`SAGANGenerator`: ``z`` -> a 4 x 4 transposed convolution to the widest
  level, then stride-2 4 x 4 transposed convolutions (spectral norm, BatchNorm, ReLU)
  up to the finest level, self-attention after the last two of them, and a final
  transposed convolution to one channel with tanh;
* :class:`SAGANTrunk`: the image path of the encoders and discriminators: stride-2
  4 x 4 convolutions (spectral norm, LReLU 0.1) from one channel through ``channels``,
  self-attention after the last two, ending on a 4 x 4 map.

``channels`` lists the widths from the finest level to the widest, as the package's
other detectors do; the code's 128 px networks are ``(64, 128, 256, 512, 1024)``
(``conv_dim`` 64 doubled per level). Each entry is one stride-2 level, so the
networks take squares of side ``4 * 2 ** len(channels)`` (:func:`sagan_side`). The
code leaves PyTorch's default initialisation in place, and so does this module.
"""

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SelfAttention", "SAGANGenerator", "SAGANTrunk", "SpectralNorm", "sagan_side", "spectral"]


def sagan_side(channels):
    """The square side the networks take: four pixels after ``len(channels)`` halvings."""
    return 4 * 2 ** len(channels)


class SpectralNorm(nn.Module):
    """``module`` with its weight divided by its largest singular value (Miyato et al.
    2018), estimated by one power iteration per training forward pass, as the code's
    ``SpectralNorm`` wrapper (and ``torch.nn.utils.parametrizations.spectral_norm``)
    does; eval mode uses the last estimate, so scoring changes nothing.

    torch's own versions cannot be used: a parametrised module refuses to pickle
    (``joblib.dump`` of a fitted detector must work) and the older hook-based one
    refuses ``copy.deepcopy`` after a training step (``sklearn.base.clone`` of a fitted
    pipeline must work). This one keeps ``u`` and ``v`` as buffers and calls the module
    with the normalised weight through :func:`torch.func.functional_call`.

    Parameters
    ----------
    module : nn.Conv2d, nn.ConvTranspose2d or nn.Linear
    eps : float, default=1e-12
    """

    def __init__(self, module, eps=1e-12):
        super().__init__()
        self.module = module
        self.eps = eps
        # The output channels are the rows: dim 1 of a transposed convolution's weight.
        self.dim = 1 if isinstance(module, nn.ConvTranspose2d) else 0
        rows, cols = self._matrix().shape
        self.register_buffer("u", F.normalize(torch.randn(rows), dim=0, eps=eps))
        self.register_buffer("v", F.normalize(torch.randn(cols), dim=0, eps=eps))
        # As torch's: 15 power iterations up front, so that a network used before any
        # training pass (scored untrained, or in eval mode first) is normalised by an
        # estimate, not by a random vector's (far smaller) sigma.
        self._power_iterations(15)

    @torch.no_grad()
    def _power_iterations(self, n):
        matrix = self._matrix()
        for _ in range(n):
            v = F.normalize(matrix.t() @ self.u, dim=0, eps=self.eps)
            self.u.copy_(F.normalize(matrix @ v, dim=0, eps=self.eps))
            self.v.copy_(v)

    def _matrix(self):
        weight = self.module.weight
        if self.dim:
            weight = weight.transpose(0, self.dim)
        return weight.flatten(1)

    def forward(self, x):
        matrix = self._matrix()
        if self.training:
            self._power_iterations(1)
        # Copies: the next training pass updates the buffers in place, and this
        # pass's backward still needs the values it used.
        sigma = torch.dot(self.u.clone(), matrix @ self.v.clone())
        return torch.func.functional_call(self.module, {"weight": self.module.weight / sigma}, (x,))


def spectral(module):
    """``module`` with spectral normalisation of its weight (:class:`SpectralNorm`)."""
    return SpectralNorm(module)


class SelfAttention(nn.Module):
    """SAGAN's self-attention over the positions of a feature map.

    Parameters
    ----------
    channels : int
        Channels in and out. The query and key projections have ``channels // 8``
        (at least one).
    """

    def __init__(self, channels):
        super().__init__()
        inner = max(1, channels // 8)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        batch, channels, height, width = x.shape
        query = self.query(x).flatten(2).transpose(1, 2)  # (B, N, inner)
        key = self.key(x).flatten(2)  # (B, inner, N)
        attention = torch.softmax(torch.bmm(query, key), dim=-1)  # (B, N, N): row i attends to j
        value = self.value(x).flatten(2)  # (B, C, N)
        out = torch.bmm(value, attention.transpose(1, 2)).view(batch, channels, height, width)
        return self.gamma * out + x


def _attention_levels(n_levels, attention):
    """Indices of the levels followed by self-attention: the last two (fewer levels, fewer)."""
    return set(range(max(0, n_levels - 2), n_levels)) if attention else set()


class SAGANGenerator(nn.Module):
    """Generator ``G``: latents ``(B, latent_dim)`` -> images ``(B, 1, S, S)`` in [-1, 1].

    Parameters
    ----------
    latent_dim : int, default=100
    channels : tuple of int, default=(64, 128, 256, 512, 1024)
        Widths from the finest level to the widest; the generator runs them widest
        first.
    attention : bool, default=True
        Self-attention after the last two hidden levels (the code's).
    """

    def __init__(self, latent_dim=100, channels=(64, 128, 256, 512, 1024), attention=True):
        super().__init__()
        widths = [int(c) for c in reversed(tuple(channels))]
        self.start = nn.Sequential(
            spectral(nn.ConvTranspose2d(latent_dim, widths[0], 4)), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        levels = []
        # Hidden stride-2 levels between consecutive widths; the last one is the output.
        hidden = list(zip(widths[:-1], widths[1:]))
        with_attention = _attention_levels(len(hidden), attention)
        for i, (c_in, c_out) in enumerate(hidden):
            layers = [spectral(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1)), nn.BatchNorm2d(c_out), nn.ReLU()]
            if i in with_attention:
                layers.append(SelfAttention(c_out))
            levels.append(nn.Sequential(*layers))
        self.levels = nn.Sequential(*levels)
        # The code's last layer has no spectral norm.
        self.out = nn.Sequential(nn.ConvTranspose2d(widths[-1], 1, 4, 2, 1), nn.Tanh())

    def forward(self, z):
        return self.out(self.levels(self.start(z[:, :, None, None])))


class SAGANTrunk(nn.Module):
    """Image path of the encoders and discriminators: ``(B, 1, S, S)`` -> ``(B, C, 4, 4)``
    with ``C = channels[-1]``.

    Parameters
    ----------
    channels : tuple of int, default=(64, 128, 256, 512, 1024)
    attention : bool, default=True
        Self-attention after the last two levels (the code's).
    """

    def __init__(self, channels=(64, 128, 256, 512, 1024), attention=True):
        super().__init__()
        widths = [int(c) for c in channels]
        with_attention = _attention_levels(len(widths), attention)
        levels = []
        for i, (c_in, c_out) in enumerate(zip([1] + widths[:-1], widths)):
            layers = [spectral(nn.Conv2d(c_in, c_out, 4, 2, 1)), nn.LeakyReLU(0.1)]
            if i in with_attention:
                layers.append(SelfAttention(c_out))
            levels.append(nn.Sequential(*layers))
        self.levels = nn.Sequential(*levels)
        self.out_channels = widths[-1]

    def forward(self, x):
        return self.levels(x)
