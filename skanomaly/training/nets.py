"""skorch nets of the detectors: the only place where training steps happen.

:class:`ROINet` is the pattern every detector's training stage follows: a
``NeuralNet`` whose ``X`` is ``(n, 1, H, W)`` float32 with NaN outside the region of
interest. It fills NaN before the module sees the batch and hands the ROI to the
criterion, so losses ignore pixels outside it. Every random draw of training
(initialisation, shuffling, augmentation, sampling) is seeded from ``random_seed``
through explicit generators (:mod:`skanomaly.training.random`), so nets trained in
parallel threads are reproducible. GAN detectors build on
:mod:`skanomaly.training.stages`, which adds several modules and optimisers.
"""

import contextlib
import signal
import threading
from numbers import Real

import numpy as np
import torch
from sklearn.utils._param_validation import validate_parameter_constraints
from skorch import NeuralNet
from skorch.dataset import get_len, unpack_data
from skorch.utils import to_tensor
from torch.nn import functional as F
from torch.utils.data import DataLoader

from .augment import augment_batch
from .random import make_generator, seeded_initialisation, stream_seeds

__all__ = ["ROINet", "StageNetMixin", "pad_to_side"]


def pad_to_side(x, side, value):
    """Pad ``(..., H, W)`` at the bottom and right to ``side x side`` with ``value``."""
    height, width = x.shape[-2:]
    if height == side and width == side:
        return x
    return F.pad(x, (0, side - width, 0, side - height), value=value)


@contextlib.contextmanager
def _user_interrupts():
    """Record whether the user interrupted (Ctrl-C, or a SIGTERM the program turns
    into ``KeyboardInterrupt``) during this block; yields a ``threading.Event``.

    skorch ends training on ``KeyboardInterrupt`` and returns normally from
    ``partial_fit``: that is how ``EarlyStopping`` (and ``MaxIter``) stop it, and it
    would make an interrupted fit look complete. Signals reach only the main thread,
    so elsewhere nothing is installed (nothing can interrupt there either)."""
    interrupted = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    previous = {}
    for signum in (signal.SIGINT, getattr(signal, "SIGTERM", None)):
        handler = signal.getsignal(signum) if signum is not None else None
        if not callable(handler):  # default or ignored: it raises nothing to catch
            continue

        def record(number, frame, handler=handler):
            interrupted.set()
            handler(number, frame)

        previous[signum] = handler
        signal.signal(signum, record)
    try:
        yield interrupted
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class ROINet(NeuralNet):
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
        seeds = stream_seeds(self.random_seed)
        with seeded_initialisation(seeds["init"], self.device):
            super().initialize()
        self.shuffle_rng_ = make_generator(seeds["shuffle"])
        self.rng_ = make_generator(seeds["step"])
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

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        """As skorch's, except that a user's interrupt is raised, not swallowed.

        skorch catches ``KeyboardInterrupt`` (its callbacks' stop signal) and returns
        as if training had ended; an interrupt by the user is raised again once the
        net has closed training, so a detector's ``fit`` ends unfitted instead of
        returning an under-trained model.
        """
        with _user_interrupts() as interrupted:
            result = super().partial_fit(X, y, classes=classes, **fit_params)
        if interrupted.is_set():
            raise KeyboardInterrupt(f"{type(self).__name__} training was interrupted")
        return result

    def get_iterator(self, dataset, training=False):
        # skorch builds the DataLoader from iterator_train__* / iterator_valid__*
        # parameters; what is fitted state or follows from the dataset is added here.
        kwargs = self.get_params_for("iterator_train" if training else "iterator_valid")
        kwargs.setdefault("batch_size", self.batch_size)
        if kwargs["batch_size"] == -1:
            kwargs["batch_size"] = len(dataset)
        if hasattr(dataset, "collate"):
            # A SampleSet's batches come gathered and stacked (one gather per batch).
            kwargs.setdefault("collate_fn", dataset.collate)
        if training:
            kwargs.setdefault("generator", self.shuffle_rng_)
            return self.iterator_train(dataset, **kwargs)
        # A DataLoader draws its workers' base seed from torch's global generator
        # unless it has one of its own, so validation and prediction would advance
        # the user's random stream. Without shuffling the seed is unused: any
        # generator does.
        iterator = self.iterator_valid(dataset, **kwargs)
        if isinstance(iterator, DataLoader) and iterator.generator is None:
            iterator.generator = torch.Generator()
        return iterator

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


class StageNetMixin:
    """What every training-stage net shares: clean early ends and a pixel range.

    Mix in before :class:`ROINet` (``class MyNet(StageNetMixin, ROINet)``).

    * **Cutting an epoch short.** :meth:`stop_training_after_batch` (called by
      :class:`MaxIter`) makes the current epoch end after the batch in progress; the
      epoch then closes as usual (``train_batch_count``, validation, every callback's
      ``on_epoch_end``, so the history row has its ``train_loss``) and training stops
      with ``KeyboardInterrupt``, skorch's stop signal, which ``partial_fit`` catches.
    * **Several losses per step.** A step may return ``"loss": None`` (no loss of that
      kind in this batch, e.g. a critic-only step of a GAN) and further losses named
      ``"loss_<what>"``; each is recorded per batch as ``<prefix>_loss_<what>``
      (``train_loss_d``, ``valid_loss_d``), and so is every entry of an optional
      ``"terms"`` dict of named loss terms (``train_<term>``).
    * **Pixel range.** ``x_range`` maps the ``[0, 1]`` input pixels to the range the
      networks work in (:meth:`scale_x`), e.g. ``(-1, 1)`` for a tanh generator.
    * **Network instances as parameters.** A ``torch.nn.Module`` instance (a
      pretrained network) is accepted as a constructor parameter and by
      ``set_params`` also before ``initialize``, where skorch would refuse it.

    Parameters
    ----------
    x_range : None or (float, float), default=None
        ``(low, high)``: input pixels ``p`` in ``[0, 1]`` reach the networks as
        ``low + (high - low) * p``. ``None`` leaves them as they are. Pixels outside
        the region of interest are filled with 0 *before* the mapping, i.e. they are
        black in both ranges.
    *args, **kwargs
        Passed on to the next class (:class:`ROINet`).
    """

    # The nets check their parameters at initialize with scikit-learn's constraint
    # objects, as the detectors do; each class adds its own, merged along the MRO.
    _parameter_constraints: dict = {"x_range": [None, tuple, list]}

    def __init__(self, *args, x_range=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.x_range = x_range

    def __setattr__(self, name, attr):
        # skorch refuses torch modules set outside initialize_* (it expects fitted
        # components, named with a trailing underscore). A module *instance* given as
        # a constructor parameter (a pretrained network) is a hyperparameter: taking it
        # here lets sklearn's clone and set_params pass one before initialisation.
        if isinstance(attr, torch.nn.Module) and not name.endswith("_") and "__" not in name:
            object.__setattr__(self, name, attr)
            return
        super().__setattr__(name, attr)

    # ------------------------------------------------------------ parameters
    def _check_stage_params(self):
        """Validate parameters at ``initialize``: every class's
        ``_parameter_constraints``, then what constraints cannot say (subclasses
        extend it)."""
        constraints = {}
        for cls in reversed(type(self).__mro__):
            constraints.update(vars(cls).get("_parameter_constraints", {}))
        validate_parameter_constraints(
            constraints, {name: getattr(self, name) for name in constraints}, caller_name=type(self).__name__
        )
        x_range = self.x_range
        if x_range is not None:
            valid = isinstance(x_range, (tuple, list)) and len(x_range) == 2
            valid = valid and all(isinstance(v, Real) and np.isfinite(v) for v in x_range)
            if not valid or not x_range[0] < x_range[1]:
                raise ValueError(
                    f"x_range={x_range!r} is not valid: use None or (low, high) with finite "
                    "low < high, e.g. (-1, 1) for a generator with a tanh output."
                )

    def initialize(self):
        self._check_stage_params()
        return super().initialize()

    def scale_x(self, x):
        """Map input pixels (``[0, 1]``) to the networks' range ``x_range``."""
        if self.x_range is None:
            return x
        low, high = self.x_range
        return low + (high - low) * x

    def unscale_x(self, x):
        """Map the networks' range ``x_range`` back to input pixels (``[0, 1]``)."""
        if self.x_range is None:
            return x
        low, high = self.x_range
        return (x - low) / (high - low)

    # ------------------------------------------------------- stopping cleanly
    def stop_training_after_batch(self):
        """End training once the current training batch is done.

        The epoch is cut short after this batch and closes normally (batch count,
        validation, ``on_epoch_end`` of the net and of *every* callback, printing
        included); then ``KeyboardInterrupt`` ends ``fit``/``partial_fit`` as
        skorch's ``EarlyStopping`` does. Raising after all callbacks rather than from
        within one keeps callbacks listed later (``PrintLog``, ``ProgressBar``,
        checkpoints) from missing the last epoch. The request lasts until the next
        ``fit``/``partial_fit``.
        """
        self.stop_after_batch_ = True

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        self.stop_after_batch_ = False
        return super().on_train_begin(net, X=X, y=y, **kwargs)

    def notify(self, method_name, **cb_kwargs):
        super().notify(method_name, **cb_kwargs)
        if method_name == "on_epoch_end" and getattr(self, "stop_after_batch_", False):
            raise KeyboardInterrupt

    def run_single_epoch(self, iterator, training, prefix, step_fn, **fit_params):
        """skorch's epoch loop, with early ends and several losses per step.

        As :meth:`skorch.NeuralNet.run_single_epoch`, except that a training epoch
        ends after the batch in which :meth:`stop_training_after_batch` was called,
        ``step["loss"]`` may be None (not recorded), every ``step["loss_<what>"]``
        is recorded as ``<prefix>_loss_<what>`` and every ``step["terms"][name]`` as
        ``<prefix>_<name>``.
        """
        if iterator is None:
            return
        batch_count = 0
        for batch in iterator:
            self.notify("on_batch_begin", batch=batch, training=training)
            step = step_fn(batch, **fit_params)
            records = [(k, v) for k, v in step.items() if k == "loss" or k.startswith("loss_")]
            records += list(step.get("terms", {}).items())
            for key, value in records:
                if value is not None:
                    value = value.detach().item() if isinstance(value, torch.Tensor) else float(value)
                    self.history.record_batch(f"{prefix}_{key}", value)
            batch_size = get_len(batch[0]) if isinstance(batch, (tuple, list)) else get_len(batch)
            self.history.record_batch(prefix + "_batch_size", batch_size)
            self.notify("on_batch_end", batch=batch, training=training, **step)
            batch_count += 1
            if training and getattr(self, "stop_after_batch_", False):
                break
        self.history.record(prefix + "_batch_count", batch_count)
