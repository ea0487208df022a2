"""BiGAN of the hand X-ray paper (Davletshina et al. 2020): a generator, an encoder and a
joint discriminator of (image, code) pairs, trained together on normal images.

``networks`` (G, E, D(x, z)), ``losses`` (the adversarial terms and Table 1's scores),
``training`` (the net on :class:`skanomaly.training.adversarial.AdversarialNet`) and
``detector`` (:class:`BiGANDetector`).
"""

from .detector import BiGANDetector

__all__ = ["BiGANDetector"]
