"""Figures for anomaly maps (matplotlib, imported lazily)."""

import numpy as np

__all__ = ["plot_anomaly_overlays", "overlay_anomaly_map", "add_colour_bar"]


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


def add_colour_bar(rgb, vmin, vmax, *, cmap="inferno", label="anomaly"):
    """Append a vertical colour bar with its range to an overlay (for PNG files).

    The bar is drawn in pixels, without a figure, so that one overlay per file keeps
    the image's own size and the bar's labels stay legible at any size.

    Parameters
    ----------
    rgb : ndarray of shape (H, W, 3), dtype uint8
        An overlay from :func:`overlay_anomaly_map`.
    vmin, vmax : float
        The colour range the overlay was drawn with.
    cmap : str, default="inferno"
    label : str, default="anomaly"

    Returns
    -------
    rgb : ndarray of shape (H, W + bar width, 3), dtype uint8
        The bar's top is ``vmax``'s colour, its bottom ``vmin``'s.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.plotting import add_colour_bar, overlay_anomaly_map
    >>> rgb = overlay_anomaly_map(np.full((64, 64), 0.5), np.eye(64), vmin=0, vmax=1)
    >>> add_colour_bar(rgb, 0, 1).shape[:2]
    (64, 108)
    """
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    rgb = np.asarray(rgb)
    height = rgb.shape[0]
    font_size = int(np.clip(height // 20, 8, 28))
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        font = ImageFont.load_default()
    texts = [f"{vmax:.3g}", f"{vmin:.3g}", label]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_width = max(measure.textbbox((0, 0), t, font=font)[2] for t in texts)
    bar_width = max(6, font_size)
    margin = max(2, font_size // 3)
    panel = Image.new("RGB", (3 * margin + bar_width + text_width, height), (255, 255, 255))
    ramp = np.linspace(1, 0, height)[:, None].repeat(bar_width, axis=1)
    colours = np.round(255 * matplotlib.colormaps[cmap](ramp)[..., :3]).astype(np.uint8)
    panel.paste(Image.fromarray(colours), (margin, 0))
    draw = ImageDraw.Draw(panel)
    x = 2 * margin + bar_width
    draw.text((x, 0), texts[0], fill=(0, 0, 0), font=font)
    draw.text((x, height - font_size - margin), texts[1], fill=(0, 0, 0), font=font)
    if height > 4 * font_size:
        draw.text((x, height // 2 - font_size // 2), label, fill=(90, 90, 90), font=font)
    return np.concatenate([rgb, np.asarray(panel)], axis=1)
