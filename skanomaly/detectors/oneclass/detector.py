"""Tang et al. (ISBI 2019): abnormal chest X-ray identification with generative
adversarial one-class learning."""

from numbers import Integral, Real

from sklearn.utils._param_validation import Interval, StrOptions

from ..._model_state import _config_int, _config_mapping
from ...base import BaseDeepDetector
from ...utils._docstring import fill_doc
from ...utils.tags import Tolerance, _widths, float32_rtol
from ...utils.validation import check_widths
from .losses import COMPONENTS, SCORES, oneclass_score
from .networks import OneClassDiscriminator, OneClassEncoder, UNetAutoencoder, oneclass_side
from .training import OneClassAdversarialNet

__all__ = ["OneClassAdversarialDetector"]

_MAX_LATENT_DIM = 2**16
_CHANNELS_HINT = ", e.g. the paper's (64, 128, 256, 512) for 64 px, or (8, 16) for 16 px on a CPU"


@fill_doc
class OneClassAdversarialDetector(BaseDeepDetector):
    """Tang et al.'s one-class adversarial detector: a U-Net autoencoder, a
    discriminator and a second encoder, trained on normal images together.

    **Networks** (:mod:`skanomaly.detectors.oneclass.networks`): the U-Net autoencoder
    U = (U_E, U_D), 4 x 4 convolutions, four stride-2 levels and a 4 x 4 valid
    convolution to a latent of 100, skip concatenations into the decoder, tanh; a
    second encoder E laid out as U_E; a discriminator D with U_E's trunk and one
    logit. BN + LReLU 0.2, weights from N(0, 0.02); pixels mapped to [-1, 1].

    **Training** (stage ``"adversarial"``, :class:`~skanomaly.detectors.oneclass.training.OneClassAdversarialNet`):
    each batch, D steps on BCE(D(x), 1) + BCE(D(x'), 0), then U and E step together on
    ``20 L_R + 4 L_A + 8 L_E + L_F`` (:mod:`~skanomaly.detectors.oneclass.losses`):
    ``L_R = mean|x - x'|``, ``L_A = BCE(D(x'), 1)``, ``L_E = MSE(U_E(x), E(x'))``, L_F the summed
    MSE of U_E's and E's feature maps. Adam 5e-4, betas (0.5, 0.999), batch 64, 15
    epochs; U's input gets Gaussian noise in training (``noise_std``: the paper adds
    noise but gives no sigma). Every term is in ``histories_["adversarial"]``
    (``train_reconstruction``, ``train_adversarial``, ``train_encoding``,
    ``train_feature``, ``train_d_real``, ``train_d_fake``, ``train_loss``,
    ``train_loss_d``).

    **Score** (eq. 6): ``20 mean|x - x'| + 4 (1 - D(x')) + 8 MSE(z, z')`` per image,
    in eval mode (a score depends on its image alone), over the region of interest.
    The paper min-max scales it over the test set, which changes no ranking but would
    make a threshold depend on the other test images; it is not done here.
    ``anomaly_map`` is ``|x - x'|`` in pixel units, NaN outside the ROI.

    **Ablations** are the ``components`` parameter, so ``GridSearchCV`` runs the
    paper's table: ``"U"`` (L_R only), ``"U+E"``, ``"U+D"`` and ``"U+D+E"`` (the full
    model); the score keeps the terms of the fitted components.

    Parameters
    ----------
    components : {"U", "U+E", "U+D", "U+D+E"}, default="U+D+E"
        Which networks train and score with the autoencoder (E: second encoder, D:
        discriminator). The networks of the others are built but never trained.
    latent_dim : int, default=100
    channels : tuple of int, default=(64, 128, 256, 512)
        Widths of the stride-2 levels of U_E, E and D (U_D mirrors them). The networks
        take squares of side ``4 * 2 ** len(channels)``: 64 px with the paper's four
        levels, 128 px with five; smaller images or patches are padded, outside the
        region of interest, to it. Small settings for a CPU: ``(8, 16)`` at 16 px.
    noise_std : float, default=0.05
        Standard deviation of the Gaussian noise on U's input in training, in the
        networks' [-1, 1] range (not given in the paper); 0 for none.
    reconstruction_weight : float, default=20.0
        lambda_1 of the loss (eq. 5) and the score (eq. 6): weight of L_R and of
        ``mean|x - x'|``.
    adversarial_weight : float, default=4.0
        lambda_2: weight of L_A and of ``1 - D(x')``.
    encoding_weight : float, default=8.0
        lambda_3: weight of L_E and of ``MSE(z, z')``.
    feature_weight : float, default=1.0
        Weight of L_F in the loss (1 in the paper).
    anomaly_score : {"paper", "reconstruction", "discriminator", "latent"}, default="paper"
        ``"paper"``: eq. 6 (with the terms of the fitted components); the others
        score with one term alone: ``mean|x - x'|``, ``1 - D(x')`` (needs D) or
        ``MSE(z, z')`` (needs E).
    lr : float, default=5e-4
        Adam learning rate of every network (betas (0.5, 0.999)).
    batch_size : int, default=64
    max_epochs : int, default=15
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
    net_ : OneClassAdversarialNet
        ``net_.autoencoder_``, ``net_.encoder_``, ``net_.discriminator_``.
    network_config_ : dict
        ``side``, ``channels``, ``latent_dim`` and ``components`` of the fitted
        networks; scoring and model files use it, never the current parameters.
    offset_, image_shape_, history_, histories_, n_iter_, n_features_in_
        As in :class:`~skanomaly.detectors.CAEDetector`; ``histories_ =
        {"adversarial": ...}``.

    Examples
    --------
    >>> from skanomaly.datasets import make_chest_phantoms
    >>> from skanomaly.detectors import OneClassAdversarialDetector
    >>> data = make_chest_phantoms(24, image_size=16, anomaly_fraction=0.0, random_state=0)
    >>> det = OneClassAdversarialDetector(channels=(8, 16), latent_dim=8, max_epochs=2,
    ...                                   batch_size=8, random_state=0).fit(data.images)
    >>> det.score_samples(data.images[:3]).shape
    (3,)
    """

    _parameter_constraints: dict = {
        **BaseDeepDetector._parameter_constraints,
        "components": [StrOptions(set(COMPONENTS))],
        "latent_dim": [Interval(Integral, 1, _MAX_LATENT_DIM, closed="both")],
        "channels": [tuple, list],
        "noise_std": [Interval(Real, 0, None, closed="left")],
        "reconstruction_weight": [Interval(Real, 0, None, closed="left")],
        "adversarial_weight": [Interval(Real, 0, None, closed="left")],
        "encoding_weight": [Interval(Real, 0, None, closed="left")],
        "feature_weight": [Interval(Real, 0, None, closed="left")],
        "anomaly_score": [StrOptions(set(SCORES))],
    }

    def __init__(
        self,
        *,
        components="U+D+E",
        latent_dim=100,
        channels=(64, 128, 256, 512),
        noise_std=0.05,
        reconstruction_weight=20.0,
        adversarial_weight=4.0,
        encoding_weight=8.0,
        feature_weight=1.0,
        anomaly_score="paper",
        lr=5e-4,
        batch_size=64,
        max_epochs=15,
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
        self.components = components
        self.latent_dim = latent_dim
        self.channels = channels
        self.noise_std = noise_std
        self.reconstruction_weight = reconstruction_weight
        self.adversarial_weight = adversarial_weight
        self.encoding_weight = encoding_weight
        self.feature_weight = feature_weight
        self.anomaly_score = anomaly_score
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
        self._check_score_components(self.components)

    def _check_scoring_params(self):
        super()._check_scoring_params()
        if hasattr(self, "network_config_"):
            self._check_score_components(self.network_config_["components"], fitted=True)

    def _check_score_components(self, components, fitted=False):
        needs = {"discriminator": "D", "latent": "E"}.get(self.anomaly_score)
        if needs is not None and needs not in components:
            which = "was fitted with" if fitted else "has"
            raise ValueError(
                f"anomaly_score={self.anomaly_score!r} needs the {needs} network, but the "
                f"detector {which} components={components!r}: use anomaly_score='paper' or "
                f"'reconstruction', or components with {needs}."
            )

    def _min_image_size(self):
        # Smaller images and patches are padded to the networks' square.
        return 1

    def __skanomaly_tags__(self):
        tags = super().__skanomaly_tags__()
        widths = _widths(self.channels)
        # U_E, U_D (with skips), then D and E on x': each a chain of convolutions of
        # fan-in up to 16 x (2 x widest) channels.
        reductions = 4 * (len(widths) + 1)
        tags.score_tolerance = Tolerance(
            float32_rtol(reductions, 32 * max(widths)), "U_E, U_D, then D and E on the reconstruction"
        )
        tags.training_tolerance = Tolerance(
            1e-3, "an adversarial game amplifies the inputs' last bits (as AnoGAN's DCGAN)"
        )
        return tags

    # ------------------------------------------------------ network configuration
    def _network_config(self):
        channels = tuple(int(c) for c in self.channels)
        side = oneclass_side(channels)
        if max(self.image_shape_) > side:
            raise ValueError(
                f"channels={channels!r} make networks for {side}x{side} images, smaller than the "
                f"{self.image_shape_[0]}x{self.image_shape_[1]} training images: add a level per "
                f"doubling of the side (five levels for 128 px), or resize the images."
            )
        return dict(side=side, channels=channels, latent_dim=int(self.latent_dim), components=str(self.components))

    def _check_network_config(self, config, image_shape):
        config = _config_mapping(config, {"side", "channels", "latent_dim", "components"})
        channels = check_widths(config["channels"], "channels", max_len=8, hint=_CHANNELS_HINT)
        side = oneclass_side(channels)
        if config["side"] != side or max(image_shape) > side:
            raise ValueError(f"side={config['side']!r} does not fit channels={list(channels)} and {image_shape}")
        if config["components"] not in COMPONENTS:
            raise ValueError(f"components={config['components']!r} (one of {list(COMPONENTS)})")
        return dict(
            side=side,
            channels=channels,
            latent_dim=_config_int(config, "latent_dim", 1, _MAX_LATENT_DIM),
            components=config["components"],
        )

    # ------------------------------------------------------------- training
    def _make_net(self, device):
        """The net, for training and for loading weights into alike: its networks from
        ``network_config_`` alone."""
        config = self.network_config_
        channels, latent_dim = tuple(config["channels"]), config["latent_dim"]
        kwargs = self._skorch_kwargs(device)
        return OneClassAdversarialNet(
            UNetAutoencoder,
            OneClassEncoder,
            OneClassDiscriminator,
            autoencoder__latent_dim=latent_dim,
            autoencoder__channels=channels,
            encoder__latent_dim=latent_dim,
            encoder__channels=channels,
            discriminator__channels=channels,
            components=config["components"],
            noise_std=float(self.noise_std),
            reconstruction_weight=float(self.reconstruction_weight),
            adversarial_weight=float(self.adversarial_weight),
            encoding_weight=float(self.encoding_weight),
            feature_weight=float(self.feature_weight),
            x_range=(-1.0, 1.0),
            optimizer_d__betas=(0.5, 0.999),
            optimizer_u__betas=(0.5, 0.999),
            **kwargs,
        )

    def _fit_networks(self, samples, owners, y, device):
        net = self._fit_stage(self._make_net(device), samples, owners)
        self.net_ = net
        return {"adversarial": net.history}

    # -------------------------------------------------------------- scoring
    def _anomaly_batch(self, x, roi):
        net = self.net_
        components = self.network_config_["components"]
        scaled = net.scale_x(x)
        x_rec, z, _ = net.reconstruct(scaled, roi)
        fake_logits = net.discriminator_(x_rec) if "D" in components else None
        z_prime = net.encoder_(x_rec)[0] if "E" in components else None
        weights = (float(self.reconstruction_weight), float(self.adversarial_weight), float(self.encoding_weight))
        image = oneclass_score(self.anomaly_score, scaled, x_rec, roi, fake_logits, z, z_prime, weights)
        # The map in pixel units ([0, 1]), not the networks' [-1, 1].
        pixel = net.unscale_x(x_rec).sub(x).abs() * roi.to(x.dtype)
        return pixel, image
