"""
The hand X-ray pipeline: FilmCrop, HandMasker, HistogramEqualization, Resize
============================================================================

The hand X-ray paper (Davletshina et al., 2020) found preprocessing decisive on
MURA: every model did best on fully preprocessed images. Its steps are transformers:

1. :class:`~skanomaly.preprocessing.FilmCrop` finds the film (the image carrier) by
   Otsu binarisation, takes the minimum-area rectangle of the largest contour (not
   necessarily axis-aligned) and warps it upright;
2. :class:`~skanomaly.preprocessing.HandMasker` masks the hand, the foreground: NaN
   outside it, so that the detectors' losses and scores ignore the background (the
   paper used Photoshop's "select subject"; this is Otsu's threshold, the largest
   component and its holes filled);
3. :class:`~skanomaly.preprocessing.HistogramEqualization` equalises the hand's
   histogram;
4. :class:`~skanomaly.preprocessing.Resize` brings every image to the network's size.

The package ships no hand radiographs, so this example draws cartoon ones: a hand
(palm and fingers, bones brighter) on a film, the film tilted on a dark background.
The drawing gives the truth to check each step against.
"""

import cv2
import matplotlib.pyplot as plt
import numpy as np
from sklearn.pipeline import make_pipeline

from skanomaly.preprocessing import FilmCrop, HandMasker, HistogramEqualization, Resize

rng = np.random.default_rng(0)
FILM = (120, 90)  # rows, columns of the upright film


def draw_film():
    """An upright film with a hand on it, and the hand's mask."""
    film = np.full(FILM, 0.5, np.float32)
    hand = np.zeros(FILM, np.uint8)
    cx, cy = FILM[1] // 2 + rng.integers(-6, 7), 78 + rng.integers(-5, 6)
    cv2.ellipse(hand, (int(cx), int(cy)), (22, 26), 0, 0, 360, 1, -1)
    for k, angle in enumerate(np.deg2rad([-150, -115, -95, -75, -55])):
        length = 38 if k else 26
        tip = (int(cx + length * 1.6 * np.cos(angle)), int(cy - 18 + length * 1.6 * np.sin(angle)))
        cv2.line(hand, (int(cx + 14 * np.cos(angle)), int(cy + 14 * np.sin(angle))), tip, 1, 9)
    bones = cv2.erode(hand, np.ones((5, 5), np.uint8))
    film[hand > 0] = 0.7
    film[bones > 0] = 0.8
    film += rng.normal(0, 0.02, FILM).astype(np.float32)
    return np.clip(film, 0, 1), hand.astype(bool)


def photograph(film, angle):
    """The film tilted by ``angle`` degrees on a dark background (as scanned)."""
    canvas = 160
    matrix = cv2.getRotationMatrix2D((FILM[1] / 2, FILM[0] / 2), angle, 1.0)
    matrix[:, 2] += [(canvas - FILM[1]) / 2, (canvas - FILM[0]) / 2]
    image = cv2.warpAffine(film, matrix, (canvas, canvas), flags=cv2.INTER_LINEAR, borderValue=0.02)
    return np.clip(image + rng.normal(0, 0.01, image.shape), 0, 1).astype(np.float32)


films, hands = zip(*[draw_film() for _ in range(6)])
angles = rng.uniform(-25, 25, size=6)
photos = np.stack([photograph(f, a) for f, a in zip(films, angles)])

# %%
# Step by step. ``output_size`` is the film's size and ``pad_to_square=False``, so the
# crop can be compared with the drawn film pixel by pixel.
crop = FilmCrop(output_size=FILM, pad_to_square=False).fit_transform(photos)
correlation = [np.corrcoef(c.ravel(), f.ravel())[0, 1] for c, f in zip(crop, films)]
print(f"tilts {np.round(angles).astype(int)} degrees")
print(f"min correlation of a crop with its upright film: {min(correlation):.3f}")

masked = HandMasker().fit_transform(crop)
found = np.isfinite(masked)
dice = [2 * (a & b).sum() / (a.sum() + b.sum()) for a, b in zip(found, hands)]
print(f"mean Dice of HandMasker against the drawn hands: {np.mean(dice):.3f}")

# %%
# As one pipeline, to the network's size: the film padded to a square (NaN: outside
# the region of interest), the hand masked and equalised, 64 x 64.
pipeline = make_pipeline(FilmCrop(), HandMasker(), HistogramEqualization(), Resize(64))
ready = pipeline.fit_transform(photos)
print(f"ready for a detector: {ready.shape}, {np.isfinite(ready).mean():.0%} of pixels in the hands")

fig, axes = plt.subplots(3, 4, figsize=(10, 7.6))
for column in range(4):
    axes[0, column].imshow(photos[column], cmap="gray", vmin=0, vmax=1)
    axes[0, column].set_title(f"scanned, tilt {angles[column]:.0f} deg", fontsize=8)
    axes[1, column].imshow(masked[column], cmap="gray", vmin=0, vmax=1)
    axes[1, column].contour(hands[column], levels=[0.5], colors="cyan", linewidths=0.8)
    axes[1, column].set_title(f"FilmCrop + HandMasker, Dice {dice[column]:.2f}", fontsize=8)
    axes[2, column].imshow(ready[column], cmap="gray", vmin=0, vmax=1)
    axes[2, column].set_title("+ equalised, 64 x 64", fontsize=8)
for ax in axes.ravel():
    ax.set_axis_off()
fig.tight_layout()
plt.show()
