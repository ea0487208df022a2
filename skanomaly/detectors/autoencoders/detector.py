"""Autoencoder detectors of the hand X-ray paper (Davletshina et al., 2020)."""

from numbers import Integral, Real

import torch
from sklearn.utils._param_validation import Interval, StrOptions

from ..._model_state import _config_int, _config_mapping
from ...base import BaseDeepDetector
from ...training.losses import MaskedReconstructionLoss
from ...training.nets import ROINet
from ...utils._docstring import fill_doc
from ...utils.tags import Tolerance, _widths, float32_rtol
from ...utils.validation import check_widths
from .losses import VAELoss, kl_divergence, parse_score, reconstruction_anomaly
from .networks import ConvAutoencoder, ConvVAE

__all__ = ["CAEDetector", "VAEDetector"]

_AUGMENT = [None, StrOptions({"default", "advanced"})]


@fill_doc
class CAEDetector(BaseDeepDetector):
    """Convolutional autoencoder anomaly detector (hand X-ray paper, CAE).

    Trained on normal images with the masked reconstruction loss (pixels outside the
    region of interest, NaN in the input, are left out); scores images by their
    reconstruction error over the ROI, and maps the per-pixel error.

    Parameters
    ----------
    channels : tuple of int, default=(16, 32, 64, 128, 256, 512)
        Width of the 3x3 stem, then of each stride-2 level (see
        :class:`skanomaly.detectors.autoencoders.networks.ConvAutoencoder`). The default is the paper's
        network: 512x512 input, 16x16x512 bottleneck. Images must be at least
        ``2 ** (len(channels) - 1)`` pixels on each side; e.g. ``(8, 16, 32)`` gives a
        small, fast model for 32-64 px images.
    anomaly_score : str or tuple, default="mse"
        Image score: ``"mse"`` (mean squared error over the ROI, the paper's best CAE
        score), ``"l1"``, or ``("topk", k)``, the mean of the ``k`` largest per-pixel
        squared errors (the paper uses ``k=200``), ``("topk", k, "l1")`` with absolute
        errors; an image (or patch) with fewer than ``k`` ROI pixels is scored by the
        mean over all of them. Per-pixel maps use the same error (squared or absolute).
    augment : {"advanced", "default"} or None, default="advanced"
        The paper's training augmentation ("advanced" for the CAE: flips, brightness,
        scaling, rotation; "default": flips only).
    lr : float, default=1e-4
        Adam learning rate.
    batch_size : int, default=32
        Training and scoring batch size.
    max_epochs : int, default=1000
    {contamination}
    {patch_aggregation}
    {image_shape}
    {value_range}
    {validation_fraction}
    {device}
    {random_state}
    {verbose}
    {callbacks}

    Attributes
    ----------
    net_ : skanomaly.training.nets.ROINet
        The trained skorch net; ``net_.module_`` is the autoencoder.
    offset_ : float
        ``decision_function = score_samples - offset_``.
    image_shape_ : tuple of int
        ``(H, W)`` of the training images (or patches).
    history_ : skorch.history.History
    histories_ : dict
        ``{"net": history_}``: one skorch ``History`` per training stage (the GAN
        detectors have several).
    n_iter_ : int
        Epochs run.
    n_features_in_ : int
        Pixels per training image.

    Examples
    --------
    >>> from skanomaly.datasets import make_chest_phantoms
    >>> from skanomaly.detectors import CAEDetector
    >>> data = make_chest_phantoms(60, image_size=32, anomaly_fraction=0.0, random_state=0)
    >>> det = CAEDetector(channels=(4, 8), max_epochs=2, random_state=0).fit(data.images)
    >>> det.score_samples(data.images[:3]).shape
    (3,)
    >>> det.anomaly_map(data.images[:3]).shape
    (3, 32, 32)
    """

    _parameter_constraints = {
        **BaseDeepDetector._parameter_constraints,
        "channels": [tuple, list],
        "anomaly_score": [str, tuple],
        "augment": _AUGMENT,
    }

    def __init__(
        self,
        *,
        channels=(16, 32, 64, 128, 256, 512),
        anomaly_score="mse",
        augment="advanced",
        lr=1e-4,
        batch_size=32,
        max_epochs=1000,
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
        self.channels = channels
        self.anomaly_score = anomaly_score
        self.augment = augment
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

    def _validate_detector_params(self):
        check_widths(
            self.channels,
            "channels",
            high=None,
            hint=", the stem's, then one per stride-2 level, e.g. (8, 16, 32) for a small CPU model",
        )
        parse_score(self.anomaly_score, allow_kld=False)

    def __skanomaly_tags__(self):
        tags = super().__skanomaly_tags__()
        widths = _widths(self.channels)
        tags.score_tolerance = Tolerance(
            float32_rtol(3 * len(widths), 16 * max(widths)),
            "at most 3 convolutions per level (4 x 4 x width terms at most) and the pixel mean",
        )
        tags.training_tolerance = Tolerance(1e-4, "measured <= 5e-7 (2 epochs); BatchNorm and longer fits amplify")
        return tags

    def _min_image_size(self):
        return 2 ** (len(self.channels) - 1)

    def _min_size_hint(self):
        return (
            "Resize the images (skanomaly.preprocessing.Resize) or use fewer levels, "
            f"e.g. channels={tuple(self.channels[:2])}."
        )

    def _network_config(self):
        # What the networks are built from, fixed at fit (network_config_): a later
        # set_params(channels=...) takes effect at the next fit, as in scikit-learn.
        return {"channels": tuple(int(c) for c in self.channels)}

    def _check_network_config(self, config, image_shape):
        config = _config_mapping(config, {"channels"})
        return {"channels": check_widths(config["channels"], "channels", high=None)}

    def _make_net(self, device):
        return ROINet(
            module=ConvAutoencoder,
            module__channels=self.network_config_["channels"],
            criterion=MaskedReconstructionLoss,
            criterion__kind="mse",
            optimizer=torch.optim.Adam,
            augment=self.augment,
            **self._skorch_kwargs(device),
        )

    def _anomaly_batch(self, x, roi):
        spec = parse_score(self.anomaly_score, allow_kld=False)
        return reconstruction_anomaly(spec, x, self.net_.module_(x), roi)


@fill_doc
class VAEDetector(BaseDeepDetector):
    """Convolutional variational autoencoder anomaly detector (hand X-ray paper, VAE).

    Trained on normal images with the negative ELBO (masked squared error over the ROI
    plus the KL divergence of the latent posterior from N(0, I)); scores images by the
    KL divergence, the reconstruction error, or both, as in the paper's Table 1.
    Scoring is deterministic: the decoder reconstructs from the posterior mean.

    Parameters
    ----------
    channels : tuple of int, default=(8, 16, 32, 64, 128, 256, 512)
        Width of each stride-2 level (see :class:`skanomaly.detectors.autoencoders.networks.ConvVAE`);
        ``()`` gives a fully connected VAE. Images must be at least
        ``2 ** len(channels)`` pixels on each side.
    latent_dim : int, default=1024
        Size of ``z`` (the paper's appendix table).
    kld_weight : float, default=1.0
        Weight of the KL term in the loss and in the ``"+kld"`` scores.
    anomaly_score : str or tuple, default="kld"
        ``"kld"`` (the paper's best VAE score), ``"mse"``, ``"l1"``, ``"mse+kld"``,
        ``"l1+kld"`` (reconstruction error over the ROI plus
        ``kld_weight * KL / n_roi_pixels``, i.e. the per-image training loss for
        ``"mse+kld"``), ``("topk", k)`` or ``("topk", k, "l1")``. Maps are the per-pixel
        squared error (absolute for the l1 scores).
    augment : {"default", "advanced"} or None, default="default"
        The paper's augmentation for the VAE ("default": flips).
    lr : float, default=1e-4
    batch_size : int, default=32
    max_epochs : int, default=500
    {contamination}
    {patch_aggregation}
    {image_shape}
    {value_range}
    {validation_fraction}
    {device}
    {random_state}
    {verbose}
    {callbacks}

    Attributes
    ----------
    net_ : skanomaly.training.nets.ROINet
        ``net_.module_`` is the VAE.
    offset_, image_shape_, history_, histories_, n_iter_, n_features_in_
        As in :class:`CAEDetector`.

    Examples
    --------
    >>> from skanomaly.datasets import make_chest_phantoms
    >>> from skanomaly.detectors import VAEDetector
    >>> data = make_chest_phantoms(60, image_size=32, anomaly_fraction=0.0, random_state=0)
    >>> det = VAEDetector(channels=(4, 8), latent_dim=8, max_epochs=2, random_state=0)
    >>> det.fit(data.images).score_samples(data.images[:3]).shape
    (3,)
    """

    _parameter_constraints = {
        **BaseDeepDetector._parameter_constraints,
        "channels": [tuple, list],
        "latent_dim": [Interval(Integral, 1, None, closed="left")],
        "kld_weight": [Interval(Real, 0, None, closed="left")],
        "anomaly_score": [str, tuple],
        "augment": _AUGMENT,
    }

    def __init__(
        self,
        *,
        channels=(8, 16, 32, 64, 128, 256, 512),
        latent_dim=1024,
        kld_weight=1.0,
        anomaly_score="kld",
        augment="default",
        lr=1e-4,
        batch_size=32,
        max_epochs=500,
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
        self.channels = channels
        self.latent_dim = latent_dim
        self.kld_weight = kld_weight
        self.anomaly_score = anomaly_score
        self.augment = augment
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

    def _validate_detector_params(self):
        check_widths(
            self.channels,
            "channels",
            min_len=0,
            high=None,
            hint=", one per stride-2 level (none: a fully connected VAE), e.g. (8, 16) for a small CPU model",
        )
        parse_score(self.anomaly_score, allow_kld=True)

    def __skanomaly_tags__(self):
        tags = super().__skanomaly_tags__()
        widths = _widths(self.channels)
        latent = self.latent_dim if isinstance(self.latent_dim, Integral) else 1
        tags.score_tolerance = Tolerance(
            float32_rtol(2 * len(widths) + 4, max(16 * max(widths), latent)),
            "2 convolutions per level, 2 linear layers, the output convolution and the pixel mean",
        )
        tags.training_tolerance = Tolerance(1e-4, "measured <= 2e-7 (2 epochs); BatchNorm and longer fits amplify")
        return tags

    def _min_image_size(self):
        return 2 ** len(self.channels)

    def _min_size_hint(self):
        return (
            "Resize the images (skanomaly.preprocessing.Resize) or use fewer levels, "
            f"e.g. channels={tuple(self.channels[:2])}."
        )

    def _network_config(self):
        # Fixed at fit, as for the CAE: set_params takes effect at the next fit.
        return {"channels": tuple(int(c) for c in self.channels), "latent_dim": int(self.latent_dim)}

    def _check_network_config(self, config, image_shape):
        config = _config_mapping(config, {"channels", "latent_dim"})
        return {
            "channels": check_widths(config["channels"], "channels", min_len=0, high=None),
            "latent_dim": _config_int(config, "latent_dim", 1, 2**20),
        }

    def _make_net(self, device):
        config = self.network_config_
        return ROINet(
            module=ConvVAE,
            module__image_shape=self.image_shape_,
            module__channels=config["channels"],
            module__latent_dim=config["latent_dim"],
            criterion=VAELoss,
            criterion__kld_weight=self.kld_weight,
            optimizer=torch.optim.Adam,
            augment=self.augment,
            **self._skorch_kwargs(device),
        )

    def _anomaly_batch(self, x, roi):
        spec = parse_score(self.anomaly_score, allow_kld=True)
        x_hat, mu, log_var = self.net_.module_(x)
        kld = kl_divergence(mu, log_var)
        if spec.reduction != "none":
            kld = self.kld_weight * kld / roi.flatten(1).sum(1).clamp_min(1)
        return reconstruction_anomaly(spec, x, x_hat, roi, kld)
