"""
Pixel ranges: Rescale, value_range and Resize
=============================================

Detectors take images in [0, 1] and refuse float input outside that range (a network
trained on [0, 1] would score 0-4095 input as garbage). Radiographs come as 8-bit
PNG, 12-bit data in 16-bit DICOM or TIFF, or floats in any range.

* :class:`~skanomaly.preprocessing.Rescale` with ``bits_stored=12`` divides by
  ``2 ** 12 - 1``, the same for every image; without it each image is min-max scaled
  over its region of interest (its darkest pixel becomes 0, its brightest 1), which
  also removes exposure differences between films.
* A detector's ``value_range=(0, 4095)`` does the first inside the detector.
* :class:`~skanomaly.preprocessing.Resize` brings images to one size, area-averaging
  when it shrinks; NaN (outside the region of interest) does not bleed into the
  region.
"""

import matplotlib.pyplot as plt
import numpy as np

from skanomaly.datasets import make_chest_phantoms
from skanomaly.preprocessing import Rescale, Resize

data = make_chest_phantoms(6, image_size=128, anomaly_fraction=0.0, random_state=0)

# %%
# 12-bit films in 16-bit arrays, each exposed differently (a gain and an offset).
rng = np.random.default_rng(0)
gain = rng.uniform(0.5, 1.0, size=(6, 1, 1))
offset = rng.uniform(0.0, 0.3, size=(6, 1, 1))
films = np.round((offset + gain * data.images) / 1.3 * 4095).astype(np.uint16)
print(f"films: {films.dtype}, values {films.min()} to {films.max()}")

# %%
# ``bits_stored=12``: one division for every film; exposure differences stay.
fixed = Rescale(bits_stored=12).fit_transform(films)
expected = films / 4095.0
print(f"largest difference to films / 4095 after Rescale(bits_stored=12): "
      f"{np.abs(fixed - expected).max():.1e}")

# %%
# Per-image min-max: every film spans [0, 1], whatever its exposure.
per_image = Rescale().fit_transform(films)
print(f"per-image min-max: every film spans [{per_image.min(axis=(1, 2)).max():.0f}, "
      f"{per_image.max(axis=(1, 2)).min():.0f}]")
spread = per_image.mean(axis=(1, 2)).std() / fixed.mean(axis=(1, 2)).std()
print(f"spread of the films' mean brightness, per-image / fixed scaling: {spread:.2f}")

# %%
# Resize with NaN outside the lungs: the lungs shrink, the NaN border does not spread.
lungs = np.where(data.masks, data.images, np.nan).astype(np.float32)
small = Resize(32).fit_transform(lungs)
print(f"share of lung pixels: {np.isfinite(lungs).mean():.3f} at 128 px, {np.isfinite(small).mean():.3f} at 32 px")

fig, axes = plt.subplots(2, 4, figsize=(10, 5.2))
for column in range(4):
    axes[0, column].imshow(fixed[column], cmap="gray", vmin=0, vmax=1)
    axes[0, column].set_title(f"bits_stored=12\nmean {fixed[column].mean():.2f}", fontsize=8)
    axes[1, column].imshow(per_image[column], cmap="gray", vmin=0, vmax=1)
    axes[1, column].set_title(f"per-image min-max\nmean {per_image[column].mean():.2f}", fontsize=8)
for ax in axes.ravel():
    ax.set_axis_off()
fig.tight_layout()
plt.show()
