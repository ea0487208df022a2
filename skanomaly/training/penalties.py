"""Regularisers of Wasserstein GAN critics: gradient penalty and drift penalty.

:func:`gradient_penalty` is the penalty of WGAN-GP (Gulrajani et al., 2017), used by
f-AnoGAN and P-AnoGAN; :func:`drift_penalty` is the drift term of progressive GANs
(Karras et al., 2018), used by P-AnoGAN, which keeps the critic's scores of real
images from drifting far from zero. :class:`skanomaly.training.stages.GANNet` adds
both to its critic loss with ``loss="wgan-gp"``.
"""

import torch

from .random import rand

__all__ = ["gradient_penalty", "drift_penalty"]


def _check_autograd_available(*tensors):
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "gradient_penalty needs autograd, but it was called under "
            "torch.inference_mode(): call it where gradients can be recorded (training "
            "steps, or under torch.enable_grad())."
        )
    if any(t.is_inference() for t in tensors):
        raise RuntimeError(
            "gradient_penalty got tensors created under torch.inference_mode(); such "
            "tensors can never take part in autograd: create real and fake outside "
            "inference mode."
        )


def gradient_penalty(critic, real, fake, generator):
    """WGAN-GP gradient penalty of ``critic`` between real and fake samples.

    For one ``eps ~ U(0, 1)`` per sample, the critic is differentiated at the
    interpolate ``x = eps * real + (1 - eps) * fake`` and the penalty is the mean over
    samples of ``(||grad_x critic(x)||_2 - 1) ** 2``, the norm taken over all
    non-batch dimensions (the whole image).

    The gradient is taken with ``create_graph=True``, so the penalty is differentiable
    with respect to the critic's parameters and can be added to the critic loss.
    ``real`` and ``fake`` are detached: the penalty trains the critic only (in the
    reference implementation the generator's optimiser never sees this term).

    Parameters
    ----------
    critic : callable
        Maps a batch shaped like ``real`` to scores, one per sample (any shape whose
        sum is the sum of the per-sample scores, e.g. ``(B,)`` or ``(B, 1)``).
    real, fake : torch.Tensor of shape (B, ...)
        Real and generated samples of the same shape, dtype and device.
    generator : torch.Generator
        CPU generator the interpolation weights are drawn from (never torch's global
        one; see :mod:`skanomaly.training.random`).

    Returns
    -------
    penalty : torch.Tensor
        Scalar, differentiable with respect to the critic's parameters.

    Examples
    --------
    A linear critic ``<w, x>`` has gradient ``w`` everywhere, so its penalty is
    ``(||w|| - 1) ** 2`` whatever the samples:

    >>> import torch
    >>> from skanomaly.training.random import make_generator
    >>> critic = torch.nn.Linear(4, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = critic.weight.copy_(torch.tensor([[2.0, 0.0, 0.0, 0.0]]))
    >>> real, fake = torch.ones(3, 4), torch.zeros(3, 4)
    >>> gradient_penalty(critic, real, fake, make_generator(0)).item()
    1.0
    """
    if real.shape != fake.shape:
        raise ValueError(
            f"real and fake must have the same shape, got {tuple(real.shape)} and "
            f"{tuple(fake.shape)}."
        )
    _check_autograd_available(real, fake)
    # One weight per sample, broadcast over the sample's other dimensions.
    eps_shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    eps = rand(eps_shape, generator, device=real.device, dtype=real.dtype)
    # enable_grad: a validation step may call this under torch.no_grad().
    with torch.enable_grad():
        interpolates = (eps * real.detach() + (1 - eps) * fake.detach()).requires_grad_(True)
        scores = critic(interpolates)
        (gradients,) = torch.autograd.grad(scores.sum(), interpolates, create_graph=True)
        norms = torch.linalg.vector_norm(gradients.flatten(1), ord=2, dim=1)
        return (norms - 1.0).square().mean()


def drift_penalty(real_scores):
    """Drift penalty of progressive GANs: ``mean(real_scores ** 2)``.

    Added to the critic loss with a small weight (0.001 in Karras et al. and
    P-AnoGAN), it keeps the critic's output near zero, which a Wasserstein loss alone
    leaves free to drift.

    Parameters
    ----------
    real_scores : torch.Tensor
        Critic scores of the real samples of a batch.

    Returns
    -------
    penalty : torch.Tensor
        Scalar.

    Examples
    --------
    >>> import torch
    >>> float(drift_penalty(torch.tensor([1.0, -3.0])))
    5.0
    """
    return real_scores.square().mean()
