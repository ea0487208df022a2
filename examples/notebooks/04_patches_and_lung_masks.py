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
# # 4. Patches and lung masks: the P-AnoGAN pipeline
#
# A chest radiograph is 2,000 pixels wide and a nodule can be 20 pixels across.
# Scaling the film down to what a network takes erases the nodule; feeding the whole
# film needs a network (and a GPU) the size of the film. P-AnoGAN (Bhatt et al.,
# 2021) instead cuts the lungs into **patches**, learns normal patches, and scores a
# film by its most abnormal patch. Three preprocessing steps make that work, each a
# scikit-learn transformer in `skanomaly.preprocessing`:
#
# 1. `CLAHE`: contrast-limited adaptive histogram equalisation, which evens out
#    exposure so that a patch looks the same whoever's film it comes from;
# 2. `LungMasker`: a small packaged U-Net that finds the lung fields, so that only
#    lung patches are learnt and scored (NaN outside the lungs);
# 3. `PatchExtractor`: the patch grid, `(n_images, H, W)` to bags `(n_images, P, p, p)`,
#    and back again with `inverse_transform`, which stitches patch results into maps.
#
# Because each keeps one row per image, they chain in a `Pipeline` in front of any
# detector.

# %% [markdown]
# ## Settings
#
# `QUICK` (set by the test suite through `SKANOMALY_NOTEBOOK_QUICK=1`) shrinks the
# sizes. The last part runs the P-AnoGAN protocol on real JSRT films when
# `SKANOMALY_DATA_DIR` (or the variable below) names a folder holding `jsrt/`
# (`images/`, `lung_masks/`, `metadata.csv`).

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

SIZE = 48 if QUICK else 64  # image side
PATCH, STRIDE = 16, 8  # patch side and grid step (P-AnoGAN: 64 and about 16 at 1024 px)
N_TRAIN = 60 if QUICK else 250
N_TEST = 60 if QUICK else 200
EPOCHS = 4 if QUICK else 8

np.random.seed(SEED)
torch.manual_seed(SEED)
print(f"quick settings: {QUICK}; {N_TRAIN} training images of {SIZE} px, {PATCH} px patches "
      f"every {STRIDE} px, {EPOCHS} epochs")

# %%
from skanomaly.datasets import make_chest_phantoms

train = make_chest_phantoms(N_TRAIN, image_size=SIZE, anomaly_fraction=0.0, random_state=SEED)
test = make_chest_phantoms(N_TEST, image_size=SIZE, anomaly_fraction=0.5, random_state=SEED + 1)
y_test = test.labels
print(f"{N_TRAIN} normal training images; {N_TEST} test images, {y_test.sum()} with a nodule")

# %% [markdown]
# ## 1. CLAHE: the same anatomy, the same grey levels
#
# Films differ in exposure and contrast (the phantoms draw a window and a gamma per
# patient). CLAHE equalises the histogram of each tile of the image (`kernel_size`,
# here a quarter of the side; P-AnoGAN: 128 px of 1024) with a clip limit that stops
# it from amplifying noise (P-AnoGAN's 0.01). We measure the contrast inside the lungs
# (the standard deviation of lung pixels) of every training image, before and after:
# its mean, and how much it varies *between* patients (its coefficient of variation,
# the standard deviation over the mean).

# %%
from skanomaly.preprocessing import CLAHE

clahe = CLAHE(kernel_size=0.25, clip_limit=0.01)
equalised = clahe.fit_transform(train.images)


def lung_contrast(images, masks):
    return np.array([image[mask].std() for image, mask in zip(images, masks)])


contrast_before = lung_contrast(train.images, train.masks)
contrast_after = lung_contrast(equalised, train.masks)
variation_before = contrast_before.std() / contrast_before.mean()
variation_after = contrast_after.std() / contrast_after.mean()
print(f"lung contrast: mean {contrast_before.mean():.3f} before CLAHE, {contrast_after.mean():.3f} after")
print(f"its variation between patients: {variation_before:.2f} before, {variation_after:.2f} after")

fig, axes = plt.subplots(2, 4, figsize=(9, 4.8))
for k in range(4):
    axes[0, k].imshow(train.images[k], cmap="gray", vmin=0, vmax=1)
    axes[1, k].imshow(equalised[k], cmap="gray", vmin=0, vmax=1)
    axes[0, k].axis("off")
    axes[1, k].axis("off")
axes[0, 0].set_title("as acquired", loc="left")
axes[1, 0].set_title("after CLAHE", loc="left")
fig.tight_layout()
plt.show()

# %% [markdown]
# CLAHE raises the contrast inside the lungs, where the nodules are, and makes it more
# alike from patient to patient (the two printed lines): a detector then spends less
# of its capacity on exposure and contrast, which are not what we want it to flag.
#
# ## 2. LungMasker: where are the lungs?
#
# The packaged U-Net was trained on real JSRT films and their lung masks; it has
# never seen a phantom. The phantoms come with their true masks, so we can measure
# its overlap with them (the Dice coefficient: 1 is perfect, 0 no overlap). It runs
# on the CLAHE output, as it will in the pipeline below, and returns the image with
# NaN outside the lungs (`output="mask"` would give the boolean mask).

# %%
from skanomaly.metrics import dice_score
from skanomaly.preprocessing import LungMasker

start = time.perf_counter()
lungs = LungMasker().fit_transform(clahe.transform(test.images))
found = ~np.isnan(lungs)
dice = np.array([dice_score(true, pred) for true, pred in zip(test.masks, found)])
print(f"lung masks of {N_TEST} images in {time.perf_counter() - start:.1f} s; Dice with the true masks: "
      f"median {np.median(dice):.3f}, lowest {dice.min():.3f}")

fig, axes = plt.subplots(1, 4, figsize=(9, 2.6))
for ax, i in zip(axes, np.argsort(dice)[[0, 1, len(dice) // 2, -1]]):
    ax.imshow(test.images[i], cmap="gray", vmin=0, vmax=1)
    ax.contour(test.masks[i], levels=[0.5], colors="lime", linewidths=0.8)
    ax.contour(found[i], levels=[0.5], colors="magenta", linewidths=0.8)
    ax.set_title(f"Dice {dice[i]:.2f}")
    ax.axis("off")
fig.suptitle("true lungs (green) and LungMasker's (magenta): worst, 2nd worst, median, best")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. PatchExtractor: bags of patches
#
# `PatchExtractor` cuts every masked image into the same grid of patches and marks a
# patch *absent* (all NaN) when less than half of it is lung (`min_roi_fraction`).

# %%
from skanomaly.preprocessing import PatchExtractor

patches = PatchExtractor(PATCH, stride=STRIDE)
bags = patches.fit_transform(lungs)
present = ~np.isnan(bags).all(axis=(2, 3))
print(f"bags: {bags.shape} = (images, patches per image, {PATCH}, {PATCH}); "
      f"{present.mean():.0%} of the patches are lung, the rest absent")

# P-AnoGAN's labels: a patch of an abnormal image is abnormal when it holds the nodule centre.
patch_labels = patches.patch_labels(test.centers)
print(f"patches holding a nodule centre: {patch_labels[present].sum()} "
      f"(a nodule centre lies in up to {(PATCH // STRIDE) ** 2} overlapping patches)")

i = np.flatnonzero(y_test == 1)[0]
fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
axes[0].imshow(np.nan_to_num(lungs[i]), cmap="gray")
for (r, c), keep, label in zip(patches.patch_positions_, present[i], patch_labels[i]):
    if keep:
        axes[0].add_patch(plt.Rectangle((c - 0.5, r - 0.5), PATCH, PATCH, fill=False,
                                        color="red" if label else "yellow", lw=1.5 if label else 0.4))
axes[0].set_title("lung patches (red: holds the nodule centre)")
kept = np.flatnonzero(present[i])[:16]
mosaic = np.full((4 * (PATCH + 1), 4 * (PATCH + 1)), np.nan)
for k, p in enumerate(kept):
    r, c = divmod(k, 4)
    mosaic[r * (PATCH + 1):r * (PATCH + 1) + PATCH, c * (PATCH + 1):c * (PATCH + 1) + PATCH] = bags[i, p]
axes[1].imshow(mosaic, cmap="gray")
axes[1].set_title("the first 16 lung patches of the bag")
for ax in axes:
    ax.axis("off")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. A detector on patches, and maps stitched back
#
# The whole chain is one `Pipeline`. The detector trains on every lung patch of the
# normal images (here a small `CAEDetector`; P-AnoGAN uses `FAnoGANDetector`, which
# takes the same bags), scores every patch (`score_patches`, shape `(images,
# patches)`), and scores an image by its worst patch (`patch_aggregation="max"`).
# `pipe.score_samples(test.images)` would run the whole chain on the test images;
# their CLAHE and lung masks are the ones computed above (same steps, same
# parameters), so we give the patch step those and save the U-Net a second pass.

# %%
from sklearn.pipeline import Pipeline
from skorch.callbacks import LRScheduler
from torch.optim.lr_scheduler import CosineAnnealingLR

from skanomaly.detectors import CAEDetector
from skanomaly.metrics import anomaly_roc_auc

pipe = Pipeline([
    ("clahe", CLAHE(kernel_size=0.25, clip_limit=0.01)),
    ("lungs", LungMasker()),
    ("patches", PatchExtractor(PATCH, stride=STRIDE)),
    ("detector", CAEDetector(channels=(16, 32, 64), anomaly_score=("topk", 5), patch_aggregation="max",
                             augment=None, lr=3e-3, batch_size=32, max_epochs=EPOCHS, random_state=SEED,
                             callbacks=[LRScheduler(CosineAnnealingLR, T_max=EPOCHS)])),
])
start = time.perf_counter()
pipe.fit(train.images)
print(f"pipeline trained in {time.perf_counter() - start:.1f} s")

test_bags = pipe.named_steps["patches"].transform(lungs)  # = pipe[:-1].transform(test.images)
patch_scores = pipe[-1].score_patches(test_bags)  # (images, patches), NaN for absent ones
# The P-AnoGAN protocol: every patch of a normal image is normal (0); a patch of an
# abnormal image is abnormal (1) if it holds the nodule centre, and otherwise unused.
normal_rows = y_test == 0
use = ~np.isnan(patch_scores) & (normal_rows[:, None] | (patch_labels == 1))
patch_auc = anomaly_roc_auc(patch_labels[use], patch_scores[use])
image_auc = anomaly_roc_auc(y_test, pipe[-1].score_samples(test_bags))
print(f"patch level: {int(use.sum())} patches ({int(patch_labels[use].sum())} abnormal), ROC AUC {patch_auc:.3f}")
print(f"image level (worst patch): ROC AUC {image_auc:.3f}")

# %% [markdown]
# Two ways to turn patch results into a picture of the whole lung, both through
# `PatchExtractor.inverse_transform`, which averages overlapping patches:
#
# * the per-pixel anomaly maps of the patches (`anomaly_map` on the bags, shape
#   `(images, patches, p, p)`), stitched into one map per image;
# * one score per patch `(images, patches)`, each filling its patch: a coarse map
#   of where the worst patches are.

# %%
extractor = pipe.named_steps["patches"]
pixel_maps = extractor.inverse_transform(pipe[-1].anomaly_map(test_bags))
score_maps = extractor.inverse_transform(-patch_scores)  # higher = more abnormal
rows, cols = np.mgrid[:SIZE, :SIZE]
hits, chance = [], []
for i in np.flatnonzero(y_test == 1):
    on_nodule = np.hypot(cols - test.centers[i, 0], rows - test.centers[i, 1]) <= test.radii[i] + 1
    scored = ~np.isnan(pixel_maps[i])
    if scored.any():
        hits.append(on_nodule[np.unravel_index(np.nanargmax(pixel_maps[i]), pixel_maps[i].shape)])
        chance.append((on_nodule & scored).sum() / scored.sum())
print(f"hottest pixel of the stitched map on the nodule: {np.mean(hits):.0%} of the abnormal images "
      f"(a random scored pixel: {np.mean(chance):.0%})")

show = np.flatnonzero(y_test == 1)[:3]
fig, axes = plt.subplots(len(show), 3, figsize=(8, 2.7 * len(show)))
for row, i in enumerate(show):
    axes[row, 0].imshow(test.images[i], cmap="gray", vmin=0, vmax=1)
    axes[row, 1].imshow(pixel_maps[i], cmap="inferno")
    axes[row, 2].imshow(score_maps[i], cmap="inferno")
    for ax in axes[row]:
        ax.add_patch(plt.Circle(test.centers[i], test.radii[i] + 2, fill=False, color="cyan"))
        ax.axis("off")
for ax, title in zip(axes[0], ["image", "stitched pixel map", "stitched patch scores"]):
    ax.set_title(title)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 5. The P-AnoGAN protocol on real films (optional)
#
# `skanomaly.datasets.jsrt_patch_protocol` runs the paper's protocol on a local JSRT
# copy: CLAHE, the lung masks that come with the data set, patches on a uniform grid,
# and a split **by study**: detectors train on patches of nodule-free films only; the
# test set holds the patches of the other nodule-free films (normal) and the patches
# of nodule films that contain the nodule centre (abnormal). No film has patches on
# both sides. Here at 256 px with 16 px patches (the paper: 1024 px, 64 px patches),
# so that a CPU trains it in about a minute.

# %%
jsrt_dir = Path(DATA_DIR).expanduser() / "jsrt" if DATA_DIR else None
if jsrt_dir is None or not (jsrt_dir / "images").is_dir():
    print("No JSRT films: set SKANOMALY_DATA_DIR to a folder holding jsrt/ (images/, "
          "lung_masks/, metadata.csv) to run this part; skipped.")
else:
    from skanomaly.datasets import jsrt_patch_protocol

    jsrt = jsrt_patch_protocol(jsrt_dir, patch_size=16, stride=8, size=256, random_state=SEED)
    print(f"{len(jsrt.train_studies)} training films ({len(jsrt.X_train)} patches); "
          f"{len(jsrt.test_studies)} test films: {int((jsrt.y_test == 0).sum())} normal and "
          f"{int(jsrt.y_test.sum())} abnormal patches")
    rng = np.random.default_rng(SEED)
    subset = rng.choice(len(jsrt.X_train), min(6000, len(jsrt.X_train)), replace=False)
    jsrt_detector = CAEDetector(channels=(16, 32, 64), anomaly_score=("topk", 5), augment=None, lr=3e-3,
                                batch_size=32, max_epochs=8, random_state=SEED,
                                callbacks=[LRScheduler(CosineAnnealingLR, T_max=8)])
    start = time.perf_counter()
    jsrt_detector.fit(jsrt.X_train[subset])
    print(f"trained in {time.perf_counter() - start:.0f} s on {len(subset)} patches")
    jsrt_patch_auc = anomaly_roc_auc(jsrt.y_test, jsrt_detector.score_samples(jsrt.X_test))
    # Image level: whole bags of the test films, scored by their worst patch.
    film_scores = np.concatenate([jsrt_detector.score_samples(bags_) for _, bags_ in jsrt.iter_test_bags()])
    jsrt_image_auc = anomaly_roc_auc(jsrt.test_study_labels, film_scores)
    print(f"JSRT patch-level ROC AUC {jsrt_patch_auc:.3f}; film level (worst patch) {jsrt_image_auc:.3f}")

# %% [markdown]
# Compare the printed AUCs with 0.5: JSRT nodules are often subtle (the data set
# grades them from "extremely subtle" to "obvious"), many are small at 256 px, and
# a patch model this small sees little of them. The film-level figure also depends on
# how many normal patches each film contributes: the more patches, the more chances
# for one of them to look abnormal by chance, which is why the paper also reports
# patch-level figures.
#
# **Next:** notebook 5 chooses settings and thresholds with cross-validation grouped
# by patient, and measures what choosing on the test set would have cost.
