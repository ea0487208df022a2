"""HealthyGAN (Rahman Siddiquee et al., 2022): a generator that turns any chest film
into a healthy-looking one through an attention mask, trained with a PatchGAN critic
on a healthy set and an unlabelled mixed set.

``networks`` (generator, critic), ``losses`` (the composition, the critic's and the
generator's terms, the focus loss and the score), ``training`` (the net on
:class:`skanomaly.training.adversarial.AdversarialNet`) and ``detector``
(:class:`HealthyGAN`).
"""

from .detector import HealthyGAN

__all__ = ["HealthyGAN"]
