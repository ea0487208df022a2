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
# # 3. GANs for anomaly detection: AnoGAN and f-AnoGAN
#
# An autoencoder can learn to copy (notebook 2). A **generator** cannot: a GAN's
# generator `G` turns a short random code `z` into an image, and once it is trained
# on normal images, everything it can produce is a normal-looking image. To explain a
# new image `x`, we look for the code whose image `G(z)` comes closest to `x`. A
# normal image has a close match; a nodule has none, because the generator never
# learnt to draw one. The leftover difference is the anomaly.
#
# * **AnoGAN** (Schlegl et al., 2017) *searches* for that code: hundreds of gradient
#   steps on `z`, per image. We watch the search step by step.
# * **f-AnoGAN** (Schlegl et al., 2019), and P-AnoGAN after it, *learn* the search: an
#   encoder `E` trained to map `x` straight to its code, so scoring is one forward pass
#   `G(E(x))`. We compare speed and quality side by side.
#
# GANs are expensive to train. The settings here are tiny (a GAN trained for seconds
# on 16 x 16 phantoms, about 0.1 % of the papers' schedules), enough to see the
# mechanics, not the papers' figures.

# %% [markdown]
# ## Settings
#
# `QUICK` (set by the test suite through `SKANOMALY_NOTEBOOK_QUICK=1`) shrinks
# everything to run in seconds. The optional last part scores 16 x 16 patches of
# real JSRT films when `SKANOMALY_DATA_DIR` (or the variable below) names a folder
# holding `jsrt/` (`images/`, `lung_masks/`, `metadata.csv`).

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

N_TRAIN = 150 if QUICK else 400
N_TEST = 80 if QUICK else 200
GAN_EPOCHS = 15 if QUICK else 60  # AnoGAN's DCGAN
SEARCH_STEPS = 30 if QUICK else 200  # the paper: 500
FANOGAN_ITERATIONS = 80 if QUICK else 700  # f-AnoGAN's GAN
ENCODER_EPOCHS = 2 if QUICK else 10
SIZE = 16

np.random.seed(SEED)
torch.manual_seed(SEED)
print(f"quick settings: {QUICK}; {N_TRAIN} training images at {SIZE} px, {GAN_EPOCHS} GAN epochs, "
      f"up to {SEARCH_STEPS} search steps")

# %%
from skanomaly.datasets import make_chest_phantoms
from skanomaly.metrics import anomaly_roc_auc

train = make_chest_phantoms(N_TRAIN, image_size=SIZE, anomaly_fraction=0.0, random_state=SEED)
test = make_chest_phantoms(N_TEST, image_size=SIZE, anomaly_fraction=0.5, random_state=SEED + 1)
X_train, X_test, y_test = train.images, test.images, test.labels
print(f"{len(X_train)} normal training images; {len(X_test)} test images, {y_test.sum()} with a nodule")

# %% [markdown]
# ## Train a GAN on normal chests
#
# `AnoGANDetector` trains a DCGAN: the generator `G` maps `z` (16 numbers, uniform in
# [-1, 1]) to an image, a discriminator `D` learns to tell generated images from real
# ones, and each improves against the other. Small CPU settings: two levels of 16 and
# 32 channels (the paper: four, 64 to 512).

# %%
from skanomaly.detectors import AnoGANDetector

anogan = AnoGANDetector(channels=(16, 32), latent_dim=16, max_epochs=GAN_EPOCHS, batch_size=32,
                        n_search_steps=SEARCH_STEPS, n_offset_samples=32, random_state=SEED)
start = time.perf_counter()
anogan.fit(X_train)
print(f"GAN trained in {time.perf_counter() - start:.1f} s")

gan = anogan.gan_
generator = gan.generator_
generator.eval()
with torch.no_grad():
    z = torch.rand(8, 16, generator=torch.Generator().manual_seed(SEED)) * 2 - 1
    samples = gan.unscale_x(generator(z))[:, 0].numpy()  # the networks work in [-1, 1]
fig, axes = plt.subplots(2, 8, figsize=(10, 2.8))
for k in range(8):
    axes[0, k].imshow(X_train[k], cmap="gray", vmin=0, vmax=1)
    axes[1, k].imshow(samples[k], cmap="gray", vmin=0, vmax=1)
    axes[0, k].axis("off")
    axes[1, k].axis("off")
axes[0, 0].set_title("real training images", loc="left")
axes[1, 0].set_title("G(z) for random codes z", loc="left")
fig.tight_layout()
plt.show()

# %% [markdown]
# The generated chests are blurry but chest-like: body, lungs, mediastinum. They are
# all the generator can draw.
#
# ## AnoGAN's latent search, step by step
#
# For an image `x`, AnoGAN starts from a code `z0` and takes Adam steps on `z` to
# minimise
#
# `loss(z) = (1 - lambda) * R(z) + lambda * F(z)`,
#
# * `R = sum |x - G(z)|`, the **residual**: how far the generated image is from `x`,
#   pixel by pixel;
# * `F = sum |f(x) - f(G(z))|`, the **feature** term: the same in the discriminator's
#   last features `f`, which describe the image's content rather than its pixels;
# * `lambda = 0.1` (`feature_weight`).
#
# The loss at the final `z` is the anomaly score. The search is deterministic (every
# image starts from the same seeded `z0`), so we can watch it by scoring with
# `n_search_steps` set to 0, 1, 2, 5, ... and reading the two terms separately
# (`anomaly_score="residual"` and `"feature"` score the same search).

# %%
steps = sorted({s for s in [0, 1, 2, 5, 10, 20, 50, 100, 200, 500] if s < SEARCH_STEPS} | {SEARCH_STEPS})
watch = np.r_[np.flatnonzero(y_test == 0)[:8], np.flatnonzero(y_test == 1)[:8]]
terms = {"residual": [], "feature": []}
for n in steps:
    anogan.set_params(n_search_steps=n)
    for term, values in terms.items():
        # score_samples is higher = more normal: minus the term.
        values.append(-anogan.set_params(anomaly_score=term).score_samples(X_test[watch]))
anogan.set_params(anomaly_score="anogan", n_search_steps=SEARCH_STEPS)
residual, feature = (np.array(terms[t]) for t in ("residual", "feature"))  # (steps, images)
search_loss = 0.9 * residual + 0.1 * feature
print(f"{'steps':>5} | residual R (normal / nodule) | feature F (normal / nodule)")
for k, n in enumerate(steps):
    print(f"{n:5d} | {residual[k, :8].mean():12.2f} / {residual[k, 8:].mean():6.2f}  "
          f"   | {feature[k, :8].mean():11.2f} / {feature[k, 8:].mean():6.2f}")
loss_drop = float(search_loss[-1].mean() / search_loss[0].mean())
print(f"mean search loss after {steps[-1]} steps: {loss_drop:.0%} of its start")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
x_axis = np.maximum(steps, 0.5)  # step 0 on a log axis
for ax, values, name in zip(axes, [residual, feature], ["residual R", "feature F"]):
    ax.plot(x_axis, values[:, :8], color="tab:blue", alpha=0.5)
    ax.plot(x_axis, values[:, 8:], color="tab:red", alpha=0.5)
    ax.plot([], [], color="tab:blue", label="normal")
    ax.plot([], [], color="tab:red", label="nodule")
    ax.set(xscale="log", xlabel="search steps (0 plotted at 0.5)", ylabel=name, title=f"{name} during the search")
    ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Both terms fall as the search moves `z` towards a code that explains the image (the
# last printed line gives the drop of the mean loss). For detection, the level does
# not matter; the **gap** does: nodule images (red) should keep a higher loss than
# normal ones (blue), because the generator cannot draw a nodule. Look at the two
# groups of curves and the table: with a GAN trained for seconds, the gap is small
# next to the spread between images of one group, and it can even have the wrong
# sign. The AUCs below measure it on the whole test set.
#
# The residual map `|x - G(z)|` (`anomaly_map`) shows where the search is still
# failing. For one abnormal image, at several stages of the search:

# %%
i = np.flatnonzero(y_test == 1)[0]
shown_steps = sorted({0, min(10, SEARCH_STEPS), SEARCH_STEPS})
fig, axes = plt.subplots(1, 1 + len(shown_steps), figsize=(2.6 * (1 + len(shown_steps)), 2.8))
axes[0].imshow(X_test[i], cmap="gray", vmin=0, vmax=1)
axes[0].set_title("image")
for ax, n in zip(axes[1:], shown_steps):
    residual_map = anogan.set_params(n_search_steps=n).anomaly_map(X_test[i:i + 1])[0]
    ax.imshow(residual_map, cmap="inferno")
    ax.set_title(f"|x - G(z)| after {n} steps")
for ax in axes:
    ax.add_patch(plt.Circle(test.centers[i], test.radii[i] + 1, fill=False, color="cyan"))
    ax.axis("off")
anogan.set_params(n_search_steps=SEARCH_STEPS)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Does the search help detection, and what does it cost?
#
# Now the whole test set, scored at the start of the search and after all the steps,
# with the time each takes.

# %%
anogan_results = {}
for n in sorted({0, SEARCH_STEPS}):
    anogan.set_params(n_search_steps=n)
    start = time.perf_counter()
    scores = anogan.score_samples(X_test)
    per_image = (time.perf_counter() - start) / len(X_test)
    row = {"auc": anomaly_roc_auc(y_test, scores), "ms": 1000 * per_image}
    for term in ("residual", "feature"):
        row[term] = anomaly_roc_auc(y_test, anogan.set_params(anomaly_score=term).score_samples(X_test))
    anogan.set_params(anomaly_score="anogan")
    anogan_results[n] = row
    print(f"AnoGAN, {n:3d} search steps: {row['ms']:6.2f} ms per image, ROC AUC {row['auc']:.3f} "
          f"(residual alone {row['residual']:.3f}, feature alone {row['feature']:.3f})")
_ = anogan.set_params(n_search_steps=SEARCH_STEPS)

# %% [markdown]
# Every search step is a pass forward and back through both networks, for every
# image: the scoring time grows with the number of steps (the two lines above; the
# paper takes 500 steps, on 64 x 64 images). Compare the AUCs at 0 steps
# (the same `z0` for every image: no search at all) and after the search.
#
# ## f-AnoGAN: learn the search instead of running it
#
# `FAnoGANDetector` first trains its own GAN (here P-AnoGAN's progressive GAN, grown
# from 4 x 4 to 16 x 16), then freezes it and trains an encoder `E` so that
# `G(E(x))` reconstructs `x`: one forward pass replaces the search. Its score
# `"izif"` is f-AnoGAN's: the squared residual plus `kappa` times the squared
# difference of discriminator features (the same two ideas as AnoGAN's `R` and `F`).
# The settings are the test suite's small ones.

# %%
from skanomaly.detectors import FAnoGANDetector

fanogan = FAnoGANDetector(encoder="critic", gan_channels=(32, 16, 8), latent_dim=64,
                          gan_iterations=FANOGAN_ITERATIONS, gan_lr=3e-3, feature_weight=100.0,
                          anomaly_score="izif", max_epochs=ENCODER_EPOCHS, batch_size=32, lr=1e-3,
                          random_state=SEED)
start = time.perf_counter()
fanogan.fit(X_train)
fanogan_fit = time.perf_counter() - start
start = time.perf_counter()
fanogan_scores = fanogan.score_samples(X_test)
fanogan_ms = 1000 * (time.perf_counter() - start) / len(X_test)
fanogan_auc = anomaly_roc_auc(y_test, fanogan_scores)
print(f"f-AnoGAN trained in {fanogan_fit:.1f} s; {fanogan_ms:.3f} ms per image, ROC AUC {fanogan_auc:.3f}")

# %% [markdown]
# ## Side by side

# %%
searched = anogan_results[SEARCH_STEPS]
speedup = searched["ms"] / fanogan_ms
print(f"{'':>26} | ms per image | ROC AUC")
print(f"{f'AnoGAN ({SEARCH_STEPS} search steps)':>26} | {searched['ms']:12.3f} | {searched['auc']:.3f}")
print(f"{'f-AnoGAN (encoder)':>26} | {fanogan_ms:12.3f} | {fanogan_auc:.3f}")
print(f"the encoder scores {speedup:.0f} times faster than the search")

fig, ax = plt.subplots(figsize=(5, 3.5))
ax.scatter([searched["ms"], fanogan_ms], [searched["auc"], fanogan_auc], color=["tab:red", "tab:blue"])
for x, y, name in [(searched["ms"], searched["auc"], "AnoGAN"), (fanogan_ms, fanogan_auc, "f-AnoGAN")]:
    ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5))
ax.set(xscale="log", xlabel="scoring time per image (ms, log scale)", ylabel="test ROC AUC",
       ylim=(0.3, 1.0), title="Speed and quality")
ax.axhline(0.5, color="k", linestyle=":")
fig.tight_layout()
plt.show()

# %% [markdown]
# The speed difference is structural: the search costs `n_search_steps` forward and
# backward passes per image, the encoder one forward pass, and the printed ratio
# measures it. That is what makes f-AnoGAN and P-AnoGAN usable on the tens of
# thousands of patches of a radiograph archive.
#
# Quality is another matter. At these budgets both AUCs are far below what the
# autoencoders of notebooks 1 and 2 reached on the same kind of phantoms in similar
# time: a GAN needs far more training than a CPU gives it in seconds (the default
# `FAnoGANDetector()` follows P-AnoGAN's schedule of 536,000 GAN iterations; here
# `FANOGAN_ITERATIONS`, a few hundred), and an encoder can only be as
# good as the generator it inverts. Which of the two detectors wins at a given
# budget is for validation data to say, as for any other choice.

# %% [markdown]
# ## Real films: JSRT patches (optional)
#
# The P-AnoGAN protocol cuts radiographs into patches and trains on patches of
# nodule-free films (notebook 4 explains it). Here, a small version: JSRT films at
# 256 px, 16 px patches of the lungs, and the same two detectors at the same tiny
# settings. Expect little: a patch that contains a nodule is a hard case, and the
# GANs are far from trained.

# %%
jsrt_dir = Path(DATA_DIR).expanduser() / "jsrt" if DATA_DIR else None
if jsrt_dir is None or not (jsrt_dir / "images").is_dir():
    print("No JSRT films: set SKANOMALY_DATA_DIR to a folder holding jsrt/ (images/, "
          "lung_masks/, metadata.csv) to run this part; skipped.")
else:
    from skanomaly.datasets import jsrt_patch_protocol

    jsrt = jsrt_patch_protocol(jsrt_dir, patch_size=16, stride=8, size=256, random_state=SEED)
    rng = np.random.default_rng(SEED)
    train_patches = jsrt.X_train[rng.choice(len(jsrt.X_train), min(1000, len(jsrt.X_train)), replace=False)]
    normal_test = np.flatnonzero(jsrt.y_test == 0)
    test_rows = np.r_[rng.choice(normal_test, min(400, len(normal_test)), replace=False),
                      np.flatnonzero(jsrt.y_test == 1)]
    X_patches, y_patches = jsrt.X_test[test_rows], jsrt.y_test[test_rows]
    print(f"{len(train_patches)} training patches of {len(jsrt.train_studies)} nodule-free films; "
          f"{len(X_patches)} test patches, {y_patches.sum()} containing a nodule centre")
    for name, model in [("AnoGAN", anogan), ("f-AnoGAN", fanogan)]:
        model = model.__class__(**model.get_params())  # same settings, new fit
        if name == "AnoGAN":
            model.set_params(n_search_steps=min(SEARCH_STEPS, 100))
        start = time.perf_counter()
        model.fit(train_patches)
        fitted = time.perf_counter() - start
        start = time.perf_counter()
        patch_auc = anomaly_roc_auc(y_patches, model.score_samples(X_patches))
        print(f"{name:>8}: trained in {fitted:.0f} s, scored in {time.perf_counter() - start:.1f} s, "
              f"patch ROC AUC {patch_auc:.3f}")

# %% [markdown]
# Compare the printed AUCs with 0.5. On real patches, at budgets a CPU affords,
# expect figures near chance: the papers trained their GANs for days on GPUs.
#
# **Next:** notebook 4 builds the patch pipeline (CLAHE, lung masks, patches, maps
# stitched back) that P-AnoGAN uses on whole radiographs.
