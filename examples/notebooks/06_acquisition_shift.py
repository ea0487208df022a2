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
# # 6. Why reconstruction detectors fail under acquisition shift, and what holds
#
# A detector trained on the normal films of one hospital meets, sooner or later, films
# from another machine: brighter or darker, flatter or harsher, with another detector
# gain or another look-up table. Nothing about the anatomy has changed. A
# reconstruction detector (CAE, VAE, f-AnoGAN) scores each film by how far its pixels
# are from what it learnt, and grey levels it never saw are far: **its score measures
# exposure as much as anatomy.** On the pediatric films this is no hypothesis: a
# detector's AUC of about 0.8 on a split of the training folder fell to about 0.6 on
# films of another acquisition period, below a statistic of two numbers per film.
#
# In this notebook you will
#
# 1. train a CAE and the package's `SyntheticAnomalyDetector` on phantoms from
#    "machine A";
# 2. show both the same films as "machine B" would expose them, and watch the CAE's
#    false alarms and AUC move while the other's scores stay *identical*;
# 3. see the two-number **exposure baseline**, and why every report should show it;
# 4. (optional, with the data) run the pediatric acquisition-shift protocol.

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

N_TRAIN = 200 if QUICK else 400
N_TEST = 200 if QUICK else 400
SIZE = 16 if QUICK else 32
EPOCHS = 15 if QUICK else 30

np.random.seed(SEED)
torch.manual_seed(SEED)
print(f"quick settings: {QUICK}; {N_TRAIN} training images, {EPOCHS} epochs, {SIZE} px")

# %%
from skanomaly.datasets import make_chest_phantoms
from skanomaly.metrics import anomaly_roc_auc, intensity_baseline_scores

train = make_chest_phantoms(N_TRAIN, image_size=SIZE, anomaly_fraction=0.0, random_state=SEED)
test = make_chest_phantoms(N_TEST, image_size=SIZE, anomaly_fraction=0.5, random_state=SEED + 1)


def lungs_only(data):
    """NaN outside the lungs: the detectors learn and score the lungs only."""
    return np.where(data.masks, data.images, np.nan).astype(np.float32)


X_train, X_test, y_test = lungs_only(train), lungs_only(test), test.labels
print(f"{len(X_train)} normal training films; {len(X_test)} test films, {y_test.sum()} with a nodule")

# %% [markdown]
# ## Machine B
#
# Machine B sees the same chests. Its films are darker and harsher (a higher gain
# behind another offset): every grey level `p` becomes `1.15 p - 0.15`. The change is
# monotone (darker stays darker), so every edge, rib and nodule is where it was; only
# the grey scale moved. (A brighter, flatter machine fools the CAE the other way: its
# films reconstruct *better*, and it misses disease on them.)

# %%
def machine_b(films):
    return (1.15 * films - 0.15).astype(np.float32)


X_test_b = machine_b(X_test)
fig, axes = plt.subplots(1, 4, figsize=(8, 2.2))
for ax, image, title in zip(axes, [X_test[0], X_test_b[0], X_test[1], X_test_b[1]],
                            ["A", "B", "A", "B"]):
    ax.imshow(image, cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"machine {title}", fontsize=9)
    ax.axis("off")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Two detectors
#
# The CAE learns to reconstruct normal lungs and scores the squared error. The
# synthetic-anomaly detector never reconstructs: it pastes anomalies into normal
# films (a region blended towards the same region of another film, or a smooth
# opacity) and learns to segment them, and it **histogram-equalises each film inside
# its region of interest** before the network sees it. Equalisation replaces each grey
# level by its rank among the film's grey levels, and a monotone change of exposure
# leaves every rank where it was.

# %%
from skanomaly.detectors import CAEDetector, SyntheticAnomalyDetector

detectors = {
    "CAE": CAEDetector(channels=(16, 32), anomaly_score="mse", augment=None, lr=2e-3,
                       max_epochs=EPOCHS, random_state=SEED),
    "synthetic anomalies": SyntheticAnomalyDetector(base_channels=8, depth=2, max_epochs=EPOCHS,
                                                    max_anomaly_size=0.25, random_state=SEED),
}
for name, det in detectors.items():
    start = time.perf_counter()
    det.fit(X_train)
    print(f"{name}: trained in {time.perf_counter() - start:.0f} s")

# %% [markdown]
# ## The same films, four ways
#
# * **same machine**: all test films from A, as in training;
# * **new machine**: all from B;
# * **sick on B**: films with a nodule from B, normal ones from A (the sick children
#   imaged on the portable machine, say);
# * **sick on A**: the other way round.
#
# And beside each detector, the exposure baseline: minus the Mahalanobis distance of
# each film's mean and standard deviation from those of the training films. It knows
# nothing of anatomy.

# %%
sick = y_test == 1
scenarios = {
    "same machine": X_test,
    "new machine": X_test_b,
    "sick on B": np.where(sick[:, None, None], X_test_b, X_test),
    "sick on A": np.where(sick[:, None, None], X_test, X_test_b),
}
scorers = {name: det.score_samples for name, det in detectors.items()}
scorers["exposure baseline"] = lambda films: intensity_baseline_scores(X_train, films)
auc = {name: {s: anomaly_roc_auc(y_test, score(films)) for s, films in scenarios.items()}
       for name, score in scorers.items()}
print(f"{'ROC AUC':>20} " + " ".join(f"{s:>13}" for s in scenarios))
for name, row in auc.items():
    print(f"{name:>20} " + " ".join(f"{row[s]:13.3f}" for s in scenarios))

# %% [markdown]
# Read the rows. The CAE's AUC moves with the scenario: where the sick films come from
# another machine than the healthy ones, it ranks them by machine. The baseline does
# the same, more cleanly: it *is* a machine detector. The synthetic-anomaly detector
# gives the same figure four times, because its scores are the same numbers.
#
# ## False alarms at the trained threshold
#
# A deployed detector flags a film when its score falls below `offset_`, set on the
# training films. On machine B, how many normal films does each flag?

# %%
false_alarms = {}
for name, det in detectors.items():
    false_alarms[name] = {machine: float(np.mean(det.predict(films[~sick]) == -1))
                          for machine, films in (("A", X_test), ("B", X_test_b))}
    print(f"{name:>20}: normal films flagged on A {false_alarms[name]['A']:.1%}, "
          f"on B {false_alarms[name]['B']:.1%}")
identical = {name: bool(np.array_equal(det.score_samples(X_test), det.score_samples(X_test_b)))
             for name, det in detectors.items()}
print("scores identical on A and B:", identical)

# %% [markdown]
# The CAE flags normal films of machine B several times as often as those of A (with
# the quick settings, about 30 % against 11 %): their grey levels are not the ones it
# learnt to reconstruct, and its threshold, set on A, no longer means what it did. The
# synthetic-anomaly detector flags exactly what it flagged on A.
#
# ## What the score tracks
#
# Each normal test film exists twice, as machine A and as machine B exposed it. How
# far does the change of machine move a film's anomaly score, in standard deviations
# of the scores of normal films on A? A detector whose score moves with the machine
# fails on a new one (the benchmark's diagnosis table measures the same thing on real
# films, as correlations with exposure and contrast).

# %%
moved, t_statistic = {}, {}
for name, score in scorers.items():
    on_a, on_b = -score(X_test[~sick]), -score(X_test_b[~sick])
    change = on_b - on_a
    moved[name] = float(change.mean() / on_a.std())
    spread = change.std(ddof=1)
    t_statistic[name] = float(change.mean() / (spread / np.sqrt(len(change)))) if spread > 0 else 0.0
    print(f"{name:>20}: machine B moves a normal film's anomaly by {moved[name]:+.2f} standard "
          f"deviations (paired t = {t_statistic[name]:+.1f})")

fig, axes = plt.subplots(1, 2, figsize=(7, 3))
for ax, (name, det) in zip(axes, detectors.items()):
    ax.scatter(-det.score_samples(X_test[~sick]), -det.score_samples(X_test_b[~sick]), s=6)
    low, high = ax.get_xlim()
    ax.plot([low, high], [low, high], ":", color="gray")
    ax.set(title=name, xlabel="anomaly on machine A", ylabel="anomaly on machine B")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## What holds, and what does not
#
# * Exposure invariance is bought, not learnt: equalisation inside the region of
#   interest removes every monotone grey-scale change before the network. CLAHE,
#   global equalisation and intensity augmentation in front of a CAE do not rescue it
#   on real films (`benchmarks/bench_shift.py`): a reconstruction detector also copies,
#   and pneumonia films reconstruct well.
# * On real films of another exposure, the change is more than monotone, and there
#   the synthetic-anomaly *task* is what holds: with standardised instead of equalised
#   input the detector did as well on the benchmark's shift protocol.
# * It does not make a detector see what a film does not show. A change that is not
#   monotone (another scatter grid, a new post-processing that sharpens edges) still
#   reaches the network; the pediatric protocol below holds out real films of another
#   exposure, not a simulated one, for that reason.
# * Always put the exposure baseline beside a detector's figure: `skanomaly evaluate`
#   prints it. A detector not clearly above it has learnt exposure.

# %% [markdown]
# ## Optional: the pediatric acquisition-shift protocol
#
# `acquisition_shift_split` places every film on the main axis of its grey-level
# statistics (exposure and contrast, found without labels) and holds out the
# brightest quarter of each class's patients, as a new machine's films. Training and
# validation never see them.

# %%
ped_dir = Path(DATA_DIR) / "pediatric_cxr" if DATA_DIR else None
if ped_dir is None or not (ped_dir / "train").is_dir():
    print("No pediatric_cxr folder: set SKANOMALY_DATA_DIR to run this part.")
else:
    from skanomaly.datasets import load_pediatric_cxr
    from skanomaly.metrics import sensitivity_at_specificity
    from skanomaly.model_selection import acquisition_shift_split

    films = load_pediatric_cxr(ped_dir, split="train", size=64)
    train_idx, held_out = acquisition_shift_split(films.images, films.labels, films.patient_ids)
    y_held = films.labels[held_out]
    print(f"train on {len(train_idx)} normal films; test on {len(held_out)} held-out films "
          f"({int((y_held == 0).sum())} normal, {int(y_held.sum())} pneumonia)")
    from sklearn.pipeline import make_pipeline

    from skanomaly.preprocessing import LungMasker

    # The package's recipe for chest films: the lung fields only, opacities as the
    # synthetic anomalies (what pneumonia looks like: the lung whitens).
    ped_det = make_pipeline(
        LungMasker(),
        SyntheticAnomalyDetector(anomaly_kinds="opacity", base_channels=16, depth=3,
                                 max_epochs=5 if QUICK else 15, random_state=SEED),
    )
    start = time.perf_counter()
    ped_det.fit(films.images[train_idx])
    ped_scores = ped_det.score_samples(films.images[held_out])
    base_scores = intensity_baseline_scores(films.images[train_idx], films.images[held_out])
    print(f"trained in {time.perf_counter() - start:.0f} s")
    for name, s in (("synthetic anomalies", ped_scores), ("exposure baseline", base_scores)):
        print(f"{name:>20}: held-out ROC AUC {anomaly_roc_auc(y_held, s):.3f}, sensitivity at 90 % "
              f"specificity {sensitivity_at_specificity(y_held, s, specificity=0.9):.3f}")

# %% [markdown]
# With the benchmark's settings (15 epochs; `benchmarks/README.md`) this recipe
# reaches 0.83 to 0.87 on the held-out films over five training seeds (mean 0.85),
# where the baseline stays near 0.73 and the reconstruction detectors fall below it.
# The same detector on whole films with both kinds of synthetic anomaly spread from
# 0.64 to 0.87 (mean 0.78): a synthetic task is a proxy, and one seed in five learned
# one that did not transfer to pneumonia. Making the proxy look like the disease
# (opacities) and the place like where it occurs (the lungs) narrowed the spread; the
# choice was made on validation films, never on the held-out ones. It also narrows
# what the model can find: an opacity detector is not built for a darker lung
# (pneumothorax). Judge each trained model on validation films of your own. Small
# nodules on JSRT are another matter: the benchmark says where the method stops working.
#
# **Back to:** notebook 1, whose exposure baseline you can now read as the floor every
# detector must clear.
