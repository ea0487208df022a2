"""Tang et al. (ISBI 2019), one-class adversarial learning for chest X-rays: a U-Net
autoencoder, a second encoder and a discriminator trained together on normal images.

``networks`` (U, E, D), ``losses`` (L_R, L_A, L_E, L_F and the score of eq. 6),
``training`` (the net on :class:`skanomaly.training.adversarial.AdversarialNet`) and
``detector`` (:class:`OneClassAdversarialDetector`).
"""

from .detector import OneClassAdversarialDetector

__all__ = ["OneClassAdversarialDetector"]
