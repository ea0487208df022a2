"""Synthetic anomalies made from normal films (foreign patch interpolation and opacities).

The self-supervised task of :class:`~skanomaly.detectors.SyntheticAnomalyDetector`: a
network sees normal films, some with an anomaly pasted in, and learns to segment
what was pasted. Two kinds of anomaly are made, both batched on the training device
with every random draw from the net's generator (never torch's global one):

* ``"patch"``: foreign patch interpolation (Tan et al., FPI, 2020). An elliptical
  region of the film is interpolated towards the same region of another normal film
  of the batch, ``x' = (1 - a) x + a x_other`` with ``a ~ U(0.05, 1)``; the target is
  ``a`` inside the region. Radiographs put the same anatomy at the same place, so the
  pasted region is plausible anatomy in the wrong film: the network must learn what
  belongs where, not spot a texture.
* ``"opacity"``: a smooth brightening, ``x' = x + a g (1 - x)`` with ``g`` a Gaussian
  bump over the region (a consolidation or effusion is whiter than the aerated lung
  it replaces); the target is ``a g`` where ``g > 0.1``.
* ``"mottled"``: the same opacity with its strength modulated by a smooth random
  texture ``t`` in ``[0, 1]`` (an 8 x 8 grid of uniform draws, bilinearly enlarged),
  ``x' = x + a g t (1 - x)``, as patchy consolidation is; the target is ``a g t``
  where ``g > 0.1``. Measured on the pediatric shift protocol, it did not beat the
  smooth opacity (``benchmarks/README.md``).

The region's semi-axes are drawn between ``side / 16`` and ``max_size * side`` and its
centre anywhere in the middle 3/4 of the film; pixels outside the region of interest
are never changed and have target 0.
"""

import torch

from ...training.random import rand

__all__ = ["ANOMALY_KINDS", "synthesize_anomalies"]

ANOMALY_KINDS = ("patch", "opacity", "mottled")

# Below this blend factor a pasted region is invisible at 8 bits; FPI draws from
# (0, 1) and keeps the target, so the lower bound only avoids near-empty targets.
_MIN_ALPHA = 0.05
# Where the opacity bump falls below this fraction of its peak it is not labelled.
_OPACITY_SUPPORT = 0.1
_TEXTURE_GRID = 8


def _uniform(n, low, high, generator, device):
    return low + (high - low) * rand(n, generator, device=device)


def synthesize_anomalies(x, roi, generator, *, kinds=ANOMALY_KINDS, probability=0.5, max_size=1 / 3):
    """Paste one synthetic anomaly into a random subset of a batch of normal images.

    Parameters
    ----------
    x : torch.Tensor of shape (B, 1, H, W)
        Normal images in ``[0, 1]``, filled (no NaN) outside the region of interest.
    roi : torch.Tensor of bool, shape (B, 1, H, W)
    generator : torch.Generator
        CPU generator every draw comes from.
    kinds : sequence of {"patch", "opacity", "mottled"}
        Kinds to draw from, with equal probability.
    probability : float
        Chance that an image gets an anomaly (the others keep target 0, so the
        network also learns that normal films hold nothing).
    max_size : float
        Largest semi-axis as a fraction of the side.

    Returns
    -------
    x_new : torch.Tensor (B, 1, H, W)
    target : torch.Tensor (B, 1, H, W)
        Per-pixel share of the pasted content, in ``[0, 1]``; 0 outside the ROI.
    """
    batch, _, height, width = x.shape
    device = x.device
    side = min(height, width)
    rows = torch.arange(height, device=device, dtype=x.dtype)[None, :, None]
    cols = torch.arange(width, device=device, dtype=x.dtype)[None, None, :]

    def draw(low, high):
        return _uniform(batch, low, high, generator, device)[:, None, None]

    centre_y, centre_x = draw(height / 8, height * 7 / 8), draw(width / 8, width * 7 / 8)
    low = max(side / 16, 1.0)
    high = max(max_size * side, low)
    radius_y, radius_x = draw(low, high), draw(low, high)
    distance = ((rows - centre_y) / radius_y) ** 2 + ((cols - centre_x) / radius_x) ** 2
    alpha = draw(_MIN_ALPHA, 1.0)
    chosen = draw(0.0, 1.0) < probability
    kind = (draw(0.0, 1.0) * len(kinds)).long().clamp_max(len(kinds) - 1)

    image = x[:, 0]
    inside = roi[:, 0]
    new = image
    target = torch.zeros_like(image)
    if "patch" in kinds:
        # Another film of the batch, never the image itself (a shift of 1..B-1).
        shift = 1 + int(rand(1, generator).item() * (batch - 1)) if batch > 1 else 0
        other = image.roll(shift, dims=0)
        other_roi = inside.roll(shift, dims=0)
        region = (distance <= 1) & inside & other_roi
        is_patch = chosen & (kind == kinds.index("patch")) & (shift != 0)
        blend = torch.where(region & is_patch, alpha, torch.zeros_like(alpha))
        new = (1 - blend) * new + blend * other
        target = torch.maximum(target, blend)
    bump = torch.exp(-2.0 * distance)

    def whiten(new, target, kind_name, texture=1.0):
        selected = chosen & (kind == kinds.index(kind_name)) & inside
        amount = torch.where(selected, alpha * bump * texture, torch.zeros_like(bump))
        labelled = torch.where(bump > _OPACITY_SUPPORT, amount, torch.zeros_like(amount))
        return new + amount * (1 - new), torch.maximum(target, labelled)

    if "opacity" in kinds:
        new, target = whiten(new, target, "opacity")
    if "mottled" in kinds:
        # Low-frequency texture: an 8 x 8 grid of uniform draws, bilinearly enlarged.
        grid = rand((batch, 1, _TEXTURE_GRID, _TEXTURE_GRID), generator, device=device, dtype=x.dtype)
        texture = torch.nn.functional.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False)
        new, target = whiten(new, target, "mottled", texture[:, 0])
    return new[:, None], target[:, None]
