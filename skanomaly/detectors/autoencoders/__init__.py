"""The autoencoders of the hand X-ray paper (Davletshina et al., 2020): CAE and VAE.

``networks`` (the convolutional autoencoder and VAE), ``losses`` (training losses
and reconstruction scores) and ``detector`` (:class:`CAEDetector`,
:class:`VAEDetector`, on :class:`skanomaly.training.nets.ROINet`).
"""

from .detector import CAEDetector, VAEDetector

__all__ = ["CAEDetector", "VAEDetector"]
