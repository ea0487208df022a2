"""Batched per-sample latent search: AnoGAN's mapping of images to the latent space.

AnoGAN scores an image by searching the latent ``z`` whose generated image
``G(z)`` is closest to it (a few hundred Adam steps per image) and using the final
loss as the anomaly score. A loop over images is slow; :func:`latent_search` runs the
searches of a whole batch at once, with exactly the arithmetic of the loop: one Adam
optimiser over a single ``(B, d)`` leaf tensor minimising the *sum* of the per-sample
losses. Row ``i`` of the sum's gradient is the gradient of sample ``i``'s own loss
(the samples do not interact: the generator is in eval mode), and Adam's update is
elementwise, so each row's moments and steps are those of an independent search of
that sample. The result therefore depends neither on the batch size nor on the order
of the samples.
"""

from numbers import Integral, Real

import torch

__all__ = ["latent_search"]


def _check_arguments(generator, z0, n_steps, lr, betas, clamp):
    if not isinstance(n_steps, Integral) or isinstance(n_steps, bool) or n_steps < 0:
        raise ValueError(f"n_steps must be an integer >= 0, got {n_steps!r}.")
    if not isinstance(lr, Real) or isinstance(lr, bool) or not lr > 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}.")
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}.")
    if clamp is not None and (len(clamp) != 2 or not clamp[0] < clamp[1]):
        raise ValueError(f"clamp must be None or (low, high) with low < high, got {clamp!r}.")
    if not isinstance(z0, torch.Tensor) or z0.dim() < 1 or not z0.is_floating_point():
        raise ValueError("z0 must be a floating-point tensor whose first dimension is the batch.")
    if torch.is_inference_mode_enabled() or z0.is_inference():
        raise RuntimeError(
            "latent_search optimises z by gradient descent and needs autograd, but it "
            "was called under torch.inference_mode() (or z0 was created there). Tensors "
            "created in inference mode can never take part in autograd, not even inside "
            "torch.enable_grad(): call latent_search outside inference mode, e.g. under "
            "torch.enable_grad(), and create z0 and the target images outside it too."
        )
    if isinstance(generator, torch.nn.Module):
        training = [name or type(generator).__name__ for name, m in generator.named_modules() if m.training]
        if training:
            raise ValueError(
                "The generator must be in eval mode (generator.eval()): in training mode "
                "BatchNorm normalises with batch statistics, which couples the samples of "
                "a batch and updates the running statistics. Modules in training mode: "
                + ", ".join(training[:5])
                + (" ..." if len(training) > 5 else "")
            )


def _per_sample(loss, batch_size):
    if not isinstance(loss, torch.Tensor) or loss.shape != (batch_size,):
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(
            f"per_sample_loss must return one loss per sample, shape ({batch_size},), got "
            f"{shape}. A batch mean would scale every sample's gradient by 1/B and make "
            "the search depend on the batch size."
        )
    return loss


def latent_search(generator, per_sample_loss, z0, n_steps, *, lr, betas=(0.9, 0.999), clamp=None):
    """Search one latent per sample by Adam on the sum of per-sample losses.

    Parameters
    ----------
    generator : torch.nn.Module or callable
        Maps latents ``(B, ...)`` to images. It must be in eval mode and is not
        changed: its parameters get no gradient (only ``z`` is differentiated), so it
        may be frozen (``requires_grad_(False)``) or not.
    per_sample_loss : callable
        ``per_sample_loss(x_hat, z) -> (B,)``: the loss of each sample given its
        generated image ``x_hat = generator(z)`` and latent ``z``. The target images
        live in the caller's closure, e.g. AnoGAN's
        ``(1 - lam) * residual(x, x_hat) + lam * discrimination(x, x_hat)``; it must
        treat samples independently (no batch statistics, no batch means).
    z0 : torch.Tensor of shape (B, ...)
        Initial latents, one row per sample. Not modified; its device and dtype are
        those of the search.
    n_steps : int
        Number of Adam steps (AnoGAN uses 500; 0 only evaluates the loss at ``z0``).
    lr : float
        Adam learning rate.
    betas : tuple of float, default=(0.9, 0.999)
        Adam's moment coefficients.
    clamp : None or (float, float), default=None
        Bounds ``z`` is projected onto after every step, e.g. ``(-1, 1)`` for AnoGAN,
        whose latent prior is uniform on ``[-1, 1]``. ``z0`` itself is not projected.

    Returns
    -------
    z : torch.Tensor
        The final latents, detached, shaped like ``z0``.
    loss : torch.Tensor of shape (B,)
        ``per_sample_loss`` at the final ``z`` (computed after the last step),
        detached.

    Notes
    -----
    Gradients are enabled inside (``torch.enable_grad()``), so the function may be
    called under ``torch.no_grad()``; it refuses to run under
    ``torch.inference_mode()``, whose tensors cannot take part in autograd. The Adam
    state is fresh at every call.

    Examples
    --------
    Recover the latent of an image that a linear generator produced:

    >>> import torch
    >>> generator = torch.nn.Linear(2, 4).eval().requires_grad_(False)
    >>> target = generator(torch.tensor([[0.5, -0.5]]))
    >>> def loss(x_hat, z):
    ...     return (x_hat - target).square().mean(1)
    >>> z, final = latent_search(generator, loss, torch.zeros(1, 2), 300, lr=0.05, clamp=(-1, 1))
    >>> bool(final[0] < 1e-4)
    True
    """
    _check_arguments(generator, z0, n_steps, lr, betas, clamp)
    batch_size = z0.shape[0]
    # A fresh leaf: the caller's z0 is neither modified nor part of any graph.
    z = z0.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=lr, betas=tuple(betas))
    with torch.enable_grad():
        for _ in range(n_steps):
            optimizer.zero_grad(set_to_none=True)
            loss = _per_sample(per_sample_loss(generator(z), z), batch_size)
            # The sum keeps each row's gradient that of its own sample's loss;
            # inputs=[z] keeps gradients out of the generator's (and any critic's)
            # parameters even where they require grad.
            loss.sum().backward(inputs=[z])
            optimizer.step()
            if clamp is not None:
                with torch.no_grad():
                    z.clamp_(clamp[0], clamp[1])
    with torch.no_grad():
        final_loss = _per_sample(per_sample_loss(generator(z), z), batch_size)
    return z.detach(), final_loss.detach()
