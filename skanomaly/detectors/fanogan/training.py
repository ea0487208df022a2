"""The training stages of f-AnoGAN and P-AnoGAN: the progressive GAN's schedule, and the
encoder stage against the frozen GAN with its epoch selection.

The residual WGAN-GP of f-AnoGAN is :class:`skanomaly.training.stages.GANNet` as it
is (``loss="wgan-gp", n_critic=5``). P-AnoGAN trained pytorch_GAN_zoo's progressive GAN: 48k iterations at 4 x 4, 96k at
each of 8, 16 and 32, 200k at 64 x 64 (536k in all), one critic step per generator
step, WGAN-GP (10) with drift 0.001, Adam 1e-3 betas (0, 0.99), batch 16, an
exponential moving average of the generator (0.999). Each new scale fades in: alpha
starts at 1 and drops by 1/600 every 32 iterations (so the fade lasts 19,200
iterations), the generator's output and the discriminator's input path blend the new
and the previous scale, and real images are blended the same way. At every new scale
the optimisers start afresh and the average generator restarts from the generator,
as in the reference code.

:func:`paper_schedule` scales all of that to any total number of iterations, so a
CPU run grows through every scale, with the same proportions, in minutes.
"""

import copy
import math
from numbers import Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions
from skorch.callbacks import Callback
from skorch.dataset import unpack_data
from skorch.utils import to_tensor
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ...training.augment import augment_batch
from ...training.nets import pad_to_side
from ...training.random import make_generator, randn, stream_seeds
from ...training.adversarial import _is_int
from ...training.stages import GANNet, StageNet
from ...utils.scoring import score_in_batches
from .losses import ENCODER_LOSSES, ENCODER_SCORES, encoder_loss, encoder_scores
from .networks import upsample_nearest2x

__all__ = [
    "ProgressiveGANNet",
    "paper_schedule",
    "fade_alpha",
    "PAPER_ITERATIONS",
    "EncoderNet",
    "BestValidationAUC",
]

_FIRST, _MIDDLE, _LAST = 48_000, 96_000, 200_000
_FADE_ITERATIONS = 19_200
_FADE_JUMPS = 600
PAPER_ITERATIONS = _FIRST + 3 * _MIDDLE + _LAST  # 536,000 at 64 x 64


def _paper_iterations_per_scale(n_scales):
    if n_scales == 1:
        return [_LAST]
    return [_FIRST] + [_MIDDLE] * (n_scales - 2) + [_LAST]


def paper_schedule(n_scales, total_iterations=None):
    """Iterations per scale and fade-in length of P-AnoGAN's schedule.

    Parameters
    ----------
    n_scales : int
        Scales from 4 x 4 up (5 for 64 x 64).
    total_iterations : int or None
        ``None`` keeps the paper's numbers (48k at 4 x 4, 96k at every middle scale,
        200k at the last; fade-in over 19,200). An int scales every number by
        ``total_iterations / paper total``, each scale keeping at least 1 iteration
        and the last taking the rounding, so the total is exact.

    Returns
    -------
    iterations_per_scale : tuple of int
    fade_iterations : float
    """
    base = _paper_iterations_per_scale(int(n_scales))
    if total_iterations is None:
        return tuple(base), float(_FADE_ITERATIONS)
    total = int(total_iterations)
    if total < len(base):
        raise ValueError(
            f"a progressive GAN of {len(base)} scales needs at least {len(base)} iterations "
            f"(one per scale); got {total}."
        )
    factor = total / sum(base)
    per_scale = [max(1, round(b * factor)) for b in base[:-1]]
    per_scale.append(total - sum(per_scale))
    if per_scale[-1] < 1:  # tiny totals: take the excess from the largest early scale
        per_scale = [1] * (len(base) - 1) + [total - (len(base) - 1)]
    return tuple(per_scale), _FADE_ITERATIONS * factor


def fade_alpha(iteration, fade_iterations):
    """Weight of the previous scale ``iteration`` steps after a new scale starts.

    Starts at 1 and drops in up to 600 equal jumps over ``fade_iterations`` steps (at
    the paper's 19,200: by 1/600 every 32 iterations); 0 afterwards.
    """
    if fade_iterations <= 0:
        return 0.0
    n_jumps = max(1, min(_FADE_JUMPS, math.floor(fade_iterations)))
    interval = fade_iterations / n_jumps
    return max(0.0, 1.0 - math.floor(iteration / interval) / n_jumps)


class ProgressiveGANNet(GANNet):
    """:class:`~.stages.GANNet` that grows its networks scale by scale.

    The generator and discriminator must be progressive networks
    (:mod:`skanomaly.detectors.fanogan.progressive`: a ``set_growth(scale, alpha)`` method and
    ``scale``/``alpha`` buffers). Training images arrive at full size; each training
    step first sets the scale and fade-in weight of the step's iteration (one
    iteration = one training batch = one discriminator step), then average-pools the
    real images down to the active scale and blends them with their coarser version
    by alpha, exactly as the generator's output is blended. Train with
    ``MaxIter(sum(iterations_per_scale))``: at the end of the schedule the networks
    are at full size with alpha 0; :attr:`schedule_complete_` says whether training
    got there.

    Parameters
    ----------
    generator, discriminator
        Progressive networks (classes or instances), as :class:`~.stages.GANNet`.
    iterations_per_scale : tuple of int
        Training iterations at each scale (:func:`paper_schedule`).
    fade_iterations : float
        Length of each new scale's fade-in (:func:`fade_alpha`).
    ema_decay : float or None, default=0.999
        Decay of the moving average of the generator's weights (``generator_ema_``),
        updated after every generator step; ``None`` keeps no average.
    **kwargs
        As :class:`~.stages.GANNet` (``loss="wgan-gp"``, ``drift_weight``, ...).

    Attributes
    ----------
    generator_ema_ : torch.nn.Module or None
        The averaged generator (frozen; the one to generate and encode with).
    schedule_complete_ : bool
        Whether every scheduled iteration has run.
    """

    def __init__(self, generator, discriminator, *, iterations_per_scale, fade_iterations, ema_decay=0.999, **kwargs):
        super().__init__(generator, discriminator, **kwargs)
        self.iterations_per_scale = iterations_per_scale
        self.fade_iterations = fade_iterations
        self.ema_decay = ema_decay

    _parameter_constraints: dict = {
        "ema_decay": [None, Interval(Real, 0, 1, closed="left")],
        "fade_iterations": [Interval(Real, 0, None, closed="left")],
    }

    def _check_stage_params(self):
        super()._check_stage_params()
        per_scale = self.iterations_per_scale
        if not per_scale or not all(_is_int(n, 1) for n in per_scale):
            raise ValueError(f"iterations_per_scale must be integers >= 1, got {per_scale!r}.")

    def initialize_module(self):
        super().initialize_module()
        if len(self.iterations_per_scale) != self.generator_.n_scales:
            raise ValueError(
                f"iterations_per_scale has {len(self.iterations_per_scale)} entries but the "
                f"networks have {self.generator_.n_scales} scales."
            )
        if self.ema_decay is not None:
            # A copy of the generator is where the average starts; torch's
            # AveragedModel is wrapped around it at the first update (_averager).
            self.generator_ema_ = copy.deepcopy(self.generator_).requires_grad_(False).eval()
            self.__dict__.pop("_generator_averager", None)
        self._set_growth(0, 0.0)
        return self

    def initialize(self):
        super().initialize()
        self.schedule_complete_ = False
        return self

    # --------------------------------------------------------------- growth
    def _networks(self):
        ema = getattr(self, "generator_ema_", None)
        return [self.generator_, self.discriminator_] + ([ema] if ema is not None else [])

    def _set_growth(self, scale, alpha):
        for network in self._networks():
            network.set_growth(scale, alpha)

    def growth_at(self, iteration):
        """``(scale, alpha)`` of a training iteration (0-based) in the schedule."""
        boundaries = np.cumsum(self.iterations_per_scale)
        scale = int(min(np.searchsorted(boundaries, iteration, side="right"), len(boundaries) - 1))
        start = int(boundaries[scale - 1]) if scale else 0
        alpha = fade_alpha(iteration - start, self.fade_iterations) if scale else 0.0
        return scale, alpha

    def _update_growth(self):
        scale, alpha = self.growth_at(self.n_iterations_)
        if scale != int(self.generator_.scale):
            self._set_growth(scale, alpha)
            # A new scale starts with fresh optimisers and a fresh average generator.
            self.initialize_optimizer()
            if getattr(self, "generator_ema_", None) is not None:
                self._restart_average()
        else:
            self._set_growth(scale, alpha)

    def train_step(self, batch, **fit_params):
        self._update_growth()
        step = super().train_step(batch, **fit_params)
        self.schedule_complete_ = self.n_iterations_ >= sum(self.iterations_per_scale)
        if self.schedule_complete_:
            self._set_growth(len(self.iterations_per_scale) - 1, 0.0)
        return step

    def prepare_batch(self, batch, training):
        inputs = super().prepare_batch(batch, training)
        real = inputs["x"]
        side = self.generator_.current_size
        if real.shape[-1] > side:
            real = F.avg_pool2d(real, real.shape[-1] // side)
        alpha = float(self.generator_.alpha)
        if alpha > 0:
            coarse = upsample_nearest2x(F.avg_pool2d(real, 2))
            real = alpha * coarse + (1.0 - alpha) * real
        # The GAN's losses use no ROI (NaN is filled before the critic sees a pixel);
        # a full-size mask beside images of the active scale would only mislead.
        inputs["x"], inputs["roi"] = real, None
        return inputs

    # ------------------------------------------------------ generator average
    def _averager(self):
        """torch's ``AveragedModel`` (exponential average) over ``generator_ema_``.

        It averages ``generator_ema_`` in place, so the fitted attribute (and the
        tensor names in saved files) stay a plain generator; the wrapper itself holds
        a closure, is not picklable, and is rebuilt when missing, continuing the
        average it finds (a fit resumed with ``partial_fit``)."""
        averager = getattr(self, "_generator_averager", None)
        if averager is None or averager.module is not self.generator_ema_:
            averager = AveragedModel(self.generator_ema_, multi_avg_fn=get_ema_multi_avg_fn(self.ema_decay))
            # AveragedModel averages a deep copy of what it is given: hand it the
            # fitted module itself.
            averager.module = self.generator_ema_
            averager.n_averaged.fill_(1)
            self._generator_averager = averager
        return averager

    def _restart_average(self):
        """Start the average afresh from the generator (its first update copies)."""
        averager = self._averager()
        averager.n_averaged.zero_()
        averager.update_parameters(self.generator_)

    def after_update(self, update):
        if update.group == "g" and getattr(self, "generator_ema_", None) is not None:
            self._averager().update_parameters(self.generator_)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_generator_averager", None)
        return state


class EncoderNet(StageNet):
    """skorch net that trains an encoder against a frozen generator and discriminator.

    ``frozen_modules`` must hold ``"generator"`` and ``"discriminator"`` (the latter
    with a ``features`` method); see :class:`~.stages.StageNet` for how they stay
    untouched. ``predict(X)`` returns latents.

    Parameters
    ----------
    module : torch.nn.Module class or instance
        The encoder, ``(B, 1, S, S) -> (B, latent_dim)``.
    loss : {"izi", "ziz", "izif", "izizf"}, default="izizf"
    feature_weight : float, default=0.1
        kappa of izif / izizf (and of the ``"izif"`` score).
    anomaly_score : {"izizf", "residual", "izif"}, default="izizf"
        The score :meth:`anomaly_scores` computes (a validation callback's score).
    image_side : int or None, default=None
        Side of the networks' square images; :meth:`anomaly_scores` pads smaller
        samples (bottom and right, outside the ROI) to it.
    **kwargs
        As :class:`~.stages.StageNet` (``criterion`` is unused: the loss is ``loss``).
    """

    _GENERATORS = StageNet._GENERATORS + ("valid_rng_",)

    def __init__(
        self,
        module,
        *args,
        loss="izizf",
        feature_weight=0.1,
        anomaly_score="izizf",
        image_side=None,
        criterion=torch.nn.MSELoss,
        **kwargs,
    ):
        super().__init__(module, criterion, *args, **kwargs)
        self.loss = loss
        self.feature_weight = feature_weight
        self.anomaly_score = anomaly_score
        self.image_side = image_side

    _parameter_constraints: dict = {
        "loss": [StrOptions(set(ENCODER_LOSSES))],
        "anomaly_score": [StrOptions(set(ENCODER_SCORES))],
        "feature_weight": [Interval(Real, 0, None, closed="left")],
    }

    def _check_stage_params(self):
        super()._check_stage_params()
        missing = {"generator", "discriminator"} - set(self.frozen_modules or {})
        if missing:
            raise ValueError(f"EncoderNet needs frozen_modules {sorted(missing)} (the trained GAN).")

    def initialize(self):
        super().initialize()
        self.valid_seed_ = stream_seeds(self.random_seed)["valid"]
        self.valid_rng_ = make_generator(self.valid_seed_)
        return self

    def _batch_loss(self, batch, training, rng):
        Xi, _ = unpack_data(batch)
        x = to_tensor(Xi, device=self.device)
        if training:
            x = augment_batch(x, self.augment, self.rng_)
        filled, roi = self.split_roi(x)
        prior = None
        if self.loss == "ziz":
            prior = randn((len(x), self.generator_.latent_dim), rng, device=self.device)
        return encoder_loss(
            self.loss,
            self.scale_x(filled),
            roi,
            self.module_,
            self.generator_,
            self.discriminator_,
            float(self.feature_weight),
            prior,
        )

    def train_step_single(self, batch, **fit_params):
        self._set_training(True)
        loss = self._batch_loss(batch, True, self.rng_)
        loss.backward()
        return {"loss": loss, "y_pred": None}

    def validation_step(self, batch, **fit_params):
        self._set_training(False)
        with torch.no_grad():
            loss = self._batch_loss(batch, False, self.valid_rng_)
        return {"loss": loss, "y_pred": None}

    def run_single_epoch(self, iterator, training, prefix, step_fn, **fit_params):
        if not training and iterator is not None:
            # The same ziz latents at every validation, from a stream of their own.
            self.valid_rng_ = make_generator(self.valid_seed_)
        return super().run_single_epoch(iterator, training, prefix, step_fn, **fit_params)

    def score_batch(self, x, roi, anomaly_score=None, feature_weight=None):
        """``(x~, anomaly)`` of a NaN-filled batch in input pixels, ``(B, 1, S, S)``;
        ``x~`` in the networks' range. The score and kappa default to the net's."""
        score = self.anomaly_score if anomaly_score is None else anomaly_score
        kappa = self.feature_weight if feature_weight is None else feature_weight
        return encoder_scores(
            score, self.scale_x(x), roi, self.module_, self.generator_, self.discriminator_, float(kappa)
        )

    def anomaly_scores(self, X, anomaly_score=None):
        """Anomaly of each sample of ``X`` ``(M, H, W)`` (NaN outside the ROI), in eval mode.

        Samples are padded (outside the ROI) to ``image_side`` and scored in batches
        of ``batch_size`` without gradients; returns a float64 array ``(M,)``.
        """
        self.check_is_fitted()
        X = np.asarray(X, dtype=np.float32)
        # Called between training epochs (BestValidationAUC): the encoder goes back to
        # the mode it was in.
        was_training = self.module_.training
        self._set_training(False)
        side = None if self.image_side is None else int(self.image_side)

        def anomaly_batch(x, roi):
            if side is not None:
                x, roi = pad_to_side(x, side, 0.0), pad_to_side(roi, side, False)
            return None, self.score_batch(x, roi, anomaly_score)[1]

        try:
            return score_in_batches(X, anomaly_batch, batch_size=self.batch_size, device=self.device)[0]
        finally:
            self._set_training(was_training)


class BestValidationAUC(Callback):
    """Keep the encoder epoch with the best ROC AUC on a labelled validation set.

    P-AnoGAN trained the encoder for 30 epochs and kept the epoch with the best
    validation AUC. At every epoch end this callback scores ``X`` with the net's
    score (:meth:`EncoderNet.anomaly_scores`), records ``valid_auc`` (and
    ``valid_auc_best``) in the history, and keeps a copy of the encoder's weights of
    the best epoch (the first one on ties); at the end of training it restores them.
    The validation set must never be the test set: a choice made on test data
    overstates what the detector does on films it never saw.

    Pass it in the detector's ``callbacks``; ``X`` must be samples as the detector
    trains on them after its preprocessing (images, or patches from the same
    ``PatchExtractor``), floats in ``[0, 1]`` with NaN outside the ROI.

    Parameters
    ----------
    X : array-like of shape (n_samples, H, W)
        Validation samples (normal and abnormal).
    y : array-like of shape (n_samples,)
        Their labels, 1 = abnormal, 0 = normal; both must occur.
    name : str, default="valid_auc"
        History key.

    Attributes
    ----------
    best_score_ : float
    best_epoch_ : int
        1-based epoch whose weights were restored.
    X_, y_, best_state_ : ndarray, ndarray, dict or None
        The validation set as scored and the best epoch's weights, during training
        only: they are dropped (``None``) once the weights are restored, so that a
        fitted detector does not carry (and pickle) them; a ResNet-50 encoder's
        weights alone are about 95 MB. A later ``partial_fit`` prepares them again.
    """

    def __init__(self, X, y, name="valid_auc"):
        self.X = X
        self.y = y
        self.name = name

    def __sklearn_clone__(self):
        # The detector clones its callbacks for each fit. The validation arrays are
        # read, never written: the clone shares them instead of holding a deep copy,
        # which every fitted detector would carry and pickle besides the original.
        return type(self)(X=self.X, y=self.y, name=self.name)

    def initialize(self):
        self._prepare()
        self.best_score_ = -np.inf
        self.best_epoch_ = None
        self.best_state_ = None
        return self

    def _prepare(self):
        """Check ``X`` and ``y`` and set ``X_`` and ``y_`` from them."""
        X = np.asarray(self.X, dtype=np.float32)
        y = np.asarray(self.y).ravel()
        if X.ndim != 3:
            raise ValueError(
                f"BestValidationAUC takes samples of shape (n_samples, H, W) (images or single "
                f"patches); got an array of shape {X.shape}. Reshape bags of patches to "
                "(n_images * n_patches, p, p) with one label per patch."
            )
        if len(y) != len(X):
            raise ValueError(f"BestValidationAUC got {len(X)} samples and {len(y)} labels.")
        if set(np.unique(y)) != {0, 1}:
            raise ValueError("BestValidationAUC needs labels 0 (normal) and 1 (abnormal), both present.")
        finite = X[np.isfinite(X)]
        if finite.size and (finite.min() < 0 or finite.max() > 1):
            raise ValueError(
                "BestValidationAUC samples must be floats in [0, 1] (as the detector sees them "
                f"after scaling), got values in [{finite.min():g}, {finite.max():g}]: divide "
                "uint8 pixels by 255 or pass them through the pipeline's preprocessing first."
            )
        self.X_ = X
        self.y_ = y.astype(int)

    def on_train_begin(self, net, **kwargs):
        if getattr(self, "X_", None) is None:
            self._prepare()
        self.best_score_, self.best_epoch_, self.best_state_ = -np.inf, None, None

    def on_epoch_end(self, net, **kwargs):
        from sklearn.metrics import roc_auc_score

        scores = net.anomaly_scores(self.X_)
        auc = float(roc_auc_score(self.y_, scores)) if np.isfinite(scores).all() else float("nan")
        is_best = bool(auc > self.best_score_)
        if is_best:
            self.best_score_ = auc
            self.best_epoch_ = len(net.history)
            self.best_state_ = copy.deepcopy(net.module_.state_dict())
        net.history.record(self.name, auc)
        net.history.record(self.name + "_best", is_best)

    def on_train_end(self, net, **kwargs):
        if self.best_state_ is not None:
            net.module_.load_state_dict(self.best_state_)
        # Training state, not a result: best_score_ and best_epoch_ stay.
        self.X_ = self.y_ = self.best_state_ = None
