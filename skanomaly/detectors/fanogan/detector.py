"""f-AnoGAN (Schlegl et al., 2019) and P-AnoGAN (Bhatt et al., 2021): a GAN of normal
anatomy, then an encoder that maps images to its latent space; one forward pass scores."""

import math
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_memory

from ..._model_state import _config_float, _config_int, _config_mapping
from ...base import BaseDeepDetector, _clone_callback
from ...training.progress import StageProgress
from ...training.stages import GANNet, MaxIter
from ...utils._docstring import fill_doc
from ...utils.tags import Tolerance, _widths, float32_rtol
from ...utils.validation import check_widths
from .encoders import ENCODERS, Encoder
from .losses import ENCODER_LOSSES
from .networks import ResidualCritic, ResidualGenerator, residual_image_size
from .progressive import ProgressiveDiscriminator, ProgressiveGenerator
from .training import PAPER_ITERATIONS, EncoderNet, ProgressiveGANNet, paper_schedule

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
# What "auto" resolves to in each paper's encoder stage. P-AnoGAN counts epochs;
# f-AnoGAN's code (z_encoding_izif.py) counts iterations, one batch each.
_ENCODER_SETTINGS = {
    "progressive": dict(optimizer="adam", lr=1e-4, max_epochs=30, iterations=None),
    "wgan-gp": dict(optimizer="rmsprop", lr=5e-5, max_epochs=None, iterations=50_000),
}
# Adam with P-AnoGAN's betas. RMSProp with the decay (0.9) of TF1's RMSPropOptimizer,
# which the f-AnoGAN code uses with its defaults; torch's default is 0.99, a ten times
# longer memory. (TF1 also starts the mean square at 1 rather than 0, which shrinks
# only the first hundred or so of the 50,000 steps; that is not reproduced.)
_OPTIMIZERS = {
    "adam": (torch.optim.Adam, {"betas": (0.9, 0.999)}),
    "rmsprop": (torch.optim.RMSprop, {"alpha": 0.9}),
}
# The entries of network_config_ that determine the GAN stage's networks (and so its
# cache key): a grid over the encoder, the loss or the score shares one GAN.
_GAN_NETWORK_KEYS = ("generator", "channels", "latent_dim", "ema_decay")
_NETWORK_KEYS = frozenset({*_GAN_NETWORK_KEYS, "side", "encoder", "loss", "feature_weight"})
_MAX_LATENT_DIM = 2**20


def _check_gan_channels(channels, generator, name):
    """The widths per scale of ``generator``'s networks as a tuple, or a ValueError."""
    return check_widths(
        channels,
        name,
        min_len=1 if generator == "progressive" else 2,
        max_len=9,
        context=f" for generator={generator!r}",
        hint=f", one per scale from 4 x 4 up, e.g. {_PAPER_CHANNELS[generator][:5]} (64 px) "
        "or (32, 16, 8) for a small 16 px CPU model",
    )


# Shown once when a stage projects to hours on a CPU (the paper's widths are GPU-sized).
_CPU_HINT = (
    "The paper's settings are sized for a GPU (device='cuda'); on a CPU use narrower "
    "networks, a smaller latent and fewer iterations, e.g. gan_channels=(64, 64, 32, 16), "
    "latent_dim=64, gan_iterations=2000, encoder='critic'."
)


def _gan_network(config):
    """The GAN stage's part of a ``network_config_``."""
    return {key: config[key] for key in _GAN_NETWORK_KEYS}


def _train_gan(network, training, samples, device, callbacks, verbose):
    """Train the GAN stage; a module-level function so ``memory`` can cache it."""
    net = _make_gan_net(network, device, training, callbacks, verbose)
    net.fit(samples, None)
    if network["generator"] == "progressive" and not net.schedule_complete_:
        raise RuntimeError(
            f"The progressive GAN stopped after {net.n_discriminator_steps_} of its "
            f"{sum(net.iterations_per_scale)} scheduled iterations (a callback ended training "
            "early), so it never reached full size. Remove the stopping callback from "
            "gan_callbacks or lower gan_iterations."
        )
    return net


def _make_gan_net(network, device, training=None, callbacks=(), verbose=0):
    """The GAN stage's net: its networks from ``network`` (:func:`_gan_network`) alone.

    ``training`` (``lr``, ``batch_size``, ``iterations``, ``n_samples``, ``seed``)
    sets how it trains; ``None`` builds a net to load fitted weights into, which
    never trains, so its training settings are the paper's (a progressive net gets
    the paper's schedule for its number of scales) and change no tensor.
    """
    settings = _GAN_SETTINGS[network["generator"]]
    channels = tuple(network["channels"])
    common = dict(
        loss="wgan-gp",
        n_critic=settings["n_critic"],
        latent_dim=network["latent_dim"],
        latent_distribution="normal",
        drift_weight=settings["drift"],
        x_range=(-1.0, 1.0),
        optimizer_g__betas=settings["betas"],
        optimizer_d__betas=settings["betas"],
        lr=settings["lr"],
        batch_size=settings["batch_size"],
        device=device,
        callbacks=list(callbacks),
        augment=settings["augment"],
        verbose=int(verbose),
    )
    total = None  # the progressive schedule's total: None keeps the paper's
    if training is not None:
        iterations = training["iterations"]
        n_batches = max(1, training["n_samples"] // training["batch_size"])
        common.update(
            lr=training["lr"],
            batch_size=training["batch_size"],
            max_epochs=max(1, math.ceil(iterations / n_batches)),
            callbacks=[("max_iter", MaxIter(iterations)), *callbacks]
            + ([("progress", StageProgress("FAnoGANDetector GAN stage", hint=_CPU_HINT))] if verbose else []),
            iterator_train__shuffle=True,
            # Full batches only: the minibatch-stddev statistic of a tail batch of one
            # or two images says nothing about the batch distribution.
            iterator_train__drop_last=training["n_samples"] >= training["batch_size"],
            random_seed=training["seed"],
        )
        total = iterations
    if network["generator"] == "progressive":
        per_scale, fade = paper_schedule(len(channels), total)
        return ProgressiveGANNet(
            ProgressiveGenerator,
            ProgressiveDiscriminator,
            generator__latent_dim=network["latent_dim"],
            generator__channels=channels,
            discriminator__channels=channels,
            iterations_per_scale=per_scale,
            fade_iterations=fade,
            ema_decay=network["ema_decay"],
            **common,
        )
    return GANNet(
        ResidualGenerator,
        ResidualCritic,
        generator__latent_dim=network["latent_dim"],
        generator__channels=channels,
        discriminator__channels=channels,
        **common,
    )


@fill_doc
class FAnoGANDetector(BaseDeepDetector):
    """f-AnoGAN / P-AnoGAN: a GAN, then an encoder into its latent space.

    Two calls reproduce the two papers on 64 x 64 patches; every ``"auto"`` setting
    follows ``generator``:

    * ``FAnoGANDetector()`` is P-AnoGAN (Bhatt et al., 2021): progressive GAN,
      ResNet-50 encoder, izizf loss and score, Adam 1e-4 betas (0.9, 0.999), 30
      epochs of batch 64, kappa 0.1;
    * ``FAnoGANDetector(generator="wgan-gp", encoder="critic", loss="izif")`` is
      f-AnoGAN (Schlegl et al., 2019): residual WGAN-GP, the critic-shaped encoder,
      izif loss and score, RMSProp 5e-5, 50,000 iterations of batch 64, kappa 1.

    Training has two stages, each on normal images (or present patches) only:

    1. **The GAN** (``histories_["gan"]``), by ``generator``:

       * ``"progressive"`` (P-AnoGAN): the progressive GAN of
         :mod:`skanomaly.detectors.fanogan.progressive`, grown from 4 x 4 to the patch size; ``z`` of
         512 from N(0, I); WGAN-GP (10) with drift 0.001; one critic step per
         generator step; Adam 1e-3 betas (0, 0.99); batch 16; the paper's iterations
         per scale (48k, 96k, 96k, 96k, 200k at 64 x 64) with linear fade-in
         (:mod:`skanomaly.detectors.fanogan.training`); the moving average of the generator
         (``ema_decay``) is the generator the encoder and scoring use.
       * ``"wgan-gp"`` (f-AnoGAN): the residual generator and critic of the f-AnoGAN
         code (:mod:`skanomaly.detectors.fanogan.networks`); ``z`` of 128 from N(0, I); WGAN-GP 10;
         5 critic steps per generator step; Adam 1e-4 betas (0, 0.9); batch 64;
         horizontal flips; 7 epochs of critic steps.

    2. **The encoder** (``histories_["encoder"]``), with the GAN frozen (eval mode, no
       gradient, its weights bit-identical before and after): ``encoder="resnet50"``
       or ``"densenet169"`` (torchvision, ``weights=None``: nothing is downloaded, a
       one-channel stem, a linear head to the latent size), ``"critic"`` (f-AnoGAN's
       encoder, the critic's layout with BatchNorm and a linear output) or
       ``"resnet18"`` (a size for CPUs), trained with ``loss`` (izi, ziz, izif, izizf;
       see :mod:`skanomaly.detectors.fanogan.losses`) by ``encoder_optimizer`` at ``lr``, in
       batches of ``batch_size``, for ``max_epochs`` epochs or ``encoder_iterations``
       batches, whichever ends first. P-AnoGAN kept the epoch with the best
       validation AUC: pass :class:`~skanomaly.detectors.fanogan.BestValidationAUC` in
       ``callbacks``.

    **Scoring** is one forward pass per batch, ``x~ = G(E(x))``: ``anomaly_score``
    ``"auto"`` is the paper's score for the loss (``"izizf"`` for izizf, P-AnoGAN eq.
    5; ``"izif"`` for izif with ``"wgan-gp"``, f-AnoGAN; ``"residual"`` otherwise,
    P-AnoGAN eq. 6);
    ``anomaly_map`` is ``|x - x~|``. Every network scores in eval mode, the
    discriminator's minibatch-stddev channel included (its training mean replaces the
    batch statistic), so a score depends on its image alone. Pixels are mapped to
    ``[-1, 1]`` inside the detector; scores are in that range, maps in input pixels.

    **Parameters take effect at the next fit**, as in scikit-learn: the networks are
    built from ``network_config_``, which ``fit`` resolves from the parameters, so
    changing ``generator``, ``encoder``, ``loss``, ``feature_weight``,
    ``latent_dim``, ``gan_channels`` or ``ema_decay`` on a fitted detector changes
    nothing until it is refitted. ``anomaly_score``, ``patch_aggregation`` and
    ``batch_size`` (as the scoring batch) act on the fitted networks at once.

    Parameters
    ----------
    generator : {"progressive", "wgan-gp"}, default="progressive"
    encoder : {"resnet50", "densenet169", "critic", "resnet18"}, default="resnet50"
    loss : {"izizf", "izif", "izi", "ziz"}, default="izizf"
    anomaly_score : {"auto", "izizf", "residual", "izif"}, default="auto"
        ``"izizf"``: ``mean|x - x~| + mean|E(x) - E(x~)|``; ``"residual"``:
        ``mean|x - x~|``; ``"izif"``: the f-AnoGAN score, ``mean (x - x~)^2 +
        kappa * mean (D_f(x) - D_f(x~))^2`` with the fitted ``feature_weight``.
        Means over the region of interest. ``"auto"``: the paper's score for the
        fitted ``loss`` and ``generator``: ``"izizf"`` for izizf, ``"izif"`` for izif
        with ``"wgan-gp"`` (f-AnoGAN), ``"residual"`` otherwise (P-AnoGAN). May be
        changed after fitting.
    feature_weight : float or "auto", default="auto"
        kappa of izif / izizf, in the encoder's loss and the izif score: 0.1 for
        ``"progressive"`` (P-AnoGAN), 1 for ``"wgan-gp"`` (f-AnoGAN).
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
    encoder_optimizer : {"auto", "adam", "rmsprop"}, default="auto"
        ``"adam"``: betas (0.9, 0.999), P-AnoGAN's; ``"rmsprop"``: decay 0.9, the
        f-AnoGAN code's (TensorFlow's RMSProp defaults). ``"auto"``: ``"adam"`` for
        ``"progressive"``, ``"rmsprop"`` for ``"wgan-gp"``.
    lr : float or "auto", default="auto"
        Encoder learning rate. ``"auto"``: 1e-4 (progressive, P-AnoGAN) or 5e-5
        (wgan-gp, f-AnoGAN).
    batch_size : int, default=64
        Encoder batch size (both papers'), and the scoring batch size.
    max_epochs : int or "auto", default="auto"
        Encoder epochs. ``"auto"``: 30 for ``"progressive"`` (P-AnoGAN); for
        ``"wgan-gp"``, as many epochs as ``encoder_iterations``, so that the
        iteration budget, not the epochs, ends training (every epoch has at least
        one batch), as in f-AnoGAN.
    encoder_iterations : int, None or "auto", default="auto"
        Encoder training batches (iterations), counted across epochs by
        :class:`~skanomaly.training.stages.MaxIter`; training stops after this many
        or after ``max_epochs`` epochs, whichever comes first. ``None`` counts epochs
        only (then ``max_epochs`` must be an int with ``"wgan-gp"``). ``"auto"``:
        ``None`` for ``"progressive"`` (P-AnoGAN counts epochs), 50,000 for
        ``"wgan-gp"`` (f-AnoGAN).
    memory : None, str or joblib.Memory, default=None
        Caches the trained GAN stage, keyed by everything that determines it (the GAN
        settings, ``random_state``, the device and the training samples), as
        ``Pipeline(memory=)`` caches transformers: a grid search whose candidates differ
        only in encoder, loss or score trains the GAN once per fold.
    gan_callbacks : list of skorch callbacks or None, default=None
        Callbacks of the GAN stage (``callbacks`` go to the encoder stage).
    {contamination}
    {patch_aggregation}
    {image_shape}
    {value_range}
    validation_fraction : float or None, default=None
        Images held out of the *encoder* stage for its ``valid_loss``.
    {device}
    {random_state}
    {verbose}
    {callbacks}

    Attributes
    ----------
    gan_ : GANNet or ProgressiveGANNet
        The GAN stage (``gan_.generator_``, ``gan_.discriminator_``,
        ``gan_.generator_ema_``).
    encoder_ : skanomaly.detectors.fanogan.training.EncoderNet
        The encoder stage (``encoder_.module_``; the frozen ``generator_`` and
        ``discriminator_`` are the GAN's own objects).
    network_config_ : dict
        What the fitted networks were built with, resolved at fit: ``generator``,
        ``side`` (of the networks' square images), ``channels``, ``latent_dim``,
        ``ema_decay`` (the progressive generator average's decay, scaled to the
        schedule; ``None`` without one), ``encoder``, ``loss`` and ``feature_weight``.
        Scoring, maps and model files use it, never the current parameters.
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
        "latent_dim": [StrOptions({"auto"}), Interval(Integral, 1, _MAX_LATENT_DIM, closed="both")],
        "gan_channels": [StrOptions({"auto"}), tuple, list],
        "gan_iterations": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "gan_lr": [StrOptions({"auto"}), Interval(Real, 0, None, closed="neither")],
        "gan_batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "ema_decay": [None, Interval(Real, 0, 1, closed="left")],
        "encoder_optimizer": [StrOptions({"auto", *_OPTIMIZERS})],
        "lr": [StrOptions({"auto"}), Interval(Real, 0, None, closed="neither")],
        "max_epochs": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "encoder_iterations": [StrOptions({"auto"}), None, Interval(Integral, 1, None, closed="left")],
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
        encoder_optimizer="auto",
        lr="auto",
        batch_size=64,
        max_epochs="auto",
        encoder_iterations="auto",
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
        self.encoder_iterations = encoder_iterations
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
        # Checked before the GAN trains: finding it after a day of GAN training
        # would waste the day.
        if (
            self.max_epochs == "auto"
            and _ENCODER_SETTINGS[self.generator]["max_epochs"] is None
            and self._encoder_iterations() is None
        ):
            raise ValueError(
                f"encoder_iterations=None counts encoder epochs only, but max_epochs='auto' "
                f"for generator={self.generator!r} is set by the iteration budget (f-AnoGAN "
                "counts iterations): give max_epochs an int, or encoder_iterations an int "
                "or 'auto' (50,000)."
            )
        if self.gan_channels != "auto":
            _check_gan_channels(self.gan_channels, self.generator, "gan_channels")

    def __skanomaly_tags__(self):
        tags = super().__skanomaly_tags__()
        channels = self.gan_channels
        if isinstance(channels, str):  # "auto": the paper's widths at 64 px
            channels = _PAPER_CHANNELS.get(self.generator, (512,) * 5)[:5]
        widths = _widths(channels)
        gan = 2 * len(widths) + 2  # G, or D up to D_f: two convolutions a scale, in and out
        encoder = {"resnet50": 50, "densenet169": 169, "resnet18": 18}.get(self.encoder, gan)
        score = self._resolved_score()
        passes = {"izizf": 2 * encoder + gan, "izif": encoder + 2 * gan}.get(score, encoder + gan)
        widest = max(16 * widths[0], 9 * max(widths), 4608 if self.encoder in ("resnet50", "resnet18") else 0)
        tags.score_tolerance = Tolerance(
            float32_rtol(passes + 1, widest), f"E, G (and D_f or E again) of the {score!r} score in sequence"
        )
        tags.training_tolerance = Tolerance(
            2e-2, "a GAN and a ResNet with BatchNorm amplify the inputs' last bits: measured 3e-3, 2e-3 (resnet18)"
        )
        return tags

    def _setting(self, name):
        """A GAN-stage parameter with ``"auto"`` resolved for ``generator`` (at fit)."""
        value = getattr(self, name)
        if value == "auto":
            key = {"gan_lr": "lr", "gan_batch_size": "batch_size"}.get(name, name)
            return _GAN_SETTINGS[self.generator][key]
        return value

    def _encoder_iterations(self):
        if self.encoder_iterations == "auto":
            return _ENCODER_SETTINGS[self.generator]["iterations"]
        return self.encoder_iterations

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

    def _resolved_score(self):
        """``anomaly_score`` with ``"auto"`` resolved for the fitted generator and loss
        (the parameters before fitting)."""
        if self.anomaly_score != "auto":
            return self.anomaly_score
        config = getattr(self, "network_config_", None)
        generator, loss = (self.generator, self.loss) if config is None else (config["generator"], config["loss"])
        if loss == "izizf":
            return "izizf"  # P-AnoGAN eq. 5
        if loss == "izif" and generator == "wgan-gp":
            return "izif"  # f-AnoGAN's score of its izif encoder
        return "residual"  # P-AnoGAN eq. 6

    # ------------------------------------------------------ network configuration
    def _network_config(self):
        """What the networks are built from, resolved from the parameters and the
        training samples' size; ``fit`` stores it as ``network_config_``."""
        channels = self._channels()
        side = residual_image_size(channels)
        ema_decay = None
        if self.generator == "progressive" and self.ema_decay is not None:
            ema_decay = float(self.ema_decay)
            iterations = PAPER_ITERATIONS if self.gan_iterations == "auto" else int(self.gan_iterations)
            # The average spans about 1 / (1 - decay) iterations, 0.5 % of the paper's
            # last scale; a shorter schedule shrinks that window in proportion, or a
            # CPU-sized run would average mostly the untrained start of each scale.
            factor = iterations / sum(paper_schedule(len(channels))[0])
            if factor < 1:
                ema_decay = ema_decay ** (1.0 / factor)
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
        return dict(
            generator=self.generator,
            side=side,
            channels=channels,
            latent_dim=int(self._setting("latent_dim")),
            ema_decay=ema_decay,
            encoder=self.encoder,
            loss=self.loss,
            feature_weight=float(self._setting("feature_weight")),
        )

    def _check_network_config(self, config, image_shape):
        config = _config_mapping(config, _NETWORK_KEYS)
        generator = config["generator"]
        if generator not in _GENERATORS:
            raise ValueError(f"generator={generator!r} (one of {_GENERATORS})")
        channels = _check_gan_channels(config["channels"], generator, "channels")
        side = residual_image_size(channels)
        if config["side"] != side or side < max(image_shape):
            raise ValueError(
                f"side={config['side']!r} for channels={list(channels)} (which make {side} px "
                f"images) and {image_shape[0]}x{image_shape[1]} samples"
            )
        ema_decay = config["ema_decay"]
        if ema_decay is not None:
            ema_decay = _config_float(config, "ema_decay", 0.0, 1.0, closed="left")
            if generator != "progressive":
                raise ValueError(f"ema_decay={ema_decay!r} for generator={generator!r}, which keeps no average")
        encoder, loss = config["encoder"], config["loss"]
        if encoder not in ENCODERS or (encoder == "densenet169" and side < 32):
            raise ValueError(f"encoder={encoder!r} (one of {ENCODERS}; densenet169 from 32 px)")
        if loss not in ENCODER_LOSSES:
            raise ValueError(f"loss={loss!r} (one of {ENCODER_LOSSES})")
        return dict(
            generator=generator,
            side=side,
            channels=channels,
            latent_dim=_config_int(config, "latent_dim", 1, _MAX_LATENT_DIM),
            ema_decay=ema_decay,
            encoder=encoder,
            loss=loss,
            feature_weight=_config_float(config, "feature_weight", 0.0, None),
        )

    # ------------------------------------------------------------- training
    def _gan_training(self, n_samples):
        """How the GAN stage trains on ``n_samples`` samples (its networks aside)."""
        batch_size = int(self._setting("gan_batch_size"))
        iterations = self.gan_iterations
        if iterations == "auto":
            if self.generator == "progressive":
                iterations = PAPER_ITERATIONS
            else:
                iterations = _WGAN_GP_EPOCHS * max(1, n_samples // min(batch_size, n_samples))
        return dict(
            lr=float(self._setting("gan_lr")),
            batch_size=min(batch_size, n_samples),
            iterations=int(iterations),
            n_samples=int(n_samples),
            seed=int(self._seed),
        )

    def _encoder_settings(self, config):
        """How the encoder stage trains, ``"auto"`` resolved for ``config``'s GAN.

        Independent of the data, so that the encoder net a model file is loaded into
        is the one ``fit`` trained.
        """
        paper = _ENCODER_SETTINGS[config["generator"]]
        name = paper["optimizer"] if self.encoder_optimizer == "auto" else self.encoder_optimizer
        optimizer, optimizer_kwargs = _OPTIMIZERS[name]
        iterations = paper["iterations"] if self.encoder_iterations == "auto" else self.encoder_iterations
        max_epochs = self.max_epochs
        if max_epochs == "auto":
            # Every epoch has at least one batch, so this many epochs always reach the
            # iteration budget, whatever the size of the training split.
            max_epochs = paper["max_epochs"] if paper["max_epochs"] is not None else iterations
        return dict(
            optimizer=optimizer,
            optimizer_kwargs=dict(optimizer_kwargs),
            lr=float(paper["lr"] if self.lr == "auto" else self.lr),
            batch_size=int(self.batch_size),
            max_epochs=int(max_epochs),
            iterations=None if iterations is None else int(iterations),
        )

    def _fit_networks(self, samples, owners, y, device):
        config = self.network_config_
        callbacks = [(f"user_{i}", _clone_callback(cb)) for i, cb in enumerate(self.gan_callbacks or [])]
        train_gan = _train_gan
        if self.memory is not None:
            # verbose only shows progress; it does not change the GAN.
            train_gan = check_memory(self.memory).cache(_train_gan, ignore=["verbose"])
        self.gan_ = train_gan(
            _gan_network(config), self._gan_training(len(samples)), samples, str(device), callbacks, self.verbose
        )
        self.encoder_ = self._fit_stage(self._make_encoder_net(config, device), samples, owners)
        return {"gan": self.gan_.history, "encoder": self.encoder_.history}

    def _small_settings_hint(self):
        return _CPU_HINT

    def _scoring_generator(self):
        ema = getattr(self.gan_, "generator_ema_", None)
        return ema if ema is not None else self.gan_.generator_

    def _make_encoder_net(self, config, device):
        """The encoder stage's net, for training (``fit``) and for loading weights into
        alike: its networks from ``config`` alone."""
        settings = self._encoder_settings(config)
        kwargs = self._skorch_kwargs(device, stage="encoder")
        kwargs["random_seed"] = int(np.random.SeedSequence([kwargs["random_seed"], 1]).generate_state(1)[0])
        kwargs.update(lr=settings["lr"], batch_size=settings["batch_size"], max_epochs=settings["max_epochs"])
        if settings["iterations"] is not None:
            kwargs["callbacks"] = [("max_iter", MaxIter(settings["iterations"])), *kwargs["callbacks"]]
        optimizer_kwargs = {f"optimizer__{key}": value for key, value in settings["optimizer_kwargs"].items()}
        return EncoderNet(
            Encoder,
            module__name=config["encoder"],
            module__latent_dim=config["latent_dim"],
            module__channels=tuple(config["channels"]),
            frozen_modules={"generator": self._scoring_generator(), "discriminator": self.gan_.discriminator_},
            loss=config["loss"],
            feature_weight=config["feature_weight"],
            anomaly_score=self._resolved_score(),
            image_side=config["side"],
            x_range=(-1.0, 1.0),
            optimizer=settings["optimizer"],
            **optimizer_kwargs,
            **kwargs,
        )

    def __setstate__(self, state):
        super().__setstate__(state)
        # skorch pickles each net's modules on their own, so the encoder stage's
        # frozen GAN comes back as a copy of the GAN stage's: share them again, as
        # fit left them (one object, scored, moved and saved once).
        encoder, gan = self.__dict__.get("encoder_"), self.__dict__.get("gan_")
        if encoder is not None and gan is not None and getattr(encoder, "initialized_", False):
            shared = {"generator": self._scoring_generator(), "discriminator": gan.discriminator_}
            encoder.frozen_modules = shared
            for name, module in shared.items():
                setattr(encoder, name + "_", module)

    def _initialize_networks(self, device):
        config = self.network_config_
        self.gan_ = _make_gan_net(_gan_network(config), device)
        self.gan_.initialize()
        self.encoder_ = self._make_encoder_net(config, device)
        self.encoder_.initialize()

    # -------------------------------------------------------------- scoring
    def _anomaly_batch(self, x, roi):
        net = self.encoder_
        x_hat, image = net.score_batch(x, roi, self._resolved_score(), self.network_config_["feature_weight"])
        # The map in input pixels ([0, 1]); outside the ROI x~ is x, so the map is 0.
        pixel = net.unscale_x(x_hat).sub(x).abs()
        return pixel * roi.to(pixel.dtype), image
