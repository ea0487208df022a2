"""The encoder stage of f-AnoGAN and P-AnoGAN: losses, scores, epoch selection.

With a trained generator ``G`` and discriminator ``D`` frozen, an encoder ``E`` learns
to map images to latents, ``x~ = G(E(x))``. The losses (P-AnoGAN's names; ``D_f`` is
the discriminator's feature layer, ``kappa`` the feature weight):

* ``"izi"``: ``MSE(x, x~)``;
* ``"ziz"``: ``MSE(z, E(G(z)))`` for ``z`` drawn from the prior (no real image used);
* ``"izif"``: ``izi + kappa MSE(D_f(x), D_f(x~))`` (f-AnoGAN's training loss);
* ``"izizf"``: ``izif + MSE(E(x), E(x~))``.

Scores of an image (higher = more abnormal; P-AnoGAN eqs. 5 and 6, f-AnoGAN):

* ``"izizf"``: ``mean|x - x~| + mean|E(x) - E(x~)|``;
* ``"residual"``: ``mean|x - x~|``;
* ``"izif"``: ``mean (x - x~)^2 + kappa mean (D_f(x) - D_f(x~))^2``.

Pixel means and squared errors run over the region of interest only: outside it,
``x~`` takes the input's values before ``D_f`` or ``E`` sees it, so nothing the
detector was told to ignore reaches a loss or a score.
"""

import copy

import numpy as np
import torch
from skorch.callbacks import Callback
from skorch.dataset import unpack_data
from skorch.utils import to_tensor
from torch.nn import functional as F

from .augment import augment_batch
from .losses import masked_mean
from .nets import pad_to_side
from .random import make_generator, randn
from .stages import StageNet

__all__ = [
    "ENCODER_LOSSES",
    "ENCODER_SCORES",
    "encode_decode",
    "encoder_loss",
    "encoder_scores",
    "EncoderNet",
    "BestValidationAUC",
]

ENCODER_LOSSES = ("izi", "ziz", "izif", "izizf")
ENCODER_SCORES = ("izizf", "residual", "izif")


def encode_decode(x, roi, encoder, generator):
    """``(z, x~)`` with ``z = E(x)``, ``x~ = G(z)`` taking ``x``'s values outside the ROI."""
    z = encoder(x)
    return z, torch.where(roi, generator(z), x)


def encoder_loss(loss, x, roi, encoder, generator, discriminator, feature_weight, prior_latents=None):
    """Batch loss of the encoder (see the module docstring).

    ``x`` is in the networks' range with 0 outside ``roi``; ``prior_latents`` are the
    ``z`` of ``"ziz"``. Pixel terms average over the ROI pixels of the batch.
    """
    if loss == "ziz":
        return F.mse_loss(encoder(generator(prior_latents)), prior_latents)
    z, x_hat = encode_decode(x, roi, encoder, generator)
    roi_f = roi.to(x.dtype)
    total = ((x - x_hat).square() * roi_f).sum() / roi_f.sum().clamp_min(1.0)
    if loss in ("izif", "izizf"):
        with torch.no_grad():
            target = discriminator.features(x)
        total = total + feature_weight * F.mse_loss(discriminator.features(x_hat), target)
    if loss == "izizf":
        total = total + F.mse_loss(encoder(x_hat), z)
    return total


def encoder_scores(score, x, roi, encoder, generator, discriminator, feature_weight):
    """``(x~, anomaly (B,))`` of a batch for ``score`` in :data:`ENCODER_SCORES`."""
    z, x_hat = encode_decode(x, roi, encoder, generator)
    if score == "izif":
        # One pass over both halves: the discriminator scores in eval mode, where no
        # layer mixes samples, and one batch of 2B runs its kernels faster than two.
        real, fake = discriminator.features(torch.cat([x, x_hat])).chunk(2)
        features = (real - fake).square().flatten(1).mean(1)
        return x_hat, masked_mean((x - x_hat).square(), roi) + feature_weight * features
    residual = masked_mean((x - x_hat).abs(), roi)
    if score == "izizf":
        return x_hat, residual + (z - encoder(x_hat)).abs().flatten(1).mean(1)
    return x_hat, residual


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

    def _check_stage_params(self):
        super()._check_stage_params()
        if self.loss not in ENCODER_LOSSES:
            raise ValueError(f"loss={self.loss!r} is not supported: use one of {ENCODER_LOSSES}.")
        if self.anomaly_score not in ENCODER_SCORES:
            raise ValueError(f"anomaly_score={self.anomaly_score!r} is not supported: use one of {ENCODER_SCORES}.")
        missing = {"generator", "discriminator"} - set(self.frozen_modules or {})
        if missing:
            raise ValueError(f"EncoderNet needs frozen_modules {sorted(missing)} (the trained GAN).")

    def initialize(self):
        super().initialize()
        self.valid_seed_ = int(np.random.SeedSequence(self.random_seed).generate_state(4)[3])
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
        self._set_training(False)
        out = np.empty(len(X), dtype=np.float64)
        step = len(X) if self.batch_size in (-1, None) else max(1, self.batch_size)
        with torch.inference_mode():
            for start in range(0, len(X), step):
                x = torch.from_numpy(X[start : start + step]).to(self.device)[:, None]
                if self.image_side is not None:
                    x = pad_to_side(x, int(self.image_side), float("nan"))
                filled, roi = self.split_roi(x)
                out[start : start + len(x)] = self.score_batch(filled, roi, anomaly_score)[1].double().cpu().numpy()
        return out


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
    """

    def __init__(self, X, y, name="valid_auc"):
        self.X = X
        self.y = y
        self.name = name

    def initialize(self):
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
        self.best_score_ = -np.inf
        self.best_epoch_ = None
        self.best_state_ = None
        return self

    def on_train_begin(self, net, **kwargs):
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
