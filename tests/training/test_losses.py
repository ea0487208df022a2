"""Losses and scores leave pixels outside the region of interest out, exactly."""

import pytest
import torch

from skanomaly.detectors.autoencoders.losses import VAELoss, vae_loss
from skanomaly.training.losses import (
    MaskedReconstructionLoss,
    masked_mean,
    masked_reconstruction_loss,
    masked_topk_mean,
)


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 8, 8, generator=generator)
    roi = torch.ones_like(x, dtype=torch.bool)
    roi[:, :, :, :3] = False  # a band outside the ROI
    roi[2, :, 5:, :] = False  # and an image with a smaller ROI
    x_hat = torch.rand(4, 1, 8, 8, generator=generator).requires_grad_(True)
    return x, x_hat, roi


@pytest.mark.parametrize("kind", ["mse", "l1"])
def test_reconstruction_loss_has_zero_gradient_outside_the_roi(batch, kind):
    x, x_hat, roi = batch
    masked_reconstruction_loss(x, x_hat, roi, kind).backward()
    assert torch.count_nonzero(x_hat.grad[~roi]) == 0
    assert torch.count_nonzero(x_hat.grad[roi]) == roi.sum()


def test_reconstruction_loss_pools_roi_pixels_of_the_batch(batch):
    x, x_hat, roi = batch
    expected = ((x - x_hat)[roi] ** 2).mean()
    torch.testing.assert_close(MaskedReconstructionLoss("mse")(x_hat, x, roi), expected)
    # Values outside the ROI do not matter at all.
    changed = torch.where(roi, x, torch.full_like(x, 100.0))
    torch.testing.assert_close(masked_reconstruction_loss(changed, x_hat, roi), expected)


def test_vae_loss_has_zero_gradient_outside_the_roi(batch):
    x, x_hat, roi = batch
    mu = torch.zeros(4, 3, requires_grad=True)
    log_var = torch.zeros(4, 3, requires_grad=True)
    loss = VAELoss(kld_weight=0.5)((x_hat, mu + 0.3, log_var), x, roi)
    loss.backward()
    assert torch.count_nonzero(x_hat.grad[~roi]) == 0 and torch.count_nonzero(x_hat.grad[roi]) > 0
    # KL of N(0.3, 1) from N(0, 1) is 0.045 per dimension; divided by each image's ROI size.
    per_image = vae_loss(x, x_hat.detach(), mu.detach() + 0.3, log_var.detach(), roi, 0.5)
    n_roi = roi.flatten(1).sum(1)
    mse = ((x - x_hat.detach()) ** 2 * roi).flatten(1).sum(1) / n_roi
    torch.testing.assert_close(per_image, mse + 0.5 * 3 * 0.045 / n_roi)


def test_masked_mean_and_topk_ignore_outside_values(batch):
    x, _, roi = batch
    values = torch.where(roi, x, torch.full_like(x, 1e6)).requires_grad_(True)
    means = masked_mean(values, roi)
    torch.testing.assert_close(means[2], x[2][roi[2]].mean())
    top = masked_topk_mean(values, roi, 5)
    torch.testing.assert_close(top[0], x[0][roi[0]].topk(5).values.mean())
    (means.sum() + top.sum()).backward()
    assert torch.count_nonzero(values.grad[~roi]) == 0
    # k beyond the ROI averages the whole ROI.
    torch.testing.assert_close(masked_topk_mean(x, roi, 10_000), masked_mean(x, roi))
