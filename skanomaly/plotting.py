"""Figures for anomaly maps (matplotlib, imported lazily)."""

import numpy as np

__all__ = ["plot_anomaly_overlays", "overlay_anomaly_map"]


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


def overlay_anomaly_map(image, anomaly_map, *, vmin=None, vmax=None, alpha=0.5, cmap="inferno"):
    """Blend one anomaly map over its image as an RGB ``uint8`` array (for PNG files).

    Unlike :func:`plot_anomaly_overlays`, this draws no figure: the result has the
    image's own pixel size, which suits writing one overlay per file.

    Parameters
    ----------
    image : ndarray of shape (H, W)
        Grayscale image in [0, 1]; NaN is drawn black.
    anomaly_map : ndarray of shape (H, W)
        Per-pixel anomaly (higher = more abnormal); NaN (outside the region of
        interest) leaves the image uncoloured.
    vmin, vmax : float, default=None
        Colour range of the map; ``None`` uses the map's own 1st and 99.5th
        percentiles. Pass one range for many images so that their colours compare.
    alpha : float, default=0.5
        Opacity of the map.
    cmap : str, default="inferno"
        A matplotlib colormap name.

    Returns
    -------
    rgb : ndarray of shape (H, W, 3), dtype uint8

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.plotting import overlay_anomaly_map
    >>> rgb = overlay_anomaly_map(np.full((8, 8), 0.5), np.eye(8), vmin=0, vmax=1)
    >>> rgb.shape, rgb.dtype
    ((8, 8, 3), dtype('uint8'))
    """
    import matplotlib

    image = np.asarray(image, dtype=np.float64)
    amap = np.asarray(anomaly_map, dtype=np.float64)
    if image.ndim != 2 or amap.shape != image.shape:
        raise ValueError(
            "overlay_anomaly_map takes a 2-D image and a map of the same shape; got "
            f"{image.shape} and {amap.shape}."
        )
    finite = np.isfinite(amap)
    if vmin is None or vmax is None:
        low, high = np.percentile(amap[finite], [1, 99.5]) if finite.any() else (0.0, 1.0)
        vmin = low if vmin is None else vmin
        vmax = high if vmax is None else vmax
    scaled = np.clip((np.nan_to_num(amap) - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    colours = matplotlib.colormaps[cmap](scaled)[..., :3]
    gray = np.clip(np.nan_to_num(image), 0, 1)[..., None].repeat(3, axis=2)
    weight = np.where(finite, alpha, 0.0)[..., None]
    rgb = (1 - weight) * gray + weight * colours
    return np.round(255 * rgb).astype(np.uint8)
