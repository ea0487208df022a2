"""Figures for anomaly maps (matplotlib, imported lazily)."""

import numpy as np

__all__ = ["plot_anomaly_overlays"]


def plot_anomaly_overlays(
    images, maps, *, labels=None, centers=None, scores=None, ncols=4, alpha=0.5, cmap="inferno"
):
    """Show images with their anomaly maps overlaid, one panel per image.

    Parameters
    ----------
    images : ndarray of shape (n, H, W)
    maps : ndarray of shape (n, H, W)
        Anomaly maps (higher = more abnormal), e.g. ``detector.anomaly_map(images)``;
        NaN (outside the region of interest) is left transparent. Every map is scaled
        by the same range (the 1st to 99.5th percentile of all maps) so panels compare.
    labels : array-like of shape (n,), default=None
        1 = abnormal, 0 = normal; shown in the titles.
    centers : ndarray of shape (n, 2), default=None
        ``(x, y)`` of known lesions, circled; NaN for none.
    scores : array-like of shape (n,), default=None
        Image scores shown in the titles.
    ncols : int, default=4

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    images, maps = np.asarray(images), np.asarray(maps)
    n = images.shape[0]
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.8 * nrows), squeeze=False)
    finite = maps[np.isfinite(maps)]
    low, high = np.percentile(finite, [1, 99.5]) if finite.size else (0.0, 1.0)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(np.nan_to_num(images[i]), cmap="gray", vmin=0, vmax=1)
        ax.imshow(np.ma.masked_invalid(maps[i]), cmap=cmap, alpha=alpha, vmin=low, vmax=high)
        if centers is not None and np.all(np.isfinite(centers[i])):
            radius = max(images.shape[1:]) * 0.08
            ax.add_patch(plt.Circle(tuple(centers[i]), radius, fill=False, color="cyan", lw=1.2))
        title = []
        if labels is not None:
            title.append("nodule" if labels[i] else "normal")
        if scores is not None:
            title.append(f"score {scores[i]:.4g}")
        ax.set_title("  ".join(title), fontsize=8)
    fig.tight_layout()
    return fig
