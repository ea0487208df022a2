"""alpha-GAN of the hand X-ray paper (Davletshina et al. 2020): a variational
autoencoder-GAN with a code discriminator, scored by its two discriminators."""

from numbers import Integral, Real

import torch
from sklearn.utils._param_validation import Interval

from ..._model_state import _config_int
from ...utils._docstring import fill_doc
from .._handxray_gan import HandXrayGANDetector
from .losses import DISCRIMINATOR_SCORES, alphagan_score
from .networks import AlphaGANGenerator, CodeDiscriminator, ImageDiscriminator, VariationalEncoder
from .training import AlphaGANNet

__all__ = ["AlphaGANDetector"]


@fill_doc
class AlphaGANDetector(HandXrayGANDetector):
    """alpha-GAN (Rosca et al. 2017) as the hand X-ray paper trains and scores it: an
    encoder E, a generator G, an image discriminator D and a code discriminator C.

    **Networks** (:mod:`skanomaly.detectors.alphagan.networks`; the paper's public
    code gives the architecture): self-attention GAN parts with spectral
    normalisation as :class:`~skanomaly.detectors.BiGANDetector`'s; E outputs the mean
    (tanh) and log-variance of q(z | x); D ends in minibatch discrimination (4
    channels of 4 x 4, kernels of 256) and a 4 x 4 convolution; C is three linear
    layers (100 -> 50 -> 25 -> 1). The code uses E's tanh-bounded log-variance as the
    standard deviation; here the code is ``mean + exp(log_var / 2) * eps``.

    **Training** (stage ``"adversarial"``, :class:`~skanomaly.detectors.alphagan.training.AlphaGANNet`):
    each batch E, G, D and C step in turn on the terms of
    :mod:`~skanomaly.detectors.alphagan.losses` (E: 0.01 L1 reconstruction and
    fooling C; G: 0.01 L1 and fooling D with reconstructions and samples; D: real
    against reconstructed and sampled images; C: prior draws against codes). The
    paper's settings: Adam with betas (0.5, 0.999), E and G at 1e-3, D and C at 5e-6,
    batch 16, 128 px, 500 epochs, flips as augmentation ("default"). (The code's run
    settings give D 1e-4 and C a hundredth of it; the paper's appendix is followed.)
    History: every term (``train_reconstruction``, ``train_code_fooling``,
    ``train_reconstruction_fooling``, ``train_sample_fooling``, ``train_d_real``,
    ``train_d_reconstruction``, ``train_d_sample``, ``train_c_prior``,
    ``train_c_encoded``) and each group's total (``train_loss_encoder``,
    ``train_loss`` for G, ``train_loss_discriminator``,
    ``train_loss_code_discriminator``).

    **Scores** (Table 1; eval mode, codes are E's mean, so an image's score depends on
    it alone): ``"paper"``, the mean of ``1 - D(x)`` and ``1 - C(E(x))`` (the paper's
    best, AUC 0.607 on MURA hands); ``"discriminator"``, ``1 - D(x)``; ``"code"``,
    ``1 - C(E(x))``; ``"mse"`` and ``("topk", 200)`` of ``G(E(x))``. In eval mode, D's
    minibatch discrimination compares an image with the last real training batch
    (:class:`~skanomaly.detectors.alphagan.networks.MinibatchDiscrimination`), not with
    the images it is scored with. ``anomaly_map`` is the squared error of ``G(E(x))``
    in pixel units (absolute error for the ``"l1"`` scores), NaN outside the region of
    interest.

    Parameters
    ----------
    latent_dim : int, default=100
    channels : tuple of int, default=(64, 128, 256, 512, 1024)
        Widths of E's and D's stride-2 levels (G mirrors them); squares of side
        ``4 * 2 ** len(channels)`` (128 px with five levels), smaller images padded,
        outside the region of interest, to it. Small settings for a CPU: ``(8, 16)``
        at 16 px.
    attention : bool, default=True
        Self-attention after the last two levels of E, G and D (the code's).
    minibatch_channels : int, default=4
        Channels of 4 x 4 that D's minibatch discrimination appends; 0 for none.
    minibatch_kernel_dims : int, default=256
        Dimensions of each minibatch-discrimination kernel. With the paper's networks
        its tensor has 16384 x 64 x 256 = 268M weights (1 GB), the code's choice.
    reconstruction_weight : float, default=0.01
        lambda on the mean absolute reconstruction error in E's and G's losses.
    anomaly_score : "paper", "discriminator", "code", "mse", "l1" or ("topk", k), default="paper"
    lr : float, default=1e-3
        Adam learning rate of E and G.
    discriminator_lr : float, default=5e-6
        Adam learning rate of D and C.
    augment : {"default", "advanced"} or None, default="default"
    batch_size : int, default=16
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
    net_ : AlphaGANNet
        ``net_.encoder_``, ``net_.generator_``, ``net_.discriminator_``,
        ``net_.code_discriminator_``.
    network_config_ : dict
        ``side``, ``channels``, ``latent_dim``, ``attention``, ``minibatch_channels``,
        ``minibatch_kernel_dims`` and ``reference_size`` of the fitted networks.
    offset_, image_shape_, history_, histories_, n_iter_, n_features_in_
        As in :class:`~skanomaly.detectors.CAEDetector`; ``histories_ =
        {"adversarial": ...}``.

    Examples
    --------
    >>> from skanomaly.datasets import make_chest_phantoms
    >>> from skanomaly.detectors import AlphaGANDetector
    >>> data = make_chest_phantoms(24, image_size=16, anomaly_fraction=0.0, random_state=0)
    >>> det = AlphaGANDetector(channels=(8, 16), latent_dim=8, minibatch_kernel_dims=8,
    ...                        max_epochs=2, batch_size=8, random_state=0).fit(data.images)
    >>> det.score_samples(data.images[:3]).shape
    (3,)
    """

    _DISCRIMINATOR_SCORES = DISCRIMINATOR_SCORES
    _MINIBATCH_KEYS = ("minibatch_channels", "minibatch_kernel_dims", "reference_size")

    _parameter_constraints: dict = {
        **HandXrayGANDetector._parameter_constraints,
        "minibatch_channels": [Interval(Integral, 0, 64, closed="both")],
        "minibatch_kernel_dims": [Interval(Integral, 1, 4096, closed="both")],
        "reconstruction_weight": [Interval(Real, 0, None, closed="left")],
        "discriminator_lr": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(
        self,
        *,
        latent_dim=100,
        channels=(64, 128, 256, 512, 1024),
        attention=True,
        minibatch_channels=4,
        minibatch_kernel_dims=256,
        reconstruction_weight=0.01,
        anomaly_score="paper",
        lr=1e-3,
        discriminator_lr=5e-6,
        augment="default",
        batch_size=16,
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
        self.latent_dim = latent_dim
        self.channels = channels
        self.attention = attention
        self.minibatch_channels = minibatch_channels
        self.minibatch_kernel_dims = minibatch_kernel_dims
        self.reconstruction_weight = reconstruction_weight
        self.anomaly_score = anomaly_score
        self.lr = lr
        self.discriminator_lr = discriminator_lr
        self.augment = augment
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

    # ------------------------------------------------------ network configuration
    def _network_config(self):
        return {
            **super()._network_config(),
            "minibatch_channels": int(self.minibatch_channels),
            "minibatch_kernel_dims": int(self.minibatch_kernel_dims),
            # The reference batch holds one training batch.
            "reference_size": int(self.batch_size),
        }

    def _check_network_config(self, config, image_shape):
        if not isinstance(config, dict):
            return super()._check_network_config(config, image_shape)
        base = {key: value for key, value in config.items() if key not in self._MINIBATCH_KEYS}
        checked = super()._check_network_config(base, image_shape)
        missing = [key for key in self._MINIBATCH_KEYS if key not in config]
        if missing:
            raise ValueError(f"the network configuration has no {', '.join(missing)}")
        checked["minibatch_channels"] = _config_int(config, "minibatch_channels", 0, 64)
        checked["minibatch_kernel_dims"] = _config_int(config, "minibatch_kernel_dims", 1, 4096)
        checked["reference_size"] = _config_int(config, "reference_size", 1, 2**20)
        return checked

    # ------------------------------------------------------------- training
    def _make_net(self, device):
        """The net, for training and for loading weights into alike: its networks from
        ``network_config_`` alone."""
        config = self.network_config_
        return AlphaGANNet(
            VariationalEncoder,
            AlphaGANGenerator,
            ImageDiscriminator,
            CodeDiscriminator,
            **self._network_kwargs("encoder", "generator", "discriminator", "code_discriminator"),
            **{f"discriminator__{key}": config[key] for key in self._MINIBATCH_KEYS},
            latent_dim=config["latent_dim"],
            reconstruction_weight=float(self.reconstruction_weight),
            augment=self.augment,
            x_range=(-1.0, 1.0),
            optimizer_discriminator__lr=float(self.discriminator_lr),
            optimizer_code_discriminator__lr=float(self.discriminator_lr),
            **{f"optimizer_{group}__betas": (0.5, 0.999) for group in AlphaGANNet.OPTIMIZER_GROUPS},
            **self._skorch_kwargs(device),
        )

    def _fit_networks(self, samples, owners, y, device):
        self.net_ = self._fit_stage(self._make_net(device), samples, owners)
        return {"adversarial": self.net_.history}

    # -------------------------------------------------------------- scoring
    def _anomaly_batch(self, x, roi):
        net = self.net_
        scaled = net.scale_x(x)
        mean = net.encode(scaled)
        # Reconstruction errors in pixel units ([0, 1]), as the maps.
        x_rec = torch.where(roi, net.unscale_x(net.generator_(mean)), x)
        needs_d = self.anomaly_score in ("paper", "discriminator")
        needs_c = self.anomaly_score in ("paper", "code")
        image_logits = net.discriminator_(scaled) if needs_d else None
        code_logits = net.code_discriminator_(mean) if needs_c else None
        pixel, image = alphagan_score(self.anomaly_score, x, x_rec, roi, image_logits, code_logits)
        return pixel * roi.to(x.dtype), image
