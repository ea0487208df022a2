"""
BiGAN: a discriminator of (image, code) pairs
=============================================

:class:`~skanomaly.detectors.BiGANDetector` is the hand X-ray paper's BiGAN: a
generator ``G``, an encoder ``E`` and a discriminator ``D`` that sees pairs, real
``(x, E(x))`` against generated ``(G(z), z)``. Its scores are the paper's Table 1:
``1 - D(x, E(x))`` (``"discriminator"``, the default and the paper's best), and the
reconstruction errors of ``G(E(x))`` (``"mse"``, ``("topk", k)``).

**What to expect.** The paper's BiGAN reached a ROC AUC of 0.549 on hand radiographs
after 500 epochs at 128 px; this example trains 30 epochs of a network a sixty-fourth
as wide on 16 px phantoms, with the discriminator at 2e-4 instead of the paper's 5e-6
(at which it learns nothing in so few epochs). It barely detects the nodules, and its
reconstructions are blurred anatomy: an adversarially learned encoder is a weak
inverse. The example shows the interface, the scores and the reconstructions.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch

from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import BiGANDetector
from skanomaly.metrics import anomaly_roc_auc

train = make_chest_phantoms(300, image_size=16, anomaly_fraction=0.0, random_state=3)
test = make_chest_phantoms(200, image_size=16, anomaly_fraction=0.5, random_state=4)


def lungs_only(data):
    """NaN outside the lungs: the networks neither learn nor score those pixels."""
    return np.where(data.masks, data.images, np.nan).astype(np.float32)


detector = BiGANDetector(channels=(16, 32), latent_dim=16, max_epochs=30, batch_size=32, discriminator_lr=2e-4,
                         random_state=0).fit(lungs_only(train))
X_test = lungs_only(test)
print(f"ROC AUC on held-back phantoms: {anomaly_roc_auc(test.labels, detector.score_samples(X_test)):.3f}")

# %%
# The other scores of Table 1, on the same fitted networks.
for score in ["mse", ("topk", 20)]:
    detector.set_params(anomaly_score=score)
    print(f"{score}: ROC AUC {anomaly_roc_auc(test.labels, detector.score_samples(X_test)):.3f}")
detector.set_params(anomaly_score="discriminator")

# %%
# The adversarial game over the epochs: D's loss on real and generated pairs.
history = detector.history_
fig, ax = plt.subplots(figsize=(5, 3))
for key in ("train_d_real", "train_d_fake", "train_loss"):
    ax.plot(history[:, key], label=key)
ax.set_xlabel("epoch")
ax.legend(fontsize=8)
fig.tight_layout()

# %%
# Images with a nodule (circled) and without, their reconstructions G(E(x)) and the
# squared-error maps.
net = detector.net_
order = np.concatenate([np.flatnonzero(test.labels == 1)[:3], np.flatnonzero(test.labels == 0)[:3]])
maps = detector.anomaly_map(X_test[order])
with torch.no_grad():
    x = torch.as_tensor(np.nan_to_num(X_test[order]))[:, None]
    reconstructions = net.unscale_x(net.generator_.eval()(net.encoder_.eval()(net.scale_x(x))))[:, 0].numpy()
fig, axes = plt.subplots(3, len(order), figsize=(2 * len(order), 6.2))
for column, i in enumerate(order):
    axes[0, column].imshow(test.images[i], cmap="gray", vmin=0, vmax=1)
    axes[0, column].set_title("nodule" if test.labels[i] else "normal", fontsize=8)
    axes[1, column].imshow(reconstructions[column], cmap="gray", vmin=0, vmax=1)
    axes[2, column].imshow(maps[column], cmap="magma", vmin=0, vmax=np.nanmax(maps))
    if test.labels[i]:
        for ax in axes[:, column]:
            ax.add_patch(plt.Circle(test.centers[i], test.radii[i] + 1.5, fill=False, color="cyan"))
for ax, label in zip(axes[:, 0], ["image", "G(E(x))", "squared error"]):
    ax.set_ylabel(label)
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()
