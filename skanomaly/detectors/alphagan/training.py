"""alpha-GAN's training, declared on the adversarial engine: each iteration E, G, D and C
step in turn (the code's order), each with its own optimiser, on the terms of
:mod:`~skanomaly.detectors.alphagan.losses`. The iteration's random draws (the
encoder's noise eps and the prior latents z) are made once per batch and shared by the
four updates, as the code draws them once per ``train_on_batch``; each update
recomputes its networks' outputs with the weights the previous updates left."""

from contextlib import nullcontext
from numbers import Real

import torch
from sklearn.utils._param_validation import Interval

from ...training.adversarial import AdversarialNet, Update, real_batch_statistics
from ...training.random import randn
from .losses import fake_term, fooling_term, real_term, reconstruction_term

__all__ = ["AlphaGANNet"]


class AlphaGANNet(AdversarialNet):
    """skorch net of alpha-GAN's encoder, generator, image and code discriminators.

    Networks ``encoder_``, ``generator_``, ``discriminator_`` and
    ``code_discriminator_``; optimiser groups ``"encoder"``, ``"generator"``,
    ``"discriminator"`` and ``"code_discriminator"``. Each iteration, in order: E on
    ``reconstruction_weight * reconstruction + code_fooling`` (``train_loss_encoder``),
    G on ``reconstruction_weight * reconstruction + reconstruction_fooling +
    sample_fooling`` (``train_loss``), D on ``d_real + d_reconstruction + d_sample``
    (``train_loss_discriminator``), C on ``c_prior + c_encoded``
    (``train_loss_code_discriminator``).

    Parameters
    ----------
    encoder, generator, discriminator, code_discriminator : torch.nn.Module class or instance
    latent_dim : int, default=100
    reconstruction_weight : float, default=0.01
        lambda on the mean absolute reconstruction error (the code's).
    optimizer_encoder, optimizer_generator, optimizer_discriminator, optimizer_code_discriminator :
        torch optimiser class, default=torch.optim.Adam
    **kwargs
        As :class:`~skanomaly.training.adversarial.AdversarialNet`.
    """

    NETWORKS = ("encoder", "generator", "discriminator", "code_discriminator")
    OPTIMIZER_GROUPS = {
        "encoder": ("encoder",),
        "generator": ("generator",),
        "discriminator": ("discriminator",),
        "code_discriminator": ("code_discriminator",),
    }

    _parameter_constraints: dict = {"reconstruction_weight": [Interval(Real, 0, None, closed="left")]}

    def __init__(
        self,
        encoder,
        generator,
        discriminator,
        code_discriminator,
        *,
        latent_dim=100,
        reconstruction_weight=0.01,
        optimizer_encoder=torch.optim.Adam,
        optimizer_generator=torch.optim.Adam,
        optimizer_discriminator=torch.optim.Adam,
        optimizer_code_discriminator=torch.optim.Adam,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.generator = generator
        self.discriminator = discriminator
        self.code_discriminator = code_discriminator
        self.latent_dim = latent_dim
        self.reconstruction_weight = reconstruction_weight
        self.optimizer_encoder = optimizer_encoder
        self.optimizer_generator = optimizer_generator
        self.optimizer_discriminator = optimizer_discriminator
        self.optimizer_code_discriminator = optimizer_code_discriminator

    def schedule(self):
        reconstruction = {"reconstruction": self.reconstruction_weight}
        return (
            Update("encoder", {**reconstruction, "code_fooling": 1.0}),
            Update(
                "generator", {**reconstruction, "reconstruction_fooling": 1.0, "sample_fooling": 1.0}, record="loss"
            ),
            Update("discriminator", {"d_real": 1.0, "d_reconstruction": 1.0, "d_sample": 1.0}),
            Update("code_discriminator", {"c_prior": 1.0, "c_encoded": 1.0}),
        )

    def _draws(self, inputs, rng):
        """``(eps, z)`` of the batch, drawn once and shared by the iteration's updates."""
        if "eps" not in inputs:
            x = inputs["x"]
            shape = (len(x), int(self.latent_dim))
            inputs["eps"] = randn(shape, rng, device=x.device, dtype=x.dtype)
            inputs["z"] = randn(shape, rng, device=x.device, dtype=x.dtype)
        return inputs["eps"], inputs["z"]

    def encode(self, x, eps=None):
        """The code of ``x``: ``mean + exp(log_var / 2) * eps``, or the mean without ``eps``."""
        mean, log_var = self.encoder_(x)
        if eps is None:
            return mean
        return mean + torch.exp(0.5 * log_var) * eps

    def loss_terms(self, group, inputs, rng):
        x, roi = inputs["x"], inputs["roi"]
        eps, z = self._draws(inputs, rng)
        z_hat = self.encode(x, eps)
        if group == "code_discriminator":
            return {"c_prior": real_term(self.code_discriminator_(z)),
                    "c_encoded": fake_term(self.code_discriminator_(z_hat))}
        if group == "encoder":
            x_rec = torch.where(roi, self.generator_(z_hat), x)
            return {"reconstruction": reconstruction_term(x, x_rec, roi),
                    "code_fooling": fooling_term(self.code_discriminator_(z_hat))}
        x_rec = torch.where(roi, self.generator_(z_hat), x)
        x_gen = self.generator_(z)
        if group == "generator":
            return {"reconstruction": reconstruction_term(x, x_rec, roi),
                    "reconstruction_fooling": fooling_term(self.discriminator_(x_rec)),
                    "sample_fooling": fooling_term(self.discriminator_(x_gen))}
        # Minibatch discrimination's reference batch comes from real images only.
        with real_batch_statistics(self.discriminator_) if self.discriminator_.training else nullcontext():
            real_logits = self.discriminator_(x)
        return {"d_real": real_term(real_logits),
                "d_reconstruction": fake_term(self.discriminator_(x_rec)),
                "d_sample": fake_term(self.discriminator_(x_gen))}

