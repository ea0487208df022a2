"""
HealthyGAN: translation to healthy, trained with an unlabelled mix
==================================================================

:class:`~skanomaly.detectors.HealthyGAN` learns to turn any image into a
healthy-looking one, changing only the pixels its mask ``m`` lets it change
(``x^ = m G(x) + (1 - m) x``), and scores an image by how much it changed. It trains
on two sets: known-normal images (``y = 0``) and an unlabelled mix of normal and
abnormal ones (``y = -1``, scikit-learn's semi-supervised convention).

**What to expect at this budget.** The paper trains 400,000 iterations of batch 16;
this example trains a few hundred iterations of a network one eighth as wide. At such
budgets the masks do not separate: they cover most of every image, normal or not,
the translation re-synthesises much of the lung field, and the score is at chance or
below it (the user guide and ``benchmarks/README.md`` give the measurements, up to
20,000 iterations). The example shows the interface, the two sets, the translations
and the masks, and that the generator is learning (its identity term falls); it is no
evidence of what the method does when trained as the paper did.
"""

import matplotlib.pyplot as plt
import numpy as np

from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import HealthyGAN
from skanomaly.metrics import anomaly_roc_auc

normal = make_chest_phantoms(200, image_size=16, anomaly_fraction=0.0, random_state=0)
mixed = make_chest_phantoms(200, image_size=16, anomaly_fraction=0.5, random_state=1)
test = make_chest_phantoms(100, image_size=16, anomaly_fraction=0.5, random_state=7)

# %%
# One ``X`` holds both sets; ``y`` says which image is which.
X = np.concatenate([normal.images, mixed.images])
y = np.r_[np.zeros(len(normal.images)), -np.ones(len(mixed.images))]
detector = HealthyGAN(
    generator_width=8, n_residual_blocks=2, critic_width=8, max_iter=200, random_state=0
).fit(X, y)
print(f"trained on {detector.n_normal_} known-normal and {detector.n_unlabelled_} unlabelled images")

# %%
# The identity term (reproduce a known-normal image before the mask) falls over the
# iterations: the generator is learning. The score and the masks, below, show that it
# has not learned to tell a nodule from normal anatomy at this budget.
history = detector.histories_["adversarial"]
identity = history[:, "train_identity"]
print(f"identity term, first and last epoch: {identity[0]:.4f}, {identity[-1]:.4f}")
print(f"identity term, last / first epoch: {identity[-1] / identity[0]:.3f}")

scores = detector.score_samples(test.images)
print(f"ROC AUC on held-back phantoms: {anomaly_roc_auc(test.labels, scores):.3f}")
masks = detector.attention_map(test.images)
print(f"mean mask on normal / abnormal test images: {np.nanmean(masks[test.labels == 0]):.2f} / "
      f"{np.nanmean(masks[test.labels == 1]):.2f}")

# %%
# Images, their masks and their difference maps ``|x - x^|``: three phantoms with a
# nodule (circled) and three without.
order = np.concatenate([np.flatnonzero(test.labels == 1)[:3], np.flatnonzero(test.labels == 0)[:3]])
maps = detector.anomaly_map(test.images[order])
fig, axes = plt.subplots(3, len(order), figsize=(2 * len(order), 6.2))
for column, i in enumerate(order):
    axes[0, column].imshow(test.images[i], cmap="gray", vmin=0, vmax=1)
    axes[0, column].set_title("nodule" if test.labels[i] else "normal", fontsize=8)
    axes[1, column].imshow(masks[i], cmap="viridis", vmin=0, vmax=1)
    axes[2, column].imshow(maps[column], cmap="magma", vmin=0, vmax=np.nanmax(maps))
    if test.labels[i]:
        for ax in axes[:, column]:
            ax.add_patch(plt.Circle(test.centers[i], test.radii[i] + 1.5, fill=False, color="cyan"))
for ax, label in zip(axes[:, 0], ["image", "mask m", "|x - x^|"]):
    ax.set_ylabel(label)
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()
