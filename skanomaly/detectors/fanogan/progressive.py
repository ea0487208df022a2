"""Progressive GAN (Karras et al., 2018) for single-channel images, as P-AnoGAN used it.

P-AnoGAN trained the progressive GAN of facebookresearch/pytorch_GAN_zoo (its schedule
matches that code's PGAN configuration). The networks here follow that architecture:

* **Generator**: ``z`` (512, N(0, I)) -> PixelNorm -> equalised Linear -> 4 x 4 x
  ``channels[0]`` (LReLU 0.2, PixelNorm) -> equalised 3 x 3 conv (LReLU, PixelNorm);
  every further scale doubles the side by nearest upsampling and applies two
  equalised 3 x 3 convs (LReLU, PixelNorm) to ``channels[s]``; an equalised 1 x 1
  "to image" conv per scale; no output activation.
* **Discriminator**: an equalised 1 x 1 "from image" conv per scale (LReLU); per
  scale, two equalised 3 x 3 convs (LReLU) then 2 x 2 average pooling; at 4 x 4 a
  minibatch-standard-deviation channel, an equalised 3 x 3 conv, an equalised Linear
  ``16 * channels[0] -> channels[0]`` (LReLU): the ``channels[0]``-d feature layer
  ``D_f`` of P-AnoGAN's izif / izizf losses; then Linear -> one score.

Both networks are built at full size and carry ``scale`` (the index of the finest
active scale) and ``alpha`` (the fade-in weight of the previous scale) as buffers,
so training grows them by changing two numbers and a fitted network saves and loads
at the scale it was trained to. While a new scale fades in (``alpha > 0``), the
generator's output is ``alpha * upsample(to_image_prev) + (1 - alpha) * to_image``
and the discriminator's input path is blended the same way, at *every* new scale
(the first grown scale included: pytorch_GAN_zoo issue 98 skips it).

**The minibatch-stddev channel couples the images of a batch**: an image's
discriminator output and features depend on the other images in its batch. In
training mode the channel is the batch statistic (groups of 4, as in the reference
code) and its running mean over real batches is tracked, like a BatchNorm
statistic; in eval mode the channel is that running mean, so ``D`` and ``D_f`` of an image depend on that image
alone. The encoder stage and scoring use the discriminator in eval mode only.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from ...utils.validation import check_widths
from .networks import upsample_nearest2x

__all__ = [
    "PixelNorm",
    "EqualizedConv2d",
    "EqualizedLinear",
    "MinibatchStdDev",
    "ProgressiveGenerator",
    "ProgressiveDiscriminator",
    "progressive_image_size",
]


def progressive_image_size(channels):
    """Side of the images a progressive GAN with these per-scale widths makes."""
    return 4 * 2 ** (len(channels) - 1)


class PixelNorm(nn.Module):
    """Normalise each pixel's feature vector to unit mean square (over channels)."""

    def __init__(self, eps=1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + self.eps)


class _Equalized(nn.Module):
    """Weights drawn from N(0, 1) and scaled by He's constant at every forward pass, so
    Adam's per-parameter step sizes are equal across layers (equalised learning rate)."""

    def _init_equalized(self, weight_shape, fan_in, bias):
        self.weight = nn.Parameter(torch.empty(weight_shape))
        self.bias = nn.Parameter(torch.empty(weight_shape[0])) if bias else None
        self.he_constant = math.sqrt(2.0 / fan_in)
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.normal_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class EqualizedConv2d(_Equalized):
    """3 x 3 (or ``kernel_size``) convolution, same padding, equalised learning rate."""

    def __init__(self, in_channels, out_channels, kernel_size, bias=True):
        super().__init__()
        self.padding = kernel_size // 2
        self._init_equalized((out_channels, in_channels, kernel_size, kernel_size), in_channels * kernel_size**2, bias)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.he_constant, self.bias, padding=self.padding)


class EqualizedLinear(_Equalized):
    """Linear layer with equalised learning rate."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self._init_equalized((out_features, in_features), in_features, bias)

    def forward(self, x):
        return F.linear(x, self.weight * self.he_constant, self.bias)


class MinibatchStdDev(nn.Module):
    """Append the minibatch standard deviation as one more channel.

    Training mode: the batch is split into groups of ``group_size`` consecutive images
    (one group of the whole batch when it does not divide evenly); each image gets the
    mean over features of its group's per-feature standard deviation. Eval mode: every
    image gets the running mean of that value, so an image's output does not depend on
    the rest of its batch.

    The running mean (``momentum``) is updated only while ``update_statistics`` is
    True, which the training loop sets for the critic's pass over *real* batches
    (:func:`skanomaly.training.adversarial.real_batch_statistics`). In training the
    critic also sees fakes, gradient-penalty interpolates and the generator's
    images; a mean over those is a value the critic never saw on real data, and
    eval-mode features (the encoder's loss, scores) would be computed with it.
    """

    # Class-level default: modules pickled before the attribute existed load as False.
    update_statistics = False

    def __init__(self, group_size=4, momentum=0.01):
        super().__init__()
        self.group_size = group_size
        self.momentum = momentum
        self.register_buffer("running_std", torch.zeros(()))

    def forward(self, x):
        n, _, height, width = x.shape
        if not self.training:
            channel = self.running_std.to(x.dtype).expand(n, 1, height, width)
            return torch.cat([x, channel], dim=1)
        group = min(n, self.group_size)
        if n % group:
            group = n
        if group > 1:
            grouped = x.reshape(n // group, group, -1)
            std = (grouped.var(dim=1, unbiased=True) + 1e-8).sqrt().mean(dim=1)
            per_image = std.repeat_interleave(group)
        else:
            per_image = x.new_zeros(n)
        if self.update_statistics:
            with torch.no_grad():
                self.running_std.lerp_(per_image.detach().mean().to(self.running_std.dtype), self.momentum)
        channel = per_image[:, None, None, None].expand(n, 1, height, width)
        return torch.cat([x, channel], dim=1)


def _check_channels(channels):
    return check_widths(
        channels, "channels", high=None, hint=", one per scale from 4 x 4 up"
    )


class _Progressive(nn.Module):
    """The growth state shared by both networks: ``scale`` and ``alpha`` buffers."""

    def _init_growth(self, n_scales):
        self.n_scales = n_scales
        self.register_buffer("scale", torch.tensor(n_scales - 1, dtype=torch.long))
        self.register_buffer("alpha", torch.zeros(()))

    def set_growth(self, scale, alpha):
        """Make ``scale`` the finest active scale, the previous one faded in by ``alpha``."""
        if not 0 <= scale < self.n_scales:
            raise ValueError(f"scale must be in [0, {self.n_scales - 1}], got {scale}.")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
        self.scale.fill_(int(scale))
        self.alpha.fill_(float(alpha) if scale > 0 else 0.0)

    @property
    def current_size(self):
        return 4 * 2 ** int(self.scale)


class ProgressiveGenerator(_Progressive):
    """``z (B, latent_dim)`` -> images ``(B, 1, S, S)``, ``S = 4 * 2 ** scale``.

    Parameters
    ----------
    latent_dim : int, default=512
    channels : tuple of int, default=(512, 512, 512, 512, 256)
        Width of each scale from 4 x 4 up; the full-size images have side
        ``4 * 2 ** (len(channels) - 1)`` (64 by default, P-AnoGAN's patches).
    """

    def __init__(self, latent_dim=512, channels=(512, 512, 512, 512, 256)):
        super().__init__()
        channels = _check_channels(channels)
        self.latent_dim = int(latent_dim)
        self.channels = channels
        self.norm = PixelNorm()
        self.input = EqualizedLinear(self.latent_dim, 16 * channels[0])
        self.input_conv = EqualizedConv2d(channels[0], channels[0], 3)
        self.blocks = nn.ModuleList(
            nn.ModuleList([EqualizedConv2d(c_in, c_out, 3), EqualizedConv2d(c_out, c_out, 3)])
            for c_in, c_out in zip(channels[:-1], channels[1:])
        )
        self.to_image = nn.ModuleList(EqualizedConv2d(c, 1, 1) for c in channels)
        self._init_growth(len(channels))

    def _act(self, x):
        return self.norm(F.leaky_relu(x, 0.2))

    def forward(self, z):
        scale, alpha = int(self.scale), float(self.alpha)
        x = self.input(self.norm(z)).reshape(len(z), self.channels[0], 4, 4)
        x = self._act(self.input_conv(self._act(x)))
        previous = None
        for index in range(scale):
            if index == scale - 1 and alpha > 0:
                previous = upsample_nearest2x(self.to_image[index](x))
            x = upsample_nearest2x(x)
            for conv in self.blocks[index]:
                x = self._act(conv(x))
        image = self.to_image[scale](x)
        if previous is not None:
            image = alpha * previous + (1.0 - alpha) * image
        return image


class ProgressiveDiscriminator(_Progressive):
    """Images ``(B, 1, S, S)`` at the current scale -> one score per image ``(B,)``.

    Parameters
    ----------
    channels : tuple of int, default=(512, 512, 512, 512, 256)
        Width of each scale from 4 x 4 up, as the generator's.
    minibatch_std : bool, default=True
        Add the minibatch-stddev channel at 4 x 4 (see the module docstring for how
        eval mode makes it independent of the batch).
    """

    def __init__(self, channels=(512, 512, 512, 512, 256), minibatch_std=True):
        super().__init__()
        channels = _check_channels(channels)
        self.channels = channels
        self.from_image = nn.ModuleList(EqualizedConv2d(1, c, 1) for c in channels)
        # blocks[s - 1] takes scale s (channels[s]) down to scale s - 1 (channels[s - 1]).
        self.blocks = nn.ModuleList(
            nn.ModuleList([EqualizedConv2d(c_fine, c_fine, 3), EqualizedConv2d(c_fine, c_coarse, 3)])
            for c_coarse, c_fine in zip(channels[:-1], channels[1:])
        )
        self.minibatch_std = MinibatchStdDev() if minibatch_std else None
        self.output_conv = EqualizedConv2d(channels[0] + (1 if minibatch_std else 0), channels[0], 3)
        self.feature_layer = EqualizedLinear(16 * channels[0], channels[0])
        self.decision = EqualizedLinear(channels[0], 1)
        self._init_growth(len(channels))

    def features(self, x):
        """``D_f``: the ``channels[0]``-d layer before the decision (P-AnoGAN's n_d = 512)."""
        scale, alpha = int(self.scale), float(self.alpha)
        side = 4 * 2**scale
        if x.shape[-1] != side or x.shape[-2] != side:
            raise ValueError(
                f"the discriminator is at scale {scale} ({side} x {side} images), got images of "
                f"{tuple(x.shape[-2:])}."
            )
        h = F.leaky_relu(self.from_image[scale](x), 0.2)
        for index in range(scale - 1, -1, -1):
            for conv in self.blocks[index]:
                h = F.leaky_relu(conv(h), 0.2)
            h = F.avg_pool2d(h, 2)
            if index == scale - 1 and alpha > 0:
                coarse = F.leaky_relu(self.from_image[index](F.avg_pool2d(x, 2)), 0.2)
                h = alpha * coarse + (1.0 - alpha) * h
        if self.minibatch_std is not None:
            h = self.minibatch_std(h)
        h = F.leaky_relu(self.output_conv(h), 0.2)
        return F.leaky_relu(self.feature_layer(h.flatten(1)), 0.2)

    def forward(self, x):
        return self.decision(self.features(x)).reshape(len(x))
