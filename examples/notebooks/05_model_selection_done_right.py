# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. Model selection done right
#
# A detector has settings (architecture, score, learning rate...) and a cut-off.
# Choosing them is where most published figures go wrong, in three ways:
#
# 1. **Training on abnormal images.** scikit-learn's `GridSearchCV` fits every
#    training fold, and the final refit, on *all* the images it is given. A one-class
#    detector must see normal images only.
# 2. **One patient on both sides of a split.** A patient's films share anatomy; with
#    one film in training and the other in validation, validation checks recall, not
#    generalisation.
# 3. **Choosing on the test set.** A cut-off (or a setting) chosen on the test images
#    and then reported on them gives an optimistic figure.
#
# skanomaly's `model_selection` module handles the first two, and this notebook
# **measures** the third.

# %% [markdown]
# ## Settings
#
# `QUICK` (set by the test suite through `SKANOMALY_NOTEBOOK_QUICK=1`) shrinks the
# sizes. The last part repeats the threshold experiment on real pediatric films when
# `SKANOMALY_DATA_DIR` (or the variable below) names a folder holding
# `pediatric_cxr/train/{NORMAL,PNEUMONIA}`.

# %%
import os
import time
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

QUICK = os.environ.get("SKANOMALY_NOTEBOOK_QUICK") == "1"
DATA_DIR = os.environ.get("SKANOMALY_DATA_DIR", "")  # or e.g. "/data/radiographs"
SEED = 0
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets

N_DEV = 120 if QUICK else 320  # development images (search + validation), a quarter abnormal
N_POOL = 600 if QUICK else 2000  # images standing for "all future patients", half abnormal
EPOCHS = 5 if QUICK else 12
FOLDS = 2 if QUICK else 3
SIZE = 32

np.random.seed(SEED)
torch.manual_seed(SEED)
print(f"quick settings: {QUICK}; {N_DEV} development images, {FOLDS} folds, {EPOCHS} epochs")

# %% [markdown]
# ## Development data, with patients
#
# Real loaders return a patient id per film (`load_pediatric_cxr(...).patient_ids`).
# The phantoms have none, so we number them two films per patient, as real sets
# often have. Everything we choose, we choose on this development set; the test
# images come later.

# %%
from skanomaly.datasets import make_chest_phantoms


def lungs_only(data):
    return np.where(data.masks, data.images, np.nan).astype(np.float32)


dev = make_chest_phantoms(N_DEV, image_size=SIZE, anomaly_fraction=0.25, random_state=SEED)
X_dev, y_dev = lungs_only(dev), dev.labels
patients = np.arange(N_DEV) // 2
print(f"{N_DEV} films of {len(np.unique(patients))} patients, {y_dev.sum()} abnormal")

# %% [markdown]
# ## Splitting by patient
#
# `StratifiedGroupKFold` keeps every patient's films in one fold and spreads the
# abnormal films over the folds; plain `StratifiedKFold` does not know about
# patients. How many patients would each put on both sides of a split?

# %%
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold


def patients_split(folds):
    split = set()
    for train_idx, valid_idx in folds:
        split |= set(patients[train_idx]) & set(patients[valid_idx])
    return len(split)


plain = StratifiedKFold(FOLDS, shuffle=True, random_state=SEED).split(X_dev, y_dev)
grouped = StratifiedGroupKFold(FOLDS, shuffle=True, random_state=SEED).split(X_dev, y_dev, groups=patients)
print(f"patients on both sides of a split: StratifiedKFold {patients_split(plain)}, "
      f"StratifiedGroupKFold {patients_split(grouped)}")

# %% [markdown]
# We also set aside one fifth of the patients as a **validation** split for the
# cut-off, before any search: the search must not see it either.

# %%
search_idx, valid_idx = next(StratifiedGroupKFold(5, shuffle=True, random_state=SEED).split(X_dev, y_dev, patients))
print(f"search: {len(search_idx)} films; validation: {len(valid_idx)} films "
      f"({y_dev[valid_idx].sum()} abnormal); shared patients: "
      f"{len(set(patients[search_idx]) & set(patients[valid_idx]))}")

# %% [markdown]
# ## Training on normal images only: `NormalOnly` and `OneClassSplit`
#
# Two tools, one idea:
#
# * `NormalOnly` is an imbalanced-learn *sampler*. In an `imblearn` pipeline it drops
#   the abnormal images whenever the pipeline is **fitted** (every training fold and
#   the refit) and passes every image through when it **scores**, so validation folds
#   are scored on both classes.
# * `OneClassSplit(cv)` wraps a splitter and removes the abnormal images from every
#   training part, for plain scikit-learn pipelines (then `refit=False` and a refit
#   by hand, since no splitter controls the refit).

# %%
from skanomaly.model_selection import NormalOnly, OneClassSplit

X_kept, y_kept = NormalOnly().fit_resample(X_dev[search_idx], y_dev[search_idx])
print(f"NormalOnly when fitting: {len(search_idx)} films in, {len(y_kept)} out, abnormal left: {y_kept.sum()}")
for k, (train_part, valid_part) in enumerate(OneClassSplit(StratifiedGroupKFold(FOLDS)).split(
        X_dev[search_idx], y_dev[search_idx], patients[search_idx])):
    print(f"OneClassSplit fold {k}: trains on {len(train_part)} films "
          f"({y_dev[search_idx][train_part].sum()} abnormal), validates on {len(valid_part)} "
          f"({y_dev[search_idx][valid_part].sum()} abnormal)")

# %% [markdown]
# ## A grid search over the score and the encoder
#
# Two choices: the **encoder**'s depth, which sets the bottleneck (notebook 2 showed
# why it matters), and the **score** that turns reconstruction errors into one
# number: the mean squared error over the lungs or the mean of the 5 worst pixels.
# The scorer `get_scorer("roc_auc_anomaly")` ranks `score_samples` with abnormal as
# the positive class (scikit-learn's own `"roc_auc"` would give one minus it).
#
# The same pattern tunes f-AnoGAN's `loss` and `encoder`; with
# `FAnoGANDetector(memory="gan-cache")` its GAN is then trained once per fold, not
# once per candidate (see the user guide).

# %%
from imblearn.pipeline import make_pipeline
from sklearn.model_selection import GridSearchCV
from skorch.callbacks import LRScheduler
from torch.optim.lr_scheduler import CosineAnnealingLR

from skanomaly.detectors import CAEDetector
from skanomaly.model_selection import get_scorer

pipe = make_pipeline(
    NormalOnly(),
    CAEDetector(augment=None, lr=3e-3, batch_size=8, max_epochs=EPOCHS, random_state=SEED,
                callbacks=[LRScheduler(CosineAnnealingLR, T_max=EPOCHS)]),
)
grid = {
    "caedetector__channels": [(16, 32, 64), (16, 32, 64, 8)],
    "caedetector__anomaly_score": ["mse", ("topk", 5)],
}
search = GridSearchCV(pipe, grid, scoring=get_scorer("roc_auc_anomaly"), cv=StratifiedGroupKFold(FOLDS))
start = time.perf_counter()
search.fit(X_dev[search_idx], y_dev[search_idx], groups=patients[search_idx])
print(f"{len(search.cv_results_['params'])} candidates x {FOLDS} folds + refit in {time.perf_counter() - start:.0f} s")
for params, mean, std in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"],
                             search.cv_results_["std_test_score"]):
    print(f"  encoder {params['caedetector__channels']!s:>15}, score {params['caedetector__anomaly_score']!s:>10}: "
          f"ROC AUC {mean:.3f} +- {std:.3f}")
print("best:", search.best_params_, f"cross-validated ROC AUC {search.best_score_:.3f}")
best = search.best_estimator_  # refitted on the normal films of the search split (NormalOnly)

# %% [markdown]
# ## Thresholds, and what choosing on the test set costs
#
# Now the cut-off for `predict`. We measure sensitivity + specificity - 1 (Youden's
# J: 0 for a coin, 1 for a perfect test) with two protocols:
#
# * **honest**: the cut maximises J on the *validation* split; the test set only
#   reports J at that cut;
# * **leaky**: the cut maximises J on the *test* set itself, and J is reported on the
#   same test set.
#
# A single test set gives one figure of each, and one figure proves nothing. So we
# score a large pool of new images once (they stand for all future patients) and
# draw many small test sets of 40 normal and 40 abnormal images from it, the size of
# many published test sets. For each draw we compare the figure a protocol
# *reports* with what its cut-off *delivers* on the rest of the pool, images that
# played no part in choosing it.

# %%
from skanomaly.metrics import anomaly_roc_auc, youden_cutoff

pool = make_chest_phantoms(N_POOL, image_size=SIZE, anomaly_fraction=0.5, random_state=SEED + 1)
pool_scores, y_pool = best.score_samples(lungs_only(pool)), pool.labels
print(f"best pipeline on {N_POOL} new images: ROC AUC {anomaly_roc_auc(y_pool, pool_scores):.3f} "
      f"(cross-validated estimate {search.best_score_:.3f})")

valid_cut = youden_cutoff(y_dev[valid_idx], best.score_samples(X_dev[valid_idx]))["threshold"]


def youden_j(cut, scores, y):
    flagged = scores <= cut  # youden_cutoff's convention: flag at or below the threshold
    return flagged[y == 1].mean() - flagged[y == 0].mean()


rng = np.random.default_rng(SEED)
n_draws, per_class = (100 if QUICK else 300), 40
normal_pool, abnormal_pool = np.flatnonzero(y_pool == 0), np.flatnonzero(y_pool == 1)
reported = {"honest": [], "leaky": []}
delivered = {"honest": [], "leaky": []}
for _ in range(n_draws):
    draw = np.r_[rng.choice(normal_pool, per_class, replace=False), rng.choice(abnormal_pool, per_class, replace=False)]
    rest = np.setdiff1d(np.arange(N_POOL), draw)
    cuts = {"honest": valid_cut, "leaky": youden_cutoff(y_pool[draw], pool_scores[draw])["threshold"]}
    for protocol, cut in cuts.items():
        reported[protocol].append(youden_j(cut, pool_scores[draw], y_pool[draw]))
        delivered[protocol].append(youden_j(cut, pool_scores[rest], y_pool[rest]))
reported = {k: np.array(v) for k, v in reported.items()}
delivered = {k: np.array(v) for k, v in delivered.items()}
optimism = {k: reported[k] - delivered[k] for k in reported}
optimism_se = {k: v.std(ddof=1) / np.sqrt(n_draws) for k, v in optimism.items()}
print(f"over {n_draws} test sets of {per_class} + {per_class} images:")
for protocol in ("honest", "leaky"):
    print(f"  {protocol:>6}: reported J {reported[protocol].mean():.3f}, delivered J "
          f"{delivered[protocol].mean():.3f}, optimism {optimism[protocol].mean():+.3f} "
          f"+- {optimism_se[protocol]:.3f} (standard error)")
print(f"the leaky figure beats the honest one on {np.mean(reported['leaky'] >= reported['honest']):.0%} of the test sets")

fig, ax = plt.subplots(figsize=(6, 3.6))
bins = np.linspace(-0.4, 0.5, 37)
ax.hist(optimism["honest"], bins=bins, alpha=0.6, label="honest: cut from validation")
ax.hist(optimism["leaky"], bins=bins, alpha=0.6, label="leaky: cut from the test set")
ax.axvline(0, color="k", lw=0.8)
ax.set(xlabel="reported J minus delivered J (optimism)", ylabel="test sets", title="What a test-set threshold costs")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Read the printed lines:
#
# * The **leaky** protocol reports a J that its cut-off does not deliver on new
#   images: its optimism is positive, many standard errors above zero. The cut was
#   fitted to the noise of the very images that then grade it.
# * The **honest** protocol's optimism is near zero, within a few standard errors:
#   on average it reports what it delivers. Any single honest figure still scatters
#   (the histogram's width: 80 images is a small test set), but without a bias.
# * On a given test set the leaky figure is never below the honest one, since it is
#   the best J any cut achieves on that set: reporting it is reporting the maximum of
#   many tries.
# * The fault is in the *reported* figure, not necessarily in the cut: compare the
#   two "delivered" figures. A cut chosen on more images can deliver more (here the
#   validation split holds only a fifth of the development patients); the honest way
#   to get that is a larger validation split, not the test set.
#
# The same holds for every choice made on the test set: the detector, the score,
# the sign of the score, the patch aggregation. The grid search above chose on
# validation folds only, and the test images were scored once, at the end.

# %% [markdown]
# ## Real films (optional): the same experiment on pediatric pneumonia
#
# Real patients, real patient ids. Patients are split three ways (training normals,
# validation, and a pool of new patients); one VAE is trained; then the test-set
# threshold experiment runs on draws from the pool, as above.

# %%
ped_dir = Path(DATA_DIR).expanduser() / "pediatric_cxr" if DATA_DIR else None
if ped_dir is None or not (ped_dir / "train").is_dir():
    print("No pediatric films: set SKANOMALY_DATA_DIR to a folder holding "
          "pediatric_cxr/train/{NORMAL,PNEUMONIA} to run this part; skipped.")
else:
    from sklearn.model_selection import GroupShuffleSplit

    from skanomaly.datasets import load_pediatric_cxr
    from skanomaly.detectors import VAEDetector

    films = load_pediatric_cxr(ped_dir, split="train", size=64)
    ids, labels = films.patient_ids, films.labels
    films_per_patient = np.unique(ids, return_counts=True)[1]
    print(f"{len(labels)} films of {len(films_per_patient)} patients; "
          f"{(films_per_patient > 1).sum()} patients have more than one film")
    normal = np.flatnonzero(labels == 0)
    train_part, _ = next(GroupShuffleSplit(1, train_size=0.5, random_state=SEED).split(normal, groups=ids[normal]))
    train_idx = normal[train_part]
    others = np.setdiff1d(np.arange(len(labels)), np.flatnonzero(np.isin(ids, ids[train_idx])))
    valid_part, pool_part = next(GroupShuffleSplit(1, test_size=0.7, random_state=SEED).split(others, groups=ids[others]))
    valid_idx_ped, pool_idx = others[valid_part], others[pool_part]
    rng = np.random.default_rng(SEED)
    train_idx = rng.choice(train_idx, min(500, len(train_idx)), replace=False)
    vae = VAEDetector(channels=(16, 32, 64, 128), latent_dim=128, anomaly_score="l1", augment=None,
                      lr=1e-3, batch_size=32, max_epochs=15, random_state=SEED)
    start = time.perf_counter()
    vae.fit(films.images[train_idx])
    print(f"VAE trained on {len(train_idx)} normal films in {time.perf_counter() - start:.0f} s")
    ped_cut = youden_cutoff(labels[valid_idx_ped], vae.score_samples(films.images[valid_idx_ped]))["threshold"]
    ped_scores, ped_y = vae.score_samples(films.images[pool_idx]), labels[pool_idx]
    print(f"pool of {len(pool_idx)} films of new patients: ROC AUC {anomaly_roc_auc(ped_y, ped_scores):.3f}")
    ped_optimism = {"honest": [], "leaky": []}
    ped_normal, ped_abnormal = np.flatnonzero(ped_y == 0), np.flatnonzero(ped_y == 1)
    for _ in range(n_draws):
        draw = np.r_[rng.choice(ped_normal, per_class, replace=False), rng.choice(ped_abnormal, per_class, replace=False)]
        rest = np.setdiff1d(np.arange(len(ped_y)), draw)
        for protocol, cut in [("honest", ped_cut), ("leaky", youden_cutoff(ped_y[draw], ped_scores[draw])["threshold"])]:
            ped_optimism[protocol].append(youden_j(cut, ped_scores[draw], ped_y[draw])
                                          - youden_j(cut, ped_scores[rest], ped_y[rest]))
    for protocol, values in ped_optimism.items():
        print(f"  {protocol:>6}: optimism {np.mean(values):+.3f} +- {np.std(values, ddof=1) / np.sqrt(n_draws):.3f}")

# %% [markdown]
# Compare the two optimism figures with those of the phantoms. (The draws share
# patients with each other, as draws from one pool do; the cut-off never shares
# patients with the films that grade it.)
#
# **Summary of the five notebooks:** train on normal images only; split by patient;
# compare with a trivial baseline; check what a network can copy; choose settings and
# cut-offs on validation data; score the test set once.
