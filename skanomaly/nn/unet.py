"""A small U-Net for binary segmentation (pure torch).

Used by :class:`skanomaly.preprocessing.LungMasker` for lung fields. Kept small
(a few hundred thousand parameters) so that it trains in minutes and runs at many
images per second on a CPU; the lung fields are large, smooth structures that do
not need a wide network.
"""

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["UNet"]


class _DoubleConv(nn.Sequential):
    def __init__(self, in_channels, out_channels):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """U-Net (Ronneberger et al., 2015) with bilinear upsampling.

    Parameters
    ----------
    in_channels : int, default=1
    out_channels : int, default=1
        Channels of the logits map.
    base_channels : int, default=16
        Channels of the first level; each deeper level doubles them, up to
        ``max_channels``.
    depth : int, default=4
        Number of 2x downsamplings. Input height and width must be divisible by
        ``2 ** depth``.
    max_channels : int, default=128
        Cap on the channels of the deep levels; keeps the parameter count (and the
        packaged weight file) small without losing the receptive field.

    Examples
    --------
    >>> import torch
    >>> from skanomaly.nn.unet import UNet
    >>> net = UNet(base_channels=8, depth=3).eval()
    >>> net(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 1, 64, 64])
    """

    def __init__(
        self, in_channels=1, out_channels=1, base_channels=16, depth=4, max_channels=128
    ):
        super().__init__()
        self.depth = depth
        widths = [min(base_channels * 2**i, max_channels) for i in range(depth + 1)]
        self.down = nn.ModuleList()
        previous = in_channels
        for width in widths:
            self.down.append(_DoubleConv(previous, width))
            previous = width
        self.up = nn.ModuleList()
        for level in reversed(range(depth)):
            self.up.append(_DoubleConv(previous + widths[level], widths[level]))
            previous = widths[level]
        self.head = nn.Conv2d(previous, out_channels, 1)

    @torch.no_grad()
    def fuse_batchnorm(self):
        """Fold every BatchNorm into the convolution before it, for inference.

        The network computes the same function in eval mode with about a tenth fewer
        operations; it can no longer be trained. Returns ``self``.
        """
        for block in [*self.down, *self.up]:
            for i in range(0, len(block), 3):
                conv, bn = block[i], block[i + 1]
                if not isinstance(bn, nn.BatchNorm2d):
                    continue
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                fused = nn.Conv2d(
                    conv.in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding
                )
                fused.weight.copy_(conv.weight * scale[:, None, None, None])
                fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
                block[i], block[i + 1] = fused, nn.Identity()
        return self

    def forward(self, x):
        factor = 2**self.depth
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(
                f"UNet(depth={self.depth}) needs inputs whose height and width are "
                f"multiples of {factor}; got {tuple(x.shape[-2:])}. Resize or pad the input."
            )
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < self.depth:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)
