"""skorch nets of the detectors: the only place where training steps happen.

:class:`ImageNet` is the pattern every detector's training stage follows: a
``NeuralNet`` whose ``X`` is ``(n, 1, H, W)`` float32 with NaN outside the region of
interest. It fills NaN before the module sees the batch and hands the ROI to the
criterion, so losses ignore pixels outside it. GAN detectors subclass it with their own
``train_step`` and register extra modules and optimisers the skorch way (names ending
in ``_``, created in ``initialize_module`` / ``initialize_optimizer``).
"""

import torch
from skorch import NeuralNet
from skorch.dataset import unpack_data
from skorch.utils import to_tensor

from .augment import augment_batch

__all__ = ["ImageNet"]


class ImageNet(NeuralNet):
    """skorch ``NeuralNet`` for images with NaN outside the region of interest.

    Parameters
    ----------
    *args, **kwargs
        As :class:`skorch.NeuralNet`. The criterion is called as
        ``criterion(y_pred, x, roi)`` with ``x`` NaN-filled and ``roi`` boolean.
    augment : None, "default" or "advanced"
        Batch augmentation applied in training steps only
        (:func:`skanomaly.training.augment.augment_batch`).
    """

    def __init__(self, *args, augment=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.augment = augment

    @staticmethod
    def split_roi(x):
        """Return ``(x with NaN filled by 0, roi mask)``."""
        roi = ~torch.isnan(x)
        return torch.nan_to_num(x, nan=0.0), roi

    def infer(self, x, **fit_params):
        x = to_tensor(x, device=self.device)
        return self.module_(torch.nan_to_num(x, nan=0.0), **fit_params)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        filled, roi = self.split_roi(to_tensor(X, device=self.device))
        return self.criterion_(y_pred, filled, roi)

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        Xi, yi = unpack_data(batch)
        Xi = augment_batch(to_tensor(Xi, device=self.device), self.augment)
        y_pred = self.infer(Xi, **fit_params)
        loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        loss.backward()
        return {"loss": loss, "y_pred": y_pred}
