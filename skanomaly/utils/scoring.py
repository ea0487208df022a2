"""The one scoring loop of the package, and the aggregation of patch scores per image.

Every score a detector gives (``score_samples``, ``anomaly_map``, the training scores
``offset_`` comes from) and every score computed during training (an epoch-selection
callback scoring a validation set) runs through :func:`score_in_batches`, so batching,
the ROI and the dtype of scores are decided in one place.
"""

import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["score_in_batches", "aggregate_patches", "as_torch_buffer"]


def as_torch_buffer(array):
    """``array`` in a layout ``torch.from_numpy`` takes: itself where it already is,
    a C-contiguous copy otherwise (reversed or strided views, Fortran order). numpy
    calls an axis of length 1 contiguous whatever its stride, while torch refuses
    any negative stride, so ``np.ascontiguousarray`` alone is not enough."""
    array = np.ascontiguousarray(array)
    return array.copy() if any(stride < 0 for stride in array.strides) else array


def score_in_batches(samples, anomaly_batch, *, batch_size, device, context=torch.inference_mode,
                     want_maps=False, desc=None, indices=None):  # fmt: skip
    """Score ``(M, H, W)`` samples (NaN outside the ROI) batch by batch.

    Parameters
    ----------
    samples : ndarray of float32, shape (M, H, W)
    anomaly_batch : callable
        ``(x, roi) -> (pixel_anomaly or None, image_anomaly (B,))`` for a batch ``x``
        of shape ``(B, 1, H, W)`` with NaN filled by 0 and ``roi`` boolean, on
        ``device``.
    batch_size : int
        Samples per batch; scores do not depend on it beyond float32 rounding.
    device : torch.device or str
    context : callable, default=torch.inference_mode
        The autograd mode of scoring (``torch.enable_grad`` for a latent search).
        Batches are built outside it, so their tensors can take part in autograd.
    want_maps : bool, default=False
        Also return the per-pixel maps, NaN outside the ROI.
    desc : str or None, default=None
        Show a progress bar with this label.
    indices : ndarray of int, shape (K,), or None, default=None
        Score only these rows of ``samples`` (gathered batch by batch, so a subset
        of a large array is never copied whole); results then have ``K`` rows.

    Returns
    -------
    anomalies : ndarray of float64, shape (M,) or (K,)
        The networks compute in float32; the scores are exact float64 widenings of
        float32 values, with float32's precision (``docs/design.rst``, section 3).
    maps : ndarray of float32, shape (M or K, H, W), or None
    """
    n = samples.shape[0] if indices is None else len(indices)
    anomalies = np.empty(n, dtype=np.float64)
    maps = np.empty((n, *samples.shape[1:]), dtype=np.float32) if want_maps else None
    batch_size = n if batch_size in (-1, None) else max(1, int(batch_size))
    starts = range(0, n, batch_size)
    if desc is not None:
        starts = tqdm(starts, desc=desc, unit="batch")
    for start in starts:
        rows = samples[start : start + batch_size] if indices is None else np.take(samples, indices[start : start + batch_size], axis=0)
        batch = torch.from_numpy(as_torch_buffer(rows)).to(device)[:, None]
        roi = ~torch.isnan(batch)
        filled = torch.nan_to_num(batch, nan=0.0)
        with context():
            pixel, image = anomaly_batch(filled, roi)
            # To the CPU first, then widen: some devices (MPS) have no float64.
            anomalies[start : start + len(batch)] = image.detach().cpu().double().numpy()
            if want_maps:
                pixel = pixel.detach().reshape(batch.shape).masked_fill(~roi, float("nan"))
                maps[start : start + len(batch)] = pixel[:, 0].float().cpu().numpy()
    return anomalies, maps


def aggregate_patches(patch_anomaly, aggregation):
    """Image anomaly from ``(N, P)`` patch anomalies, ignoring absent (NaN) patches.

    ``aggregation`` is ``"max"``, ``"mean"`` or ``("topk", k)``: the mean of the ``k``
    largest present patch anomalies of each image, or of all of them where an image
    has fewer than ``k`` (with a warning).
    """
    if aggregation == "max":
        return np.nanmax(patch_anomaly, axis=1)
    if aggregation == "mean":
        return np.nanmean(patch_anomaly, axis=1)
    k = aggregation[1]
    n_present = np.isfinite(patch_anomaly).sum(axis=1)
    if (n_present < k).any():
        warnings.warn(
            f"patch_aggregation=('topk', {k}) but {int((n_present < k).sum())} image(s) "
            f"have fewer present patches (as few as {int(n_present.min())}); their score "
            "is the mean over all their patches.",
            UserWarning,
            stacklevel=4,
        )
    ranked = -np.sort(-np.where(np.isnan(patch_anomaly), -np.inf, patch_anomaly), axis=1)[:, :k]
    return np.nanmean(np.where(np.isfinite(ranked), ranked, np.nan), axis=1)
