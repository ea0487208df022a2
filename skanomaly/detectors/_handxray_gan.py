"""What the hand X-ray paper's two GAN detectors (BiGAN, alpha-GAN) share as
estimators: the self-attention networks' parameters (``latent_dim``, ``channels``,
``attention``), their configuration resolved at fit, the reconstruction maps and the
float32 tolerances. Each detector's networks, losses, training and scores live in its
own folder (``detectors/bigan``, ``detectors/alphagan``)."""

from numbers import Integral

import torch

from sklearn.utils._param_validation import Interval, StrOptions

from .._model_state import _config_int, _config_mapping
from ..base import BaseDeepDetector
from ..nn.sagan import sagan_side
from ..utils.tags import Tolerance, _widths, float32_rtol
from ..utils.validation import check_widths
from .autoencoders.losses import parse_score

__all__ = ["HandXrayGANDetector", "check_score", "discriminator_score"]

_MAX_LATENT_DIM = 2**16
_CHANNELS_HINT = (
    ", e.g. the paper's (64, 128, 256, 512, 1024) for 128 px, or (8, 16) for 16 px on a CPU"
)
_AUGMENT = [None, StrOptions({"default", "advanced"})]


def discriminator_score(logits):
    """``1 - D``, with ``D`` the sigmoid of the logits: high for what D finds unreal."""
    return 1.0 - torch.sigmoid(logits)


def check_score(score, discriminator_scores):
    """``None`` for one of ``discriminator_scores``, else the reconstruction score's spec
    (:func:`~skanomaly.detectors.autoencoders.losses.parse_score`), or a clear error."""
    if isinstance(score, str) and score in discriminator_scores:
        return None
    try:
        return parse_score(score, allow_kld=False)
    except ValueError:
        names = ", ".join(repr(s) for s in (*discriminator_scores, "mse", "l1"))
        raise ValueError(
            f"anomaly_score={score!r} is not valid: use one of {names}, ('topk', k) or ('topk', k, 'l1') "
            "with an integer k >= 1 (the paper: ('topk', 200))."
        ) from None


class HandXrayGANDetector(BaseDeepDetector):
    """Base of :class:`~skanomaly.detectors.BiGANDetector` and
    :class:`~skanomaly.detectors.AlphaGANDetector` (not an estimator of its own).

    Subclasses set ``_DISCRIMINATOR_SCORES`` (the scores that are not reconstruction
    errors) and implement ``_make_net`` and ``_anomaly_batch``.
    """

    _DISCRIMINATOR_SCORES: tuple = ()

    _parameter_constraints: dict = {
        **BaseDeepDetector._parameter_constraints,
        "latent_dim": [Interval(Integral, 1, _MAX_LATENT_DIM, closed="both")],
        "channels": [tuple, list],
        "attention": ["boolean"],
        "anomaly_score": [str, tuple],
        "augment": _AUGMENT,
    }

    # ------------------------------------------------------------ parameters
    def _validate_detector_params(self):
        check_widths(self.channels, "channels", max_len=8, hint=_CHANNELS_HINT)
        check_score(self.anomaly_score, self._DISCRIMINATOR_SCORES)

    def _min_image_size(self):
        # Smaller images and patches are padded to the networks' square.
        return 1

    def __skanomaly_tags__(self):
        tags = super().__skanomaly_tags__()
        widths = _widths(self.channels)
        # E's trunk, G's levels, then D's trunk and heads: chains of 4 x 4 convolutions
        # of fan-in up to 16 x the widest width, and attention's softmax over up to
        # (S / 2) ** 2 positions (within float32_rtol's 4096-term floor at 128 px).
        reductions = 3 * (len(widths) + 3)
        tags.score_tolerance = Tolerance(
            float32_rtol(reductions, 16 * max(widths)), "E, then G and D, each a chain of convolutions"
        )
        tags.training_tolerance = Tolerance(
            1e-3, "an adversarial game amplifies the inputs' last bits (as AnoGAN's DCGAN)"
        )
        return tags

    # ------------------------------------------------------ network configuration
    def _network_config(self):
        channels = tuple(int(c) for c in self.channels)
        side = sagan_side(channels)
        if max(self.image_shape_) > side:
            raise ValueError(
                f"channels={channels!r} make networks for {side}x{side} images, smaller than the "
                f"{self.image_shape_[0]}x{self.image_shape_[1]} training images: add a level per "
                f"doubling of the side (five levels for 128 px), or resize the images."
            )
        return dict(side=side, channels=channels, latent_dim=int(self.latent_dim), attention=bool(self.attention))

    def _check_network_config(self, config, image_shape):
        config = _config_mapping(config, {"side", "channels", "latent_dim", "attention"})
        channels = check_widths(config["channels"], "channels", max_len=8, hint=_CHANNELS_HINT)
        side = sagan_side(channels)
        if config["side"] != side or max(image_shape) > side:
            raise ValueError(f"side={config['side']!r} does not fit channels={list(channels)} and {image_shape}")
        if not isinstance(config["attention"], bool):
            raise ValueError(f"attention={config['attention']!r} is not a bool")
        return dict(
            side=side,
            channels=channels,
            latent_dim=_config_int(config, "latent_dim", 1, _MAX_LATENT_DIM),
            attention=config["attention"],
        )

    def _network_kwargs(self, *names):
        """``<name>__latent_dim``, ``<name>__channels`` and ``<name>__attention`` of the
        fitted configuration, for each network named."""
        config = self.network_config_
        kwargs = {}
        for name in names:
            kwargs[f"{name}__latent_dim"] = config["latent_dim"]
            kwargs[f"{name}__channels"] = tuple(config["channels"])
            kwargs[f"{name}__attention"] = config["attention"]
        return kwargs
