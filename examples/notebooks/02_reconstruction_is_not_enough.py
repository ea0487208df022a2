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
# # 2. Reconstruction is not enough
#
# Autoencoder detectors rest on one hope: *a network trained to reconstruct normal
# images will reconstruct abnormal ones badly*. Nothing in the training loss asks for
# that. The loss only rewards reconstructing the training images well, and the
# easiest way to do that is to **copy** the input. A network that copies everything
# reconstructs a nodule as well as a rib, and its error says nothing.
#
# In this notebook you will
#
# 1. train three convolutional autoencoders (CAE) that differ only in the size of
#    their bottleneck, and a variational autoencoder (VAE);
# 2. see that the one with the best reconstruction is the worst detector, because
#    it reconstructs the nodules too;
# 3. check what each one has learnt by showing it chests upside down;
# 4. (optional, with the data) see a CAE score pneumonia films as *more* normal than
#    normal films, and the VAE do better.

# %% [markdown]
# ## Settings
#
# `QUICK` (set by the test suite through `SKANOMALY_NOTEBOOK_QUICK=1`) shrinks the
# sizes to run in seconds. The last part runs when `SKANOMALY_DATA_DIR` (or the
# variable below) names a folder holding `pediatric_cxr/train/{NORMAL,PNEUMONIA}`.

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

N_TRAIN = 120 if QUICK else 400
N_TEST = 120 if QUICK else 400
EPOCHS = 8 if QUICK else 15
SIZE = 32

np.random.seed(SEED)
torch.manual_seed(SEED)
print(f"quick settings: {QUICK}; {N_TRAIN} training images, {EPOCHS} epochs, {SIZE} px")

# %%
from skanomaly.datasets import make_chest_phantoms
from skanomaly.metrics import anomaly_roc_auc

train = make_chest_phantoms(N_TRAIN, image_size=SIZE, anomaly_fraction=0.0, random_state=SEED)
test = make_chest_phantoms(N_TEST, image_size=SIZE, anomaly_fraction=0.5, random_state=SEED + 1)


def lungs_only(data):
    """NaN outside the lungs: the detectors learn and score the lungs only."""
    return np.where(data.masks, data.images, np.nan).astype(np.float32)


X_train, X_test, y_test = lungs_only(train), lungs_only(test), test.labels
print(f"{len(X_train)} normal training images; {len(X_test)} test images, {y_test.sum()} with a nodule")

# %% [markdown]
# ## Four autoencoders
#
# `CAEDetector(channels=...)` takes the width of a first convolution, then one width
# per level that halves the image. The last level is the **bottleneck**: everything
# the decoder knows about the image has to pass through it.
#
# * `channels=(16, 32)`: one halving, a 16 x 16 x 32 bottleneck: 8,192 numbers for
#   an image of 1,024 pixels. It has room to copy the image.
# * `channels=(16, 32, 64)`: 8 x 8 x 64 = 4,096 numbers.
# * `channels=(16, 32, 64, 8)`: 4 x 4 x 8 = 128 numbers, an eighth of the pixels. It
#   *must* summarise, and what it keeps is what is common to the training images.
#
# The VAE (`VAEDetector`) encodes an image into a 32-number latent *distribution*
# and is trained with an extra term (the KL divergence) that pulls every image's
# code towards the same standard normal: a second brake on copying.
#
# All four train on the same normal images with the same schedule and score with the
# mean of the 5 largest squared errors in the lungs.

# %%
from skorch.callbacks import LRScheduler
from torch.optim.lr_scheduler import CosineAnnealingLR

from skanomaly.detectors import CAEDetector, VAEDetector

common = {"anomaly_score": ("topk", 5), "augment": None, "lr": 3e-3, "batch_size": 8,
          "max_epochs": EPOCHS, "random_state": SEED}


def schedule():
    return [LRScheduler(CosineAnnealingLR, T_max=EPOCHS)]


models = {
    "wide CAE (8192)": CAEDetector(channels=(16, 32), callbacks=schedule(), **common),
    "CAE (4096)": CAEDetector(channels=(16, 32, 64), callbacks=schedule(), **common),
    "narrow CAE (128)": CAEDetector(channels=(16, 32, 64, 8), callbacks=schedule(), **common),
    "VAE (latent 32)": VAEDetector(channels=(16, 32, 64), latent_dim=32, callbacks=schedule(), **common),
}
normal_error, auc = {}, {}
for name, model in models.items():
    start = time.perf_counter()
    model.fit(X_train)
    auc[name] = anomaly_roc_auc(y_test, model.score_samples(X_test))
    print(f"{name:>17}: trained in {time.perf_counter() - start:4.1f} s, test ROC AUC {auc[name]:.3f}")

# %% [markdown]
# ## Reconstructions
#
# The detectors keep their trained network in `net_.module_`; we run it on test
# images to see the reconstructions. Pixels outside the lungs are filled with 0
# before the network sees them, as the detectors do.

# %%
def reconstruct(model, images):
    """The network's reconstruction of each image, NaN outside the lungs."""
    module = model.net_.module_
    was_training = module.training
    module.eval()
    with torch.no_grad():
        out = module(torch.from_numpy(np.nan_to_num(images, nan=0.0))[:, None])
    module.train(was_training)
    out = out[0] if isinstance(out, tuple) else out  # the VAE also returns mu, log_var
    return np.where(np.isnan(images), np.nan, out[:, 0].numpy())


def mean_squared_error(model, images):
    return float(np.nanmean((reconstruct(model, images) - images) ** 2))


# How well does each network reconstruct *normal* images (its job in training)?
normal_test = X_test[y_test == 0]
for name, model in models.items():
    normal_error[name] = mean_squared_error(model, normal_test)
    print(f"{name:>17}: mean squared error on normal test lungs {normal_error[name]:.5f}")

# %%
abnormal = np.flatnonzero(y_test == 1)[:3]
fig, axes = plt.subplots(len(abnormal), 1 + len(models), figsize=(2.1 * (1 + len(models)), 2.2 * len(abnormal)))
for row, i in enumerate(abnormal):
    axes[row, 0].imshow(np.nan_to_num(X_test[i]), cmap="gray", vmin=0, vmax=1)
    axes[row, 0].add_patch(plt.Circle(test.centers[i], test.radii[i] + 1.5, fill=False, color="red"))
    for col, (name, model) in enumerate(models.items(), start=1):
        axes[row, col].imshow(np.nan_to_num(reconstruct(model, X_test[i:i + 1])[0]), cmap="gray", vmin=0, vmax=1)
        axes[row, col].add_patch(plt.Circle(test.centers[i], test.radii[i] + 1.5, fill=False, color="red"))
for ax, title in zip(axes[0], ["input"] + list(models)):
    ax.set_title(title, fontsize=9)
for ax in axes.ravel():
    ax.axis("off")
fig.suptitle("Abnormal test images and their reconstructions (nodule circled)")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## How much of the nodule does each network reconstruct?
#
# For every abnormal test image we measure the nodule's contrast (mean brightness on
# the nodule minus that of a ring of lung around it) in the input and in the
# reconstruction. Their ratio is the share of the nodule the network reproduces: 1
# (100 %) for a network that copies, 0 or less for one that paints normal lung where
# the nodule was (below 0: the reconstruction is even a little darker there than the
# ring, as the lung around a nodule's site often is).

# %%
rows, cols = np.mgrid[:SIZE, :SIZE]


def nodule_contrast(images, idx):
    out = []
    for image, i in zip(images, idx):
        distance = np.hypot(cols - test.centers[i, 0], rows - test.centers[i, 1])
        disc = distance <= test.radii[i]
        ring = (distance > test.radii[i] + 1) & (distance <= test.radii[i] + 3) & test.masks[i]
        out.append(np.nanmean(image[disc]) - np.nanmean(image[ring]))
    return np.array(out)


abnormal_all = np.flatnonzero(y_test == 1)
contrast_in = nodule_contrast(X_test[abnormal_all], abnormal_all)
kept = {}
for name, model in models.items():
    contrast_out = nodule_contrast(reconstruct(model, X_test[abnormal_all]), abnormal_all)
    kept[name] = float(np.median(contrast_out / contrast_in))
print(f"{'model':>17} | MSE on normal lungs | nodule contrast reconstructed | test ROC AUC")
for name in models:
    print(f"{name:>17} | {normal_error[name]:19.5f} | {kept[name]:29.0%} | {auc[name]:.3f}")

fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
names = list(models)
for ax, values, title in zip(axes, [normal_error, kept, auc],
                             ["MSE on normal lungs (lower = better copy)",
                              "nodule contrast reconstructed", "test ROC AUC"]):
    ax.bar(range(len(names)), [values[n] for n in names], color=["tab:red", "tab:orange", "tab:green", "tab:blue"])
    ax.set_xticks(range(len(names)), [n.split(" (")[0] for n in names], rotation=30, fontsize=8)
    ax.set_title(title, fontsize=9)
axes[2].set_ylim(0.5, 1)
fig.tight_layout()
plt.show()

# %% [markdown]
# Read the columns for the three CAEs, from the narrow one up to the wide one: the
# error on normal lungs falls (a better autoencoder) **and** the share of the nodule
# it reconstructs rises. The wide CAE, the best autoencoder of the three, is the
# worst detector: it has learnt to copy images, nodules included. The narrow one
# cannot copy and falls back on what it learnt about normal lungs, so the nodule
# stays in its error.
#
# A low reconstruction error on normal images is therefore **not** the goal and not a
# way to choose a model: only validation images with anomalies can say whether a
# network reconstructs them badly enough (notebook 5 does that selection properly).

# %% [markdown]
# ## What has each network learnt? Chests upside down
#
# A chest flipped upside down has the heart at the top and the diaphragm domes above
# the apices: nothing a normal training image looks like, while every small patch of
# it is still lung texture. A network that models chests should reconstruct it
# badly; a network that copies will not notice. We flag images whose score falls
# below the 5th percentile of normal test images and count how many flipped normal
# chests are flagged.

# %%
flipped = X_test[y_test == 0][:, ::-1].copy()
flagged_flipped = {}
for name, model in models.items():
    normal_scores = model.score_samples(X_test[y_test == 0])
    cut = np.quantile(normal_scores, 0.05)
    flagged_flipped[name] = float((model.score_samples(flipped) < cut).mean())
    print(f"{name:>17}: flags {flagged_flipped[name]:.0%} of the upside-down chests")

# %% [markdown]
# Compare the wide CAE's share with the narrow CAE's above: the network that copies
# finds an upside-down chest about as normal as an upright one, since it never
# needed to know where the heart goes; the narrow network has learnt the layout of
# a chest and flags it. (Ideally every flipped chest would be flagged; the 5 % cut
# flags 5 % of upright normal chests by construction.)
#
# The VAE's bottleneck is narrow too, and the KL term keeps nearby images on nearby
# codes: its reconstructions are smoother, and the printed figures show where this
# puts it between the CAEs on these phantoms.
#
# The VAE also offers a score that is **not** a reconstruction error: the KL
# divergence of an image's code, how unusual the code itself is (the paper's best
# VAE score on hand radiographs). A small nodule hardly moves the code of a whole
# chest:

# %%
vae = models["VAE (latent 32)"]
auc_kld = anomaly_roc_auc(y_test, vae.set_params(anomaly_score="kld").score_samples(X_test))
vae.set_params(anomaly_score=("topk", 5))
print(f"VAE, KL score: test ROC AUC {auc_kld:.3f}; top-5 reconstruction error: {auc['VAE (latent 32)']:.3f}")

# %% [markdown]
# A score has to match the anomaly: the KL divergence looks at the image as a whole,
# the top-k error at its worst pixels, and a nodule is a few pixels.

# %% [markdown]
# ## Real films: pediatric pneumonia (optional)
#
# On the pediatric chest X-ray set (normal films against pneumonia, split by
# patient, at 64 px), a CAE with a bottleneck of 4 x 4 x 128 = 2,048 numbers for
# 4,096 pixels learns a near-copy. Its error then measures how much fine detail a film
# has, and the sharp normal films have more of it than the hazy pneumonia films.
# The VAE reconstructs something closer to an average chest, from which a hazy,
# consolidated film departs.

# %%
ped_dir = Path(DATA_DIR).expanduser() / "pediatric_cxr" if DATA_DIR else None
if ped_dir is None or not (ped_dir / "train").is_dir():
    print("No pediatric films: set SKANOMALY_DATA_DIR to a folder holding "
          "pediatric_cxr/train/{NORMAL,PNEUMONIA} to run this part; skipped.")
else:
    from sklearn.model_selection import GroupShuffleSplit

    from skanomaly.datasets import load_pediatric_cxr

    films = load_pediatric_cxr(ped_dir, split="train", size=64)
    normal = np.flatnonzero(films.labels == 0)
    train_part, _ = next(GroupShuffleSplit(1, train_size=0.6, random_state=SEED).split(
        normal, groups=films.patient_ids[normal]))
    train_idx = normal[train_part]
    test_idx = np.setdiff1d(np.arange(len(films.labels)), train_idx)  # other patients only
    rng = np.random.default_rng(SEED)
    train_idx = rng.choice(train_idx, min(len(train_idx), 500), replace=False)
    test_idx = np.r_[rng.choice(test_idx[films.labels[test_idx] == 0], 250, replace=False),
                     rng.choice(test_idx[films.labels[test_idx] == 1], 250, replace=False)]
    assert not set(films.patient_ids[train_idx]) & set(films.patient_ids[test_idx])
    y_ped = films.labels[test_idx]
    ped_models = {
        "CAE (2048)": CAEDetector(channels=(16, 32, 64, 128), anomaly_score="l1", augment=None,
                                  lr=1e-3, batch_size=32, max_epochs=15, random_state=SEED),
        "VAE (latent 128)": VAEDetector(channels=(16, 32, 64, 128), latent_dim=128, anomaly_score="l1",
                                        augment=None, lr=1e-3, batch_size=32, max_epochs=15,
                                        random_state=SEED),
    }
    for name, model in ped_models.items():
        start = time.perf_counter()
        model.fit(films.images[train_idx])
        error = mean_squared_error(model, films.images[test_idx][y_ped == 0])
        ped_auc = anomaly_roc_auc(y_ped, model.score_samples(films.images[test_idx]))
        print(f"{name:>16}: trained in {time.perf_counter() - start:3.0f} s, MSE on normal test films "
              f"{error:.5f}, test ROC AUC {ped_auc:.3f}")

# %% [markdown]
# An AUC below 0.5 means the score ranks the classes the wrong way round: the CAE
# calls pneumonia films *more normal* than normal ones, as the explanation above
# predicts, while the VAE's error ranks them the right way. Do not flip the sign of a
# score because a test set says so; that is choosing on the test set (notebook 5).
# The lesson is the one of the phantoms: what a reconstruction error measures depends
# on what the network can copy, and only validation images can tell.
#
# **Next:** notebook 3 replaces the autoencoder by a GAN, which can only produce
# images from its learnt manifold of normal anatomy.
