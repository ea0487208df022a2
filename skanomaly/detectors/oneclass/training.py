"""Tang et al.'s training, declared on the adversarial engine: D steps on real vs
reconstructed images, then U and E together on the weighted sum of L_R, L_A, L_E and
L_F, every batch (:mod:`~skanomaly.detectors.oneclass.losses`)."""

import torch
from sklearn.utils._param_validation import Interval, StrOptions
from numbers import Real

from ...training.adversarial import AdversarialNet, Update
from ...training.random import randn
from .losses import (
    COMPONENTS,
    adversarial_term,
    discriminator_terms,
    encoding_loss,
    feature_loss,
    reconstruction_loss,
)

__all__ = ["OneClassAdversarialNet"]


class OneClassAdversarialNet(AdversarialNet):
    """skorch net of the U-Net autoencoder, the second encoder and the discriminator.

    Networks ``autoencoder_`` (U), ``encoder_`` (E) and ``discriminator_`` (D);
    optimiser groups ``"d"`` (D) and ``"u"`` (U and E, trained jointly, as the paper's
    end-to-end objective). Each batch: D's update on ``d_real + d_fake`` (recorded as
    ``train_loss_d``), then U and E's update on ``reconstruction_weight * reconstruction
    + adversarial_weight * adversarial + encoding_weight * encoding + feature_weight *
    feature`` (``train_loss``). An ablation (``components``) drops the updates and
    terms of the networks it leaves out; their networks are built but never trained.
    In training, U sees its input plus Gaussian noise of ``noise_std`` (in the
    networks' [-1, 1] range), D the clean image and the reconstruction, E the
    reconstruction. The reconstruction takes the input's values outside the region
    of interest, so no network sees a difference there.

    Parameters
    ----------
    autoencoder, encoder, discriminator : torch.nn.Module class or instance
    components : {"U", "U+E", "U+D", "U+D+E"}, default="U+D+E"
    noise_std : float, default=0.05
    reconstruction_weight, adversarial_weight, encoding_weight, feature_weight : float
        20, 4, 8 and 1 in the paper.
    optimizer_d, optimizer_u : torch optimiser class, default=torch.optim.Adam
    **kwargs
        As :class:`~skanomaly.training.adversarial.AdversarialNet`.
    """

    NETWORKS = ("autoencoder", "encoder", "discriminator")
    OPTIMIZER_GROUPS = {"d": ("discriminator",), "u": ("autoencoder", "encoder")}

    _parameter_constraints: dict = {
        "components": [StrOptions(set(COMPONENTS))],
        "noise_std": [Interval(Real, 0, None, closed="left")],
        "reconstruction_weight": [Interval(Real, 0, None, closed="left")],
        "adversarial_weight": [Interval(Real, 0, None, closed="left")],
        "encoding_weight": [Interval(Real, 0, None, closed="left")],
        "feature_weight": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(
        self,
        autoencoder,
        encoder,
        discriminator,
        *,
        components="U+D+E",
        noise_std=0.05,
        reconstruction_weight=20.0,
        adversarial_weight=4.0,
        encoding_weight=8.0,
        feature_weight=1.0,
        optimizer_d=torch.optim.Adam,
        optimizer_u=torch.optim.Adam,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.autoencoder = autoencoder
        self.encoder = encoder
        self.discriminator = discriminator
        self.components = components
        self.noise_std = noise_std
        self.reconstruction_weight = reconstruction_weight
        self.adversarial_weight = adversarial_weight
        self.encoding_weight = encoding_weight
        self.feature_weight = feature_weight
        self.optimizer_d = optimizer_d
        self.optimizer_u = optimizer_u

    @property
    def uses_discriminator(self):
        return "D" in self.components

    @property
    def uses_encoder(self):
        return "E" in self.components

    def schedule(self):
        objective = {"reconstruction": self.reconstruction_weight}
        if self.uses_discriminator:
            objective["adversarial"] = self.adversarial_weight
        if self.uses_encoder:
            objective["encoding"] = self.encoding_weight
            objective["feature"] = self.feature_weight
        updates = [Update("u", objective, record="loss")]
        if self.uses_discriminator:
            updates.insert(0, Update("d", {"d_real": 1.0, "d_fake": 1.0}, record="loss_d"))
        return tuple(updates)

    def reconstruct(self, x, roi, rng=None):
        """``(x', z, U_E's feature maps)``; ``x'`` takes ``x``'s values outside ``roi``.
        With ``rng`` (training), U's input gets Gaussian noise of ``noise_std``."""
        noisy = x
        if rng is not None and self.noise_std:
            noisy = x + self.noise_std * randn(tuple(x.shape), rng, device=x.device)
        x_rec, z, features = self.autoencoder_(noisy)
        return torch.where(roi, x_rec, x), z, features

    def loss_terms(self, group, inputs, rng):
        x, roi = inputs["x"], inputs["roi"]
        x_rec, z, features = self.reconstruct(x, roi, rng if self.autoencoder_.training else None)
        if group == "d":
            return discriminator_terms(self.discriminator_(x), self.discriminator_(x_rec))
        terms = {"reconstruction": reconstruction_loss(x, x_rec, roi)}
        if self.uses_discriminator:
            terms["adversarial"] = adversarial_term(self.discriminator_(x_rec))
        if self.uses_encoder:
            z_prime, features_prime = self.encoder_(x_rec)
            terms["encoding"] = encoding_loss(z, z_prime)
            terms["feature"] = feature_loss(features, features_prime)
        return terms
