"""Synthetic chest phantoms: layout, determinism, and that nodules need anatomy to find."""

import time

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from skanomaly.datasets._phantoms import make_chest_phantoms


@pytest.fixture(scope="module")
def phantoms():
    return make_chest_phantoms(300, image_size=64, random_state=0)


@pytest.mark.parametrize("size", [16, 64, 100])
def test_layout_dtype_and_range(size):
    data = make_chest_phantoms(6, image_size=size, random_state=0)
    assert data.images.shape == data.masks.shape == (6, size, size)
    assert data.images.dtype == np.float32
    assert data.masks.dtype == bool
    assert data.labels.shape == (6,) and data.labels.dtype.kind == "i"
    assert data.centers.shape == (6, 2) and data.radii.shape == (6,)
    assert np.isfinite(data.images).all()
    assert data.images.min() >= 0 and data.images.max() <= 1
    assert data.masks.any(axis=(1, 2)).all()


def test_deterministic_given_random_state():
    a = make_chest_phantoms(20, random_state=3)
    b = make_chest_phantoms(20, random_state=np.random.RandomState(3))
    c = make_chest_phantoms(20, random_state=4)
    for key in ("images", "masks", "labels", "centers"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a.images, c.images)


def test_global_rng_untouched():
    np.random.seed(0)
    state = np.random.get_state()[1].copy()
    a = make_chest_phantoms(5)
    b = make_chest_phantoms(5)
    make_chest_phantoms(5, random_state=1)
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    assert not np.array_equal(a.images, b.images)


@pytest.mark.parametrize("n, fraction", [(10, 0.5), (7, 0.3), (1, 0.0), (5, 1.0), (33, 0.1)])
def test_exact_anomaly_count(n, fraction):
    data = make_chest_phantoms(n, image_size=32, anomaly_fraction=fraction, random_state=0)
    assert data.labels.sum() == round(fraction * n)
    assert set(np.unique(data.labels)) <= {0, 1}


def test_labels_shuffled(phantoms):
    labels = phantoms.labels
    assert labels.sum() == 150
    # Not sorted: abnormal images are spread through the set.
    assert 0 < labels[:150].sum() < 150


def test_centers_inside_lungs(phantoms):
    normal, abnormal = phantoms.labels == 0, phantoms.labels == 1
    assert np.isnan(phantoms.centers[normal]).all() and np.isnan(phantoms.radii[normal]).all()
    assert np.isfinite(phantoms.centers[abnormal]).all()
    size = phantoms.images.shape[-1]
    for mask, (x, y) in zip(phantoms.masks[abnormal], phantoms.centers[abnormal]):
        assert 0 <= x < size and 0 <= y < size
        assert mask[int(round(y)), int(round(x))]


def test_two_lungs_right_one_larger(phantoms):
    counts = [ndimage.label(m)[1] for m in phantoms.masks[:50]]
    assert np.mean(np.equal(counts, 2)) > 0.9
    half = phantoms.masks.shape[-1] // 2
    # The patient's right lung is on the image's left.
    right = phantoms.masks[:, :, :half].sum(axis=(1, 2))
    left = phantoms.masks[:, :, half:].sum(axis=(1, 2))
    assert (right > left).mean() > 0.9
    # Lung fields are darker than the mediastinum, heart and domes around them.
    for image, mask in zip(phantoms.images, phantoms.masks):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        assert image[box][mask[box]].mean() < image[box][~mask[box]].mean()


def _local_contrast(data):
    size = data.images.shape[-1]
    yy, xx = np.mgrid[:size, :size]
    contrast = []
    for image, (x, y), r in zip(
        data.images[data.labels == 1], data.centers[data.labels == 1], data.radii[data.labels == 1]
    ):
        dist = np.hypot(xx - x, yy - y)
        disc = image[dist <= 0.5 * r].mean()
        ring = image[(dist >= 1.5 * r) & (dist <= 2.5 * r)].mean()
        contrast.append(disc - ring)
    return np.array(contrast)


def test_nodules_visible_locally(phantoms):
    contrast = _local_contrast(phantoms)
    # Measured: mean 0.076, 94 % positive (the rest sit on a rib crossing).
    assert contrast.mean() > 0.04
    assert (contrast > 0).mean() > 0.85


def test_nodules_not_globally_thresholdable(phantoms):
    flat = phantoms.images.reshape(len(phantoms.images), -1)
    for statistic in (flat.max(axis=1), flat.mean(axis=1), np.percentile(flat, 99, axis=1)):
        auc = roc_auc_score(phantoms.labels, statistic)
        assert 0.3 < auc < 0.7


def test_image_size_256():
    data = make_chest_phantoms(4, image_size=256, random_state=0)
    assert data.images.shape == (4, 256, 256)
    assert _local_contrast(data).mean() > 0.04


def test_fast():
    start = time.perf_counter()
    make_chest_phantoms(1000, image_size=64, random_state=0)
    # About 0.5 s on a free 2-core CPU; generous for a shared machine.
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_samples=0), "n_samples must be an integer >= 1"),
        (dict(n_samples=2.5), "n_samples must be an integer >= 1"),
        (dict(n_samples="10"), "n_samples must be an integer >= 1"),
        (dict(image_size=15), "image_size must be an integer >= 16"),
        (dict(image_size=64.0), "image_size must be an integer >= 16"),
        (dict(anomaly_fraction=-0.1), r"anomaly_fraction must be a number in \[0, 1\]"),
        (dict(anomaly_fraction=1.5), r"anomaly_fraction must be a number in \[0, 1\]"),
        (dict(anomaly_fraction=float("nan")), r"anomaly_fraction must be a number in \[0, 1\]"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_chest_phantoms(**kwargs)
