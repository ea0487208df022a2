"""Self-supervised synthetic-anomaly detector (the FPI / NSA family), built for films
from other acquisitions than the training films.

``synthesis`` (foreign patch interpolation and opacities pasted into normal films),
``networks`` (intensity normalisation and the U-Net), ``losses`` (the segmentation
loss and the image scores), ``training`` (the skorch net) and ``detector``
(:class:`SyntheticAnomalyDetector`).
"""

from .detector import SyntheticAnomalyDetector

__all__ = ["SyntheticAnomalyDetector"]
