"""skorch nets of the detectors: the only place where training steps happen.

:class:`ImageNet` is the pattern every detector's training stage follows: a
``NeuralNet`` whose ``X`` is ``(n, 1, H, W)`` float32 with NaN outside the region of
interest. It fills NaN before the module sees the batch and hands the ROI to the
criterion, so losses ignore pixels outside it. Every random draw of training
(initialisation, shuffling, augmentation, sampling) is seeded from ``random_seed``
through explicit generators (:mod:`skanomaly.training.random`), so nets trained in
parallel threads are reproducible. GAN detectors build on
:mod:`skanomaly.training.stages`, which adds several modules and optimisers.
"""

import numpy as np
import torch
from skorch import NeuralNet
from skorch.dataset import unpack_data
from skorch.utils import to_tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader

from .augment import augment_batch
from .random import make_generator, seeded_initialisation

__all__ = ["ImageNet", "pad_to_side"]


def pad_to_side(x, side, value):
    """Pad ``(..., H, W)`` at the bottom and right to ``side x side`` with ``value``."""
    height, width = x.shape[-2:]
    if height == side and width == side:
        return x
    return F.pad(x, (0, side - width, 0, side - height), value=value)


class ImageNet(NeuralNet):
    """skorch ``NeuralNet`` for images with NaN outside the region of interest.

    Parameters
    ----------
    *args, **kwargs
        As :class:`skorch.NeuralNet`. The criterion is called as
        ``criterion(y_pred, x, roi)`` with ``x`` NaN-filled and ``roi`` boolean.
    augment : None, "default", "advanced" or "hflip"
        Batch augmentation applied in training steps only
        (:func:`skanomaly.training.augment.augment_batch`).
    random_seed : int, default=0
        Seeds module initialisation (under a process-wide lock, with torch's global
        RNG state restored afterwards), the shuffling of training batches, and the
        generator ``rng_`` that augmentation and latent sampling draw from.

    Attributes
    ----------
    rng_ : torch.Generator
        CPU generator of every random draw made in training steps.
    """

    def __init__(self, *args, augment=None, random_seed=0, **kwargs):
        super().__init__(*args, **kwargs)
        self.augment = augment
        self.random_seed = random_seed

    def initialize(self):
        """Initialise modules, criteria and optimisers from ``random_seed``."""
        # Independent streams for initialisation, shuffling and training-step draws.
        init_seed, shuffle_seed, step_seed = np.random.SeedSequence(self.random_seed).generate_state(3)
        with seeded_initialisation(init_seed, self.device):
            super().initialize()
        self.shuffle_rng_ = make_generator(shuffle_seed)
        self.rng_ = make_generator(step_seed)
        for module in self._modules_with_noise():
            module.noise_generator = self.rng_
        return self

    def _modules_with_noise(self):
        if not getattr(self, "initialized_", False):
            return
        for name in self._modules:
            for module in getattr(self, name + "_").modules():
                if hasattr(module, "noise_generator"):
                    yield module

    _GENERATORS = ("rng_", "shuffle_rng_")

    def __getstate__(self):
        # skorch serialises modules with torch.save, which tags every storage with
        # its device; generator states are CPU bytes and travel as plain arrays, and
        # the modules' references to rng_ are re-made on unpickling.
        noisy = list(self._modules_with_noise())
        for module in noisy:
            module.noise_generator = None
        try:
            state = super().__getstate__()
        finally:
            for module in noisy:
                module.noise_generator = self.rng_
        for name in self._GENERATORS:
            if isinstance(state.get(name), torch.Generator):
                state[name] = state[name].get_state().numpy().copy()
        return state

    def __setstate__(self, state):
        for name in self._GENERATORS:
            if isinstance(state.get(name), np.ndarray):
                generator = torch.Generator(device="cpu")
                generator.set_state(torch.from_numpy(state[name]))
                state[name] = generator
        super().__setstate__(state)
        for module in self._modules_with_noise():
            module.noise_generator = self.rng_

    def get_iterator(self, dataset, training=False):
        if not training:
            # A DataLoader draws its workers' base seed from torch's global generator
            # unless it has one of its own, so validation and prediction would advance
            # the user's random stream. Without shuffling the seed is unused: any
            # generator does.
            iterator = super().get_iterator(dataset, training=False)
            if isinstance(iterator, DataLoader) and iterator.generator is None:
                iterator.generator = torch.Generator()
            return iterator
        # skorch builds the DataLoader from iterator_train__* parameters; the shuffling
        # generator is fitted state, so it is handed over here.
        kwargs = self.get_params_for("iterator_train")
        kwargs.setdefault("batch_size", self.batch_size)
        if kwargs["batch_size"] == -1:
            kwargs["batch_size"] = len(dataset)
        kwargs.setdefault("generator", self.shuffle_rng_)
        return self.iterator_train(dataset, **kwargs)

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
        Xi = augment_batch(to_tensor(Xi, device=self.device), self.augment, self.rng_)
        y_pred = self.infer(Xi, **fit_params)
        loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        loss.backward()
        return {"loss": loss, "y_pred": y_pred}
