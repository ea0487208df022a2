"""AnoGAN (Schlegl et al., 2017): a DCGAN of normal anatomy and a latent search per image.

``networks`` (the paper's DCGAN), ``losses`` (the search loss and the scores) and
``detector`` (:class:`AnoGANDetector`, on :class:`skanomaly.training.stages.GANNet`).
"""

from .detector import AnoGANDetector

__all__ = ["AnoGANDetector"]
