"""Training stages of multi-network detectors: GAN nets, frozen modules, ``MaxIter``.

The GAN detectors train in stages: a GAN (generator and discriminator, each with its
own optimiser, updated alternately), then an encoder against the *frozen* generator
and discriminator. Everything a stage needs beyond :class:`~.nets.ImageNet` lives
here once:

* :class:`GANNet` trains a generator and a discriminator with a non-saturating BCE
  loss (DCGAN, AnoGAN) or a Wasserstein loss with gradient penalty (WGAN-GP,
  f-AnoGAN) and optional drift penalty (progressive GAN, P-AnoGAN).
* :class:`FrozenModulesMixin` lets a net use already trained modules that skorch
  neither optimises, re-initialises nor switches to training mode;
  :class:`StageNet` is the single-module stage net (an encoder) built on it.
* :class:`MaxIter` ends training after a number of training batches, as GAN papers
  count iterations rather than epochs; :class:`StageNetMixin` lets the epoch in which
  the budget runs out close normally.

Typical settings of the papers (Adam throughout)::

    AnoGAN    loss="bce",     n_critic=1, lr=2e-4, optimizer_*__betas=(0.5, 0.999),
              latent_distribution="uniform"
    f-AnoGAN  loss="wgan-gp", n_critic=5, lr=1e-4, optimizer_*__betas=(0.0, 0.9)
    P-AnoGAN  loss="wgan-gp", n_critic=1, lr=1e-3, optimizer_*__betas=(0.0, 0.99),
              drift_weight=0.001
"""

import copy
from collections.abc import Mapping
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import clone
from skorch.callbacks import Callback, PassthroughScoring
from skorch.dataset import get_len, unpack_data
from skorch.utils import TeeGenerator, to_tensor
from torch.nn import functional as F

from .augment import augment_batch
from .nets import ImageNet
from .penalties import drift_penalty, gradient_penalty
from .random import make_generator, rand, randn

__all__ = ["StageNetMixin", "FrozenModulesMixin", "StageNet", "GANNet", "MaxIter"]


def _is_int(value, minimum):
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= minimum


def _is_nonnegative(value):
    return isinstance(value, Real) and not isinstance(value, bool) and np.isfinite(value) and value >= 0


class StageNetMixin:
    """What every training-stage net shares: clean early ends and a pixel range.

    Mix in before :class:`~.nets.ImageNet` (``class MyNet(StageNetMixin, ImageNet)``).

    * **Cutting an epoch short.** :meth:`stop_training_after_batch` (called by
      :class:`MaxIter`) makes the current epoch end after the batch in progress; the
      epoch then closes as usual (``train_batch_count``, validation, every callback's
      ``on_epoch_end``, so the history row has its ``train_loss``) and training stops
      with ``KeyboardInterrupt``, skorch's stop signal, which ``partial_fit`` catches.
    * **Several losses per step.** A step may return ``"loss": None`` (no loss of that
      kind in this batch, e.g. a critic-only step of a GAN) and further losses named
      ``"loss_<what>"``; each is recorded per batch as ``<prefix>_loss_<what>``
      (``train_loss_d``, ``valid_loss_d``).
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
        Passed on to the next class (``ImageNet``).
    """

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
        """Validate parameters at ``initialize``; subclasses extend it."""
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
        ``step["loss"]`` may be None (not recorded), and every ``step["loss_<what>"]``
        is recorded as ``<prefix>_loss_<what>``.
        """
        if iterator is None:
            return
        batch_count = 0
        for batch in iterator:
            self.notify("on_batch_begin", batch=batch, training=training)
            step = step_fn(batch, **fit_params)
            for key, value in step.items():
                if (key == "loss" or key.startswith("loss_")) and value is not None:
                    value = value.detach().item() if isinstance(value, torch.Tensor) else float(value)
                    self.history.record_batch(f"{prefix}_{key}", value)
            batch_size = get_len(batch[0]) if isinstance(batch, (tuple, list)) else get_len(batch)
            self.history.record_batch(prefix + "_batch_size", batch_size)
            self.notify("on_batch_end", batch=batch, training=training, **step)
            batch_count += 1
            if training and getattr(self, "stop_after_batch_", False):
                break
        self.history.record(prefix + "_batch_count", batch_count)


class FrozenModulesMixin:
    """Use already trained modules in a net without training or re-building them.

    Each entry ``name: module`` of ``frozen_modules`` becomes the net's module
    ``name_`` (registered with skorch like any module, so it moves to ``device`` and
    pickles with the net), and is:

    * **used as passed**: the very instance, never re-initialised by ``initialize``
      or ``fit`` (``net.name_ is module``), so a detector can share one generator
      between stages and save it once. ``sklearn.base.clone`` of the net shares it
      too (it is read-only input, like a pre-fitted estimator), where clone would
      deep-copy any other parameter. Within one net, pickling keeps ``name_`` and
      ``frozen_modules[name]`` one object;
    * **frozen in place** at ``initialize``: ``eval()`` and ``requires_grad_(False)``
      on the instance itself;
    * **not optimised**: its parameters are left out of
      :meth:`get_all_learnable_params`, hence out of the optimiser;
    * **kept in eval mode** when skorch switches the net to training
      (``_set_training(True)``), so BatchNorm running statistics and dropout stay
      those of the trained module.

    Together, every tensor of a frozen module (parameters and buffers) is
    bit-identical after training. With ``compile=True`` skorch would wrap the module;
    frozen modules are meant for uncompiled nets.

    Parameters
    ----------
    frozen_modules : dict of str to torch.nn.Module, default=None
        Trained modules by name. A name must be an identifier, must not end with an
        underscore, contain ``"__"`` or clash with a parameter or attribute of the
        net; ``name__*`` parameters are refused (the instance is used as passed).
    *args, **kwargs
        Passed on to the next class.
    """

    # Names of fitted attributes of ImageNet and GANNet that initialize() sets after
    # the modules, which a frozen module ``<name>_`` would otherwise overwrite.
    _RESERVED_FROZEN_NAMES = frozenset({"rng", "shuffle_rng", "valid_rng", "frozen_modules"})

    def __init__(self, *args, frozen_modules=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.frozen_modules = frozen_modules
        # skorch pickles these attributes in one torch-aware blob: CUDA tensors load
        # on a CPU-only machine, and ``frozen_modules[name]`` and ``name_`` stay one
        # object after unpickling.
        self.cuda_dependent_attributes_ = [*self.cuda_dependent_attributes_, "frozen_modules"]

    def _checked_frozen_modules(self):
        frozen = self.frozen_modules
        if frozen is None:
            return {}
        if not isinstance(frozen, Mapping):
            raise TypeError(
                "frozen_modules must be a dict mapping names to trained torch.nn.Module "
                f"instances, got {type(frozen).__name__}."
            )
        previous = getattr(self, "frozen_modules_", {})
        parameters = set(self._get_param_names())
        for name, module in frozen.items():
            if not isinstance(name, str) or not name.isidentifier() or name.endswith("_") or "__" in name:
                raise ValueError(
                    f"frozen module name {name!r} is not valid: use an identifier without "
                    "a trailing underscore or '__' (the module becomes the attribute "
                    "'<name>_')."
                )
            clashes = (
                name in parameters
                or name in self._RESERVED_FROZEN_NAMES
                or hasattr(type(self), name)
                or hasattr(type(self), name + "_")
                or (name + "_" in vars(self) and name not in previous)
            )
            if clashes:
                raise ValueError(
                    f"frozen module name {name!r} clashes with a parameter or attribute of "
                    f"{type(self).__name__}; choose another name."
                )
            if not isinstance(module, torch.nn.Module):
                raise TypeError(
                    f"frozen module {name!r} must be a torch.nn.Module instance (an already "
                    f"trained network), got {module!r}: a class would be initialised "
                    "afresh."
                )
            extra = self.get_params_for(name)
            if extra:
                raise ValueError(
                    f"Parameters {sorted(name + '__' + key for key in extra)} cannot apply to "
                    f"the frozen module {name!r}: it is used exactly as passed, and "
                    "rebuilding it from parameters would replace the trained instance."
                )
        return dict(frozen)

    def initialize_module(self):
        super().initialize_module()
        frozen = self._checked_frozen_modules()
        for name, module in frozen.items():
            # In place, on the caller's instance: that object is what other stages and
            # the saved detector share.
            module.eval()
            module.requires_grad_(False)
            setattr(self, name + "_", module)
        self.frozen_modules_ = frozen
        return self

    def get_all_learnable_params(self):
        # By identity, so that a frozen module that is also a submodule of a trained
        # one stays out of the optimiser as well.
        frozen = {p for module in getattr(self, "frozen_modules_", {}).values() for p in module.parameters()}
        for name, param in super().get_all_learnable_params():
            if param not in frozen:
                yield name, param

    def _set_training(self, training=True):
        super()._set_training(training)
        # skorch puts every registered module in training mode at each training step;
        # frozen ones go straight back (no forward pass happens in between).
        for module in getattr(self, "frozen_modules_", {}).values():
            module.eval()

    def __sklearn_clone__(self):
        # sklearn's clone, except that frozen modules are shared rather than
        # deep-copied: they are read-only inputs of the stage.
        params = self.get_params(deep=False)
        frozen = params.pop("frozen_modules", None)
        params = {name: clone(value, safe=False) for name, value in params.items()}
        params["frozen_modules"] = dict(frozen) if isinstance(frozen, Mapping) else frozen
        new = type(self)(**params)
        if hasattr(self, "_metadata_request"):
            new._metadata_request = copy.deepcopy(self._metadata_request)
        return new


class StageNet(StageNetMixin, FrozenModulesMixin, ImageNet):
    """Training stage with one trained module and frozen, already trained helpers.

    The stage that trains an encoder against a trained GAN (f-AnoGAN's izif,
    P-AnoGAN): ``module`` is trained with ``optimizer`` as in
    :class:`~.nets.ImageNet`, while the generator and discriminator are
    ``frozen_modules`` (see :class:`FrozenModulesMixin`). The criterion receives them
    by keyword::

        criterion(y_pred, x, roi, **frozen_modules)

    with ``y_pred = module(x)``, ``x`` the batch NaN-filled with 0 and mapped to
    ``x_range``, and ``roi`` the region of interest, so an encoder loss can run the
    frozen generator on the predicted latents.

    Parameters
    ----------
    module, criterion, *args
        As :class:`skorch.NeuralNet`; the criterion is called as above.
    frozen_modules : dict of str to torch.nn.Module, default=None
        Trained modules, by name (attributes ``<name>_``); see
        :class:`FrozenModulesMixin`.
    x_range : None or (float, float), default=None
        Range input pixels are mapped to; see :class:`StageNetMixin`.
    augment, random_seed, **kwargs
        As :class:`~.nets.ImageNet`.

    Examples
    --------
    Train a linear encoder ``E`` so that a frozen generator ``G`` reproduces the
    images, ``G(E(x)) ~ x``; ``G`` is the same object, unchanged, afterwards:

    >>> import numpy as np, torch
    >>> class EncoderLoss(torch.nn.Module):
    ...     def forward(self, z, x, roi, generator):
    ...         return (generator(z) - x)[roi].square().mean()
    >>> G = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Unflatten(1, (1, 2, 2)))
    >>> E = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> X = np.random.default_rng(0).random((16, 1, 2, 2), dtype=np.float32)
    >>> net = StageNet(E, EncoderLoss, frozen_modules={"generator": G}, max_epochs=2,
    ...                batch_size=4, train_split=None, verbose=0).fit(X)
    >>> net.generator_ is G, G.training, any(p.requires_grad for p in G.parameters())
    (True, False, False)
    """

    def infer(self, x, **fit_params):
        x = to_tensor(x, device=self.device)
        return self.module_(self.scale_x(torch.nan_to_num(x, nan=0.0)), **fit_params)

    def get_loss(self, y_pred, y_true, X=None, training=False):
        filled, roi = self.split_roi(to_tensor(X, device=self.device))
        return self.criterion_(y_pred, self.scale_x(filled), roi, **self.frozen_modules_)


class GANNet(StageNetMixin, ImageNet):
    """skorch net of a GAN: a generator and a discriminator, updated alternately.

    The two networks are skorch modules (``generator_``, ``discriminator_``; their
    constructor arguments are ``generator__*``, ``discriminator__*``), each with its
    own optimiser over its own parameters only (``optimizer_g_``, ``optimizer_d_``;
    arguments ``optimizer_g__*``, ``optimizer_d__*``, e.g.
    ``optimizer_g__betas=(0.5, 0.999)``; a learning rate not given falls back to
    ``lr``). Training images ``(B, 1, H, W)`` come with NaN outside the region of
    interest; they are filled with 0 (:meth:`ImageNet.split_roi`) and mapped to
    ``x_range`` before the discriminator sees them, so NaN never reaches it and real
    images are in the range of the generator's output.

    **One training batch is one discriminator (critic) step.** Every batch of real
    images gets one discriminator update against fresh generated images; after every
    ``n_critic``-th discriminator step (counted over the whole training, across
    epochs and ``partial_fit`` calls) the generator gets one update on fresh latents.
    So each critic step sees a new real batch, as in WGAN-GP's algorithm and
    f-AnoGAN's code, and the discriminator optimiser steps exactly ``n_critic`` times
    as often as the generator's. An epoch (one pass over the data) thus holds
    ``n_batches // n_critic`` generator steps (give or take one), and ``MaxIter(k)``
    allows ``k`` discriminator and ``k // n_critic`` generator steps: for f-AnoGAN's
    ``N`` generator iterations with ``n_critic=5``, use ``MaxIter(5 * N)``.

    Each discriminator step zeroes its gradients, backpropagates its loss and steps
    ``optimizer_d_`` only; the generator's images are made without a graph. Each
    generator step backpropagates through the discriminator with the discriminator's
    parameters not requiring gradients, so no discriminator gradient is computed or
    kept, and steps ``optimizer_g_`` only. The discriminator stays in training mode in
    the generator step (as in DCGAN), so BatchNorm layers of the discriminator use, and
    update their running statistics with, that batch. ``on_grad_computed`` is notified
    after each backward with the parameters of the network about to step (so skorch's
    ``GradientNormClipping`` works per network).

    Losses, with ``D`` returning one logit or score per image:

    * ``"bce"`` (DCGAN, AnoGAN): discriminator ``BCE(D(x), 1) + BCE(D(G(z)), 0)``
      with logits; non-saturating generator loss ``BCE(D(G(z)), 1)``.
    * ``"wgan-gp"`` (f-AnoGAN, P-AnoGAN): critic
      ``mean D(G(z)) - mean D(x) + gp_weight * GP + drift_weight * mean D(x)**2``
      (:func:`~.penalties.gradient_penalty`, :func:`~.penalties.drift_penalty`);
      generator ``-mean D(G(z))``.

    A step's generator loss is the step's ``"loss"`` (recorded as ``train_loss`` in
    the batches that have a generator step); the discriminator loss is ``"loss_d"``,
    recorded in every batch as ``train_loss_d``. Both are averaged per epoch in
    ``history`` (``train_loss``, ``train_loss_d``; ``valid_loss``, ``valid_loss_d``
    with a validation split). Validation computes both losses without any update,
    with the networks in eval mode and latents drawn afresh from the same seed at
    every validation, so that training draws exactly the same numbers with or without
    validation and validation losses of different epochs compare like with like.

    Latents (and the gradient penalty's interpolation weights) are drawn from the
    net's ``rng_`` (:mod:`~.random`), never from torch's global generator.

    Parameters
    ----------
    generator : torch.nn.Module class or instance
        Maps latents ``(B, latent_dim)`` to images ``(B, 1, H, W)`` in ``x_range``.
    discriminator : torch.nn.Module class or instance
        Maps images to one logit (``"bce"``) or critic score (``"wgan-gp"``) per
        image, shape ``(B,)`` or ``(B, 1)``.
    loss : {"bce", "wgan-gp"}, default="bce"
        GAN loss, see above.
    n_critic : int, default=1
        Discriminator steps (training batches) per generator step (f-AnoGAN: 5).
    latent_dim : int, default=100
        Size of the latent vectors the generator takes.
    latent_distribution : {"normal", "uniform"}, default="normal"
        Latent prior: standard normal, or uniform on ``[-1, 1]`` (DCGAN, AnoGAN).
    gp_weight : float, default=10.0
        Weight of the gradient penalty (``"wgan-gp"`` only).
    drift_weight : float, default=0.0
        Weight of the drift penalty (``"wgan-gp"`` only; P-AnoGAN: 0.001).
    optimizer_g, optimizer_d : torch optimiser class, default=torch.optim.Adam
        Optimisers of the generator and the discriminator.
    lr : float, default=2e-4
        Learning rate of both optimisers unless ``optimizer_g__lr`` or
        ``optimizer_d__lr`` is given. ``set_params(optimizer_g__lr=...)`` on an
        initialised net updates the optimiser at once; ``set_params(lr=...)`` takes
        effect at the next ``initialize``.
    train_split : callable or None, default=None
        As skorch; no validation split by default (GAN losses on held-out images say
        little about the quality of a GAN).
    x_range : None or (float, float), default=None
        Range input pixels are mapped to, e.g. ``(-1, 1)`` for a tanh generator; see
        :class:`StageNetMixin`.
    augment, random_seed
        As :class:`~.nets.ImageNet`; augmentation applies to the real images.
    module, criterion, optimizer : None
        Unused (a GAN has two modules, its loss is ``loss`` and its optimisers
        ``optimizer_g``/``optimizer_d``); they exist because skorch reports them in
        ``get_params``, and must stay None.
    **kwargs
        Further skorch arguments (``max_epochs``, ``batch_size``, ``callbacks``,
        ``generator__*``, ``optimizer_d__betas``, ...).

    Attributes
    ----------
    generator_, discriminator_ : torch.nn.Module
        The networks.
    optimizer_g_, optimizer_d_ : torch.optim.Optimizer
        Their optimisers.
    n_discriminator_steps_, n_generator_steps_ : int
        Updates made since ``initialize``.
    rng_ : torch.Generator
        Generator of the training draws.

    Examples
    --------
    >>> import numpy as np, torch
    >>> G = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Unflatten(1, (1, 2, 2)))
    >>> D = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1))
    >>> X = np.full((32, 1, 2, 2), 0.8, dtype=np.float32)
    >>> net = GANNet(G, D, latent_dim=4, x_range=(-1, 1), n_critic=2, max_epochs=3,
    ...              batch_size=8, optimizer_g__betas=(0.5, 0.999), verbose=0).fit(X)
    >>> net.n_discriminator_steps_, net.n_generator_steps_
    (12, 6)
    >>> [key for key in ("train_loss", "train_loss_d") if key in net.history[-1]]
    ['train_loss', 'train_loss_d']
    >>> net.sample(5).shape
    torch.Size([5, 1, 2, 2])
    """

    LOSSES = ("bce", "wgan-gp")
    LATENT_DISTRIBUTIONS = ("normal", "uniform")
    _NETWORKS = ("generator", "discriminator")
    _GENERATORS = ImageNet._GENERATORS + ("valid_rng_",)

    def __init__(
        self,
        generator,
        discriminator,
        *,
        loss="bce",
        n_critic=1,
        latent_dim=100,
        latent_distribution="normal",
        gp_weight=10.0,
        drift_weight=0.0,
        optimizer_g=torch.optim.Adam,
        optimizer_d=torch.optim.Adam,
        lr=2e-4,
        train_split=None,
        module=None,
        criterion=None,
        optimizer=None,
        **kwargs,
    ):
        super().__init__(module, criterion, optimizer=optimizer, lr=lr, train_split=train_split, **kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.loss = loss
        self.n_critic = n_critic
        self.latent_dim = latent_dim
        self.latent_distribution = latent_distribution
        self.gp_weight = gp_weight
        self.drift_weight = drift_weight
        self.optimizer_g = optimizer_g
        self.optimizer_d = optimizer_d
        # A pretrained instance passed as ``generator`` pickles through skorch's
        # torch-aware path too (CUDA weights load on a CPU-only machine).
        self.cuda_dependent_attributes_ = [*self.cuda_dependent_attributes_, *self._NETWORKS]

    # ------------------------------------------------------------ parameters
    def _check_stage_params(self):
        super()._check_stage_params()
        unused = [name for name in ("module", "criterion", "optimizer") if getattr(self, name) is not None]
        if unused:
            raise ValueError(
                f"GANNet does not use {', '.join(unused)}: its networks are `generator` and "
                "`discriminator`, its loss is `loss` and its optimisers are `optimizer_g` "
                "and `optimizer_d`."
            )
        for name in self._NETWORKS:
            network = getattr(self, name)
            if not callable(network):
                raise TypeError(f"{name} must be a torch.nn.Module class or instance, got {network!r}.")
        if self.loss not in self.LOSSES:
            raise ValueError(f"loss={self.loss!r} is not supported: use one of {self.LOSSES}.")
        if self.latent_distribution not in self.LATENT_DISTRIBUTIONS:
            raise ValueError(
                f"latent_distribution={self.latent_distribution!r} is not supported: use one "
                f"of {self.LATENT_DISTRIBUTIONS}."
            )
        for name in ("n_critic", "latent_dim"):
            if not _is_int(getattr(self, name), 1):
                raise ValueError(f"{name} must be an integer >= 1, got {getattr(self, name)!r}.")
        for name in ("gp_weight", "drift_weight"):
            if not _is_nonnegative(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}.")

    # -------------------------------------------------------- initialisation
    def initialize(self):
        super().initialize()
        # A fourth stream after ImageNet's (initialisation, shuffling, training draws).
        self.valid_seed_ = int(np.random.SeedSequence(self.random_seed).generate_state(4)[3])
        self.valid_rng_ = make_generator(self.valid_seed_)
        self.n_discriminator_steps_ = 0
        self.n_generator_steps_ = 0
        return self

    @property
    def _default_callbacks(self):
        # The discriminator loss has no "best": lower_is_better=None records no
        # *_best flag for it.
        return [
            *super()._default_callbacks,
            ("train_loss_d", PassthroughScoring(name="train_loss_d", lower_is_better=None, on_train=True)),
            ("valid_loss_d", PassthroughScoring(name="valid_loss_d", lower_is_better=None)),
        ]

    def initialize_module(self):
        for name in self._NETWORKS:
            module = self.initialized_instance(getattr(self, name), self.get_params_for(name))
            setattr(self, name + "_", module)
        return self

    def initialize_criterion(self):
        # The losses are methods of the net (``loss``); there is no criterion module.
        return self

    def initialize_optimizer(self, triggered_directly=None):
        # Each optimiser owns its network's parameters only, with its own settings;
        # skorch's default would put every parameter into one optimiser.
        for name, module in (("optimizer_g", self.generator_), ("optimizer_d", self.discriminator_)):
            args, kwargs = self.get_params_for_optimizer(name, module.named_parameters())
            setattr(self, name + "_", getattr(self, name)(*args, **kwargs))
        return self

    # ----------------------------------------------------------------- losses
    def sample_latents(self, n_samples, rng):
        """``n_samples`` latents from the prior, drawn from the CPU generator ``rng``."""
        shape = (n_samples, self.latent_dim)
        if self.latent_distribution == "uniform":
            return rand(shape, rng, device=self.device) * 2.0 - 1.0
        return randn(shape, rng, device=self.device)

    def _scores(self, x):
        scores = self.discriminator_(x)
        if scores.numel() != len(x):
            raise ValueError(
                "The discriminator must return one logit or score per image, shape (B,) or "
                f"(B, 1); it returned {tuple(scores.shape)} for a batch of {len(x)} images."
            )
        return scores.reshape(len(x))

    def discriminator_loss(self, real, fake, rng):
        """Discriminator (critic) loss of a batch; override to plug another loss.

        Parameters
        ----------
        real, fake : torch.Tensor of shape (B, 1, H, W)
            Real images (NaN-filled, in ``x_range``) and generated images.
        rng : torch.Generator
            Generator of the gradient penalty's interpolation weights.
        """
        real_scores = self._scores(real)
        fake_scores = self._scores(fake)
        if self.loss == "bce":
            return F.binary_cross_entropy_with_logits(
                real_scores, torch.ones_like(real_scores)
            ) + F.binary_cross_entropy_with_logits(fake_scores, torch.zeros_like(fake_scores))
        loss = fake_scores.mean() - real_scores.mean()
        if self.gp_weight:
            loss = loss + self.gp_weight * gradient_penalty(self.discriminator_, real, fake, rng)
        if self.drift_weight:
            loss = loss + self.drift_weight * drift_penalty(real_scores)
        return loss

    def generator_loss(self, fake_scores):
        """Generator loss from the discriminator's scores of generated images."""
        if self.loss == "bce":
            # Non-saturating: maximise log D(G(z)) rather than minimise log(1 - D(G(z))).
            return F.binary_cross_entropy_with_logits(fake_scores, torch.ones_like(fake_scores))
        return -fake_scores.mean()

    # ------------------------------------------------------------------ steps
    def _real_images(self, batch, training):
        Xi, _ = unpack_data(batch)
        x = to_tensor(Xi, device=self.device)
        if training:
            x = augment_batch(x, self.augment, self.rng_)
        filled, _ = self.split_roi(x)
        return self.scale_x(filled)

    def _discriminator_step(self, real, batch):
        optimizer = self.optimizer_d_
        optimizer.zero_grad()
        with torch.no_grad():
            fake = self.generator_(self.sample_latents(len(real), self.rng_))
        loss = self.discriminator_loss(real, fake, self.rng_)
        loss.backward()
        self.notify(
            "on_grad_computed",
            named_parameters=TeeGenerator(self.discriminator_.named_parameters()),
            batch=batch,
            training=True,
        )
        optimizer.step()
        # No stale discriminator gradient outlives its step.
        optimizer.zero_grad()
        self.n_discriminator_steps_ += 1
        return loss.detach()

    def _generator_step(self, n_samples, batch):
        optimizer = self.optimizer_g_
        optimizer.zero_grad()
        critic_params = [p for p in self.discriminator_.parameters() if p.requires_grad]
        # The discriminator only passes the gradient through to the images: with its
        # parameters not requiring grad, backward computes and keeps no gradient for
        # them, so nothing of the discriminator can change in this step.
        for param in critic_params:
            param.requires_grad_(False)
        try:
            fake = self.generator_(self.sample_latents(n_samples, self.rng_))
            loss = self.generator_loss(self._scores(fake))
            loss.backward()
        finally:
            for param in critic_params:
                param.requires_grad_(True)
        self.notify(
            "on_grad_computed",
            named_parameters=TeeGenerator(self.generator_.named_parameters()),
            batch=batch,
            training=True,
        )
        optimizer.step()
        optimizer.zero_grad()
        self.n_generator_steps_ += 1
        return loss.detach()

    @staticmethod
    def _refuse_fit_params(fit_params):
        if fit_params:
            raise TypeError(f"GANNet takes no fit parameters, got {sorted(fit_params)}.")

    def train_step(self, batch, **fit_params):
        """One discriminator step, then a generator step after every ``n_critic``-th.

        skorch's ``train_step`` would step every optimiser on one loss; a GAN
        alternates two losses and two optimisers.

        Returns
        -------
        step : dict
            ``"loss"``: the generator loss (detached), or None in a batch without a
            generator step; ``"loss_d"``: the discriminator loss (detached).
        """
        self._refuse_fit_params(fit_params)
        self._set_training(True)
        real = self._real_images(batch, training=True)
        step = {"loss": None, "loss_d": self._discriminator_step(real, batch)}
        if self.n_discriminator_steps_ % self.n_critic == 0:
            step["loss"] = self._generator_step(len(real), batch)
        return step

    def validation_step(self, batch, **fit_params):
        """Generator and discriminator losses of a batch, in eval mode, no update."""
        self._refuse_fit_params(fit_params)
        self._set_training(False)
        real = self._real_images(batch, training=False)
        with torch.no_grad():
            fake = self.generator_(self.sample_latents(len(real), self.valid_rng_))
            # The gradient penalty enables gradients for itself.
            loss_d = self.discriminator_loss(real, fake, self.valid_rng_)
            loss_g = self.generator_loss(self._scores(fake))
        return {"loss": loss_g.detach(), "loss_d": loss_d.detach()}

    def run_single_epoch(self, iterator, training, prefix, step_fn, **fit_params):
        if not training and iterator is not None:
            # The same validation latents at every epoch, from a stream of their own.
            self.valid_rng_ = make_generator(self.valid_seed_)
        return super().run_single_epoch(iterator, training, prefix, step_fn, **fit_params)

    # -------------------------------------------------------------- inference
    def sample(self, n_samples, seed=0):
        """Generate ``n_samples`` images, in input pixels (``[0, 1]`` for a tanh generator).

        The generator runs in eval mode without gradients (its mode is restored).
        Latents come from a generator seeded with ``seed``, not from the training
        stream, so sampling never changes what further training draws.

        Returns
        -------
        images : torch.Tensor of shape (n_samples, 1, H, W), on the CPU
        """
        self.check_is_fitted()
        # All latents in one draw: torch's CPU normal sampler gives other numbers for
        # chunks than for the whole, and the images should not depend on batch_size.
        latents = self.sample_latents(n_samples, make_generator(seed))
        batch_size = n_samples if self.batch_size in (-1, None) else max(1, self.batch_size)
        was_training = self.generator_.training
        self.generator_.eval()
        try:
            with torch.no_grad():
                images = [
                    self.unscale_x(self.generator_(chunk)).cpu() for chunk in torch.split(latents, batch_size)
                ]
        finally:
            self.generator_.train(was_training)
        return torch.cat(images)

    def infer(self, x, **fit_params):
        raise NotImplementedError(
            "GANNet has no single forward pass, so predict, predict_proba and forward "
            "are not available: generate images with net.sample(n), or call "
            "net.generator_(z) and net.discriminator_(x) directly."
        )

    def __repr__(self):
        state = "initialized" if self.initialized_ else "uninitialized"
        suffix = "_" if self.initialized_ else ""
        parts = [f"{type(self)}[{state}]("]
        for name in self._NETWORKS:
            text = str(getattr(self, name + suffix)).replace("\n", "\n  ")
            parts.append(f"  {name}{suffix}={text},")
        parts.append(")")
        return "\n".join(parts)


class MaxIter(Callback):
    """Stop training after ``max_iter`` training batches, also in mid-epoch.

    GAN papers count iterations, not epochs. This callback counts the training
    batches of each ``fit``/``partial_fit`` call (``on_batch_end`` with
    ``training=True``; validation batches do not count) and stops training after
    exactly ``max_iter`` of them; ``max_epochs`` still ends training if it comes
    first. Like ``max_epochs``, the budget applies to each call.

    With a net that can cut an epoch short (:class:`StageNetMixin`: :class:`GANNet`,
    :class:`StageNet`), the epoch in which the budget runs out ends after that batch
    and closes normally (batch count, validation, every callback's ``on_epoch_end``,
    so its history row has ``train_loss``), then training stops. With other skorch
    nets, ``KeyboardInterrupt`` is raised at once after the last batch: ``partial_fit``
    catches it, but the interrupted epoch's row lacks its epoch-level scores.

    For :class:`GANNet`, one batch is one discriminator step; the generator makes
    ``max_iter // n_critic`` steps.

    Parameters
    ----------
    max_iter : int
        Number of training batches, >= 1.

    Attributes
    ----------
    n_iter_ : int
        Training batches counted in the current (or last) training call.

    Examples
    --------
    Ten images in batches of three are four batches per epoch; six batches end
    training in the second epoch, after its second batch:

    >>> import numpy as np, torch
    >>> G = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Unflatten(1, (1, 2, 2)))
    >>> D = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 1))
    >>> X = np.zeros((10, 1, 2, 2), dtype=np.float32)
    >>> net = GANNet(G, D, latent_dim=2, batch_size=3, max_epochs=10, verbose=0,
    ...              callbacks=[MaxIter(6)]).fit(X)
    >>> net.history[:, "train_batch_count"]
    [4, 2]
    """

    def __init__(self, max_iter):
        self.max_iter = max_iter

    def initialize(self):
        if not _is_int(self.max_iter, 1):
            raise ValueError(f"max_iter must be an integer >= 1, got {self.max_iter!r}.")
        self.n_iter_ = 0
        return self

    def on_train_begin(self, net, **kwargs):
        self.n_iter_ = 0

    def on_batch_end(self, net, batch=None, training=False, **kwargs):
        if not training:
            return
        self.n_iter_ += 1
        if self.n_iter_ < self.max_iter:
            return
        stop = getattr(net, "stop_training_after_batch", None)
        if stop is None:
            raise KeyboardInterrupt
        stop()
