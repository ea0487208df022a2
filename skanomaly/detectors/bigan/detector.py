"""BiGAN of the hand X-ray paper (Davletshina et al. 2020): an adversarially learned
encoder, scored by the joint discriminator or by reconstruction."""

from numbers import Real

import torch
from sklearn.utils._param_validation import Interval, StrOptions

from ...utils._docstring import fill_doc
from .._handxray_gan import HandXrayGANDetector
from .losses import ADVERSARIAL_LOSSES, bigan_score
from .networks import BiGANEncoder, BiGANGenerator, JointDiscriminator
from .training import BiGANNet

__all__ = ["BiGANDetector"]


@fill_doc
class BiGANDetector(HandXrayGANDetector):
    """BiGAN (Donahue et al. 2017; ALI) as the hand X-ray paper trains and scores it:
    a generator G, an encoder E and a discriminator D of (image, code) pairs.

    **Networks** (:mod:`skanomaly.detectors.bigan.networks`; the paper's public code,
    which gives the architecture the paper does not): self-attention GAN parts with
    spectral normalisation. G: z (100) -> 4 x 4 x 1024 -> ... -> 128 x 128, tanh;
    E: stride-2 convolutions 128 -> 4 px (widths 64 ... 1024, LReLU 0.1,
    self-attention on the last two levels) and a 4 x 4 convolution to z; D: E's trunk
    on x, two 1 x 1 convolutions on z, joined by 1 x 1 convolutions to one logit.
    Pixels mapped to [-1, 1].

    **Training** (stage ``"adversarial"``, :class:`~skanomaly.detectors.bigan.training.BiGANNet`):
    each batch D steps on ``BCE(D(x, E(x)), 1) + BCE(D(G(z), z), 0)``, then G and E
    together on the labels swapped (:mod:`~skanomaly.detectors.bigan.losses`), z ~
    N(0, I). The paper's settings: Adam with betas (0.5, 0.999), G and E at 1e-3, D at
    5e-6, batch 16, 128 px, 500 epochs, flips as augmentation ("default"). The code
    adds Gaussian noise to D's inputs with a standard deviation of 0.01 (N - e - 1) /
    (e + 1) in epoch e of N, about 5 in the first epoch for pixels in [0, 1]; the paper
    does not mention it and it is not done here. History: ``train_d_real``,
    ``train_d_fake``, ``train_loss_discriminator``, ``train_generator``,
    ``train_encoder``, ``train_loss``.

    **Scores** (Table 1; all in eval mode, so an image's score depends on it alone):
    ``"discriminator"``, ``1 - D(x, E(x))`` (the paper's best BiGAN score, AUC 0.549
    on MURA hands); ``"mse"``, the mean squared error of ``G(E(x))`` over the region
    of interest; ``("topk", 200)``, the mean of the 200 largest squared errors.
    ``anomaly_map`` is the squared error of ``G(E(x))`` in pixel units (absolute error
    for the ``"l1"`` scores), NaN outside the region of interest.

    Parameters
    ----------
    latent_dim : int, default=100
    channels : tuple of int, default=(64, 128, 256, 512, 1024)
        Widths of E's and D's stride-2 levels (G mirrors them). The networks take
        squares of side ``4 * 2 ** len(channels)``: 128 px with the paper's five
        levels; smaller images or patches are padded, outside the region of interest,
        to it. Small settings for a CPU: ``(8, 16)`` at 16 px.
    attention : bool, default=True
        Self-attention after the last two levels of each network (the code's).
    adversarial_loss : {"bce", "hinge"}, default="bce"
        ``"bce"`` is what the paper's code runs under the name "hinge" (see
        :mod:`~skanomaly.detectors.bigan.losses`); ``"hinge"`` the hinge loss proper.
    anomaly_score : "discriminator", "mse", "l1" or ("topk", k), default="discriminator"
        ``("topk", k, "l1")`` averages the ``k`` largest absolute errors.
    lr : float, default=1e-3
        Adam learning rate of G and E.
    discriminator_lr : float, default=5e-6
        Adam learning rate of D.
    augment : {"default", "advanced"} or None, default="default"
        The paper's augmentation for its GANs ("default": horizontal and vertical
        flips); see :class:`~skanomaly.detectors.CAEDetector`.
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
    net_ : BiGANNet
        ``net_.generator_``, ``net_.encoder_``, ``net_.discriminator_``.
    network_config_ : dict
        ``side``, ``channels``, ``latent_dim`` and ``attention`` of the fitted
        networks; scoring and model files use it, never the current parameters.
    offset_, image_shape_, history_, histories_, n_iter_, n_features_in_
        As in :class:`~skanomaly.detectors.CAEDetector`; ``histories_ =
        {"adversarial": ...}``.

    Examples
    --------
    >>> from skanomaly.datasets import make_chest_phantoms
    >>> from skanomaly.detectors import BiGANDetector
    >>> data = make_chest_phantoms(24, image_size=16, anomaly_fraction=0.0, random_state=0)
    >>> det = BiGANDetector(channels=(8, 16), latent_dim=8, max_epochs=2, batch_size=8,
    ...                     random_state=0).fit(data.images)
    >>> det.score_samples(data.images[:3]).shape
    (3,)
    """

    _DISCRIMINATOR_SCORES = ("discriminator",)

    _parameter_constraints: dict = {
        **HandXrayGANDetector._parameter_constraints,
        "adversarial_loss": [StrOptions(set(ADVERSARIAL_LOSSES))],
        "discriminator_lr": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(
        self,
        *,
        latent_dim=100,
        channels=(64, 128, 256, 512, 1024),
        attention=True,
        adversarial_loss="bce",
        anomaly_score="discriminator",
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
        self.adversarial_loss = adversarial_loss
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

    # ------------------------------------------------------------- training
    def _make_net(self, device):
        """The net, for training and for loading weights into alike: its networks from
        ``network_config_`` alone."""
        return BiGANNet(
            BiGANGenerator,
            BiGANEncoder,
            JointDiscriminator,
            **self._network_kwargs("generator", "encoder", "discriminator"),
            latent_dim=self.network_config_["latent_dim"],
            adversarial_loss=str(self.adversarial_loss),
            augment=self.augment,
            x_range=(-1.0, 1.0),
            optimizer_discriminator__lr=float(self.discriminator_lr),
            optimizer_discriminator__betas=(0.5, 0.999),
            optimizer_generator_encoder__betas=(0.5, 0.999),
            **self._skorch_kwargs(device),
        )

    def _fit_networks(self, samples, owners, y, device):
        self.net_ = self._fit_stage(self._make_net(device), samples, owners)
        return {"adversarial": self.net_.history}

    # -------------------------------------------------------------- scoring
    def _anomaly_batch(self, x, roi):
        net = self.net_
        scaled = net.scale_x(x)
        z = net.encoder_(scaled)
        # Reconstruction errors in pixel units ([0, 1]), as the maps.
        x_rec = torch.where(roi, net.unscale_x(net.generator_(z)), x)
        logits = net.discriminator_(scaled, z) if self.anomaly_score == "discriminator" else None
        pixel, image = bigan_score(self.anomaly_score, x, x_rec, roi, logits)
        return pixel * roi.to(x.dtype), image
