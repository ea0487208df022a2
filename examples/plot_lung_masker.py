"""
Lung fields as the region of interest: LungMasker and MaskApplier
=================================================================

:class:`~skanomaly.preprocessing.LungMasker` segments the lung fields with a small
U-Net shipped inside the package (trained on JSRT, loaded without any network
access) and returns the image with NaN outside the lungs, or the mask itself with
``output="mask"``. Every detector reads NaN as "outside the region of interest": it
is left out of the losses, the scores and the anomaly maps.

Where a data set comes with its own masks,
:class:`~skanomaly.preprocessing.MaskApplier` takes images and masks stacked as
``(n, 2, H, W)``, so that both travel through cross-validation together.

Here the masker runs on phantoms, whose generator also draws the true lung fields:
the Dice overlap measures how well a network trained on real radiographs finds them.
"""

import matplotlib.pyplot as plt
import numpy as np

from skanomaly.datasets import make_chest_phantoms
from skanomaly.preprocessing import LungMasker, MaskApplier

data = make_chest_phantoms(20, image_size=128, anomaly_fraction=0.5, random_state=0)

masks = LungMasker(output="mask").fit_transform(data.images).astype(bool)
dice = 2 * (masks & data.masks).sum(axis=(1, 2)) / (masks.sum(axis=(1, 2)) + data.masks.sum(axis=(1, 2)))
print(f"Dice per image: min {dice.min():.3f}, median {np.median(dice):.3f}")
print(f"mean Dice against the phantoms' lung masks: {dice.mean():.3f}")

# %%
# ``output="masked"`` (the default) gives the images with NaN outside the lungs, ready
# for a detector; MaskApplier does the same with masks you already have.
masked = LungMasker().fit_transform(data.images)
own = MaskApplier().fit_transform(np.stack([data.images, data.masks.astype(np.float32)], axis=1))
print(f"share of pixels in the region of interest: {np.isfinite(masked).mean():.2f} (LungMasker), "
      f"{np.isfinite(own).mean():.2f} (the phantoms' masks)")

# %%
# The network's mask (red outline) against the phantom's (cyan), and the masked image.
fig, axes = plt.subplots(2, 4, figsize=(10, 5.4))
for column, i in enumerate(range(4)):
    axes[0, column].imshow(data.images[i], cmap="gray", vmin=0, vmax=1)
    axes[0, column].contour(data.masks[i], levels=[0.5], colors="cyan", linewidths=1)
    axes[0, column].contour(masks[i], levels=[0.5], colors="red", linewidths=1)
    axes[0, column].set_title(f"Dice {dice[i]:.3f}", fontsize=9)
    axes[1, column].imshow(masked[i], cmap="gray", vmin=0, vmax=1)
    axes[1, column].set_title("NaN outside the lungs", fontsize=9)
for ax in axes.ravel():
    ax.set_axis_off()
fig.tight_layout()
plt.show()
