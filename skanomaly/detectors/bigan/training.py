"""BiGAN's training, declared on the adversarial engine: each iteration D steps on real
pairs ``(x, E(x))`` against generated pairs ``(G(z), z)``, then G and E step together
(one optimiser, as the code's) on the same pairs with the labels swapped
(:mod:`~skanomaly.detectors.bigan.losses`). Both updates of an iteration see the same
latents z, drawn once per batch from the net's stream, as the code draws them once per
``train_on_batch``."""

import torch
from sklearn.utils._param_validation import StrOptions

from ...training.adversarial import AdversarialNet, Update
from ...training.random import randn
from .losses import ADVERSARIAL_LOSSES, discriminator_terms, generator_encoder_terms

__all__ = ["BiGANNet"]


class BiGANNet(AdversarialNet):
    """skorch net of BiGAN's generator, encoder and joint discriminator.

    Networks ``generator_``, ``encoder_`` and ``discriminator_``; optimiser groups
    ``"discriminator"`` (D) and ``"generator_encoder"`` (G and E). Each iteration D
    steps on ``d_real + d_fake`` (``train_loss_discriminator``), then G and E on
    ``generator + encoder`` (``train_loss``).

    Parameters
    ----------
    generator, encoder, discriminator : torch.nn.Module class or instance
    latent_dim : int, default=100
        Size of the latents drawn from N(0, I) (the generator's input).
    adversarial_loss : {"bce", "hinge"}, default="bce"
    optimizer_discriminator, optimizer_generator_encoder : torch optimiser class, default=torch.optim.Adam
    **kwargs
        As :class:`~skanomaly.training.adversarial.AdversarialNet`.
    """

    NETWORKS = ("generator", "encoder", "discriminator")
    OPTIMIZER_GROUPS = {"discriminator": ("discriminator",), "generator_encoder": ("generator", "encoder")}

    _parameter_constraints: dict = {"adversarial_loss": [StrOptions(set(ADVERSARIAL_LOSSES))]}

    def __init__(
        self,
        generator,
        encoder,
        discriminator,
        *,
        latent_dim=100,
        adversarial_loss="bce",
        optimizer_discriminator=torch.optim.Adam,
        optimizer_generator_encoder=torch.optim.Adam,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.generator = generator
        self.encoder = encoder
        self.discriminator = discriminator
        self.latent_dim = latent_dim
        self.adversarial_loss = adversarial_loss
        self.optimizer_discriminator = optimizer_discriminator
        self.optimizer_generator_encoder = optimizer_generator_encoder

    def schedule(self):
        return (
            Update("discriminator", {"d_real": 1.0, "d_fake": 1.0}),
            Update("generator_encoder", {"generator": 1.0, "encoder": 1.0}, record="loss"),
        )

    def latents(self, inputs, rng):
        """The batch's latents z, drawn once and shared by the iteration's updates."""
        if "z" not in inputs:
            x = inputs["x"]
            inputs["z"] = randn((len(x), int(self.latent_dim)), rng, device=x.device, dtype=x.dtype)
        return inputs["z"]

    def pair_logits(self, inputs, rng):
        """``(D(x, E(x)), D(G(z), z))``: the logits of the real and the generated pairs."""
        x, z = inputs["x"], self.latents(inputs, rng)
        real = self.discriminator_(x, self.encoder_(x))
        fake = self.discriminator_(self.generator_(z), z)
        return real, fake

    def loss_terms(self, group, inputs, rng):
        real, fake = self.pair_logits(inputs, rng)
        if group == "discriminator":
            return discriminator_terms(real, fake, self.adversarial_loss)
        return generator_encoder_terms(real, fake, self.adversarial_loss)
