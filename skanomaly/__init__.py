"""skanomaly: deep unsupervised anomaly detectors for radiographs, as scikit-learn estimators.

Subpackages: :mod:`skanomaly.detectors`, :mod:`skanomaly.preprocessing`,
:mod:`skanomaly.datasets`; modules :mod:`skanomaly.io` (safe model files),
:mod:`skanomaly.metrics`, :mod:`skanomaly.model_selection` (normal-only grid search,
scorers, thresholds), :mod:`skanomaly.conformal` (calibrated thresholds with a
false-alarm guarantee), :mod:`skanomaly.plotting`, :mod:`skanomaly.parallel`
(scoring file archives, in-process or on a Dask cluster).
"""

__version__ = "0.1.0.dev0"

from . import conformal, datasets, detectors, metrics, model_selection, parallel, preprocessing  # noqa: E402
from .detectors import (  # noqa: E402
    AlphaGANDetector,
    AnoGANDetector,
    BiGANDetector,
    CAEDetector,
    FAnoGANDetector,
    HealthyGAN,
    OneClassAdversarialDetector,
    SyntheticAnomalyDetector,
    VAEDetector,
)
from .io import load_model, save_model  # noqa: E402

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
    "conformal",
    "datasets",
    "detectors",
    "load_model",
    "metrics",
    "model_selection",
    "parallel",
    "preprocessing",
    "save_model",
]
