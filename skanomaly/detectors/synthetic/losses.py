"""Loss and scores of :class:`~skanomaly.detectors.SyntheticAnomalyDetector`.

Training: per-pixel binary cross-entropy between the network's logits and the share
of synthetic content (:mod:`.synthesis`), averaged over the ROI pixels of the batch.
Scoring: the per-pixel anomaly is the predicted share ``sigmoid(logit)``; an image's
anomaly is its mean over the ROI (``"mean"``), the mean of its ``k`` largest values
(``("topk", k)``) or its maximum (``"max"``).
"""

from collections import namedtuple
from numbers import Integral

import torch
from torch.nn import functional as F

from ...training.losses import masked_mean, masked_topk_mean

__all__ = ["segmentation_loss", "SegmentationLoss", "parse_score", "image_anomaly"]

ScoreSpec = namedtuple("ScoreSpec", "reduction k")


def segmentation_loss(logits, target, roi):
    """Mean binary cross-entropy with soft targets over the ROI pixels of the batch."""
    weights = roi.to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (loss * weights).sum() / weights.sum().clamp_min(1.0)


class SegmentationLoss(torch.nn.Module):
    """Criterion module of :func:`segmentation_loss` (for skorch)."""

    def forward(self, logits, target, roi):
        return segmentation_loss(logits, target, roi)


def parse_score(score):
    """Validate ``anomaly_score``: ``"mean"``, ``"max"`` or ``("topk", k)``."""
    if isinstance(score, str) and score in ("mean", "max"):
        return ScoreSpec(score, None)
    if (
        isinstance(score, (tuple, list))
        and len(score) == 2
        and score[0] == "topk"
        and isinstance(score[1], Integral)
        and not isinstance(score[1], bool)
        and score[1] >= 1
    ):
        return ScoreSpec("topk", int(score[1]))
    raise ValueError(
        f"anomaly_score={score!r} is not valid: use 'mean' (the mean predicted anomaly "
        "over the ROI), 'max', or ('topk', k) with an integer k >= 1."
    )


def image_anomaly(spec, pixel_anomaly, roi):
    """Image anomaly ``(B,)`` from per-pixel anomaly ``(B, 1, H, W)``."""
    if spec.reduction == "mean":
        return masked_mean(pixel_anomaly, roi)
    if spec.reduction == "topk":
        return masked_topk_mean(pixel_anomaly, roi, spec.k)
    return masked_topk_mean(pixel_anomaly, roi, 1)
