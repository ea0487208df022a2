"""Batched latent search: the same result as one search per sample, generator untouched."""

import pytest
import torch
from torch import nn

from skanomaly.training.latent_search import latent_search
from skanomaly.training.random import make_generator, rand, seeded_initialisation

LATENT_DIM = 8


class TinyDCGANGenerator(nn.Module):
    """DCGAN-like: latent -> 2x2 -> 4x4 -> 8x8, BatchNorm, tanh."""

    def __init__(self, latent_dim=LATENT_DIM):
        super().__init__()
        self.project = nn.Linear(latent_dim, 16 * 2 * 2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.ConvTranspose2d(16, 8, 4, 2, 1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.ConvTranspose2d(8, 1, 4, 2, 1),
            nn.Tanh(),
        )

    def forward(self, z):
        return self.body(self.project(z).reshape(-1, 16, 2, 2))


@pytest.fixture(scope="module")
def networks():
    with seeded_initialisation(0):
        generator = TinyDCGANGenerator()
        features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.LeakyReLU(0.2))
    # Non-trivial BatchNorm running statistics, as after training.
    with torch.no_grad():
        for seed in range(3):
            generator(torch.randn(16, LATENT_DIM, generator=make_generator(seed)))
    generator.eval().requires_grad_(False)
    features.eval().requires_grad_(False)
    return generator, features


def anogan_loss(target, features, weight=0.1):
    """AnoGAN-style loss: L1 residual + feature matching, one value per sample."""

    def loss(x_hat, z):
        residual = (target - x_hat).abs().flatten(1).mean(1)
        discrimination = (features(target) - features(x_hat)).abs().flatten(1).mean(1)
        return (1 - weight) * residual + weight * discrimination

    return loss


@pytest.fixture(scope="module")
def problem(networks):
    generator, features = networks
    targets = rand((6, 1, 8, 8), make_generator(1)) * 2 - 1
    z0 = rand((6, LATENT_DIM), make_generator(2)) * 2 - 1
    return generator, features, targets, z0


SEARCH = dict(n_steps=25, lr=0.05, betas=(0.9, 0.999), clamp=(-1, 1))


def _search(generator, features, targets, z0, **kwargs):
    return latent_search(generator, anogan_loss(targets, features), z0, **{**SEARCH, **kwargs})


def _close(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_batched_search_equals_one_search_per_sample(problem):
    generator, features, targets, z0 = problem
    z, loss = _search(generator, features, targets, z0)
    assert z.shape == z0.shape and loss.shape == (6,)
    for i in range(len(z0)):
        z_i, loss_i = _search(generator, features, targets[i : i + 1], z0[i : i + 1])
        _close(z[i : i + 1], z_i)
        _close(loss[i : i + 1], loss_i)
    # The search moved: a trivial "equal" (nothing happened) would not pass this.
    assert (z - z0).abs().max() > 0.1


def test_search_does_not_depend_on_order_or_batch_size(problem):
    generator, features, targets, z0 = problem
    z, loss = _search(generator, features, targets, z0)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    z_perm, loss_perm = _search(generator, features, targets[order], z0[order])
    _close(z_perm, z[order])
    _close(loss_perm, loss[order])
    z_a, loss_a = _search(generator, features, targets[:2], z0[:2])
    z_b, loss_b = _search(generator, features, targets[2:], z0[2:])
    _close(torch.cat([z_a, z_b]), z)
    _close(torch.cat([loss_a, loss_b]), loss)


def test_generator_is_left_unchanged(problem):
    generator, features, targets, z0 = problem
    before = {name: t.clone() for name, t in generator.state_dict().items()}
    z0_before = z0.clone()
    _search(generator, features, targets, z0)
    after = generator.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert not any(p.requires_grad for p in generator.parameters())
    assert all(p.grad is None for p in generator.parameters())
    assert not any(m.training for m in generator.modules())
    assert torch.equal(z0, z0_before)


def test_generator_that_requires_grad_gets_no_gradient(problem):
    _, features, targets, z0 = problem
    with seeded_initialisation(3):
        generator = TinyDCGANGenerator().eval()
    latent_search(generator, anogan_loss(targets, features), z0, 3, lr=0.05)
    assert all(p.requires_grad and p.grad is None for p in generator.parameters())


def test_clamp_keeps_latents_in_bounds(problem):
    generator, features, targets, z0 = problem
    z, _ = _search(generator, features, targets, z0, lr=0.5, n_steps=20)
    assert z.min() >= -1 and z.max() <= 1
    # The bound was reached, so the projection did something.
    assert z.abs().max() == 1
    z_free, _ = _search(generator, features, targets, z0, lr=0.5, n_steps=20, clamp=None)
    assert z_free.abs().max() > 1


def test_search_recovers_a_latent_the_generator_can_produce(networks):
    generator, features = networks
    z_true = rand((4, LATENT_DIM), make_generator(5)) * 1.6 - 0.8
    with torch.no_grad():
        targets = generator(z_true)
    loss = anogan_loss(targets, features)
    z0 = rand((4, LATENT_DIM), make_generator(6)) * 2 - 1
    z_start, initial = latent_search(generator, loss, z0, 0, lr=0.05)
    assert torch.equal(z_start, z0)
    z, final = latent_search(generator, loss, z0, 300, lr=0.05, clamp=(-1, 1))
    assert (final < 0.2 * initial).all(), (initial, final)
    # Closer to the latent that produced the target than where it started.
    assert ((z - z_true).norm(dim=1) < (z0 - z_true).norm(dim=1)).all()


def test_search_runs_under_no_grad_and_refuses_inference_mode(problem):
    generator, features, targets, z0 = problem
    expected = _search(generator, features, targets, z0, n_steps=3)
    with torch.no_grad():
        result = _search(generator, features, targets, z0, n_steps=3)
    _close(result[0], expected[0])
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        _search(generator, features, targets, z0, n_steps=3)
    with torch.inference_mode():
        z0_inference = z0.clone()
    with pytest.raises(RuntimeError, match="inference_mode"):
        _search(generator, features, targets, z0_inference, n_steps=3)


def test_bad_arguments_are_refused(problem):
    generator, features, targets, z0 = problem
    with pytest.raises(ValueError, match=r"one loss per sample, shape \(6,\)"):
        latent_search(generator, lambda x_hat, z: (x_hat - targets).abs().mean(), z0, 2, lr=0.1)
    with seeded_initialisation(4):
        in_training_mode = TinyDCGANGenerator()
    with pytest.raises(ValueError, match="eval mode"):
        latent_search(in_training_mode, anogan_loss(targets, features), z0, 2, lr=0.1)
    with pytest.raises(ValueError, match="n_steps"):
        _search(generator, features, targets, z0, n_steps=-1)
    with pytest.raises(ValueError, match="clamp"):
        _search(generator, features, targets, z0, clamp=(1, -1))
    with pytest.raises(ValueError, match="lr"):
        _search(generator, features, targets, z0, lr=0)
