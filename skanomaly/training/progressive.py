"""Progressive growing of a GAN (P-AnoGAN's PGAN schedule) on :class:`~.stages.GANNet`.

P-AnoGAN trained pytorch_GAN_zoo's progressive GAN: 48k iterations at 4 x 4, 96k at
each of 8, 16 and 32, 200k at 64 x 64 (536k in all), one critic step per generator
step, WGAN-GP (10) with drift 0.001, Adam 1e-3 betas (0, 0.99), batch 16, an
exponential moving average of the generator (0.999). Each new scale fades in: alpha
starts at 1 and drops by 1/600 every 32 iterations (so the fade lasts 19,200
iterations), the generator's output and the discriminator's input path blend the new
and the previous scale, and real images are blended the same way. At every new scale
the optimisers start afresh and the average generator restarts from the generator,
as in the reference code.

:func:`paper_schedule` scales all of that to any total number of iterations, so a
CPU run grows through every scale, with the same proportions, in minutes.
"""

import copy
import math

import numpy as np
import torch
from torch.nn import functional as F

from ..nn.fanogan import upsample_nearest2x
from .stages import GANNet, _is_int

__all__ = ["ProgressiveGANNet", "paper_schedule", "fade_alpha", "PAPER_ITERATIONS"]

_FIRST, _MIDDLE, _LAST = 48_000, 96_000, 200_000
_FADE_ITERATIONS = 19_200
_FADE_JUMPS = 600
PAPER_ITERATIONS = _FIRST + 3 * _MIDDLE + _LAST  # 536,000 at 64 x 64


def _paper_iterations_per_scale(n_scales):
    if n_scales == 1:
        return [_LAST]
    return [_FIRST] + [_MIDDLE] * (n_scales - 2) + [_LAST]


def paper_schedule(n_scales, total_iterations=None):
    """Iterations per scale and fade-in length of P-AnoGAN's schedule.

    Parameters
    ----------
    n_scales : int
        Scales from 4 x 4 up (5 for 64 x 64).
    total_iterations : int or None
        ``None`` keeps the paper's numbers (48k at 4 x 4, 96k at every middle scale,
        200k at the last; fade-in over 19,200). An int scales every number by
        ``total_iterations / paper total``, each scale keeping at least 1 iteration
        and the last taking the rounding, so the total is exact.

    Returns
    -------
    iterations_per_scale : tuple of int
    fade_iterations : float
    """
    base = _paper_iterations_per_scale(int(n_scales))
    if total_iterations is None:
        return tuple(base), float(_FADE_ITERATIONS)
    total = int(total_iterations)
    if total < len(base):
        raise ValueError(
            f"a progressive GAN of {len(base)} scales needs at least {len(base)} iterations "
            f"(one per scale); got {total}."
        )
    factor = total / sum(base)
    per_scale = [max(1, round(b * factor)) for b in base[:-1]]
    per_scale.append(total - sum(per_scale))
    if per_scale[-1] < 1:  # tiny totals: take the excess from the largest early scale
        per_scale = [1] * (len(base) - 1) + [total - (len(base) - 1)]
    return tuple(per_scale), _FADE_ITERATIONS * factor


def fade_alpha(iteration, fade_iterations):
    """Weight of the previous scale ``iteration`` steps after a new scale starts.

    Starts at 1 and drops in up to 600 equal jumps over ``fade_iterations`` steps (at
    the paper's 19,200: by 1/600 every 32 iterations); 0 afterwards.
    """
    if fade_iterations <= 0:
        return 0.0
    n_jumps = max(1, min(_FADE_JUMPS, math.floor(fade_iterations)))
    interval = fade_iterations / n_jumps
    return max(0.0, 1.0 - math.floor(iteration / interval) / n_jumps)


class ProgressiveGANNet(GANNet):
    """:class:`~.stages.GANNet` that grows its networks scale by scale.

    The generator and discriminator must be progressive networks
    (:mod:`skanomaly.nn.progressive`: a ``set_growth(scale, alpha)`` method and
    ``scale``/``alpha`` buffers). Training images arrive at full size; each training
    step first sets the scale and fade-in weight of the step's iteration (one
    iteration = one training batch = one discriminator step), then average-pools the
    real images down to the active scale and blends them with their coarser version
    by alpha, exactly as the generator's output is blended. Train with
    ``MaxIter(sum(iterations_per_scale))``: at the end of the schedule the networks
    are at full size with alpha 0; :attr:`schedule_complete_` says whether training
    got there.

    Parameters
    ----------
    generator, discriminator
        Progressive networks (classes or instances), as :class:`~.stages.GANNet`.
    iterations_per_scale : tuple of int
        Training iterations at each scale (:func:`paper_schedule`).
    fade_iterations : float
        Length of each new scale's fade-in (:func:`fade_alpha`).
    ema_decay : float or None, default=0.999
        Decay of the moving average of the generator's weights (``generator_ema_``),
        updated after every generator step; ``None`` keeps no average.
    **kwargs
        As :class:`~.stages.GANNet` (``loss="wgan-gp"``, ``drift_weight``, ...).

    Attributes
    ----------
    generator_ema_ : torch.nn.Module or None
        The averaged generator (frozen; the one to generate and encode with).
    schedule_complete_ : bool
        Whether every scheduled iteration has run.
    """

    def __init__(self, generator, discriminator, *, iterations_per_scale, fade_iterations, ema_decay=0.999, **kwargs):
        super().__init__(generator, discriminator, **kwargs)
        self.iterations_per_scale = iterations_per_scale
        self.fade_iterations = fade_iterations
        self.ema_decay = ema_decay

    def _check_stage_params(self):
        super()._check_stage_params()
        per_scale = self.iterations_per_scale
        if not per_scale or not all(_is_int(n, 1) for n in per_scale):
            raise ValueError(f"iterations_per_scale must be integers >= 1, got {per_scale!r}.")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be None or in [0, 1), got {self.ema_decay!r}.")

    def initialize_module(self):
        super().initialize_module()
        if len(self.iterations_per_scale) != self.generator_.n_scales:
            raise ValueError(
                f"iterations_per_scale has {len(self.iterations_per_scale)} entries but the "
                f"networks have {self.generator_.n_scales} scales."
            )
        if self.ema_decay is not None:
            self.generator_ema_ = copy.deepcopy(self.generator_).requires_grad_(False).eval()
        self._set_growth(0, 0.0)
        return self

    def initialize(self):
        super().initialize()
        self.schedule_complete_ = False
        return self

    # --------------------------------------------------------------- growth
    def _networks(self):
        ema = getattr(self, "generator_ema_", None)
        return [self.generator_, self.discriminator_] + ([ema] if ema is not None else [])

    def _set_growth(self, scale, alpha):
        for network in self._networks():
            network.set_growth(scale, alpha)

    def growth_at(self, iteration):
        """``(scale, alpha)`` of a training iteration (0-based) in the schedule."""
        boundaries = np.cumsum(self.iterations_per_scale)
        scale = int(min(np.searchsorted(boundaries, iteration, side="right"), len(boundaries) - 1))
        start = int(boundaries[scale - 1]) if scale else 0
        alpha = fade_alpha(iteration - start, self.fade_iterations) if scale else 0.0
        return scale, alpha

    def _update_growth(self):
        scale, alpha = self.growth_at(self.n_iterations_)
        if scale != int(self.generator_.scale):
            self._set_growth(scale, alpha)
            # A new scale starts with fresh optimisers and a fresh average generator.
            self.initialize_optimizer()
            ema = getattr(self, "generator_ema_", None)
            if ema is not None:
                ema.load_state_dict(self.generator_.state_dict())
        else:
            self._set_growth(scale, alpha)

    def train_step(self, batch, **fit_params):
        self._update_growth()
        step = super().train_step(batch, **fit_params)
        self.schedule_complete_ = self.n_iterations_ >= sum(self.iterations_per_scale)
        if self.schedule_complete_:
            self._set_growth(len(self.iterations_per_scale) - 1, 0.0)
        return step

    def prepare_batch(self, batch, training):
        inputs = super().prepare_batch(batch, training)
        real = inputs["x"]
        side = self.generator_.current_size
        if real.shape[-1] > side:
            real = F.avg_pool2d(real, real.shape[-1] // side)
        alpha = float(self.generator_.alpha)
        if alpha > 0:
            coarse = upsample_nearest2x(F.avg_pool2d(real, 2))
            real = alpha * coarse + (1.0 - alpha) * real
        # The GAN's losses use no ROI (NaN is filled before the critic sees a pixel);
        # a full-size mask beside images of the active scale would only mislead.
        inputs["x"], inputs["roi"] = real, None
        return inputs

    def after_update(self, update):
        ema = getattr(self, "generator_ema_", None)
        if update.group == "g" and ema is not None:
            with torch.no_grad():
                for average, current in zip(ema.parameters(), self.generator_.parameters()):
                    average.lerp_(current, 1.0 - self.ema_decay)
