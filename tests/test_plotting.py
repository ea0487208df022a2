import numpy as np

from skanomaly.plotting import plot_anomaly_overlays


def test_overlays_draw_one_panel_per_image_and_circle_lesions():
    images = np.random.default_rng(0).random((5, 16, 16))
    maps = images.copy()
    maps[:, :2] = np.nan
    centers = np.array([[4, 4], [np.nan, np.nan], [8, 8], [np.nan, np.nan], [1, 1]], dtype=float)
    fig = plot_anomaly_overlays(images, maps, labels=[1, 0, 1, 0, 1], centers=centers, scores=np.arange(5.0), ncols=3)
    axes = fig.axes
    assert len(axes) == 6
    assert sum(len(ax.patches) for ax in axes) == 3
    assert axes[0].get_title().startswith("nodule") and axes[1].get_title().startswith("normal")
    assert not axes[5].images  # the spare panel stays empty
