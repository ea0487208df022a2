"""f-AnoGAN (Schlegl et al., 2019) and P-AnoGAN (Bhatt et al., 2021): a GAN of normal
anatomy, then an encoder that maps images to its latent space; one forward pass scores."""

import math
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_memory

from ..base import BaseDeepDetector, _clone_callback
from ..nn.encoders import ENCODERS, Encoder
from ..nn.fanogan import ResidualCritic, ResidualGenerator
from ..nn.progressive import ProgressiveDiscriminator, ProgressiveGenerator
from ..training.encoder import ENCODER_LOSSES, EncoderNet
from ..training.nets import pad_to_side
from ..training.progressive import PAPER_ITERATIONS, ProgressiveGANNet, paper_schedule
from ..training.stages import GANNet, MaxIter

__all__ = ["FAnoGANDetector"]

_GENERATORS = ("progressive", "wgan-gp")
_SCORES = ("auto", "izizf", "residual", "izif")

# Widths per scale from 4 x 4 up: pytorch_GAN_zoo's PGAN default depths (P-AnoGAN used
# the first five for 64 x 64), and the f-AnoGAN code's (8, 8, 4, 2, 1) x 64, halved on.
_PAPER_CHANNELS = {
    "progressive": (512, 512, 512, 512, 256, 128, 64, 32, 16),
    "wgan-gp": (512, 512, 256, 128, 64, 32, 16, 16, 16),
}
# The settings of each paper's GAN training that the detector does not expose.
_GAN_SETTINGS = {
    "progressive": dict(latent_dim=512, lr=1e-3, betas=(0.0, 0.99), batch_size=16, n_critic=1, drift=0.001,
                        feature_weight=0.1, augment=None),
    "wgan-gp": dict(latent_dim=128, lr=1e-4, betas=(0.0, 0.9), batch_size=64, n_critic=5, drift=0.0,
                    feature_weight=1.0, augment="hflip"),
}  # fmt: skip
_WGAN_GP_EPOCHS = 7  # the f-AnoGAN code's TRAIN_EPOCHS, one critic step per real batch


def _train_gan(config, samples, device, callbacks, verbose):
    """Train the GAN stage; a module-level function so ``memory`` can cache it."""
    net = _make_gan_net(config, device, callbacks, verbose)
    net.fit(samples[:, None], None)
    if config["generator"] == "progressive" and not net.schedule_complete_:
        raise RuntimeError(
            f"The progressive GAN stopped after {net.n_discriminator_steps_} of its "
            f"{sum(net.iterations_per_scale)} scheduled iterations (a callback ended training "
            "early), so it never reached full size. Remove the stopping callback from "
            "gan_callbacks or lower gan_iterations."
        )
    return net


def _make_gan_net(config, device, callbacks=(), verbose=0):
    settings = _GAN_SETTINGS[config["generator"]]
    channels = config["channels"]
    n_batches = max(1, config["n_samples"] // config["batch_size"])
    iterations = config["iterations"]
    common = dict(
        loss="wgan-gp",
        n_critic=settings["n_critic"],
        latent_dim=config["latent_dim"],
        latent_distribution="normal",
        drift_weight=settings["drift"],
        x_range=(-1.0, 1.0),
        optimizer_g__betas=settings["betas"],
        optimizer_d__betas=settings["betas"],
        lr=config["lr"],
        batch_size=config["batch_size"],
        max_epochs=max(1, math.ceil(iterations / n_batches)),
        device=device,
        callbacks=[("max_iter", MaxIter(iterations)), *callbacks],
        iterator_train__shuffle=True,
        # Full batches only: the minibatch-stddev statistic of a tail batch of one or
        # two images says nothing about the batch distribution.
        iterator_train__drop_last=config["n_samples"] >= config["batch_size"],
        augment=settings["augment"],
        verbose=int(verbose),
        random_seed=config["seed"],
    )
    if config["generator"] == "progressive":
        per_scale, fade = paper_schedule(len(channels), iterations)
        return ProgressiveGANNet(
            ProgressiveGenerator,
            ProgressiveDiscriminator,
            generator__latent_dim=config["latent_dim"],
            generator__channels=channels,
            discriminator__channels=channels,
            iterations_per_scale=per_scale,
            fade_iterations=fade,
            ema_decay=config["ema_decay"],
            **common,
        )
    return GANNet(
        ResidualGenerator,
        ResidualCritic,
        generator__latent_dim=config["latent_dim"],
        generator__channels=channels,
        discriminator__channels=channels,
        **common,
    )


class FAnoGANDetector(BaseDeepDetector):
    """f-AnoGAN / P-AnoGAN: a GAN, then an encoder into its latent space.

    Defaults reproduce P-AnoGAN (Bhatt et al., 2021) on 64 x 64 patches. Training has
    two stages, each on normal images (or present patches) only:

    1. **The GAN** (``histories_["gan"]``), by ``generator``:

       * ``"progressive"`` (P-AnoGAN): the progressive GAN of
         :mod:`skanomaly.nn.progressive`, grown from 4 x 4 to the patch size; ``z`` of
         512 from N(0, I); WGAN-GP (10) with drift 0.001; one critic step per
         generator step; Adam 1e-3 betas (0, 0.99); batch 16; the paper's iterations
         per scale (48k, 96k, 96k, 96k, 200k at 64 x 64) with linear fade-in
         (:mod:`skanomaly.training.progressive`); the moving average of the generator
         (``ema_decay``) is the generator the encoder and scoring use.
       * ``"wgan-gp"`` (f-AnoGAN): the residual generator and critic of the f-AnoGAN
         code (:mod:`skanomaly.nn.fanogan`); ``z`` of 128 from N(0, I); WGAN-GP 10;
         5 critic steps per generator step; Adam 1e-4 betas (0, 0.9); batch 64;
         horizontal flips; 7 epochs of critic steps.

    2. **The encoder** (``histories_["encoder"]``), with the GAN frozen (eval mode, no
       gradient, its weights bit-identical before and after): ``encoder="resnet50"``
       or ``"densenet169"`` (torchvision, ``weights=None``: nothing is downloaded, a
       one-channel stem, a linear head to the latent size), ``"critic"`` (f-AnoGAN's
       encoder, the critic's layout with BatchNorm and tanh) or ``"resnet18"`` (a
       size for CPUs), trained with ``loss`` (izi, ziz, izif, izizf; see
       :mod:`skanomaly.training.encoder`) by Adam (``lr`` 1e-4, betas (0.9, 0.999)),
       batch 64, 30 epochs. P-AnoGAN kept the epoch with the best validation AUC:
       pass :class:`~skanomaly.training.encoder.BestValidationAUC` in ``callbacks``.

    **Scoring** is one forward pass per batch, ``x~ = G(E(x))``: ``anomaly_score``
    ``"auto"`` is the paper's score for the loss (``"izizf"`` for izizf, P-AnoGAN eq.
    5; ``"residual"`` otherwise, eq. 6); ``anomaly_map`` is ``|x - x~|``. Every network
    scores in eval mode, the discriminator's minibatch-stddev channel included (its
    training mean replaces the batch statistic), so a score depends on its image
    alone. Pixels are mapped to ``[-1, 1]`` inside the detector; scores are in that
    range, maps in input pixels.

    Parameters
    ----------
    generator : {"progressive", "wgan-gp"}, default="progressive"
    encoder : {"resnet50", "densenet169", "critic", "resnet18"}, default="resnet50"
    loss : {"izizf", "izif", "izi", "ziz"}, default="izizf"
    anomaly_score : {"auto", "izizf", "residual", "izif"}, default="auto"
        ``"izizf"``: ``mean|x - x~| + mean|E(x) - E(x~)|``; ``"residual"``:
        ``mean|x - x~|``; ``"izif"``: the f-AnoGAN score, ``mean (x - x~)^2 +
        feature_weight * mean (D_f(x) - D_f(x~))^2``. Means over the region of
        interest. May be changed after fitting.
    feature_weight : float or "auto", default="auto"
        kappa of izif / izizf: 0.1 for ``"progressive"`` (P-AnoGAN), 1 for
        ``"wgan-gp"`` (f-AnoGAN).
    latent_dim : int or "auto", default="auto"
        512 (progressive) or 128 (wgan-gp).
    gan_channels : tuple of int or "auto", default="auto"
        Widths per scale from 4 x 4 up. The networks make square images of side
        ``4 * 2 ** (len(gan_channels) - 1)``; samples smaller than that are padded,
        outside the region of interest. ``"auto"``: the paper's widths for the
        smallest such side that holds the training samples ((512, 512, 512, 512,
        256) progressive, (512, 512, 256, 128, 64) wgan-gp, at 64 px). Small CPU
        settings: e.g. ``(32, 16, 8)`` at 16 px.
    gan_iterations : int or "auto", default="auto"
        GAN training iterations (critic steps, one real batch each). ``"auto"``: the
        paper's 536,000 for ``"progressive"`` (smaller totals shrink every scale and
        fade-in in proportion), 7 epochs for ``"wgan-gp"``.
    gan_lr : float or "auto", default="auto"
        1e-3 (progressive) or 1e-4 (wgan-gp).
    gan_batch_size : int or "auto", default="auto"
        16 (progressive) or 64 (wgan-gp).
    ema_decay : float or None, default=0.999
        Moving average of the progressive generator's weights; ``None`` uses the
        trained generator itself.
    encoder_optimizer : {"adam", "rmsprop"}, default="adam"
        ``"adam"`` (P-AnoGAN, betas (0.9, 0.999)); ``"rmsprop"`` with ``lr=5e-5`` is the
        f-AnoGAN code's setting.
    lr : float, default=1e-4
        Encoder learning rate.
    batch_size : int, default=64
        Encoder batch size, and the scoring batch size.
    max_epochs : int, default=30
        Encoder epochs.
    memory : None, str or joblib.Memory, default=None
        Caches the trained GAN stage, keyed by everything that determines it (the GAN
        settings, ``random_state``, the device and the training samples), as
        ``Pipeline(memory=)`` caches transformers: a grid search whose candidates differ
        only in encoder, loss or score trains the GAN once per fold.
    gan_callbacks : list of skorch callbacks or None, default=None
        Callbacks of the GAN stage (``callbacks`` go to the encoder stage).
    contamination, patch_aggregation, image_shape, value_range, device, random_state, \
verbose, callbacks
        As in :class:`~skanomaly.detectors.CAEDetector`.
    validation_fraction : float or None, default=None
        Images held out of the *encoder* stage for its ``valid_loss``.

    Attributes
    ----------
    gan_ : GANNet or ProgressiveGANNet
        The GAN stage (``gan_.generator_``, ``gan_.discriminator_``,
        ``gan_.generator_ema_``).
    encoder_ : skanomaly.training.encoder.EncoderNet
        The encoder stage (``encoder_.module_``; the frozen ``generator_`` and
        ``discriminator_`` are the GAN's own objects).
    offset_, image_shape_, histories_, n_iter_, n_features_in_
        As in :class:`~skanomaly.detectors.CAEDetector`; ``histories_`` has ``"gan"``
        and ``"encoder"``.

    Examples
    --------
    >>> from skanomaly.datasets import make_chest_phantoms
    >>> from skanomaly.detectors import FAnoGANDetector
    >>> data = make_chest_phantoms(24, image_size=16, anomaly_fraction=0.0, random_state=0)
    >>> det = FAnoGANDetector(encoder="critic", gan_channels=(16, 8, 8), latent_dim=8,
    ...                       gan_iterations=30, max_epochs=2, batch_size=8,
    ...                       random_state=0).fit(data.images)
    >>> det.score_samples(data.images[:3]).shape
    (3,)
    """

    _net_attributes = ("gan_", "encoder_")

    _parameter_constraints: dict = {
        **BaseDeepDetector._parameter_constraints,
        "generator": [StrOptions(set(_GENERATORS))],
        "encoder": [StrOptions(set(ENCODERS))],
        "loss": [StrOptions(set(ENCODER_LOSSES))],
        "anomaly_score": [StrOptions(set(_SCORES))],
        "feature_weight": [StrOptions({"auto"}), Interval(Real, 0, None, closed="left")],
        "latent_dim": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "gan_channels": [StrOptions({"auto"}), tuple, list],
        "gan_iterations": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "gan_lr": [StrOptions({"auto"}), Interval(Real, 0, None, closed="neither")],
        "gan_batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "ema_decay": [None, Interval(Real, 0, 1, closed="left")],
        "encoder_optimizer": [StrOptions({"adam", "rmsprop"})],
        "memory": [None, str, HasMethods(["cache"])],
        "gan_callbacks": [None, list],
    }

    def __init__(
        self,
        *,
        generator="progressive",
        encoder="resnet50",
        loss="izizf",
        anomaly_score="auto",
        feature_weight="auto",
        latent_dim="auto",
        gan_channels="auto",
        gan_iterations="auto",
        gan_lr="auto",
        gan_batch_size="auto",
        ema_decay=0.999,
        encoder_optimizer="adam",
        lr=1e-4,
        batch_size=64,
        max_epochs=30,
        memory=None,
        gan_callbacks=None,
        contamination="auto",
        patch_aggregation="max",
        image_shape=None,
        value_range="auto",
        validation_fraction=None,
        device="auto",
        random_state=None,
        verbose=0,
        callbacks=None,
    ):
        self.generator = generator
        self.encoder = encoder
        self.loss = loss
        self.anomaly_score = anomaly_score
        self.feature_weight = feature_weight
        self.latent_dim = latent_dim
        self.gan_channels = gan_channels
        self.gan_iterations = gan_iterations
        self.gan_lr = gan_lr
        self.gan_batch_size = gan_batch_size
        self.ema_decay = ema_decay
        self.encoder_optimizer = encoder_optimizer
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.memory = memory
        self.gan_callbacks = gan_callbacks
        self.contamination = contamination
        self.patch_aggregation = patch_aggregation
        self.image_shape = image_shape
        self.value_range = value_range
        self.validation_fraction = validation_fraction
        self.device = device
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks

    # ------------------------------------------------------------ parameters
    def _validate_detector_params(self):
        channels = self.gan_channels
        if channels == "auto":
            return
        minimum = 1 if self.generator == "progressive" else 2
        valid = minimum <= len(channels) <= 9 and all(
            isinstance(c, Integral) and not isinstance(c, bool) and 1 <= c <= 4096 for c in channels
        )
        if not valid:
            raise ValueError(
                f"gan_channels={channels!r} is not valid for generator={self.generator!r}: use "
                f"{minimum} to 9 integer widths in [1, 4096], one per scale from 4 x 4 up, e.g. "
                f"{_PAPER_CHANNELS[self.generator][:5]} (64 px) or (32, 16, 8) for a small "
                "16 px CPU model."
            )

    def _setting(self, name):
        value = getattr(self, name)
        if value == "auto":
            key = {"gan_lr": "lr", "gan_batch_size": "batch_size"}.get(name, name)
            return _GAN_SETTINGS[self.generator][key]
        return value

    def _channels(self):
        if self.gan_channels != "auto":
            return tuple(int(c) for c in self.gan_channels)
        side = max(8 if self.generator == "wgan-gp" else 4, max(self.image_shape_))
        n_scales = max(1, math.ceil(math.log2(side / 4)) + 1)
        if n_scales > len(_PAPER_CHANNELS[self.generator]):
            raise ValueError(
                f"{self.image_shape_[0]}x{self.image_shape_[1]} samples are too large for the "
                "GAN (at most 1024 px): train on patches (PatchExtractor) or resize."
            )
        return _PAPER_CHANNELS[self.generator][:n_scales]

    def _network_side(self):
        return 4 * 2 ** (len(self._channels()) - 1)

    def _resolved_score(self):
        if self.anomaly_score == "auto":
            return "izizf" if self.loss == "izizf" else "residual"
        return self.anomaly_score

    def _check_network_side(self):
        side = self._network_side()
        if max(self.image_shape_) > side:
            raise ValueError(
                f"gan_channels={self.gan_channels!r} make {side}x{side} images, smaller than the "
                f"{self.image_shape_[0]}x{self.image_shape_[1]} training samples: add a width "
                "per doubling of the side, or use gan_channels='auto'."
            )
        if self.encoder == "densenet169" and side < 32:
            raise ValueError(
                f"encoder='densenet169' needs images of at least 32x32 (its four pooling "
                f"stages), but the GAN works on {side}x{side}: use larger patches, more "
                "gan_channels entries, or encoder='resnet50' / 'resnet18' / 'critic'."
            )

    # ------------------------------------------------------------- training
    def _gan_config(self, n_samples=None):
        """The settings that determine the GAN stage; ``n_samples=None`` for a GAN that
        is only built (to load weights into), not trained."""
        batch_size = int(self._setting("gan_batch_size"))
        n_samples = batch_size if n_samples is None else n_samples
        iterations = self.gan_iterations
        if iterations == "auto":
            if self.generator == "progressive":
                iterations = PAPER_ITERATIONS
            else:
                iterations = _WGAN_GP_EPOCHS * max(1, n_samples // min(batch_size, n_samples))
        channels = self._channels()
        ema_decay = None if self.ema_decay is None else float(self.ema_decay)
        if ema_decay and self.generator == "progressive":
            # The average spans about 1 / (1 - decay) iterations, 0.5 % of the paper's
            # last scale; a shorter schedule shrinks that window in proportion, or a
            # CPU-sized run would average mostly the untrained start of each scale.
            factor = iterations / sum(paper_schedule(len(channels))[0])
            if factor < 1:
                ema_decay = ema_decay ** (1.0 / factor)
        return dict(
            generator=self.generator,
            channels=channels,
            latent_dim=int(self._setting("latent_dim")),
            lr=float(self._setting("gan_lr")),
            batch_size=min(batch_size, n_samples),
            iterations=int(iterations),
            ema_decay=ema_decay,
            n_samples=int(n_samples),
            seed=int(self._seed),
        )

    def _fit_networks(self, samples, owners, y, device):
        self._check_network_side()
        side = self._network_side()
        padded = pad_to_side(torch.from_numpy(samples), side, float("nan")).numpy()
        config = self._gan_config(len(padded))
        callbacks = [(f"user_{i}", _clone_callback(cb)) for i, cb in enumerate(self.gan_callbacks or [])]
        train_gan = _train_gan
        if self.memory is not None:
            # verbose only shows progress; it does not change the GAN.
            train_gan = check_memory(self.memory).cache(_train_gan, ignore=["verbose"])
        self.gan_ = train_gan(config, padded, str(device), callbacks, self.verbose)

        self.encoder_ = self._fit_stage(self._make_encoder_net(device), padded, owners)
        return {"gan": self.gan_.history, "encoder": self.encoder_.history}

    def _scoring_generator(self):
        ema = getattr(self.gan_, "generator_ema_", None)
        return ema if ema is not None else self.gan_.generator_

    def _make_encoder_net(self, device):
        optimizer = torch.optim.Adam if self.encoder_optimizer == "adam" else torch.optim.RMSprop
        extra = {"optimizer__betas": (0.9, 0.999)} if self.encoder_optimizer == "adam" else {}
        kwargs = self._skorch_kwargs(device)
        kwargs["random_seed"] = int(np.random.SeedSequence([kwargs["random_seed"], 1]).generate_state(1)[0])
        return EncoderNet(
            Encoder,
            module__name=self.encoder,
            module__latent_dim=int(self._setting("latent_dim")),
            module__channels=self._channels(),
            frozen_modules={"generator": self._scoring_generator(), "discriminator": self.gan_.discriminator_},
            loss=self.loss,
            feature_weight=float(self._setting("feature_weight")),
            anomaly_score=self._resolved_score(),
            image_side=self._network_side(),
            x_range=(-1.0, 1.0),
            optimizer=optimizer,
            **extra,
            **kwargs,
        )

    def _initialize_networks(self, device):
        config = self._gan_config()
        self.gan_ = _make_gan_net(config, device)
        self.gan_.initialize()
        self.encoder_ = self._make_encoder_net(device)
        self.encoder_.initialize()

    # -------------------------------------------------------------- scoring
    def _anomaly_batch(self, x, roi):
        height, width = x.shape[-2:]
        side = self._network_side()
        x, roi_padded = pad_to_side(x, side, 0.0), pad_to_side(roi, side, False)
        net = self.encoder_
        x_hat, image = net.score_batch(x, roi_padded, self._resolved_score(), float(self._setting("feature_weight")))
        # The map in input pixels ([0, 1]); outside the ROI x~ is x, so the map is 0.
        pixel = net.unscale_x(x_hat).sub(x).abs()[..., :height, :width]
        return pixel * roi.to(pixel.dtype), image
