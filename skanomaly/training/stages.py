"""Training stages of multi-network detectors: GAN nets, frozen modules, ``MaxIter``.

The GAN detectors train in stages: a GAN (generator and discriminator, each with its
own optimiser, updated alternately), then an encoder against the *frozen* generator
and discriminator. Everything a stage needs beyond :class:`~.nets.ROINet` lives
here once:

* :class:`GANNet` trains a generator and a discriminator with a non-saturating BCE
  loss (DCGAN, AnoGAN) or a Wasserstein loss with gradient penalty (WGAN-GP,
  f-AnoGAN) and optional drift penalty (progressive GAN, P-AnoGAN), declared on the
  adversarial engine (:mod:`~.adversarial`).
* :class:`FrozenModulesMixin` lets a net use already trained modules that skorch
  neither optimises, re-initialises nor switches to training mode;
  :class:`StageNet` is the single-module stage net (an encoder) built on it.
* :class:`MaxIter` ends training after a number of training batches, as GAN papers
  count iterations rather than epochs; :class:`~.nets.StageNetMixin` lets the epoch
  in which the budget runs out close normally. :class:`LinearLRDecay` brings every
  optimiser's learning rate linearly to zero over the last iterations of such a
  budget (StarGAN-style schedules, HealthyGAN).

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

import torch
from sklearn.base import clone
from sklearn.utils._param_validation import Interval, StrOptions, validate_parameter_constraints
from skorch.callbacks import Callback
from skorch.utils import to_tensor
from torch.nn import functional as F

from .adversarial import AdversarialNet, Update, real_batch_statistics
from .nets import ROINet, StageNetMixin
from .penalties import drift_penalty, gradient_penalty
from .random import make_generator, rand, randn

__all__ = ["StageNetMixin", "FrozenModulesMixin", "StageNet", "GANNet", "MaxIter", "LinearLRDecay"]


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

    # Names of fitted attributes of ROINet and GANNet that initialize() sets after
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


class StageNet(StageNetMixin, FrozenModulesMixin, ROINet):
    """Training stage with one trained module and frozen, already trained helpers.

    The stage that trains an encoder against a trained GAN (f-AnoGAN's izif,
    P-AnoGAN): ``module`` is trained with ``optimizer`` as in
    :class:`~.nets.ROINet`, while the generator and discriminator are
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
        As :class:`~.nets.ROINet`.

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


class GANNet(AdversarialNet):
    """skorch net of a GAN: a generator and a discriminator, updated alternately.

    The GAN of DCGAN / AnoGAN and of WGAN-GP / f-AnoGAN / P-AnoGAN, declared on the
    adversarial engine (:class:`~.adversarial.AdversarialNet`): two networks
    (``generator_``, ``discriminator_``; constructor arguments ``generator__*``,
    ``discriminator__*``), optimiser groups ``"d"`` and ``"g"`` each over its own
    network (``optimizer_d_``, ``optimizer_g_``; arguments ``optimizer_g__*``,
    ``optimizer_d__*``, e.g. ``optimizer_g__betas=(0.5, 0.999)``; a learning rate not
    given falls back to ``lr``). Training images ``(B, 1, H, W)`` come with NaN
    outside the region of interest; they are filled with 0 and mapped to ``x_range``
    before the discriminator sees them, so NaN never reaches it and real images are
    in the range of the generator's output.

    **One training batch is one discriminator (critic) step.** Every batch of real
    images gets one discriminator update against fresh generated images; after every
    ``n_critic``-th discriminator step (counted over the whole training, across
    epochs and ``partial_fit`` calls) the generator gets one update on fresh latents.
    So each critic step sees a new real batch, as in WGAN-GP's algorithm and
    f-AnoGAN's code, and the discriminator optimiser steps exactly ``n_critic`` times
    as often as the generator's. ``MaxIter(k)`` allows ``k`` discriminator and
    ``k // n_critic`` generator steps: for f-AnoGAN's ``N`` generator iterations with
    ``n_critic=5``, use ``MaxIter(5 * N)``.

    In the discriminator's update the generator's parameters do not require
    gradients (its images carry no graph); in the generator's update the
    discriminator only passes the gradient through to the images. The discriminator
    stays in training mode in the generator's update (as in DCGAN), so its BatchNorm
    layers use, and update their statistics with, that batch. Statistics of the real
    data that a discriminator layer keeps for eval mode (the minibatch-stddev
    channel) are updated on real batches only (:func:`~.adversarial.real_batch_statistics`).

    Loss terms (recorded per batch and per epoch as ``train_<term>``), with ``D``
    returning one logit or score per image:

    * ``"bce"`` (DCGAN, AnoGAN): discriminator ``d_real = BCE(D(x), 1)`` and
      ``d_fake = BCE(D(G(z)), 0)`` with logits; non-saturating generator
      ``g_fake = BCE(D(G(z)), 1)``.
    * ``"wgan-gp"`` (f-AnoGAN, P-AnoGAN): critic ``d_fake = mean D(G(z))``,
      ``d_real = -mean D(x)``, ``gp`` (:func:`~.penalties.gradient_penalty`, weight
      ``gp_weight``) and ``drift = mean D(x)**2`` (:func:`~.penalties.drift_penalty`,
      weight ``drift_weight``); generator ``g_fake = -mean D(G(z))``.

    The generator's weighted total is the step's ``"loss"`` (``train_loss`` in the
    batches that have a generator step); the discriminator's is ``"loss_d"``
    (``train_loss_d``). Validation computes every term without any update, networks
    in eval mode, latents drawn afresh from the same seed at every validation.

    Parameters
    ----------
    generator : torch.nn.Module class or instance
        Maps latents ``(B, latent_dim)`` to images ``(B, 1, H, W)`` in ``x_range``.
    discriminator : torch.nn.Module class or instance
        Maps images to one logit (``"bce"``) or critic score (``"wgan-gp"``) per
        image, shape ``(B,)`` or ``(B, 1)``.
    loss : {"bce", "wgan-gp"}, default="bce"
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
    lr, train_split, x_range, augment, random_seed, module, criterion, optimizer, **kwargs
        As :class:`~.adversarial.AdversarialNet`; augmentation applies to the real
        images.

    Attributes
    ----------
    generator_, discriminator_ : torch.nn.Module
    optimizer_g_, optimizer_d_ : torch.optim.Optimizer
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
    >>> [key for key in ("train_loss", "train_loss_d", "train_d_real") if key in net.history[-1]]
    ['train_loss', 'train_loss_d', 'train_d_real']
    >>> net.sample(5).shape
    torch.Size([5, 1, 2, 2])
    """

    LOSSES = ("bce", "wgan-gp")
    LATENT_DISTRIBUTIONS = ("normal", "uniform")
    NETWORKS = ("generator", "discriminator")
    OPTIMIZER_GROUPS = {"d": ("discriminator",), "g": ("generator",)}

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
        **kwargs,
    ):
        super().__init__(**kwargs)
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

    # ------------------------------------------------------------ parameters
    _parameter_constraints: dict = {
        "loss": [StrOptions(set(LOSSES))],
        "latent_distribution": [StrOptions(set(LATENT_DISTRIBUTIONS))],
        "n_critic": [Interval(Integral, 1, None, closed="left")],
        "latent_dim": [Interval(Integral, 1, None, closed="left")],
        "gp_weight": [Interval(Real, 0, None, closed="left")],
        "drift_weight": [Interval(Real, 0, None, closed="left")],
    }

    # -------------------------------------------------------------- the model
    def schedule(self):
        if self.loss == "bce":
            critic = {"d_real": 1.0, "d_fake": 1.0}
        else:
            critic = {"d_fake": 1.0, "d_real": 1.0, "gp": self.gp_weight, "drift": self.drift_weight}
        return (
            Update("d", critic, record="loss_d"),
            Update("g", {"g_fake": 1.0}, every=self.n_critic, record="loss"),
        )

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

    def loss_terms(self, group, inputs, rng):
        real = inputs["x"]
        fake = self.generator_(self.sample_latents(len(real), rng))
        if group == "g":
            fake_scores = self._scores(fake)
            if self.loss == "bce":
                # Non-saturating: maximise log D(G(z)) rather than minimise log(1 - D(G(z))).
                return {"g_fake": F.binary_cross_entropy_with_logits(fake_scores, torch.ones_like(fake_scores))}
            return {"g_fake": -fake_scores.mean()}
        with real_batch_statistics(self.discriminator_):
            real_scores = self._scores(real)
        fake_scores = self._scores(fake)
        if self.loss == "bce":
            return {
                "d_real": F.binary_cross_entropy_with_logits(real_scores, torch.ones_like(real_scores)),
                "d_fake": F.binary_cross_entropy_with_logits(fake_scores, torch.zeros_like(fake_scores)),
            }
        terms = {"d_fake": fake_scores.mean(), "d_real": -real_scores.mean()}
        if self.gp_weight:
            terms["gp"] = gradient_penalty(self.discriminator_, real, fake, rng)
        if self.drift_weight:
            terms["drift"] = drift_penalty(real_scores)
        return terms

    @property
    def n_discriminator_steps_(self):
        return self.n_steps_["d"]

    @property
    def n_generator_steps_(self):
        return self.n_steps_["g"]

    # -------------------------------------------------------------- inference
    def infer(self, x, **fit_params):
        raise NotImplementedError(
            "GANNet has no single forward pass, so predict, predict_proba and forward "
            "are not available: generate images with net.sample(n), or call "
            "net.generator_(z) and net.discriminator_(x) directly."
        )

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

    _parameter_constraints: dict = {"max_iter": [Interval(Integral, 1, None, closed="left")]}

    def initialize(self):
        validate_parameter_constraints(self._parameter_constraints, {"max_iter": self.max_iter}, caller_name="MaxIter")
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


class LinearLRDecay(Callback):
    """Decay every optimiser's learning rate linearly to zero over the last
    ``decay_iter`` of ``max_iter`` training batches.

    Before training batch ``i`` of a ``fit`` / ``partial_fit`` call (0-based, counted
    as :class:`MaxIter` counts), each parameter group's learning rate is its initial
    one times ``min(1, (max_iter - i) / decay_iter)``: constant, then falling by
    ``1 / decay_iter`` per batch, to ``1 / decay_iter`` of it at the last batch. The
    initial rate is kept in the group's ``"initial_lr"`` (PyTorch schedulers' key),
    so a ``partial_fit`` goes on from the rates it was set up with. The optimisers are
    every ``optimizer_<group>_`` of an adversarial net's groups, or ``optimizer_``.

    Parameters
    ----------
    max_iter : int
        The training budget, as given to :class:`MaxIter`.
    decay_iter : int
        Batches at the end of it over which the rate falls (at most ``max_iter``).
    """

    _parameter_constraints: dict = {
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "decay_iter": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, max_iter, decay_iter):
        self.max_iter = max_iter
        self.decay_iter = decay_iter

    def initialize(self):
        validate_parameter_constraints(
            self._parameter_constraints, {"max_iter": self.max_iter, "decay_iter": self.decay_iter},
            caller_name="LinearLRDecay",
        )
        if self.decay_iter > self.max_iter:
            raise ValueError(f"decay_iter={self.decay_iter} exceeds max_iter={self.max_iter}.")
        self.n_iter_ = 0
        return self

    @staticmethod
    def _optimizers(net):
        groups = getattr(net, "OPTIMIZER_GROUPS", None)
        if groups:
            return [getattr(net, f"optimizer_{group}_") for group in groups]
        return [net.optimizer_]

    def factor(self, i):
        """The learning-rate factor before training batch ``i`` (0-based)."""
        return min(1.0, (self.max_iter - i) / self.decay_iter)

    def on_train_begin(self, net, **kwargs):
        self.n_iter_ = 0
        for optimizer in self._optimizers(net):
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])

    def on_batch_begin(self, net, batch=None, training=False, **kwargs):
        if not training:
            return
        factor = max(self.factor(self.n_iter_), 0.0)
        for optimizer in self._optimizers(net):
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
        self.n_iter_ += 1
