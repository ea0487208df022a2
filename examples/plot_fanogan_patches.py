"""
P-AnoGAN on patches: a GAN trained once, encoders and losses compared on validation
===================================================================================

The mission's headline pipeline, ``CLAHE`` then ``PatchExtractor`` then
:class:`~skanomaly.detectors.FAnoGANDetector`, at settings a CPU trains in about a
minute (the defaults, P-AnoGAN's, are 536,000 GAN iterations of a 512-wide
progressive GAN and a ResNet-50 encoder: a GPU job).

* ``memory=`` caches the trained GAN, so a grid over the encoder's ``loss`` trains the
  GAN once and each candidate only trains its encoder.
* :class:`~skanomaly.model_selection.NormalOnly` keeps the abnormal images out of
  training; the grid is scored on a validation set of normal and abnormal phantoms.
* The test phantoms are looked at once, for the printed ROC AUC and the maps.

On 64 px phantoms with 16 px patches and a GAN trained for 0.2 % of the paper's
iterations, the detector separates nodules from normal anatomy only modestly (ROC AUC
about 0.67, against about 0.84 for the small CAE of the patch-pipeline example); the
printed figure is what it is. About 70 seconds on two cores.
"""

import tempfile

import matplotlib.pyplot as plt
import numpy as np
from imblearn.pipeline import Pipeline
from sklearn.model_selection import GridSearchCV, PredefinedSplit

from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import FAnoGANDetector
from skanomaly.metrics import anomaly_roc_auc
from skanomaly.model_selection import NormalOnly, get_scorer
from skanomaly.plotting import plot_anomaly_overlays
from skanomaly.preprocessing import CLAHE, PatchExtractor

train = make_chest_phantoms(120, image_size=64, anomaly_fraction=0.0, random_state=0)
valid = make_chest_phantoms(40, image_size=64, anomaly_fraction=0.5, random_state=2)
test = make_chest_phantoms(60, image_size=64, anomaly_fraction=0.5, random_state=1)

# %%
# The pipeline at CPU size: the paper's CLAHE tiles and 64 px patches at stride 16 are
# for 1024 px films. A three-scale progressive GAN (4, 8, 16 px) grows through every
# scale of its schedule, scaled down to GAN_ITERATIONS; the encoder mirrors the critic.
GAN_ITERATIONS = 1000
cache = tempfile.mkdtemp(prefix="skanomaly-gan-")
pipe = Pipeline(
    [
        ("normal_only", NormalOnly()),
        ("clahe", CLAHE(kernel_size=0.25)),
        ("patch", PatchExtractor(16, stride=8)),
        ("det", FAnoGANDetector(encoder="critic", gan_channels=(32, 16, 8), latent_dim=16,
                                gan_iterations=GAN_ITERATIONS, max_epochs=4, batch_size=64,
                                memory=cache, random_state=0)),
    ]
)

# %%
# One split: training images (normal only reach the detector) and the validation set.
X = np.concatenate([train.images, valid.images])
y = np.concatenate([train.labels, valid.labels])
split = PredefinedSplit(np.r_[np.full(len(train.labels), -1), np.zeros(len(valid.labels), dtype=int)])
search = GridSearchCV(
    pipe,
    {"det__loss": ["izi", "izif"]},
    scoring=get_scorer("roc_auc_anomaly"),
    cv=split,
    refit=False,
).fit(X, y)
for params, auc in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"]):
    print(f"  loss={params['det__loss']}: validation ROC AUC {auc:.3f}")
best = search.best_params_
print("chosen on validation:", best)

# %%
# Refit with the chosen loss on the normal images (the cached GAN is reused), then
# look at the test phantoms once.
pipe.set_params(**best).fit(train.images, train.labels)
scores = pipe.score_samples(test.images)
print(f"ROC AUC on held-back phantoms: {anomaly_roc_auc(test.labels, scores):.3f}")

# %%
# Patch maps |x - G(E(x))| stitched back into image maps.
patch_maps = pipe[-1].anomaly_map(pipe[:-1].transform(test.images))
maps = pipe.named_steps["patch"].inverse_transform(patch_maps)
order = np.concatenate([np.flatnonzero(test.labels == 1)[:4], np.flatnonzero(test.labels == 0)[:4]])
plot_anomaly_overlays(
    test.images[order], maps[order], labels=test.labels[order], centers=test.centers[order], scores=scores[order]
)
plt.show()
