"""alpha-GAN of the hand X-ray paper (Davletshina et al. 2020): a variational encoder, a
generator, an image discriminator and a code discriminator, trained together on normal
images.

``networks`` (E, G, D, C), ``losses`` (the four groups' terms and Table 1's scores),
``training`` (the net on :class:`skanomaly.training.adversarial.AdversarialNet`) and
``detector`` (:class:`AlphaGANDetector`).
"""

from .detector import AlphaGANDetector

__all__ = ["AlphaGANDetector"]
