"""
Nodule detection with a convolutional autoencoder
=================================================

Train :class:`~skanomaly.detectors.CAEDetector` on normal synthetic chest radiographs
only, with the lungs as the region of interest (NaN outside), then score held-back
phantoms of which half carry a nodule. The per-pixel reconstruction error is the
anomaly map.
"""

import matplotlib.pyplot as plt
import numpy as np
from skorch.callbacks import LRScheduler
from torch.optim.lr_scheduler import CosineAnnealingLR

from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import CAEDetector
from skanomaly.metrics import anomaly_roc_auc
from skanomaly.plotting import plot_anomaly_overlays

train = make_chest_phantoms(300, image_size=32, anomaly_fraction=0.0, random_state=0)
test = make_chest_phantoms(100, image_size=32, anomaly_fraction=0.5, random_state=1)


def lungs_only(data):
    """NaN outside the lungs: the detector neither learns nor scores those pixels."""
    return np.where(data.masks, data.images, np.nan).astype(np.float32)


# %%
# A small network and a few epochs: the paper's defaults (512 px, 1000 epochs) are
# for a GPU. The top-k score averages the largest pixel errors, which suits small
# lesions. A skorch callback anneals the learning rate to zero: with so few epochs,
# a constant rate leaves the result at the mercy of the last few steps.
detector = CAEDetector(
    channels=(16, 32, 64),
    anomaly_score=("topk", 5),
    augment=None,
    lr=2e-3,
    max_epochs=12,
    random_state=0,
    callbacks=[LRScheduler(CosineAnnealingLR, T_max=12)],
)
detector.fit(lungs_only(train))
scores = detector.score_samples(lungs_only(test))
print(f"ROC AUC on held-back phantoms: {anomaly_roc_auc(test.labels, scores):.3f}")

# %%
# Anomaly maps of four phantoms with a nodule (circled) and four without.
order = np.concatenate([np.flatnonzero(test.labels == 1)[:4], np.flatnonzero(test.labels == 0)[:4]])
plot_anomaly_overlays(
    test.images[order],
    detector.anomaly_map(lungs_only(test)[order]),
    labels=test.labels[order],
    centers=test.centers[order],
    scores=scores[order],
)
plt.show()
