"""f-AnoGAN (Schlegl et al., 2019) and P-AnoGAN (Bhatt et al., 2021).

``networks`` (f-AnoGAN's residual WGAN-GP and critic encoder), ``progressive``
(P-AnoGAN's progressive GAN), ``encoders`` (ResNet / DenseNet encoders), ``losses``
(the izi / ziz / izif / izizf losses and the scores), ``training`` (the progressive
schedule, the encoder stage and its epoch selection) and ``detector``
(:class:`FAnoGANDetector`).
"""

from .detector import FAnoGANDetector
from .training import BestValidationAUC

__all__ = ["BestValidationAUC", "FAnoGANDetector"]
