"""The training net of :class:`~skanomaly.detectors.SyntheticAnomalyDetector`.

Each training step pastes synthetic anomalies (:mod:`.synthesis`) into a batch of
normal films and fits the segmentation network to the pasted share. Validation
batches get anomalies from a generator reset at every epoch, so the validation loss
of each epoch is measured on the same synthetic task and epochs can be compared.
"""

import torch
from skorch.dataset import unpack_data
from skorch.utils import to_tensor

from ...training.augment import augment_batch
from ...training.nets import ROINet
from ...training.random import make_generator, stream_seeds
from .synthesis import synthesize_anomalies

__all__ = ["SyntheticAnomalyNet"]


class SyntheticAnomalyNet(ROINet):
    """:class:`~skanomaly.training.nets.ROINet` whose step segments synthetic anomalies.

    Parameters
    ----------
    anomaly_kinds : sequence of {"patch", "opacity", "mottled"}
    anomaly_probability : float
    max_anomaly_size : float
        Passed to :func:`~skanomaly.detectors.synthetic.synthesis.synthesize_anomalies`.
    *args, **kwargs
        As :class:`~skanomaly.training.nets.ROINet`; the module is called as
        ``module(x, roi)`` and the criterion as ``criterion(logits, target, roi)``
        (:class:`~skanomaly.detectors.synthetic.losses.SegmentationLoss`).
    """

    def __init__(self, *args, anomaly_kinds=("patch", "opacity"), anomaly_probability=0.75,
                 max_anomaly_size=1 / 3, **kwargs):  # fmt: skip
        super().__init__(*args, **kwargs)
        self.anomaly_kinds = anomaly_kinds
        self.anomaly_probability = anomaly_probability
        self.max_anomaly_size = max_anomaly_size

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None, **kwargs):
        self.valid_rng_ = make_generator(stream_seeds(self.random_seed)["valid"])
        return super().on_epoch_begin(net, dataset_train=dataset_train, dataset_valid=dataset_valid, **kwargs)

    def _synthetic_step(self, batch, generator):
        Xi, _ = unpack_data(batch)
        x = to_tensor(Xi, device=self.device)
        if generator is self.rng_:
            x = augment_batch(x, self.augment, generator)
        filled, roi = self.split_roi(x)
        x_new, target = synthesize_anomalies(
            filled, roi, generator, kinds=tuple(self.anomaly_kinds),
            probability=self.anomaly_probability, max_size=self.max_anomaly_size,
        )  # fmt: skip
        logits = self.module_(x_new, roi)
        return logits, self.criterion_(logits, target, roi)

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        logits, loss = self._synthetic_step(batch, self.rng_)
        loss.backward()
        return {"loss": loss, "y_pred": logits}

    def validation_step(self, batch, **fit_params):
        self._set_training(False)
        with torch.no_grad():
            logits, loss = self._synthetic_step(batch, self.valid_rng_)
        return {"loss": loss, "y_pred": logits}

    def infer(self, x, **fit_params):
        filled, roi = self.split_roi(to_tensor(x, device=self.device))
        return self.module_(filled, roi, **fit_params)
