"""The anomaly detectors, one scikit-learn outlier detector per paper's system."""

from ._anogan import AnoGANDetector
from ._autoencoders import CAEDetector, VAEDetector
from ._fanogan import FAnoGANDetector

__all__ = ["AnoGANDetector", "CAEDetector", "FAnoGANDetector", "VAEDetector"]
