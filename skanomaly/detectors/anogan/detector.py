"""AnoGAN (Schlegl et al., 2017): a DCGAN of normal anatomy and a latent search per image."""

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions

from ..._model_state import _config_int, _config_mapping
from ...base import BaseDeepDetector
from ...training.latent_search import latent_search
from ...training.stages import GANNet
from ...utils._docstring import fill_doc
from ...utils.tags import Tolerance, _widths, float32_rtol
from ...utils.validation import check_widths
from .losses import anogan_score, search_terms
from .networks import DCGANDiscriminator, DCGANGenerator

__all__ = ["AnoGANDetector"]

_SCORES = ("anogan", "residual", "feature", "discriminator")
_MAX_LATENT_DIM = 2**20
_CHANNELS_HINT = (
    ", e.g. the paper's (64, 128, 256, 512) or (8, 16) for a small CPU model"
)


@fill_doc
class AnoGANDetector(BaseDeepDetector):
    """AnoGAN: a DCGAN trained on normal images, and a latent search per scored image.

    **Training** (stage ``"gan"``): a DCGAN (:mod:`skanomaly.detectors.anogan.networks`) with the BCE
    loss and the non-saturating generator loss, ``z`` uniform on ``[-1, 1]``, pixels
    mapped to ``[-1, 1]`` inside the detector, Adam with betas ``(0.5, 0.999)``, one
    discriminator and one generator step per batch
    (:class:`~skanomaly.training.stages.GANNet`); ``histories_["gan"]`` records both
    losses (``train_loss``: generator, ``train_loss_d``: discriminator).

    **Scoring** maps each image to the latent space, as the paper does: its own ``z``,
    ``n_search_steps`` Adam steps (``search_lr``, ``z`` clipped to ``[-1, 1]`` after
    each), minimising ``(1 - feature_weight) * sum|x - G(z)| + feature_weight *
    sum|f(x) - f(G(z))|`` with ``f`` the discriminator's last convolutional features;
    sums, not means, over the region of interest (pixels outside it are left out of
    the residual, and ``G(z)`` takes the image's values there before ``f`` sees it).
    ``G`` and ``D`` are frozen in eval mode. All samples of a scoring batch search
    together through :func:`~skanomaly.training.latent_search.latent_search` (one Adam
    over a ``(B, latent_dim)`` tensor and the sum of per-sample losses, fresh for every
    batch), which is exactly a per-sample loop, batched. Every search starts from the
    same ``z0``, one draw from U(-1, 1) seeded by ``random_state``, so a score depends
    neither on the batch size, nor on the order of the samples, nor on which samples
    share a batch.

    **Parameters take effect at the next fit**, as in scikit-learn: the networks are
    built from ``network_config_``, which ``fit`` resolves from ``latent_dim``,
    ``channels`` and the image size, so changing those on a fitted detector changes
    nothing until it is refitted. The search and the score (``anomaly_score``,
    ``feature_weight``, ``n_search_steps``, ``search_lr``, ``search_batch_size``,
    ``patch_aggregation``) act on the fitted networks at once.

    Parameters
    ----------
    latent_dim : int, default=100
        Size of ``z``.
    channels : tuple of int, default=(64, 128, 256, 512)
        Widths of the discriminator's stride-2 levels (the generator mirrors them); the
        paper's 64 x 64 DCGAN. The networks work on squares whose side is the image's
        (or patch's) longer side rounded up to a multiple of ``2 ** len(channels)``;
        other shapes are padded, outside the region of interest, to that square (64 x
        64 patches need no padding). Small settings for a CPU: ``(8, 16)`` at 16 px.
    anomaly_score : {"anogan", "residual", "feature", "discriminator"}, default="anogan"
        ``"anogan"``: the search loss at the final ``z`` (the paper's score);
        ``"residual"``: ``sum|x - G(z)|`` alone; ``"feature"``: ``sum|f(x) - f(G(z))|``
        alone; ``"discriminator"``: the hand X-ray paper's DCGAN baseline, no search:
        the negative of the discriminator's logit, so an image the discriminator finds
        less "real" is more anomalous (its anomaly map is that value over the ROI: this
        score does not localise).
    feature_weight : float in [0, 1], default=0.1
        The paper's lambda.
    n_search_steps : int, default=500
        Adam steps of the latent search (0 scores ``z0``).
    search_lr : float, default=0.01
        Adam learning rate of the search.
    search_batch_size : int or None, default=None
        Samples searched together; ``None`` uses ``batch_size``. Scores do not depend
        on it.
    n_offset_samples : int, default=256
        ``offset_`` comes from the scores of this many training images (or present
        patches' images), a subsample seeded by ``random_state``, since every score
        costs ``n_search_steps`` passes through both networks.
    lr : float, default=2e-4
        Adam learning rate of both networks.
    batch_size : int, default=64
    max_epochs : int, default=25
        Epochs of GAN training (DCGAN's default; the paper does not state one).
    {contamination}
    {patch_aggregation}
    {image_shape}
    {value_range}
    {validation_fraction}
    {device}
    {random_state}
        It also seeds the search's ``z0`` (an int seeds it, ``None`` or a
        ``RandomState`` use 0, so scoring is always deterministic).
    {verbose}
    {callbacks}

    Attributes
    ----------
    gan_ : skanomaly.training.stages.GANNet
        ``gan_.generator_`` and ``gan_.discriminator_``.
    network_config_ : dict
        What the fitted networks were built with: ``side`` (of the square images the
        DCGAN works on), ``channels`` and ``latent_dim``. Scoring, maps and model
        files use it, never the current parameters.
    offset_, image_shape_, history_, histories_, n_iter_, n_features_in_
        As in :class:`~skanomaly.detectors.CAEDetector`; ``histories_ = {"gan": ...}``.

    Examples
    --------
    >>> from skanomaly.datasets import make_chest_phantoms
    >>> from skanomaly.detectors import AnoGANDetector
    >>> data = make_chest_phantoms(24, image_size=16, anomaly_fraction=0.0, random_state=0)
    >>> det = AnoGANDetector(channels=(8, 16), latent_dim=8, max_epochs=2, batch_size=8,
    ...                      n_search_steps=5, random_state=0).fit(data.images)
    >>> det.score_samples(data.images[:3]).shape
    (3,)
    """

    _net_attributes = ("gan_",)

    _parameter_constraints: dict = {
        **BaseDeepDetector._parameter_constraints,
        "latent_dim": [Interval(Integral, 1, _MAX_LATENT_DIM, closed="both")],
        "channels": [tuple, list],
        "anomaly_score": [StrOptions(set(_SCORES))],
        "feature_weight": [Interval(Real, 0, 1, closed="both")],
        "n_search_steps": [Interval(Integral, 0, None, closed="left")],
        "search_lr": [Interval(Real, 0, None, closed="neither")],
        "search_batch_size": [None, Interval(Integral, 1, None, closed="left")],
        "n_offset_samples": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(
        self,
        *,
        latent_dim=100,
        channels=(64, 128, 256, 512),
        anomaly_score="anogan",
        feature_weight=0.1,
        n_search_steps=500,
        search_lr=0.01,
        search_batch_size=None,
        n_offset_samples=256,
        lr=2e-4,
        batch_size=64,
        max_epochs=25,
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
        self.latent_dim = latent_dim
        self.channels = channels
        self.anomaly_score = anomaly_score
        self.feature_weight = feature_weight
        self.n_search_steps = n_search_steps
        self.search_lr = search_lr
        self.search_batch_size = search_batch_size
        self.n_offset_samples = n_offset_samples
        self.lr = lr
        self.batch_size = batch_size
        self.max_epochs = max_epochs
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
        check_widths(self.channels, "channels", max_len=8, hint=_CHANNELS_HINT)

    def __skanomaly_tags__(self):
        tags = super().__skanomaly_tags__()
        widths = _widths(self.channels)
        latent = self.latent_dim if isinstance(self.latent_dim, Integral) else 1
        if self.anomaly_score == "discriminator":
            reductions, why = len(widths) + 1, "the discriminator's convolutions and its Linear"
        else:
            # The score's own pass, G(z) then D_f, and the search's last gradient step
            # back through both; earlier steps' roundings are damped as the search
            # settles (measured: bit-identical at 4 steps).
            reductions, why = 2 * (2 * len(widths) + 2), "G then D_f, forward and back (the search's last step)"
        tags.score_tolerance = Tolerance(float32_rtol(reductions, max(25 * max(widths), latent)), why)
        tags.training_tolerance = Tolerance(1e-3, "a GAN amplifies the inputs' last bits: measured 5e-5, 9e-6 (2 epochs)")
        return tags

    # ------------------------------------------------------ network configuration
    def _network_config(self):
        """What the networks are built from; ``fit`` stores it as ``network_config_``.

        ``side`` is the square the DCGAN works on: the fitted image (or patch) size,
        rounded up to a multiple of ``2 ** len(channels)``. Other shapes are padded,
        outside the region of interest, to it.
        """
        channels = tuple(int(c) for c in self.channels)
        return dict(side=_dcgan_side(self.image_shape_, channels), channels=channels, latent_dim=int(self.latent_dim))

    def _check_network_config(self, config, image_shape):
        config = _config_mapping(config, {"side", "channels", "latent_dim"})
        channels = check_widths(
            config["channels"], "channels", max_len=8, hint=_CHANNELS_HINT
        )
        side = _dcgan_side(image_shape, channels)
        if config["side"] != side:
            raise ValueError(
                f"side={config['side']!r}; channels={list(channels)} take {image_shape[0]}x"
                f"{image_shape[1]} samples on {side} px squares"
            )
        return dict(side=side, channels=channels, latent_dim=_config_int(config, "latent_dim", 1, _MAX_LATENT_DIM))

    # ------------------------------------------------------------- training
    def _make_net(self, device):
        """The DCGAN's net, for training and for loading weights into alike: its
        networks from ``network_config_`` alone."""
        config = self.network_config_
        side, channels, latent_dim = config["side"], tuple(config["channels"]), config["latent_dim"]
        return GANNet(
            DCGANGenerator,
            DCGANDiscriminator,
            generator__latent_dim=latent_dim,
            generator__image_size=side,
            generator__channels=channels,
            discriminator__image_size=side,
            discriminator__channels=channels,
            loss="bce",
            n_critic=1,
            latent_dim=latent_dim,
            latent_distribution="uniform",
            x_range=(-1.0, 1.0),
            optimizer_g__betas=(0.5, 0.999),
            optimizer_d__betas=(0.5, 0.999),
            **self._skorch_kwargs(device),
        )

    def _offset_scores(self, images, y):
        n = images.shape[0]
        if n > self.n_offset_samples:
            rng = np.random.default_rng(self._seed)
            images = images[np.sort(rng.choice(n, self.n_offset_samples, replace=False))]
        return self._score_images(images)

    # -------------------------------------------------------------- scoring
    def _scoring_context(self):
        if self.anomaly_score == "discriminator":
            return torch.inference_mode()
        return torch.enable_grad()

    def _search_seed(self):
        return int(self.random_state) if isinstance(self.random_state, Integral) else 0

    def _initial_latents(self, x):
        """``z0``: one draw from U(-1, 1) seeded by ``random_state``, the start of every
        sample's own search. A draw per sample would tie a score to the sample's
        position (order and batch dependence) or to the exact bits of its pixels (a
        rounding difference would change the start); a common start does neither, and
        each search keeps its own ``z`` and Adam state from there."""
        generator = torch.Generator().manual_seed(self._search_seed())
        z0 = torch.rand(self.network_config_["latent_dim"], generator=generator) * 2 - 1
        return z0.to(x.device).expand(x.shape[0], -1).clone()

    def _scoring_batch_size(self):
        if self.search_batch_size is not None and self.anomaly_score != "discriminator":
            return self.search_batch_size
        return self.batch_size

    def _anomaly_batch(self, x, roi):
        net = self.gan_
        generator, discriminator = net.generator_, net.discriminator_
        roi_f = roi.to(x.dtype)
        scaled = net.scale_x(x)
        if self.anomaly_score == "discriminator":
            image = -discriminator(scaled)
            return image[:, None, None, None].expand_as(x) * roi_f, image

        lam = float(self.feature_weight)
        with torch.no_grad():
            target_features = discriminator.features(scaled)

        def per_sample_loss(x_hat, z):
            residual, feature, _ = search_terms(scaled, roi, x_hat, target_features, discriminator.features)
            return anogan_score("anogan", residual, feature, lam)

        z, _ = latent_search(
            generator,
            per_sample_loss,
            self._initial_latents(x),
            int(self.n_search_steps),
            lr=float(self.search_lr),
            clamp=(-1.0, 1.0),
        )
        with torch.no_grad():
            residual, feature, x_hat = search_terms(
                scaled, roi, generator(z), target_features, discriminator.features
            )
        image = anogan_score(self.anomaly_score, residual, feature, lam)
        # The map in pixel units ([0, 1]), not the networks' [-1, 1].
        pixel = net.unscale_x(x_hat).sub(x).abs() * roi_f
        return pixel, image


def _dcgan_side(image_shape, channels):
    """The square side a DCGAN of ``len(channels)`` stride-2 levels works on for
    samples of ``image_shape``: the longer side, rounded up to ``2 ** len(channels)``."""
    step = 2 ** len(channels)
    return -(-max(image_shape) // step) * step
