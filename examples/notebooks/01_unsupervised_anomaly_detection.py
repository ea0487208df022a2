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
# # 1. Unsupervised anomaly detection on radiographs
#
# Labelled abnormal radiographs are scarce and every disease looks different; normal
# radiographs are plentiful. An *unsupervised* (more exactly, *one-class*) detector
# therefore learns what **normal** anatomy looks like from normal images only, and
# flags what does not fit. In this notebook you will
#
# 1. train a convolutional autoencoder on normal chest images only,
# 2. score held-back images and measure the ranking with a ROC curve,
# 3. look at the per-pixel **anomaly maps**, and
# 4. see why the cut-off that turns a score into a yes/no decision has to come from
#    **validation** data: neither from the training images nor from the test images.
#
# Everything runs on synthetic chest radiographs ("phantoms") that ship with
# `skanomaly`, so no download is needed. At the end, the same steps run on real
# pediatric chest films if you have them (see the settings cell).
#
# skanomaly's detectors are scikit-learn estimators: `fit(X)` on normal images,
# `score_samples(X)` (higher = **more normal**, scikit-learn's convention),
# `predict(X)` (+1 normal, -1 flagged) and `anomaly_map(X)` (higher = more abnormal).

# %% [markdown]
# ## Settings
#
# `QUICK` shrinks every size so that the notebook runs in seconds (the test suite sets
# `SKANOMALY_NOTEBOOK_QUICK=1`); leave it off for the real lesson. The numbers quoted
# in the text below are the ones the cells print, so they change a little with the
# settings, the machine and the library versions: read the printed figures.
#
# To run the last part on real films, point `SKANOMALY_DATA_DIR` at a folder that
# holds `pediatric_cxr/train/NORMAL` and `pediatric_cxr/train/PNEUMONIA` (the layout
# `skanomaly.datasets.load_pediatric_cxr` reads), or write the path below.

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

N_TRAIN = 150 if QUICK else 400  # normal training images
N_VALID = 100 if QUICK else 200  # validation images (a quarter abnormal)
N_TEST = 150 if QUICK else 400  # test images (half abnormal)
EPOCHS = 8 if QUICK else 15
SIZE = 32  # pixels per side

np.random.seed(SEED)
torch.manual_seed(SEED)
print(f"quick settings: {QUICK}; {N_TRAIN} training images, {EPOCHS} epochs, {SIZE} px")

# %% [markdown]
# ## The data: normal training images, mixed validation and test images
#
# `make_chest_phantoms` draws chest radiographs with varying anatomy, positioning and
# exposure. An abnormal phantom has one *nodule*: a small, soft, bright blob inside a
# lung. It is dimmer than the bones and the heart, so it cannot be found by looking for
# bright pixels: a detector has to know what lungs look like.
#
# Three independent sets, as in any study: a **training** set of normal images only
# (that is all a one-class detector may see), a **validation** set with both classes
# (for choices such as the cut-off), and a **test** set, looked at once at the end.

# %%
from skanomaly.datasets import make_chest_phantoms

train = make_chest_phantoms(N_TRAIN, image_size=SIZE, anomaly_fraction=0.0, random_state=SEED)
valid = make_chest_phantoms(N_VALID, image_size=SIZE, anomaly_fraction=0.25, random_state=SEED + 1)
test = make_chest_phantoms(N_TEST, image_size=SIZE, anomaly_fraction=0.5, random_state=SEED + 2)
for name, data in [("train", train), ("valid", valid), ("test", test)]:
    print(f"{name:>5}: {len(data.labels)} images, {int(data.labels.sum())} with a nodule")

fig, axes = plt.subplots(2, 4, figsize=(9, 4.8))
shown = np.r_[np.flatnonzero(test.labels == 0)[:4], np.flatnonzero(test.labels == 1)[:4]]
for ax, i in zip(axes.ravel(), shown):
    ax.imshow(test.images[i], cmap="gray", vmin=0, vmax=1)
    ax.contour(test.masks[i], levels=[0.5], colors="lime", linewidths=0.6)
    if test.labels[i]:
        ax.add_patch(plt.Circle(test.centers[i], test.radii[i] + 1.5, fill=False, color="red"))
    ax.set_title("nodule" if test.labels[i] else "normal")
    ax.axis("off")
fig.suptitle("Test phantoms: lung masks in green, nodules circled in red")
fig.tight_layout()
plt.show()

# %% [markdown]
# The phantoms come with their lung masks. We set everything outside the lungs to
# NaN: in skanomaly NaN means *outside the region of interest*, and detectors leave
# those pixels out of training and scoring. The detector then only has to learn the
# lungs, not the shoulders and the abdomen. On real films without masks,
# `skanomaly.preprocessing.LungMasker` segments the lungs (notebook 4).

# %%
def lungs_only(data):
    return np.where(data.masks, data.images, np.nan).astype(np.float32)


X_train, X_valid, X_test = lungs_only(train), lungs_only(valid), lungs_only(test)
y_valid, y_test = valid.labels, test.labels

# %% [markdown]
# ## A baseline first
#
# Before training a network, try the simplest score: the mean brightness of the lungs
# (a nodule adds brightness). `anomaly_roc_auc` measures how well a score ranks
# abnormal images below normal ones: 1 is perfect, 0.5 is chance. It takes
# `score_samples`-style scores, higher = more normal, so we pass minus the brightness.

# %%
from skanomaly.metrics import anomaly_roc_auc

auc_baseline = anomaly_roc_auc(y_test, -np.nanmean(X_test, axis=(1, 2)))
print(f"mean lung brightness as the score: ROC AUC {auc_baseline:.3f}")

# %% [markdown]
# Not far from chance: exposure differs more between patients than one small nodule
# changes the mean. A useful detector must look at the *local* anatomy.

# %% [markdown]
# ## Train on normal images only
#
# `CAEDetector` is a convolutional autoencoder: it squeezes each image through a
# narrow bottleneck and reconstructs it. Trained on normal lungs only, it learns to
# reconstruct normal lungs; a nodule, never seen in training, is reconstructed badly,
# and the reconstruction error is the anomaly. The score `("topk", 5)` is the mean of
# the 5 largest squared pixel errors, which suits small lesions (a mean over the
# whole lung would dilute them). The settings are small CPU settings: the paper's
# defaults are for 512 px images and 1000 epochs.

# %%
from skorch.callbacks import LRScheduler
from torch.optim.lr_scheduler import CosineAnnealingLR

from skanomaly.detectors import CAEDetector

detector = CAEDetector(
    channels=(16, 32, 64),
    anomaly_score=("topk", 5),
    augment=None,
    lr=3e-3,
    batch_size=8,
    max_epochs=EPOCHS,
    random_state=SEED,
    callbacks=[LRScheduler(CosineAnnealingLR, T_max=EPOCHS)],
)
start = time.perf_counter()
detector.fit(X_train)  # no labels: every training image is normal
print(f"trained in {time.perf_counter() - start:.1f} s")

fig, ax = plt.subplots(figsize=(4.5, 3))
ax.plot(detector.history_[:, "epoch"], detector.history_[:, "train_loss"], marker="o")
ax.set(xlabel="epoch", ylabel="training loss (masked MSE)", yscale="log", title="Training")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Score the test images: the ROC curve
#
# `score_samples` gives one number per image. The ROC curve shows, for every possible
# cut-off, which share of the abnormal images is flagged (sensitivity) against which
# share of the normal ones (false-positive rate). Its area is the AUC.

# %%
from sklearn.metrics import roc_curve

scores_test = detector.score_samples(X_test)
auc_cae = anomaly_roc_auc(y_test, scores_test)
print(f"CAE on the test phantoms: ROC AUC {auc_cae:.3f} (baseline {auc_baseline:.3f})")

fpr, tpr, _ = roc_curve(y_test, -scores_test)  # abnormal is the positive class
fig, (ax_roc, ax_hist) = plt.subplots(1, 2, figsize=(10, 3.8))
ax_roc.plot(fpr, tpr, label=f"CAE (AUC {auc_cae:.2f})")
ax_roc.plot([0, 1], [0, 1], "k:", label="chance")
ax_roc.set(xlabel="false-positive rate", ylabel="sensitivity", title="ROC on the test set")
ax_roc.legend()
bins = np.linspace(scores_test.min(), scores_test.max(), 30)
ax_hist.hist(scores_test[y_test == 0], bins=bins, alpha=0.6, label="normal")
ax_hist.hist(scores_test[y_test == 1], bins=bins, alpha=0.6, label="nodule")
ax_hist.set(xlabel="score_samples (higher = more normal)", ylabel="images", title="Test scores")
ax_hist.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# The AUC above is far higher than the baseline's: the network has learnt something
# about lungs that a global intensity statistic does not capture. The histograms
# overlap, though: some nodules are faint or small and some normal images are
# unusual, so no cut-off separates the classes perfectly.

# %% [markdown]
# ## Anomaly maps: *where* is the anomaly?
#
# `anomaly_map` returns the per-pixel error (NaN outside the lungs). A radiologist
# needs to know where to look, not only that an image is suspicious. We check how
# often the hottest pixel of the map lies on the nodule, and compare with a pixel
# picked at random in the lungs.

# %%
from skanomaly.plotting import plot_anomaly_overlays

abnormal = np.flatnonzero(y_test == 1)
maps = detector.anomaly_map(X_test[abnormal])
rows, cols = np.mgrid[:SIZE, :SIZE]
hits, chance = [], []
for k, i in enumerate(abnormal):
    on_nodule = np.hypot(cols - test.centers[i, 0], rows - test.centers[i, 1]) <= test.radii[i] + 1
    peak = np.unravel_index(np.nanargmax(maps[k]), maps[k].shape)
    hits.append(on_nodule[peak])
    chance.append((on_nodule & test.masks[i]).sum() / test.masks[i].sum())
hit_rate, chance_rate = float(np.mean(hits)), float(np.mean(chance))
print(f"hottest pixel on the nodule: {hit_rate:.0%} of the abnormal test images "
      f"(a random lung pixel: {chance_rate:.0%})")

order = np.r_[abnormal[:4], np.flatnonzero(y_test == 0)[:4]]
plot_anomaly_overlays(test.images[order], detector.anomaly_map(X_test[order]),
                      labels=y_test[order], centers=test.centers[order], scores=scores_test[order])
plt.show()

# %% [markdown]
# ## From a score to a decision: where to cut?
#
# `predict` flags an image when its score is below the detector's `offset_`. Which
# images may choose that cut-off?
#
# * **The training images?** They are all normal, so a cut chosen on them can only
#   aim at a false-positive rate: trading sensitivity against specificity (Youden's
#   J, "find 90 % of the nodules") needs abnormal images. And the network has
#   *fitted* these very images, so their scores may be more normal than those of new
#   images. The detector's default `offset_` (`contamination="auto"`: the median
#   minus three robust standard deviations of the training scores) is of this kind.
# * **The test images?** Then the test set is no longer a test: the sensitivity and
#   specificity it reports are optimistic. Notebook 5 measures by how much.
# * **A validation set**: images the network was not trained on and the test does not
#   use, with both classes.
#
# First, do training images score like new normal images? A one-sided Mann-Whitney
# test compares the two sets of scores.

# %%
from scipy.stats import mannwhitneyu

scores_train = detector.score_samples(X_train)
scores_valid = detector.score_samples(X_valid)
new_normals = np.r_[scores_valid[y_valid == 0], scores_test[y_test == 0]]
print(f"median score of the {len(scores_train)} training images:       {np.median(scores_train):.5f}")
print(f"median score of {len(new_normals)} new normal images (valid + test): {np.median(new_normals):.5f}")
gap_p = mannwhitneyu(scores_train, new_normals, alternative="greater").pvalue
print(f"one-sided Mann-Whitney test, training scores higher: p = {gap_p:.2g}")
if gap_p < 0.05:
    print("-> the training images score as more normal than new ones: the network fits "
          "its own training images better, and cuts taken from their scores flag more "
          "new normals than they promise.")
else:
    print("-> no significant gap here: with these settings the network generalises to "
          "new normal images, and training-based cuts hold as far as their false-positive "
          "rate goes (they still cannot set a sensitivity).")

# %% [markdown]
# How large that gap is depends on how closely the network fits its training set
# (more epochs and fewer images fit it more closely). It is a property of the
# training run that you only learn by scoring images the network has not seen, which
# is what a validation set is for.
#
# Now four cut-offs, each with what it *promises* (measured on the data it was chosen
# on) and what it *delivers* on the test set: the share of normal images flagged
# (false alarms) and the share of nodules found (sensitivity).

# %%
from skanomaly.model_selection import tune_threshold


def flag_rates(cut, scores, y):
    """(sensitivity, false-positive rate) of flagging scores below cut; no abnormal: NaN."""
    flagged = scores < cut
    sensitivity = flagged[y == 1].mean() if (y == 1).any() else np.nan
    return sensitivity, flagged[y == 0].mean()


valid_normals = scores_valid[y_valid == 0]
cuts = {  # name: (cut, scores it was chosen on, their labels)
    "detector's own offset_": (detector.offset_, scores_train, np.zeros(len(scores_train))),
    "5 % of the training scores": (np.quantile(scores_train, 0.05), scores_train, np.zeros(len(scores_train))),
    "5 % of the validation normals": (np.quantile(valid_normals, 0.05), scores_valid, y_valid),
    "Youden's J on validation": (tune_threshold(detector, X_valid, y_valid).offset_, scores_valid, y_valid),
}
test_fpr = {}
print(f"{'cut-off':>30} | promised: sensitivity, FPR | test: sensitivity, FPR")
for name, (cut, chosen_on, labels) in cuts.items():
    sens_promised, fpr_promised = flag_rates(cut, chosen_on, labels)
    sens_promised = f"{sens_promised:.2f}" if labels.any() else "  - "
    sensitivity, false_alarms = flag_rates(cut, scores_test, y_test)
    test_fpr[name] = false_alarms
    print(f"{name:>30} | {sens_promised:>19}, {fpr_promised:.2f} | {sensitivity:>15.2f}, {false_alarms:.2f}")
n_valid_normal, n_test_normal = len(valid_normals), int((y_test == 0).sum())
# Sampling error of a rate of 0.05 chosen on n_valid and measured on n_test images.
fpr_tolerance = 2 * np.sqrt(0.05 * 0.95 * (1 / n_valid_normal + 1 / n_test_normal))
print(f"(a cut at 5 % of {n_valid_normal} validation normals, measured on {n_test_normal} test "
      f"normals: expect 0.05 +- {fpr_tolerance:.2f})")

# %% [markdown]
# Read the table:
#
# * The cut aimed at 5 % false alarms and set on the **validation** normals keeps its
#   promise on the test set, within the sampling error printed below the table:
#   validation images are new to the network, as test images are.
# * The training-based cuts promise nothing about sensitivity (no abnormal image was
#   there to measure it), and their false-positive rate holds only as far as
#   training scores resemble new scores, which the test above checked.
# * Youden's J, chosen on validation images of *both* classes, trades sensitivity
#   against specificity; the test set checks that trade without having chosen it.
#
# Whatever rule you use, it must be fixed **before** the test set is scored.

# %% [markdown]
# ## The same steps on real films (optional)
#
# The pediatric chest X-ray set (Kermany et al., 2018: normal films and pneumonia)
# is the one-class protocol of the hand X-ray paper's follow-ups: train on normal
# films, validate and test on normal and pneumonia films, **split by patient** (a
# patient's films are alike; one patient on both sides would flatter the figures).
# Here pneumonia is a diffuse haze rather than a small nodule, so we use the
# reconstruction error over the whole image (`"mse"`) and a variational autoencoder,
# which notebook 2 explains; the baseline is again a plain intensity statistic.

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
    rng = np.random.default_rng(SEED)
    normal = films.labels == 0
    # Patients, not films, are split: 60 % of the normal patients train; the rest of the
    # normal patients and all pneumonia patients are halved into validation and test.
    train_part, rest = next(GroupShuffleSplit(1, train_size=0.6, random_state=SEED).split(
        np.flatnonzero(normal), groups=films.patient_ids[normal]))
    train_idx = np.flatnonzero(normal)[train_part]
    others = np.setdiff1d(np.arange(len(films.labels)), train_idx)
    valid_part, test_part = next(GroupShuffleSplit(1, test_size=0.5, random_state=SEED).split(
        others, groups=films.patient_ids[others]))
    valid_idx, test_idx = others[valid_part], others[test_part]
    # Keep the CPU time to about a minute: a subsample of each part.
    train_idx = rng.choice(train_idx, min(len(train_idx), 600), replace=False)
    valid_idx = rng.choice(valid_idx, min(len(valid_idx), 400), replace=False)
    test_idx = rng.choice(test_idx, min(len(test_idx), 600), replace=False)
    assert not set(films.patient_ids[train_idx]) & set(films.patient_ids[test_idx])
    print(f"pediatric films: {len(train_idx)} training (normal), {len(valid_idx)} validation, "
          f"{len(test_idx)} test ({films.labels[test_idx].mean():.0%} pneumonia)")

    vae = VAEDetector(channels=(16, 32, 64, 128), latent_dim=128, anomaly_score="mse",
                      augment=None, lr=1e-3, batch_size=32, max_epochs=20, random_state=SEED)
    start = time.perf_counter()
    vae.fit(films.images[train_idx])
    print(f"VAE trained in {time.perf_counter() - start:.0f} s")
    ped_scores = vae.score_samples(films.images[test_idx])
    ped_auc = anomaly_roc_auc(films.labels[test_idx], ped_scores)

    def intensity_baseline(train_images, images):
        """Mahalanobis distance of (mean, std) of intensity from the training films."""
        def features(a):
            return np.c_[a.mean(axis=(1, 2)), a.std(axis=(1, 2))]
        reference = features(train_images)
        inverse = np.linalg.inv(np.cov(reference, rowvar=False))
        d = features(images) - reference.mean(axis=0)
        return -np.sqrt(np.einsum("ij,jk,ik->i", d, inverse, d))  # higher = more normal

    ped_baseline = anomaly_roc_auc(films.labels[test_idx],
                                   intensity_baseline(films.images[train_idx], films.images[test_idx]))
    print(f"test ROC AUC: VAE {ped_auc:.3f}; intensity baseline {ped_baseline:.3f}")
    ped_cut = tune_threshold(vae, films.images[valid_idx], films.labels[valid_idx]).offset_
    sensitivity, false_alarms = flag_rates(ped_cut, ped_scores, films.labels[test_idx])
    print(f"at the Youden cut-off chosen on validation: test sensitivity {sensitivity:.2f}, "
          f"specificity {1 - false_alarms:.2f}")

# %% [markdown]
# On real films, compare with a baseline before believing a detector. Pneumonia films
# are also hazier, with other exposure, than normal ones; the baseline above scores a
# film by how far the mean and spread of its pixel values lie from those of the
# training films (a Mahalanobis distance), with no network at all. Compare the two
# AUCs printed above: a detector is worth its training only by what it adds to such
# a baseline.
#
# **Next:** notebook 2 asks what an autoencoder must *not* be able to do for its
# reconstruction error to mean anything.
