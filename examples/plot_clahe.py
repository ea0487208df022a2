"""
CLAHE and histogram equalisation
================================

P-AnoGAN equalises every radiograph with CLAHE (contrast-limited adaptive histogram
equalisation: tiles of 128 px at 1024 px, clip limit 0.01) before cutting patches;
the hand X-ray paper equalises the whole histogram. Both are transformers:
:class:`~skanomaly.preprocessing.CLAHE` takes scikit-image's parameters
(``kernel_size`` in pixels or as a fraction of the image) and runs OpenCV's
implementation; :class:`~skanomaly.preprocessing.HistogramEqualization` equalises
over the region of interest only.

On phantoms with a nodule, the nodule's intensity step over the lung around it is
measured before and after: CLAHE stretches the local contrast that a detector has to
see. It stretches the noise as well, so the step measured in units of the lung's own
variation changes much less.
"""

import matplotlib.pyplot as plt
import numpy as np

from skanomaly.datasets import make_chest_phantoms
from skanomaly.preprocessing import CLAHE, HistogramEqualization

data = make_chest_phantoms(40, image_size=128, anomaly_fraction=1.0, random_state=0)

# %%
# The paper's settings at 1024 px, scaled: a tile of 1/8 of the image.
clahe = CLAHE(kernel_size=0.125, clip_limit=0.01)
equalised = clahe.fit_transform(data.images)
histogram_equalised = HistogramEqualization().fit_transform(data.images)

rows, cols = np.mgrid[: data.images.shape[1], : data.images.shape[2]]


def nodule_step(images):
    """Median over images of (mean inside the nodule - mean of the lung ring around
    it), in intensity units and in units of the ring's standard deviation."""
    steps, relative = [], []
    for image, (cx, cy), radius, lungs in zip(images, data.centers, data.radii, data.masks):
        distance = np.hypot(cols - cx, rows - cy)
        inside = distance <= 0.7 * radius
        ring = (distance > 1.5 * radius) & (distance <= 3 * radius) & lungs
        step = image[inside].mean() - image[ring].mean()
        steps.append(step)
        relative.append(step / image[ring].std())
    return np.median(steps), np.median(relative)


results = {name: nodule_step(images) for name, images in
           [("raw", data.images), ("CLAHE", equalised), ("histogram eq.", histogram_equalised)]}
for name, (step, relative) in results.items():
    print(f"  {name:>14}: nodule step {step:.3f} (intensity), {relative:.2f} (lung standard deviations)")
print(f"nodule contrast gain (CLAHE / raw): {results['CLAHE'][0] / results['raw'][0]:.2f}")

# %%
# Two phantoms (nodule circled), raw and equalised, and the intensity histograms of
# the lungs.
fig, axes = plt.subplots(2, 4, figsize=(11, 5.6))
for row, i in enumerate([0, 1]):
    for column, (name, images) in enumerate(
        [("raw", data.images), ("CLAHE", equalised), ("histogram eq.", histogram_equalised)]
    ):
        ax = axes[row, column]
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=1)
        ax.add_patch(plt.Circle(data.centers[i], data.radii[i] * 2, fill=False, color="tab:red"))
        ax.set_title(name, fontsize=9)
        ax.set_axis_off()
    ax = axes[row, 3]
    for name, images in [("raw", data.images), ("CLAHE", equalised), ("histogram eq.", histogram_equalised)]:
        ax.hist(images[i][data.masks[i]], bins=40, range=(0, 1), histtype="step", label=name)
    ax.set(xlabel="intensity in the lungs", yticks=[])
    ax.legend(fontsize=7)
fig.tight_layout()
plt.show()
