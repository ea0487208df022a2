"""
One-class adversarial learning: the score's three terms
=======================================================

:class:`~skanomaly.detectors.OneClassAdversarialDetector` (Tang et al., ISBI 2019)
trains a U-Net autoencoder, a discriminator of real against reconstructed images and a
second encoder together on normal images. Its score (the paper's eq. 6) adds three
terms: the reconstruction error, how fake the discriminator finds the reconstruction,
and how far the reconstruction's code is from the image's. ``anomaly_score`` picks the
whole score or one term, on the fitted networks.

32 px phantoms, three levels instead of the paper's four at 64 px, 10 epochs.
"""

import matplotlib.pyplot as plt
import numpy as np

from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import OneClassAdversarialDetector
from skanomaly.metrics import anomaly_roc_auc
from skanomaly.plotting import plot_anomaly_overlays

train = make_chest_phantoms(300, image_size=32, anomaly_fraction=0.0, random_state=3)
test = make_chest_phantoms(100, image_size=32, anomaly_fraction=0.5, random_state=4)


def lungs_only(data):
    """NaN outside the lungs: the networks neither learn nor score those pixels."""
    return np.where(data.masks, data.images, np.nan).astype(np.float32)


detector = OneClassAdversarialDetector(
    channels=(16, 32, 64), latent_dim=32, max_epochs=10, batch_size=32, random_state=0
)
detector.fit(lungs_only(train))
X_test = lungs_only(test)
scores = detector.score_samples(X_test)
print(f"ROC AUC on held-back phantoms: {anomaly_roc_auc(test.labels, scores):.3f}")

# %%
# Each term of eq. 6 alone.
aucs = {"paper": anomaly_roc_auc(test.labels, scores)}
for term in ["reconstruction", "discriminator", "latent"]:
    detector.set_params(anomaly_score=term)
    aucs[term] = anomaly_roc_auc(test.labels, detector.score_samples(X_test))
    print(f"  anomaly_score={term!r}: ROC AUC {aucs[term]:.3f}")
detector.set_params(anomaly_score="paper")

history = detector.histories_["adversarial"]
print(f"reconstruction term, first and last epoch: {history[0, 'train_reconstruction']:.4f}, "
      f"{history[-1, 'train_reconstruction']:.4f}")

fig, ax = plt.subplots(figsize=(5.5, 3))
ax.bar(list(aucs), list(aucs.values()), color="tab:purple")
ax.axhline(0.5, color="0.5", linewidth=0.8)
ax.set(ylim=(0, 1), ylabel="ROC AUC, held-back phantoms", title="The score and its terms")
fig.tight_layout()

# %%
# Maps ``|x - x'|`` of four phantoms with a nodule (circled) and four without.
order = np.concatenate([np.flatnonzero(test.labels == 1)[:4], np.flatnonzero(test.labels == 0)[:4]])
plot_anomaly_overlays(
    test.images[order],
    detector.anomaly_map(X_test[order]),
    labels=test.labels[order],
    centers=test.centers[order],
    scores=scores[order],
)
plt.show()
