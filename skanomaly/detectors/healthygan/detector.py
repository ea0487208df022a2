"""HealthyGAN (Rahman Siddiquee et al., 2022): one-directional translation of any
image to a healthy-looking one, trained on a healthy set and an unlabelled mixed set;
an image scores by how much it had to change."""

import math
from numbers import Integral, Real

import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions
from skorch.helper import predefined_split

from ..._model_state import _config_int, _config_mapping
from ...base import BaseDeepDetector
from ...training.stages import LinearLRDecay, MaxIter
from ...utils._docstring import fill_doc
from ...utils.tags import Tolerance, float32_rtol
from .losses import SCORES, healthygan_score
from .networks import HealthyGenerator, PatchCritic, auto_critic_layers
from .training import HealthyGANNet

__all__ = ["HealthyGAN"]

_MAX_WIDTH = 1024
_MAX_RESIDUAL_BLOCKS = 64
_MAX_CRITIC_LAYERS = 10
# The generator halves twice and InstanceNorm needs more than one pixel per map.
_MIN_SIDE = 8

_NEEDS_UNLABELLED = (
    "HealthyGAN learns from two sets: known-normal images (y = 0) and an unlabelled mix "
    "of normal and abnormal images (y = -1; never the test images). Call fit(X, y) with "
    "both, e.g. fit(np.concatenate([X_normal, X_mixed]), np.r_[np.zeros(len(X_normal)), "
    "-np.ones(len(X_mixed))]). Trained without an unlabelled mix (or with the normal set "
    "as the mix), its masks learn to stay empty and it detects nothing."
)


@fill_doc
class HealthyGAN(BaseDeepDetector):
    """HealthyGAN: translate any image to a healthy one; score by how much changed.

    **Training data.** Two sets: B, images known to be healthy (``y = 0``), and A, an
    unlabelled mix of healthy and abnormal images (``y = -1``, scikit-learn's
    semi-supervised convention, as :class:`~sklearn.semi_supervised.SelfTrainingClassifier`).
    The mix must hold abnormal images for the masks to learn anything: with A = B
    (or no A) the mask collapses to zero, every translation is the identity and
    nothing is detected, so ``fit(X)`` without an unlabelled set is refused. An image
    labelled abnormal (``y = 1``) is refused too: it has no place in either set. In
    cross-validation, :class:`~skanomaly.model_selection.OneClassSplit` keeps every
    unlabelled image in every training part (and out of every validation part), and
    :class:`~skanomaly.model_selection.NormalOnly` keeps them when it drops the
    abnormal ones.

    **Networks** (:mod:`skanomaly.detectors.healthygan.networks`, the authors'
    StarGAN-style code): a generator with a 7 x 7 stem, two stride-2 convolutions,
    residual blocks and two stride-2 transposed convolutions (InstanceNorm + ReLU),
    whose last layer gives the healthy image G_int(x) (tanh) and a mask m ((tanh + 1)
    / 2); the translation is ``x^ = m G_int(x) + (1 - m) x``. A PatchGAN critic of
    4 x 4 stride-2 convolutions, LReLU 0.01, no normalisation. Pixels are mapped to
    [-1, 1].

    **Training** (stage ``"adversarial"``,
    :class:`~skanomaly.detectors.healthygan.training.HealthyGANNet`): WGAN-GP, the
    critic on real B against translated A every iteration, the generator every second
    on ``-D(x^_A) - D(x^_B) + |x_B - G_int(x_B)| + |x_A - (m x_A + (1 - m) G_int(x_A))|
    + 0.1 (focus(m_A) + focus(m_B)) / 2`` (:mod:`~skanomaly.detectors.healthygan.losses`);
    Adam 1e-4, betas (0.5, 0.999), batch 16, 400,000 iterations (one per batch of
    B, each with a batch of A as large), the learning rate falling linearly to zero
    over the last quarter. Every term is in ``histories_["adversarial"]``.

    The authors' code decays its rate by ``lr / 100,000`` every 1,000 iterations of
    the last 100,000, which lowers it by a thousandth in all; the paper says it
    decays, and this decays it as stated.

    The schedule is long, and what the masks learn depends on it: at the budgets a
    CPU affords (a few thousand iterations) they saturate near 1 on every image and
    the detector is at chance on phantoms (the user guide and
    ``benchmarks/README.md`` give the figures). Train on a GPU near the paper's
    budget, and check on validation data that the masks of normal images are small.

    **Score:** ``mean|x - x^|`` over the region of interest, in pixel units;
    ``anomaly_map`` is ``|x - x^|`` and :meth:`attention_map` the mask m, both NaN
    outside the region of interest. ``offset_`` comes from the known-normal
    training images only. The authors pick their cut-off on the test set; choose it
    on validation data (:class:`~skanomaly.model_selection.ThresholdTuner`).

    Parameters
    ----------
    generator_width : int, default=64
        Channels after the generator's stem (the bottleneck has four times as many).
    n_residual_blocks : int, default=6
    critic_width : int, default=64
        Channels of the critic's first layer; each further layer doubles them.
    critic_layers : int or "auto", default="auto"
        Stride-2 layers of the critic. ``"auto"``: six (the paper's, at 256 and 128
        px), one fewer per halving below 128 px.
    gp_weight : float, default=10.0
    identity_weight : float, default=1.0
    reconstruction_weight : float, default=1.0
    focus_weight : float, default=0.1
        Weight of the focus loss (the mean of its two streams' values).
    n_critic : int, default=2
        Critic steps per generator step.
    anomaly_score : {"paper", "mask"}, default="paper"
        ``"paper"``: ``mean|x - x^|``; ``"mask"``: the mean of the mask.
    lr : float, default=1e-4
        Adam learning rate of both networks.
    batch_size : int, default=16
    max_iter : int, default=400_000
        Training iterations (batches of the known-normal images).
    lr_decay_iter : int or "auto", default="auto"
        Iterations at the end over which the learning rate falls to zero;
        ``"auto"``: a quarter of ``max_iter`` (100,000 of 400,000 in the paper).
    {contamination}
    {patch_aggregation}
    {image_shape}
    {value_range}
    validation_fraction : float in (0, 1), default=None
        Hold out this fraction of the known-normal images for the validation terms
        (the identity, adversarial and focus terms of B; validation has no mix).
    {device}
    {random_state}
    {verbose}
    {callbacks}

    Attributes
    ----------
    net_ : HealthyGANNet
        ``net_.generator_`` and ``net_.critic_``.
    network_config_ : dict
        ``side`` (the square the networks take; images are padded to it),
        ``generator_width``, ``n_residual_blocks``, ``critic_width`` and
        ``critic_layers`` of the fitted networks.
    n_normal_, n_unlabelled_ : int
        Known-normal and unlabelled training images.
    n_iter_ : int
        Epochs (passes over the known-normal images) that the ``max_iter``
        iterations took, as every detector counts them.
    offset_, image_shape_, history_, histories_, n_features_in_
        As in :class:`~skanomaly.detectors.CAEDetector`; ``histories_ =
        {"adversarial": ...}``.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.datasets import make_chest_phantoms
    >>> from skanomaly.detectors import HealthyGAN
    >>> normal = make_chest_phantoms(16, image_size=16, anomaly_fraction=0.0, random_state=0)
    >>> mixed = make_chest_phantoms(16, image_size=16, anomaly_fraction=0.5, random_state=1)
    >>> X = np.concatenate([normal.images, mixed.images])
    >>> y = np.r_[np.zeros(16), -np.ones(16)]      # 0: known normal, -1: unlabelled
    >>> det = HealthyGAN(generator_width=4, n_residual_blocks=1, critic_width=4, max_iter=4,
    ...                  batch_size=8, random_state=0).fit(X, y)
    >>> det.score_samples(mixed.images[:3]).shape
    (3,)
    """

    _parameter_constraints: dict = {
        **{k: v for k, v in BaseDeepDetector._parameter_constraints.items() if k != "max_epochs"},
        "generator_width": [Interval(Integral, 1, _MAX_WIDTH, closed="both")],
        "n_residual_blocks": [Interval(Integral, 0, _MAX_RESIDUAL_BLOCKS, closed="both")],
        "critic_width": [Interval(Integral, 1, _MAX_WIDTH, closed="both")],
        "critic_layers": [StrOptions({"auto"}), Interval(Integral, 1, _MAX_CRITIC_LAYERS, closed="both")],
        "gp_weight": [Interval(Real, 0, None, closed="left")],
        "identity_weight": [Interval(Real, 0, None, closed="left")],
        "reconstruction_weight": [Interval(Real, 0, None, closed="left")],
        "focus_weight": [Interval(Real, 0, None, closed="left")],
        "n_critic": [Interval(Integral, 1, None, closed="left")],
        "anomaly_score": [StrOptions(set(SCORES))],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "lr_decay_iter": [StrOptions({"auto"}), Interval(Integral, 0, None, closed="left")],
    }

    def __init__(
        self,
        *,
        generator_width=64,
        n_residual_blocks=6,
        critic_width=64,
        critic_layers="auto",
        gp_weight=10.0,
        identity_weight=1.0,
        reconstruction_weight=1.0,
        focus_weight=0.1,
        n_critic=2,
        anomaly_score="paper",
        lr=1e-4,
        batch_size=16,
        max_iter=400_000,
        lr_decay_iter="auto",
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
        self.generator_width = generator_width
        self.n_residual_blocks = n_residual_blocks
        self.critic_width = critic_width
        self.critic_layers = critic_layers
        self.gp_weight = gp_weight
        self.identity_weight = identity_weight
        self.reconstruction_weight = reconstruction_weight
        self.focus_weight = focus_weight
        self.n_critic = n_critic
        self.anomaly_score = anomaly_score
        self.lr = lr
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.lr_decay_iter = lr_decay_iter
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
        if self.lr_decay_iter != "auto" and self.lr_decay_iter > self.max_iter:
            raise ValueError(
                f"lr_decay_iter={self.lr_decay_iter} exceeds max_iter={self.max_iter}: the rate "
                "decays over the last lr_decay_iter iterations; use at most max_iter, or 'auto' "
                "(a quarter of max_iter)."
            )

    def _decay_iterations(self):
        return self.max_iter // 4 if self.lr_decay_iter == "auto" else int(self.lr_decay_iter)

    def _check_training_labels(self, y, n_images):
        if y is None:
            raise ValueError(_NEEDS_UNLABELLED)
        y = super()._check_training_labels(y, n_images)
        for value, name in ((0, "known-normal (y = 0)"), (-1, "unlabelled (y = -1)")):
            if not np.any(y == value):
                raise ValueError(f"y marks no image {name}. {_NEEDS_UNLABELLED}")
        return y

    def _min_image_size(self):
        # Smaller images are padded to the networks' square (at least 8 px).
        return 1

    def __skanomaly_tags__(self):
        tags = super().__skanomaly_tags__()
        tags.labels = "semi-supervised"
        width = int(self.generator_width)
        # Stem, two down, two per residual block, two up, the output convolution, and
        # InstanceNorm's per-image means after each: the widest inner product is the
        # up-sampling's 4 x 4 x (4 w), the longest mean a 64 x 64 map.
        reductions = 2 * (6 + 2 * int(self.n_residual_blocks))
        tags.score_tolerance = Tolerance(
            float32_rtol(reductions, max(64 * width, 49 * width)), "the generator's convolutions and InstanceNorms"
        )
        tags.training_tolerance = Tolerance(
            1e-3, "an adversarial game amplifies the inputs' last bits (as AnoGAN's DCGAN)"
        )
        return tags

    # ------------------------------------------------------ network configuration
    def _network_config(self):
        longest = max(self.image_shape_)
        layers = auto_critic_layers(longest) if self.critic_layers == "auto" else int(self.critic_layers)
        # The critic halves the side `layers` times and the generator twice.
        multiple = 2 ** max(layers, 2)
        side = max(_MIN_SIDE, multiple * math.ceil(longest / multiple))
        return dict(
            side=side,
            generator_width=int(self.generator_width),
            n_residual_blocks=int(self.n_residual_blocks),
            critic_width=int(self.critic_width),
            critic_layers=layers,
        )

    def _check_network_config(self, config, image_shape):
        keys = {"side", "generator_width", "n_residual_blocks", "critic_width", "critic_layers"}
        config = _config_mapping(config, keys)
        checked = dict(
            side=_config_int(config, "side", _MIN_SIDE, 2**16),
            generator_width=_config_int(config, "generator_width", 1, _MAX_WIDTH),
            n_residual_blocks=_config_int(config, "n_residual_blocks", 0, _MAX_RESIDUAL_BLOCKS),
            critic_width=_config_int(config, "critic_width", 1, _MAX_WIDTH),
            critic_layers=_config_int(config, "critic_layers", 1, _MAX_CRITIC_LAYERS),
        )
        multiple = 2 ** max(checked["critic_layers"], 2)
        if checked["side"] % multiple or max(image_shape) > checked["side"]:
            raise ValueError(
                f"side={checked['side']} is not a multiple of {multiple} that holds {tuple(image_shape)}"
            )
        return checked

    # ------------------------------------------------------------ persistence
    def _fitted_state(self):
        return {**super()._fitted_state(), "n_normal_": self.n_normal_, "n_unlabelled_": self.n_unlabelled_}

    def _set_fitted_state(self, state):
        counts = {key: state.get(key) if isinstance(state, dict) else None for key in ("n_normal_", "n_unlabelled_")}
        for key, value in counts.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"invalid fitted state in the model file: {key}={value!r}")
        super()._set_fitted_state(state)
        for key, value in counts.items():
            setattr(self, key, value)

    # ------------------------------------------------------------- training
    def _max_epochs(self):
        # Iterations end training (MaxIter); _fit_networks sets the epochs that bound
        # them from above, from the training set's size.
        return 1

    def _make_net(self, device):
        """The net, for training and for loading weights into alike: its networks from
        ``network_config_`` alone."""
        config = self.network_config_
        return HealthyGANNet(
            HealthyGenerator,
            PatchCritic,
            generator__width=config["generator_width"],
            generator__n_residual_blocks=config["n_residual_blocks"],
            critic__width=config["critic_width"],
            critic__n_layers=config["critic_layers"],
            gp_weight=float(self.gp_weight),
            identity_weight=float(self.identity_weight),
            reconstruction_weight=float(self.reconstruction_weight),
            focus_weight=float(self.focus_weight),
            n_critic=int(self.n_critic),
            x_range=(-1.0, 1.0),
            optimizer_critic__betas=(0.5, 0.999),
            optimizer_generator__betas=(0.5, 0.999),
            **self._skorch_kwargs(device),
        )

    def _fit_networks(self, samples, owners, y, device):
        sample_labels = np.asarray(y)[owners]
        normal_positions = np.flatnonzero(sample_labels == 0)
        unlabelled = samples.subset(np.flatnonzero(sample_labels == -1))
        train, valid = self._split_by_image(samples.subset(normal_positions), owners[normal_positions])
        self.n_normal_ = int(np.sum(y == 0))
        self.n_unlabelled_ = int(np.sum(y == -1))
        batches = max(1, math.ceil(len(train) / self.batch_size))
        net = self._make_net(device)
        decay = self._decay_iterations()
        schedule = [("max_iter", MaxIter(int(self.max_iter)))]
        if decay:
            schedule.append(("lr_decay", LinearLRDecay(int(self.max_iter), decay)))
        net.set_params(max_epochs=math.ceil(self.max_iter / batches), callbacks=[*schedule, *net.callbacks])
        if valid is not None:
            net.set_params(train_split=predefined_split(valid))
        net.fit(train, None, unlabelled=unlabelled)
        # The predefined split references the training data: the fitted detector
        # keeps no reference to it.
        net.train_split = None
        self.net_ = net
        return {"adversarial": net.history}

    def _offset_scores(self, images, y):
        # The threshold comes from images known to be normal, not from the mix.
        return self._score_images(images[np.asarray(y) == 0])

    # -------------------------------------------------------------- scoring
    def _translate(self, x, roi):
        net = self.net_
        scaled = net.scale_x(x)
        translated, _, mask = net.translate(scaled, roi)
        return scaled, translated, mask

    def _anomaly_batch(self, x, roi):
        scaled, translated, mask = self._translate(x, roi)
        image = healthygan_score(self.anomaly_score, scaled, translated, mask, roi)
        # The map in pixel units ([0, 1]), not the networks' [-1, 1].
        pixel = self.net_.unscale_x(translated).sub(x).abs() * roi.to(x.dtype)
        return pixel, image

    def _mask_batch(self, x, roi):
        _, _, mask = self._translate(x, roi)
        return mask * roi.to(x.dtype), healthygan_score("mask", x, x, mask, roi)

    def attention_map(self, X):
        """The generator's mask m in [0, 1] (1: the translation replaced the pixel),
        NaN outside the region of interest.

        Parameters
        ----------
        X : array-like of shape (n_samples, H, W), (n_samples, H * W) or (n_samples, P, p, p)

        Returns
        -------
        masks : ndarray of float32, in the layout of :meth:`anomaly_map`
        """
        return self._pixel_maps(X, self._mask_batch)
