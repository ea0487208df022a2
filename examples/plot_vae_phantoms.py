"""
Variational autoencoder: the KL score against the reconstruction error
======================================================================

:class:`~skanomaly.detectors.VAEDetector` is the hand X-ray paper's variational
autoencoder. The paper scores an image by the KL divergence of its latent posterior
from the prior (its best VAE score), by the reconstruction error, or by both; here one
small VAE, trained on normal phantoms with the lungs as the region of interest, is
scored each way on held-back phantoms (``anomaly_score`` acts on the fitted network,
so no retraining is needed).
"""

import matplotlib.pyplot as plt
import numpy as np
from skorch.callbacks import LRScheduler
from torch.optim.lr_scheduler import CosineAnnealingLR

from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import VAEDetector
from skanomaly.metrics import anomaly_roc_auc
from skanomaly.plotting import plot_anomaly_overlays

train = make_chest_phantoms(300, image_size=32, anomaly_fraction=0.0, random_state=0)
test = make_chest_phantoms(100, image_size=32, anomaly_fraction=0.5, random_state=1)


def lungs_only(data):
    """NaN outside the lungs: left out of the loss, the scores and the maps."""
    return np.where(data.masks, data.images, np.nan).astype(np.float32)


# %%
# Small settings: the paper's network is for 512 px hands (seven levels, a latent of
# 1,024, 500 epochs). Its KL weight of 1 over-regularises a 32 px model with a
# 128-value latent, so ``kld_weight`` is lowered.
detector = VAEDetector(
    channels=(16, 32),
    latent_dim=128,
    kld_weight=0.01,
    anomaly_score=("topk", 5),
    augment=None,
    lr=2e-3,
    max_epochs=12,
    random_state=0,
    callbacks=[LRScheduler(CosineAnnealingLR, T_max=12)],
)
detector.fit(lungs_only(train))

# %%
# The same network, three scores: the mean of the 5 worst pixel errors (a phantom
# nodule covers a few pixels), the mean squared error over the lungs, and the KL
# divergence (the paper's choice on hands).
X_test = lungs_only(test)
aucs = {}
for score in [("topk", 5), "mse", "kld"]:
    detector.set_params(anomaly_score=score)
    aucs[str(score)] = anomaly_roc_auc(test.labels, detector.score_samples(X_test))
    print(f"  anomaly_score={score!s:>10}: ROC AUC {aucs[str(score)]:.3f}")
detector.set_params(anomaly_score=("topk", 5))
scores = detector.score_samples(X_test)
print(f"ROC AUC on held-back phantoms: {anomaly_roc_auc(test.labels, scores):.3f}")

fig, ax = plt.subplots(figsize=(5, 3))
ax.bar(list(aucs), list(aucs.values()), color="tab:blue")
ax.axhline(0.5, color="0.5", linewidth=0.8)
ax.set(ylim=(0, 1), ylabel="ROC AUC, held-back phantoms", title="One VAE, three scores")
fig.tight_layout()

# %%
# Squared-error maps of four phantoms with a nodule (circled) and four without.
order = np.concatenate([np.flatnonzero(test.labels == 1)[:4], np.flatnonzero(test.labels == 0)[:4]])
plot_anomaly_overlays(
    test.images[order],
    detector.anomaly_map(X_test[order]),
    labels=test.labels[order],
    centers=test.centers[order],
    scores=scores[order],
)
plt.show()
