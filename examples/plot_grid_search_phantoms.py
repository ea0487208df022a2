"""
Normal-only grid search and a validated threshold
=================================================

Tune a detector with scikit-learn's :class:`~sklearn.model_selection.GridSearchCV`
while training only on normal images, with patients kept on one side of every split,
then choose the operating point on validation data and report it on held-back
phantoms.

* :class:`~skanomaly.model_selection.NormalOnly` is an imbalanced-learn sampler: in an
  :class:`imblearn.pipeline.Pipeline` it drops the abnormal images when the pipeline is
  *fitted* (every training fold and the final refit) and does nothing when it
  *scores*, so each validation fold is scored on normal and abnormal images.
* :class:`~sklearn.model_selection.StratifiedGroupKFold` keeps every patient's films in
  one fold (the phantoms here are two films per synthetic patient; real loaders give
  ``patient_ids``) and spreads the abnormal images over the folds.
* The scorers of :func:`~skanomaly.model_selection.get_scorer` rank
  ``score_samples`` with abnormal as the positive class.
* :class:`~skanomaly.model_selection.ThresholdTuner` sets the cut-off at Youden's J on
  a validation split that neither the grid search nor the test saw.
"""

import matplotlib.pyplot as plt
import numpy as np
from imblearn.pipeline import make_pipeline
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
from skorch.callbacks import LRScheduler
from torch.optim.lr_scheduler import CosineAnnealingLR

from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import CAEDetector
from skanomaly.metrics import anomaly_roc_auc
from skanomaly.model_selection import NormalOnly, ThresholdTuner, get_scorer

dev = make_chest_phantoms(300, image_size=32, anomaly_fraction=0.2, random_state=0)
test = make_chest_phantoms(100, image_size=32, anomaly_fraction=0.5, random_state=1)
patients = np.arange(len(dev.labels)) // 2  # two films per synthetic patient


def lungs_only(data):
    """NaN outside the lungs (the phantoms' own masks; LungMasker would find them)."""
    return np.where(data.masks, data.images, np.nan).astype(np.float32)


X, y = lungs_only(dev), dev.labels

# %%
# A patient-disjoint validation split for the threshold, set aside before the search.
search_idx, valid_idx = next(StratifiedGroupKFold(5, shuffle=True, random_state=0).split(X, y, patients))

# %%
# The grid search: NormalOnly first, so no abnormal film reaches the detector, in the
# folds or in the refit. Two scores of the same network: the mean squared error over
# the lungs, and the mean of the 5 worst pixels, which suits small lesions. Three folds,
# a small network and a dozen epochs keep the example fast (each fold trains a
# network; the whole example takes about 15 s on two idle cores); the learning rate
# anneals to zero, a skorch callback.
pipe = make_pipeline(
    NormalOnly(),
    CAEDetector(channels=(16, 32, 64), augment=None, lr=2e-3, batch_size=16, max_epochs=12,
                random_state=0, callbacks=[LRScheduler(CosineAnnealingLR, T_max=12)]),
)
search = GridSearchCV(
    pipe,
    {"caedetector__anomaly_score": ["mse", ("topk", 5)]},
    scoring=get_scorer(["roc_auc_anomaly", "partial_roc_auc_anomaly"]),
    refit="roc_auc_anomaly",
    cv=StratifiedGroupKFold(3),
)
search.fit(X[search_idx], y[search_idx], groups=patients[search_idx])
print("best:", search.best_params_)
for params, auc, pauc in zip(
    search.cv_results_["params"],
    search.cv_results_["mean_test_roc_auc_anomaly"],
    search.cv_results_["mean_test_partial_roc_auc_anomaly"],
):
    print(f"  {params['caedetector__anomaly_score']!s:>10}: ROC AUC {auc:.3f}, partial AUC (FPR <= 0.1) {pauc:.3f}")

# %%
# The cut-off: Youden's J on the validation split, for the refitted best pipeline
# (``cv="prefit"``: nothing is refitted, the validation films only choose the cut).
tuner = ThresholdTuner(search.best_estimator_, method="youden", cv="prefit").fit(X[valid_idx], y[valid_idx])
print(f"validation: sensitivity {tuner.validation_sensitivity_:.2f}, "
      f"specificity {1 - tuner.validation_fpr_:.2f} at offset {tuner.offset_:.4f}")

# %%
# Held-back phantoms, scored once.
X_test = lungs_only(test)
scores = tuner.score_samples(X_test)
flagged = tuner.predict(X_test) == -1
print(f"ROC AUC on held-back phantoms: {anomaly_roc_auc(test.labels, scores):.3f}")
print(f"test at the validated cut-off: sensitivity {flagged[test.labels == 1].mean():.2f}, "
      f"specificity {1 - flagged[test.labels == 0].mean():.2f}")

fig, (ax_grid, ax_hist) = plt.subplots(1, 2, figsize=(10, 3.8))
names = [str(p["caedetector__anomaly_score"]) for p in search.cv_results_["params"]]
ax_grid.bar(names, search.cv_results_["mean_test_roc_auc_anomaly"],
            yerr=search.cv_results_["std_test_roc_auc_anomaly"], color="tab:blue", capsize=4)
ax_grid.set(ylim=(0.5, 1.0), ylabel="ROC AUC (3 patient-grouped folds)", title="Grid search")
bins = np.linspace(scores.min(), scores.max(), 25)
ax_hist.hist(scores[test.labels == 0], bins=bins, alpha=0.6, label="normal")
ax_hist.hist(scores[test.labels == 1], bins=bins, alpha=0.6, label="nodule")
ax_hist.axvline(tuner.offset_, color="k", linestyle="--", label="cut-off (validation)")
ax_hist.set(xlabel="score_samples (higher = more normal)", ylabel="test phantoms", title="Held-back test")
ax_hist.legend()
fig.tight_layout()
plt.show()
