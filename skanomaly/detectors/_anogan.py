"""AnoGAN (Schlegl et al., 2017): a DCGAN of normal anatomy and a latent search per image."""

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions

from ..base import BaseDeepDetector
from ..nn.dcgan import DCGANDiscriminator, DCGANGenerator
from ..training.latent_search import latent_search
from ..training.nets import pad_to_side
from ..training.stages import GANNet

__all__ = ["AnoGANDetector"]

_SCORES = ("anogan", "residual", "feature", "discriminator")


class AnoGANDetector(BaseDeepDetector):
    """AnoGAN: a DCGAN trained on normal images, and a latent search per scored image.

    **Training** (stage ``"gan"``): a DCGAN (:mod:`skanomaly.nn.dcgan`) with the BCE
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
    contamination, patch_aggregation, image_shape, value_range, validation_fraction, \
device, random_state, verbose, callbacks
        As in :class:`~skanomaly.detectors.CAEDetector`. ``random_state`` also seeds
        the search's ``z0`` (an int seeds it, ``None`` or a ``RandomState`` use 0, so
        scoring is always deterministic).

    Attributes
    ----------
    gan_ : skanomaly.training.stages.GANNet
        ``gan_.generator_`` and ``gan_.discriminator_``.
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
        "latent_dim": [Interval(Integral, 1, None, closed="left")],
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
        channels = self.channels
        if (
            not len(channels)
            or len(channels) > 8
            or not all(isinstance(c, Integral) and not isinstance(c, bool) and 1 <= c <= 4096 for c in channels)
        ):
            raise ValueError(
                f"channels={channels!r} is not valid: use 1 to 8 integer widths in [1, 4096], "
                "e.g. the paper's (64, 128, 256, 512) or (8, 16) for a small CPU model."
            )

    def _network_side(self):
        """Side of the square images the DCGAN works on: the fitted image (or patch)
        size, rounded up to a multiple of ``2 ** len(channels)``. Other shapes are
        padded, outside the region of interest, to it."""
        step = 2 ** len(self.channels)
        return -(-max(self.image_shape_) // step) * step

    def _pad(self, x, value):
        """Pad ``(..., H, W)`` at the bottom and right to the network's square side."""
        return pad_to_side(x, self._network_side(), value)

    # ------------------------------------------------------------- training
    def _fit_networks(self, samples, owners, y, device):
        padded = self._pad(torch.from_numpy(samples), float("nan")).numpy()
        return super()._fit_networks(padded, owners, y, device)

    def _make_net(self, device):
        side = self._network_side()
        channels = tuple(int(c) for c in self.channels)
        return GANNet(
            DCGANGenerator,
            DCGANDiscriminator,
            generator__latent_dim=int(self.latent_dim),
            generator__image_size=side,
            generator__channels=channels,
            discriminator__image_size=side,
            discriminator__channels=channels,
            loss="bce",
            n_critic=1,
            latent_dim=int(self.latent_dim),
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
        z0 = torch.rand(int(self.latent_dim), generator=generator) * 2 - 1
        return z0.to(x.device).expand(x.shape[0], -1).clone()

    def _scoring_batch_size(self):
        if self.search_batch_size is not None and self.anomaly_score != "discriminator":
            return self.search_batch_size
        return self.batch_size

    def _anomaly_batch(self, x, roi):
        net = self.gan_
        generator, discriminator = net.generator_, net.discriminator_
        height, width = x.shape[-2:]
        roi_f = roi.to(x.dtype)
        image_x = x
        x, roi = self._pad(x, 0.0), self._pad(roi, False)
        scaled = net.scale_x(x)
        if self.anomaly_score == "discriminator":
            image = -discriminator(scaled)
            return image[:, None, None, None].expand_as(image_x) * roi_f, image

        lam = float(self.feature_weight)
        with torch.no_grad():
            target_features = discriminator.features(scaled)

        def parts(x_hat):
            # Outside the ROI the generated image takes the input's values, so neither
            # term sees pixels the detector was told to ignore.
            x_hat = torch.where(roi, x_hat, scaled)
            residual = (scaled - x_hat).abs().sum(dim=(1, 2, 3))
            feature = (target_features - discriminator.features(x_hat)).abs().flatten(1).sum(1)
            return residual, feature, x_hat

        def per_sample_loss(x_hat, z):
            residual, feature, _ = parts(x_hat)
            return (1 - lam) * residual + lam * feature

        z, _ = latent_search(
            generator,
            per_sample_loss,
            self._initial_latents(x),
            int(self.n_search_steps),
            lr=float(self.search_lr),
            clamp=(-1.0, 1.0),
        )
        with torch.no_grad():
            residual, feature, x_hat = parts(generator(z))
        image = {
            "anogan": (1 - lam) * residual + lam * feature,
            "residual": residual,
            "feature": feature,
        }[self.anomaly_score]
        # The map in pixel units ([0, 1]), not the networks' [-1, 1].
        pixel = net.unscale_x(x_hat).sub(x).abs()[..., :height, :width] * roi_f
        return pixel, image
