"""
alpha-GAN: two discriminators, one for images and one for codes
===============================================================

:class:`~skanomaly.detectors.AlphaGANDetector` is the hand X-ray paper's alpha-GAN, its
best model on hand radiographs (ROC AUC 0.607): an encoder ``E`` (a Gaussian code, as a
VAE's), a generator ``G``, an image discriminator ``D`` (real images against
reconstructions and samples) and a code discriminator ``C`` (prior draws against the
encoder's codes). The paper's score is the mean of ``1 - D(x)`` and ``1 - C(E(x))``
(``"paper"``); ``"discriminator"``, ``"code"``, ``"mse"`` and ``("topk", k)`` are the
other rows of its Table 1.

**What to expect.** 30 epochs of a network a sixty-fourth as wide as the paper's, on
16 px phantoms, with the discriminators at 2e-4 and the reconstruction at weight 1
(the paper's 5e-6 and the code's 0.01 learn nothing in so few epochs): the scores
barely separate nodules from normal lungs. The example shows the interface, every
score, the reconstructions and samples.
"""

import matplotlib.pyplot as plt
import numpy as np
import torch

from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import AlphaGANDetector
from skanomaly.metrics import anomaly_roc_auc

train = make_chest_phantoms(300, image_size=16, anomaly_fraction=0.0, random_state=3)
test = make_chest_phantoms(200, image_size=16, anomaly_fraction=0.5, random_state=4)


def lungs_only(data):
    """NaN outside the lungs: the networks neither learn nor score those pixels."""
    return np.where(data.masks, data.images, np.nan).astype(np.float32)


detector = AlphaGANDetector(channels=(16, 32), latent_dim=16, minibatch_kernel_dims=16, max_epochs=30, batch_size=32,
                            discriminator_lr=2e-4, reconstruction_weight=1.0, random_state=0).fit(lungs_only(train))
X_test = lungs_only(test)
print(f"ROC AUC on held-back phantoms: {anomaly_roc_auc(test.labels, detector.score_samples(X_test)):.3f}")

# %%
# Every score of Table 1 on the same fitted networks.
for score in ["discriminator", "code", "mse", ("topk", 20)]:
    detector.set_params(anomaly_score=score)
    print(f"{score}: ROC AUC {anomaly_roc_auc(test.labels, detector.score_samples(X_test)):.3f}")
detector.set_params(anomaly_score="paper")

# %%
# Images (nodules circled), their reconstructions G(mean of E(x)), and samples G(z)
# of the prior.
net = detector.net_
order = np.concatenate([np.flatnonzero(test.labels == 1)[:3], np.flatnonzero(test.labels == 0)[:3]])
with torch.no_grad():
    x = net.scale_x(torch.as_tensor(np.nan_to_num(X_test[order]))[:, None])
    reconstructions = net.unscale_x(net.generator_.eval()(net.encode(x)))[:, 0].numpy()
    samples = net.unscale_x(net.generator_(torch.randn(len(order), 16, generator=torch.Generator().manual_seed(0))))
fig, axes = plt.subplots(3, len(order), figsize=(2 * len(order), 6.2))
for column, i in enumerate(order):
    axes[0, column].imshow(test.images[i], cmap="gray", vmin=0, vmax=1)
    axes[0, column].set_title("nodule" if test.labels[i] else "normal", fontsize=8)
    axes[1, column].imshow(reconstructions[column], cmap="gray", vmin=0, vmax=1)
    axes[2, column].imshow(samples[column, 0].numpy(), cmap="gray", vmin=0, vmax=1)
    if test.labels[i]:
        for ax in axes[:2, column]:
            ax.add_patch(plt.Circle(test.centers[i], test.radii[i] + 1.5, fill=False, color="cyan"))
for ax, label in zip(axes[:, 0], ["image", "G(E(x))", "sample G(z)"]):
    ax.set_ylabel(label)
for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()
