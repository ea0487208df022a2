"""skanomaly: deep unsupervised anomaly detectors for radiographs, as scikit-learn estimators."""
__version__ = "0.1.0.dev0"
