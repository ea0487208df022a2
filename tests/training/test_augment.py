"""Batch augmentation: the region of interest moves with the image; draws are seeded."""

import math

import pytest
import torch

from skanomaly.training.augment import augment_batch
from skanomaly.training.random import make_generator


def _disc_batch(n=32, size=32):
    """Constant 0.5 inside a centred disc (the ROI), NaN outside."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centre = (size - 1) / 2
    inside = (yy - centre) ** 2 + (xx - 4 - centre) ** 2 <= 8**2  # shifted right: flips move it
    image = torch.where(inside, torch.tensor(0.5), torch.tensor(float("nan")))
    return image.expand(n, 1, size, size).clone(), inside


def _away_from_rim(roi):
    """ROI pixels whose four neighbours are in the ROI too (no interpolation with outside)."""
    core = roi.clone()
    for shift in (1, -1):
        for dim in (-1, -2):
            core &= roi.roll(shift, dim)
    return core


def test_default_mode_is_flips_that_carry_the_nan_band():
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x[:, :, :, :2] = float("nan")
    out = augment_batch(x, "default", make_generator(0))
    variants = [x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)]
    used = set()
    for i in range(len(x)):
        matches = [k for k, v in enumerate(variants) if torch.equal(out[i].nan_to_num(-1), v[i].nan_to_num(-1))]
        assert matches, f"sample {i} is not a flip of its input"
        used.add(matches[0])
    assert used == {0, 1, 2, 3}  # each flip combination occurs


def test_advanced_mode_moves_the_roi_with_the_image():
    x, inside = _disc_batch()
    out = augment_batch(x, "advanced", make_generator(1))
    roi = ~torch.isnan(out)
    area = roi.flatten(1).sum(1).float()
    original = inside.sum().float()
    # Scaling by U(0.8, 1.2) per axis changes the area by 0.64x to 1.44x, and only
    # about half of the samples are scaled at all.
    assert (area >= 0.6 * original).all() and (area <= 1.5 * original).all()
    assert (area != original).any()
    # The disc sits right of centre; a horizontal flip sends it left: the ROI's
    # centroid follows the image, it does not stay put.
    cols = torch.arange(32).float()
    centroid_x = (roi.float() * cols).flatten(1).sum(1) / area
    assert (centroid_x < 15.5).any() and (centroid_x > 15.5).any()
    # Inside the ROI, away from its rim, every value is 0.5 times the brightness
    # factor (U(0.8, 1.2)): no pixel from outside the ROI leaks in.
    core = _away_from_rim(roi)
    for i in range(len(out)):
        values = out[i][core[i]]
        assert values.numel() > 0
        assert values.min() >= 0.5 * 0.8 - 1e-5 and values.max() <= 0.5 * 1.2 + 1e-5
        assert values.max() - values.min() < 1e-4  # one constant per sample


def test_draws_come_from_the_generator_only():
    x = torch.rand(16, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    global_state = torch.get_rng_state()
    first = augment_batch(x, "advanced", make_generator(5))
    assert torch.equal(torch.get_rng_state(), global_state)
    torch.testing.assert_close(augment_batch(x, "advanced", make_generator(5)), first, equal_nan=True)
    assert not torch.equal(augment_batch(x, "advanced", make_generator(6)).nan_to_num(), first.nan_to_num())


@pytest.mark.parametrize("mode", [None])
def test_no_augmentation_returns_the_batch(mode):
    x = torch.rand(2, 1, 4, 4)
    assert augment_batch(x, mode, make_generator(0)) is x
    assert math.isfinite(float(x.sum()))


def test_hflip_affine_mode_scales_and_rotates_without_vertical_flips_or_brightness():
    x, inside = _disc_batch(n=64)
    out = augment_batch(x, "hflip-affine", make_generator(2))
    roi = ~torch.isnan(out)
    area = roi.flatten(1).sum(1).float()
    assert (area >= 0.6 * inside.sum()).all() and (area <= 1.5 * inside.sum()).all()
    assert (area != inside.sum()).any()
    # No brightness change: inside the ROI, away from its rim, every value stays 0.5.
    core = _away_from_rim(roi)
    torch.testing.assert_close(out[core], torch.full_like(out[core], 0.5), atol=1e-5, rtol=0)
    # An upright film stays upright: an asymmetric top/bottom pattern keeps its side.
    top_heavy = torch.zeros(64, 1, 32, 32)
    top_heavy[:, :, 4:12, 8:24] = 1.0
    moved = augment_batch(top_heavy, "hflip-affine", make_generator(2)).nan_to_num()
    rows = torch.arange(32).float()[:, None]
    centroid_y = (moved[:, 0] * rows).flatten(1).sum(1) / moved[:, 0].flatten(1).sum(1)
    assert (centroid_y < 15.5).all()
