"""The anomaly detectors, one scikit-learn outlier detector per paper's system.

Each paper has one folder (its networks, its loss and score equations, its training
declaration and its estimator); ``__all__`` here is the list of detectors that model
files, the top-level namespace and the test tables are built from.
"""

from .alphagan import AlphaGANDetector
from .anogan import AnoGANDetector
from .autoencoders import CAEDetector, VAEDetector
from .bigan import BiGANDetector
from .fanogan import FAnoGANDetector
from .healthygan import HealthyGAN
from .oneclass import OneClassAdversarialDetector
from .synthetic import SyntheticAnomalyDetector

__all__ = [
    "AlphaGANDetector",
    "AnoGANDetector",
    "BiGANDetector",
    "CAEDetector",
    "FAnoGANDetector",
    "HealthyGAN",
    "OneClassAdversarialDetector",
    "SyntheticAnomalyDetector",
    "VAEDetector",
]
