"""WGAN-GP gradient penalty and drift penalty against hand computations."""

import pytest
import torch

from skanomaly.training.penalties import drift_penalty, gradient_penalty
from skanomaly.training.random import make_generator, rand


class LinearCritic(torch.nn.Module):
    """critic(x) = <w, x> per sample: its input gradient is w everywhere."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(w.clone())

    def forward(self, x):
        return x.flatten(1) @ self.w


def _samples(seed, shape=(5, 1, 3, 3)):
    g = make_generator(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_critic_penalty_is_norm_of_weights_minus_one_squared(seed):
    w = torch.randn(9, generator=make_generator(100 + seed))
    real, fake = _samples(seed)
    penalty = gradient_penalty(LinearCritic(w), real, fake, make_generator(seed))
    expected = (torch.linalg.vector_norm(w) - 1) ** 2
    torch.testing.assert_close(penalty, expected, rtol=1e-6, atol=0)


def test_penalty_is_differentiable_with_the_analytic_gradient():
    w = torch.randn(9, generator=make_generator(7))
    critic = LinearCritic(w)
    real, fake = _samples(3)
    gradient_penalty(critic, real, fake, make_generator(0)).backward()
    norm = torch.linalg.vector_norm(w)
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    torch.testing.assert_close(critic.w.grad, 2 * (norm - 1) * w / norm, rtol=1e-5, atol=1e-7)


def test_penalty_interpolates_per_sample_and_takes_the_norm_over_the_whole_sample():
    # critic(x) = ||x||^2 / 2 has gradient x: the penalty is the mean over samples of
    # (||eps_i real_i + (1 - eps_i) fake_i|| - 1)^2 with one eps per sample.
    real, fake = _samples(4, shape=(6, 2, 3, 3))
    penalty = gradient_penalty(lambda x: 0.5 * x.square().flatten(1).sum(1), real, fake, make_generator(11))
    eps = rand((6, 1, 1, 1), make_generator(11))
    interpolates = eps * real + (1 - eps) * fake
    expected = (torch.linalg.vector_norm(interpolates.flatten(1), dim=1) - 1).square().mean()
    torch.testing.assert_close(penalty, expected, rtol=1e-6, atol=0)


def test_penalty_draws_only_from_its_generator():
    real, fake = _samples(5)
    critic = lambda x: 0.5 * x.square().flatten(1).sum(1)  # noqa: E731
    global_state = torch.get_rng_state()
    first = gradient_penalty(critic, real, fake, make_generator(3))
    second = gradient_penalty(critic, real, fake, make_generator(3))
    other = gradient_penalty(critic, real, fake, make_generator(4))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert torch.equal(torch.get_rng_state(), global_state)


def test_penalty_works_under_no_grad_and_refuses_inference_mode():
    w = torch.randn(9, generator=make_generator(1))
    real, fake = _samples(0)
    with torch.no_grad():
        penalty = gradient_penalty(LinearCritic(w), real, fake, make_generator(0))
    torch.testing.assert_close(penalty, (torch.linalg.vector_norm(w) - 1) ** 2, rtol=1e-6, atol=0)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        gradient_penalty(LinearCritic(w), real, fake, make_generator(0))
    with torch.inference_mode():
        real_inference = real.clone()
    with pytest.raises(RuntimeError, match="inference mode"):
        gradient_penalty(LinearCritic(w), real_inference, fake, make_generator(0))


def test_penalty_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        gradient_penalty(lambda x: x.sum(1), torch.zeros(3, 4), torch.zeros(2, 4), make_generator(0))


def test_drift_penalty_is_mean_square_with_its_gradient():
    scores = torch.tensor([1.0, -3.0, 0.5, 2.0], requires_grad=True)
    penalty = drift_penalty(scores)
    torch.testing.assert_close(penalty, torch.tensor((1 + 9 + 0.25 + 4) / 4))
    penalty.backward()
    torch.testing.assert_close(scores.grad, 2 * scores.detach() / 4)
