"""The adversarial training engine: one skorch net for every multi-network detector.

A GAN-like detector is a few named networks, a few optimiser groups that each own
the parameters of some of those networks, named loss terms computed from a batch,
and a schedule saying which group steps on which weighted sum of terms, and every
how many iterations. :class:`AdversarialNet` runs exactly that, so a detector
declares its model instead of re-coding a training loop:

* ``NETWORKS``: the constructor parameters that are networks (class or instance);
  each becomes the fitted module ``<name>_``, built from ``<name>__*`` parameters;
* ``OPTIMIZER_GROUPS``: ``{group: (network, ...)}``; group ``k`` is stepped by the
  optimiser ``optimizer_<k>`` (a constructor parameter; settings
  ``optimizer_<k>__lr``, ``optimizer_<k>__betas``, ...) over the parameters of its
  networks only;
* :meth:`AdversarialNet.schedule`: the :class:`Update` steps of one iteration, in
  order;
* :meth:`AdversarialNet.loss_terms`: the hook that computes the named terms one
  update needs from the prepared batch.

One **iteration** is one training batch. In iteration ``i`` (1-based, counted across
epochs and ``partial_fit`` calls) every update with ``i % every == 0`` runs, in the
declared order: zero the group's gradients, compute its terms, backpropagate the
weighted sum ``sum(weight * term)`` (terms summed in the objective's order; a weight
of 1 multiplies nothing, a weight of 0 drops the term), notify
``on_grad_computed`` with the group's parameters (so skorch's
``GradientNormClipping`` works per group), step, zero again. While a group updates,
the parameters of every *other* network do not require gradients, so backward
neither computes nor keeps a gradient for them and nothing outside the group can
change in its step; a network used without gradients (a generator making the
critic's fakes) records no graph at all.

Every term and every update's weighted total is recorded per batch
(``train_<term>``, ``train_<record>``) and averaged per epoch, weighted by batch
size, in ``history``; validation (with a ``train_split``) computes every update's
terms without stepping, networks in eval mode, from a random stream restarted at
each validation so epochs compare like with like.

**A second, unlabelled stream.** ``fit(X, unlabelled=U)`` (or ``partial_fit``) adds
a batch of ``U`` (an array, or a :class:`~.data.SampleSet` gathered batch by batch), as large as the batch of ``X``, to every training iteration,
shuffled by a seeded stream of its own and cycled independently of ``X``'s epochs (HealthyGAN trains on a known-normal
set and an unlabelled mixed one). The hook sees it as ``inputs["unlabelled"]``
(``None`` without a stream, and in validation). The net keeps no reference to
``U`` after ``fit`` returns.

Random draws (latents, penalties' interpolation weights, augmentation, noise) come
from ``rng_`` (validation: ``valid_rng_``), never from torch's global generator;
see :mod:`skanomaly.training.random`.
"""

import contextlib
from collections.abc import Mapping
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
import torch
from skorch.callbacks import Callback
from skorch.dataset import unpack_data
from skorch.utils import TeeGenerator, to_tensor

from ..utils.scoring import as_torch_buffer
from .augment import augment_batch
from .data import SampleSet
from .nets import ROINet, StageNetMixin
from .random import make_generator, stream_seeds

__all__ = ["AdversarialNet", "Update", "EpochMeans", "real_batch_statistics"]


class Update(NamedTuple):
    """One optimiser step of an iteration.

    Parameters
    ----------
    group : str
        The optimiser group that steps (a key of ``OPTIMIZER_GROUPS``).
    objective : mapping of str to float
        ``{term: weight}``: the group minimises ``sum(weight * term)`` over the terms
        the hook returns, in this order.
    every : int, default=1
        The update runs in iterations ``i`` with ``i % every == 0`` (1-based): 5 for
        a generator stepped after every fifth critic step.
    record : str or None, default=None
        History name of the weighted total, ``"loss_<group>"`` by default;
        ``"loss"`` makes it skorch's ``train_loss`` / ``valid_loss``.
    optional : tuple of str, default=()
        Terms of ``objective`` the hook may leave out of a batch (those of the
        unlabelled stream, which validation does not see). Any other missing term
        is an error, so a misspelt term cannot silently drop out of a loss.
    """

    group: str
    objective: Mapping
    every: int = 1
    record: str | None = None
    optional: tuple = ()

    @property
    def record_name(self):
        return self.record if self.record is not None else f"loss_{self.group}"


class EpochMeans(Callback):
    """Average every batch-level value of an epoch into the epoch's history row.

    Batch values recorded by the training and validation steps (``train_<name>``,
    ``valid_<name>``) are averaged weighted by batch size over the batches that have
    them; a key the epoch row already holds (set by another callback) is left alone.
    """

    _SKIP = frozenset({"train_batch_size", "valid_batch_size"})

    def on_epoch_end(self, net, **kwargs):
        row = net.history[-1]
        sums, weights = {}, {}
        for batch in row["batches"]:
            for key, value in batch.items():
                if key in self._SKIP or key in row or not isinstance(value, Real):
                    continue
                size = batch.get("train_batch_size" if key.startswith("train_") else "valid_batch_size", 1)
                sums[key] = sums.get(key, 0.0) + float(value) * size
                weights[key] = weights.get(key, 0) + size
        for key in sums:
            net.history.record(key, sums[key] / weights[key])


def _is_int(value, minimum):
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= minimum


@contextlib.contextmanager
def real_batch_statistics(module):
    """Let ``module``'s real-data running statistics update during this block.

    A layer whose eval-mode output uses a statistic of the training *data* (the
    minibatch-stddev channel of a progressive GAN's critic) declares an
    ``update_statistics`` attribute and updates that statistic only while it is True.
    The critic also sees fakes, gradient-penalty interpolates and the generator's
    images in training mode; tracked there, the statistic would be one the critic
    never saw on real images, and scoring (eval mode) would feed it that value.
    """
    layers = [m for m in module.modules() if hasattr(m, "update_statistics")]
    for layer in layers:
        layer.update_statistics = True
    try:
        yield module
    finally:
        for layer in layers:
            layer.update_statistics = False


class AdversarialNet(StageNetMixin, ROINet):
    """skorch net of several networks, optimiser groups and a declared update schedule.

    Subclasses declare ``NETWORKS``, ``OPTIMIZER_GROUPS``, :meth:`schedule` and
    :meth:`loss_terms` (see the module docstring), and take their networks and
    ``optimizer_<group>`` as constructor parameters. From
    :class:`~.nets.StageNetMixin` it has ``x_range`` (the range pixels are mapped
    to before any network sees them) and clean early ends (``MaxIter``).

    Parameters
    ----------
    lr : float, default=2e-4
        Learning rate of every group unless ``optimizer_<group>__lr`` is given.
        ``set_params(optimizer_<group>__lr=...)`` on an initialised net updates that
        optimiser at once; ``set_params(lr=...)`` takes effect at the next
        ``initialize``.
    train_split : callable or None, default=None
        As skorch; no validation split by default.
    module, criterion, optimizer : None
        Unused (the networks are ``NETWORKS``, the losses :meth:`loss_terms`, the
        optimisers ``optimizer_<group>``); skorch reports them in ``get_params``, and
        they must stay None.
    x_range : None or (float, float), default=None
        See :class:`~.nets.StageNetMixin`.
    **kwargs
        As :class:`~.nets.ROINet` (``augment``, ``random_seed``) and skorch
        (``max_epochs``, ``batch_size``, ``callbacks``, ``<network>__*``,
        ``optimizer_<group>__*``).

    Attributes
    ----------
    <network>_ : torch.nn.Module
        Every network of ``NETWORKS``.
    optimizer_<group>_ : torch.optim.Optimizer
        Every group's optimiser.
    n_iterations_ : int
        Training iterations (batches) since ``initialize``.
    n_steps_ : dict of str to int
        Optimiser steps per group since ``initialize``.
    rng_, valid_rng_, unlabelled_rng_ : torch.Generator
        Generators of training draws, validation draws and the unlabelled stream's
        shuffling.
    """

    NETWORKS: tuple = ()
    OPTIMIZER_GROUPS: Mapping = {}
    _GENERATORS = ROINet._GENERATORS + ("valid_rng_", "unlabelled_rng_")

    def __init__(self, *, lr=2e-4, train_split=None, module=None, criterion=None, optimizer=None, **kwargs):
        super().__init__(module, criterion, optimizer=optimizer, lr=lr, train_split=train_split, **kwargs)
        # Pretrained network instances pickle through skorch's torch-aware path too
        # (CUDA weights load on a CPU-only machine).
        self.cuda_dependent_attributes_ = [*self.cuda_dependent_attributes_, *self.NETWORKS]

    # ------------------------------------------------------------- the model
    def schedule(self):
        """The :class:`Update` steps of one training iteration, in order."""
        raise NotImplementedError

    def loss_terms(self, group, inputs, rng):
        """Named loss terms (scalar tensors) that ``group``'s update needs.

        Parameters
        ----------
        group : str
            The optimiser group about to step (or being validated).
        inputs : dict
            :meth:`prepare_batch`'s output: ``"x"`` (the batch, NaN filled with 0,
            mapped to ``x_range``), ``"roi"`` (boolean), ``"unlabelled"`` (the
            second stream's batch prepared the same way, or None) and
            ``"unlabelled_roi"``.
        rng : torch.Generator
            The stream to draw from (``rng_`` in training, ``valid_rng_`` in
            validation).
        """
        raise NotImplementedError

    def after_update(self, update):
        """Called after each training update's optimiser step (moving averages)."""

    # ---------------------------------------------------------- parameters
    def _check_stage_params(self):
        super()._check_stage_params()
        unused = [name for name in ("module", "criterion", "optimizer") if getattr(self, name) is not None]
        if unused:
            raise ValueError(
                f"{type(self).__name__} does not use {', '.join(unused)}: its networks are "
                f"{', '.join(self.NETWORKS)}, its losses come from loss_terms() and its "
                f"optimisers are {', '.join('optimizer_' + g for g in self.OPTIMIZER_GROUPS)}."
            )
        for name in self.NETWORKS:
            if not callable(getattr(self, name)):
                raise TypeError(f"{name} must be a torch.nn.Module class or instance, got {getattr(self, name)!r}.")
        for update in self.schedule():
            if update.group not in self.OPTIMIZER_GROUPS:
                raise ValueError(f"the schedule steps unknown group {update.group!r}.")
            if not _is_int(update.every, 1):
                raise ValueError(f"an update's `every` must be an integer >= 1, got {update.every!r}.")

    # -------------------------------------------------------- initialisation
    def initialize(self):
        super().initialize()
        seeds = stream_seeds(self.random_seed)
        self.valid_seed_ = seeds["valid"]
        self.valid_rng_ = make_generator(self.valid_seed_)
        self.unlabelled_rng_ = make_generator(seeds["unlabelled"])
        self.n_iterations_ = 0
        self.n_steps_ = {group: 0 for group in self.OPTIMIZER_GROUPS}
        return self

    @property
    def _default_callbacks(self):
        callbacks = list(super()._default_callbacks)
        # Before the epoch log is printed, so that it shows every term.
        at = next((i for i, (name, _) in enumerate(callbacks) if name == "print_log"), len(callbacks))
        callbacks.insert(at, ("epoch_means", EpochMeans()))
        return callbacks

    def initialize_module(self):
        for name in self.NETWORKS:
            setattr(self, name + "_", self.initialized_instance(getattr(self, name), self.get_params_for(name)))
        return self

    def initialize_criterion(self):
        # The losses are loss_terms(); there is no criterion module.
        return self

    def _group_networks(self, group):
        return [getattr(self, name + "_") for name in self.OPTIMIZER_GROUPS[group]]

    def _group_named_parameters(self, group):
        networks = self.OPTIMIZER_GROUPS[group]
        if len(networks) == 1:
            # A single network's own names, so ``optimizer_<g>__param_groups``
            # patterns read as they would for a plain skorch module.
            return list(getattr(self, networks[0] + "_").named_parameters())
        return [
            (f"{name}.{key}", param)
            for name in networks
            for key, param in getattr(self, name + "_").named_parameters()
        ]

    def initialize_optimizer(self, triggered_directly=None):
        # Each optimiser owns its group's parameters only, with its own settings;
        # skorch's default would put every parameter into one optimiser.
        for group in self.OPTIMIZER_GROUPS:
            name = f"optimizer_{group}"
            args, kwargs = self.get_params_for_optimizer(name, self._group_named_parameters(group))
            setattr(self, name + "_", getattr(self, name)(*args, **kwargs))
        return self

    # ------------------------------------------------------------- batches
    def _prepare_images(self, Xi, training):
        x = to_tensor(Xi, device=self.device)
        if training:
            x = augment_batch(x, self.augment, self.rng_)
        filled, roi = self.split_roi(x)
        return self.scale_x(filled), roi

    def prepare_batch(self, batch, training):
        """The hook's ``inputs`` for a batch (see :meth:`loss_terms`)."""
        Xi, _ = unpack_data(batch)
        x, roi = self._prepare_images(Xi, training)
        inputs = {"x": x, "roi": roi, "unlabelled": None, "unlabelled_roi": None}
        stream = getattr(self, "_unlabelled_batches", None)
        if training and stream is not None:
            inputs["unlabelled"], inputs["unlabelled_roi"] = self._prepare_images(stream.send(len(x)), training)
        return inputs

    def partial_fit(self, X, y=None, classes=None, unlabelled=None, **fit_params):
        """As skorch's ``partial_fit``, with an optional second, unlabelled stream."""
        if not self.initialized_:
            self.initialize()
        self._unlabelled_batches = None
        if unlabelled is not None:
            self._unlabelled_batches = self._cycle(unlabelled)
            next(self._unlabelled_batches)  # start it: it now waits for a batch size
        try:
            return super().partial_fit(X, y, classes=classes, **fit_params)
        finally:
            # The fitted net keeps no reference to the unlabelled images.
            self._unlabelled_batches = None

    def _cycle(self, unlabelled):
        """A generator of unlabelled batches: ``send(n)`` gives the next ``n`` samples
        of a seeded shuffle of ``unlabelled``, reshuffled each time it runs out, so
        each real batch gets a batch of the same size (a critic that interpolates
        between the two streams needs that)."""
        if isinstance(unlabelled, SampleSet):
            # Gathered (and padded) batch by batch, as the training data.
            length = len(unlabelled)
            if length < 1:
                raise ValueError("unlabelled must hold at least one sample, got an empty SampleSet.")

            def gather(positions):
                return unlabelled.batch(positions.numpy())

        else:
            # Any numpy layout (reversed or strided views, Fortran order) is valid input.
            if isinstance(unlabelled, np.ndarray):
                unlabelled = as_torch_buffer(unlabelled)
            data = to_tensor(unlabelled, device="cpu")
            if data.ndim < 2 or len(data) < 1:
                raise ValueError(f"unlabelled must hold at least one sample, got shape {tuple(data.shape)}.")
            length = len(data)

            def gather(positions):
                return data[positions]

        order, position = torch.randperm(length, generator=self.unlabelled_rng_), 0
        n = yield
        while True:
            taken = []
            while n > 0:
                if position == len(order):
                    order, position = torch.randperm(length, generator=self.unlabelled_rng_), 0
                chunk = order[position : position + n]
                taken.append(chunk)
                position += len(chunk)
                n -= len(chunk)
            n = yield gather(torch.cat(taken))

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_unlabelled_batches", None)  # a live generator; None outside fit
        return state

    # --------------------------------------------------------------- updates
    @staticmethod
    def objective(update, terms):
        """The weighted sum of ``terms`` that ``update`` minimises."""
        total = None
        for name, weight in update.objective.items():
            if weight == 0:
                continue
            if name not in terms:
                if name in update.optional:
                    continue
                raise KeyError(
                    f"loss_terms() returned no term {name!r} for group {update.group!r} (it "
                    f"returned {sorted(terms)})."
                )
            term = terms[name] if weight == 1 else weight * terms[name]
            total = term if total is None else total + term
        if total is None:
            raise ValueError(f"the objective of group {update.group!r} has no term with a non-zero weight.")
        return total

    def _frozen_except(self, group):
        """Parameters outside ``group`` that require gradients (to freeze for its step)."""
        own = {id(p) for network in self._group_networks(group) for p in network.parameters()}
        return [
            p
            for name in self.NETWORKS
            for p in getattr(self, name + "_").parameters()
            if p.requires_grad and id(p) not in own
        ]

    def run_update(self, update, inputs, batch=None):
        """One optimiser step of ``update``; returns ``(total, terms)``, detached."""
        optimizer = getattr(self, f"optimizer_{update.group}_")
        optimizer.zero_grad()
        frozen = self._frozen_except(update.group)
        for param in frozen:
            param.requires_grad_(False)
        try:
            terms = self.loss_terms(update.group, inputs, self.rng_)
            total = self.objective(update, terms)
            total.backward()
        finally:
            for param in frozen:
                param.requires_grad_(True)
        self.notify(
            "on_grad_computed",
            named_parameters=TeeGenerator(iter(self._group_named_parameters(update.group))),
            batch=batch,
            training=True,
        )
        optimizer.step()
        # No stale gradient outlives its step.
        optimizer.zero_grad()
        self.n_steps_[update.group] += 1
        self.after_update(update)
        return total.detach(), {name: term.detach() for name, term in terms.items()}

    @staticmethod
    def _step_record(step, update, total, terms):
        step[update.record_name] = total
        step.setdefault("terms", {}).update(terms)

    def train_step(self, batch, **fit_params):
        """One iteration: every scheduled update due in it, in order.

        Returns
        -------
        step : dict
            ``"loss"`` (None in an iteration without the update recorded as
            ``"loss"``), each update's ``record_name``, and ``"terms"``.
        """
        self._refuse_fit_params(fit_params)
        self._set_training(True)
        inputs = self.prepare_batch(batch, training=True)
        self.n_iterations_ += 1
        step = {"loss": None}
        for update in self.schedule():
            if self.n_iterations_ % update.every == 0:
                self._step_record(step, update, *self.run_update(update, inputs, batch))
        return step

    def validation_step(self, batch, **fit_params):
        """Every update's terms and total on a batch, in eval mode, no update."""
        self._refuse_fit_params(fit_params)
        self._set_training(False)
        inputs = self.prepare_batch(batch, training=False)
        step = {"loss": None}
        with torch.no_grad():
            for update in self.schedule():
                terms = self.loss_terms(update.group, inputs, self.valid_rng_)
                self._step_record(step, update, self.objective(update, terms).detach(), terms)
        return step

    def _refuse_fit_params(self, fit_params):
        if fit_params:
            raise TypeError(
                f"{type(self).__name__} takes no fit parameters but `unlabelled`, got {sorted(fit_params)}."
            )

    def run_single_epoch(self, iterator, training, prefix, step_fn, **fit_params):
        if not training and iterator is not None:
            # The same validation draws at every epoch, from a stream of their own.
            self.valid_rng_ = make_generator(self.valid_seed_)
        return super().run_single_epoch(iterator, training, prefix, step_fn, **fit_params)

    def infer(self, x, **fit_params):
        raise NotImplementedError(
            f"{type(self).__name__} has no single forward pass, so predict, predict_proba and "
            f"forward are not available: call its networks ({', '.join(n + '_' for n in self.NETWORKS)}) "
            "directly."
        )

    def __repr__(self):
        state = "initialized" if self.initialized_ else "uninitialized"
        suffix = "_" if self.initialized_ else ""
        parts = [f"{type(self)}[{state}]("]
        for name in self.NETWORKS:
            text = str(getattr(self, name + suffix)).replace("\n", "\n  ")
            parts.append(f"  {name}{suffix}={text},")
        parts.append(")")
        return "\n".join(parts)
