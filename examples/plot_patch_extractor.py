"""
Patch bags: PatchExtractor, patch labels and stitching maps back
================================================================

P-AnoGAN works on 64 x 64 patches of the lung fields.
:class:`~skanomaly.preprocessing.PatchExtractor` cuts each image into a *bag* of
patches on one fixed grid, ``(N, H, W)`` to ``(N, P, p, p)``: each image keeps its
row, so a pipeline's ``n_samples`` never changes and image labels stay aligned.
Patches with too little region of interest (NaN outside the lungs) are *absent*: all
NaN, skipped by detectors.

* :meth:`~skanomaly.preprocessing.PatchExtractor.patch_labels` labels the patches that
  contain given points (nodule centres), for patch-level protocols.
* :meth:`~skanomaly.preprocessing.PatchExtractor.inverse_transform` stitches patch
  maps back into images, averaging where patches overlap.
"""

import matplotlib.pyplot as plt
import numpy as np

from skanomaly.datasets import make_chest_phantoms
from skanomaly.preprocessing import MaskApplier, PatchExtractor

data = make_chest_phantoms(8, image_size=64, anomaly_fraction=0.5, random_state=0)
lungs = MaskApplier().fit_transform(np.stack([data.images, data.masks.astype(np.float32)], axis=1))

# %%
# 16 px patches every 8 px (P-AnoGAN: 64 px every 16 px at 1024 px).
extractor = PatchExtractor(16, stride=8, min_roi_fraction=0.5)
bags = extractor.fit_transform(lungs)
present = ~np.isnan(bags).all(axis=(2, 3))
print(f"bags of shape {bags.shape}: {extractor.n_patches_} patches per image, "
      f"{present.mean():.0%} present (at least half lung)")

labels = extractor.patch_labels(data.centers)
abnormal = data.labels == 1
print(f"patches holding the nodule's centre, per abnormal image: {labels[abnormal].sum(axis=1)}")

# %%
# Stitching back: the bag's own pixels give the image again, wherever a present
# patch covers it (absent patches leave NaN).
stitched = extractor.inverse_transform(bags)
covered = np.isfinite(stitched)
error = np.abs(stitched[covered] - lungs[covered]).max()
print(f"largest stitching error over covered pixels: {error:.2e}")

# %%
# An image, its present patches (the grid of their top-left corners), the patches
# labelled by the nodule's centre, and the bag of one image laid out.
i = int(np.flatnonzero(abnormal)[0])
fig = plt.figure(figsize=(11, 4))
ax = fig.add_subplot(1, 3, 1)
ax.imshow(data.images[i], cmap="gray", vmin=0, vmax=1)
for (row, col), is_present, is_labelled in zip(extractor.patch_positions_, present[i], labels[i]):
    if is_labelled:
        ax.add_patch(plt.Rectangle((col - 0.5, row - 0.5), 16, 16, fill=False, color="red", linewidth=1.5))
    elif is_present:
        ax.plot(col, row, ".", color="cyan", markersize=3)
ax.plot(*data.centers[i], "x", color="yellow")
ax.set_title("present patches (dots), nodule patches (red)", fontsize=9)
ax.set_axis_off()
ax = fig.add_subplot(1, 3, 2)
ax.imshow(stitched[i], cmap="gray", vmin=0, vmax=1)
ax.set_title("inverse_transform of the bag", fontsize=9)
ax.set_axis_off()
side = int(np.sqrt(extractor.n_patches_))
grid = np.full((side * 17, side * 17), np.nan)
for k, patch in enumerate(bags[i]):
    r, c = divmod(k, side)
    grid[r * 17 : r * 17 + 16, c * 17 : c * 17 + 16] = patch
ax = fig.add_subplot(1, 3, 3)
ax.imshow(grid, cmap="gray", vmin=0, vmax=1)
ax.set_title(f"the bag: {extractor.n_patches_} patches (blank: absent)", fontsize=9)
ax.set_axis_off()
fig.tight_layout()
plt.show()
