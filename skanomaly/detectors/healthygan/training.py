"""HealthyGAN's training, declared on the adversarial engine: the critic steps every
iteration on real healthy images against translated unlabelled ones (WGAN-GP), the
generator every second iteration on its adversarial, identity, reconstruction and
focus terms (:mod:`~skanomaly.detectors.healthygan.losses`).

The known-healthy images B are the net's training data; the unlabelled mix A is the
engine's second stream (``fit(B, unlabelled=A)``), a batch of A as large as each
batch of B, drawn from a seeded shuffle of its own.
"""

from numbers import Integral, Real

import torch
from sklearn.utils._param_validation import Interval

from ...training.adversarial import AdversarialNet, Update
from ...training.penalties import gradient_penalty
from .losses import critic_terms, generator_terms, translate

__all__ = ["HealthyGANNet"]

# Terms that need the unlabelled stream, which validation batches do not have.
_UNLABELLED_CRITIC_TERMS = ("critic_fake", "gradient_penalty")
_UNLABELLED_GENERATOR_TERMS = ("adversarial_unlabelled", "reconstruction", "focus_unlabelled")


class HealthyGANNet(AdversarialNet):
    """skorch net of HealthyGAN's generator and PatchGAN critic.

    Networks ``generator_`` and ``critic_``; optimiser groups ``"critic"`` and
    ``"generator"``. Each iteration the critic steps on ``critic_real + critic_fake +
    gp_weight * gradient_penalty`` (``train_loss_critic``); every ``n_critic``-th
    iteration the generator steps on ``adversarial_unlabelled + adversarial_normal +
    identity_weight * identity + reconstruction_weight * reconstruction +
    focus_weight / 2 * (focus_unlabelled + focus_normal)`` (``train_loss``).

    Parameters
    ----------
    generator, critic : torch.nn.Module class or instance
    gp_weight : float, default=10.0
    identity_weight, reconstruction_weight : float, default=1.0
    focus_weight : float, default=0.1
    focus_size_weight, focus_binary_weight : float, default=1.0
        The two weights inside the focus loss (eq. 7).
    n_critic : int, default=2
        Critic steps per generator step.
    optimizer_critic, optimizer_generator : torch optimiser class, default=torch.optim.Adam
    **kwargs
        As :class:`~skanomaly.training.adversarial.AdversarialNet`.
    """

    NETWORKS = ("generator", "critic")
    OPTIMIZER_GROUPS = {"critic": ("critic",), "generator": ("generator",)}

    _parameter_constraints: dict = {
        "gp_weight": [Interval(Real, 0, None, closed="left")],
        "identity_weight": [Interval(Real, 0, None, closed="left")],
        "reconstruction_weight": [Interval(Real, 0, None, closed="left")],
        "focus_weight": [Interval(Real, 0, None, closed="left")],
        "focus_size_weight": [Interval(Real, 0, None, closed="left")],
        "focus_binary_weight": [Interval(Real, 0, None, closed="left")],
        "n_critic": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        generator,
        critic,
        *,
        gp_weight=10.0,
        identity_weight=1.0,
        reconstruction_weight=1.0,
        focus_weight=0.1,
        focus_size_weight=1.0,
        focus_binary_weight=1.0,
        n_critic=2,
        optimizer_critic=torch.optim.Adam,
        optimizer_generator=torch.optim.Adam,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.generator = generator
        self.critic = critic
        self.gp_weight = gp_weight
        self.identity_weight = identity_weight
        self.reconstruction_weight = reconstruction_weight
        self.focus_weight = focus_weight
        self.focus_size_weight = focus_size_weight
        self.focus_binary_weight = focus_binary_weight
        self.n_critic = n_critic
        self.optimizer_critic = optimizer_critic
        self.optimizer_generator = optimizer_generator

    def schedule(self):
        half_focus = self.focus_weight / 2.0
        return (
            Update(
                "critic",
                {"critic_real": 1.0, "critic_fake": 1.0, "gradient_penalty": self.gp_weight},
                record="loss_critic",
                optional=_UNLABELLED_CRITIC_TERMS,
            ),
            Update(
                "generator",
                {
                    "adversarial_unlabelled": 1.0,
                    "adversarial_normal": 1.0,
                    "identity": self.identity_weight,
                    "reconstruction": self.reconstruction_weight,
                    "focus_unlabelled": half_focus,
                    "focus_normal": half_focus,
                },
                every=self.n_critic,
                record="loss",
                optional=_UNLABELLED_GENERATOR_TERMS,
            ),
        )

    def translate(self, x, roi):
        """``(x^, G_int(x), m)`` of a batch in the networks' range."""
        healthy, mask = self.generator_(x)
        return translate(x, healthy, mask, roi), healthy, mask

    def loss_terms(self, group, inputs, rng):
        x_b, roi_b = inputs["x"], inputs["roi"]
        x_a, roi_a = inputs["unlabelled"], inputs["unlabelled_roi"]
        if group == "critic":
            fake = None if x_a is None else self.translate(x_a, roi_a)[0]
            terms = critic_terms(self.critic_(x_b), None if fake is None else self.critic_(fake))
            if fake is not None:
                terms["gradient_penalty"] = gradient_penalty(self.critic_, x_b, fake, rng)
            return terms
        streams = {}
        for name, x, roi in (("normal", x_b, roi_b), ("unlabelled", x_a, roi_a)):
            if x is None:
                streams[name] = None
                continue
            translated, healthy, mask = self.translate(x, roi)
            streams[name] = dict(x=x, roi=roi, healthy=healthy, mask=mask, critic=self.critic_(translated))
        return generator_terms(
            streams["normal"], streams["unlabelled"], (self.focus_size_weight, self.focus_binary_weight)
        )
