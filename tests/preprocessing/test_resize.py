"""Resize: interpolation per direction, NaN-aware resampling, size forms."""

import cv2
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from skanomaly.preprocessing import Resize


def images(n=2, shape=(16, 16), seed=0):
    return np.random.default_rng(seed).random((n, *shape)).astype(np.float32)


def test_shrinking_averages_blocks():
    X = images(2, (16, 12))
    out = Resize((8, 6)).fit_transform(X)
    assert_allclose(out, X.reshape(2, 8, 2, 6, 2).mean(axis=(2, 4)), rtol=1e-6)


def test_enlarging_is_bilinear():
    X = images(1, (5, 7))
    out = Resize((11, 13)).fit_transform(X)
    assert_allclose(out[0], cv2.resize(X[0], (13, 11), interpolation=cv2.INTER_LINEAR))


def test_mixed_directions_treat_each_axis_on_its_own():
    X = images(1, (16, 5))
    out = Resize((8, 9)).fit_transform(X)[0]
    rows_averaged = X[0].reshape(8, 2, 5).mean(axis=1)
    expected = cv2.resize(rows_averaged, (9, 8), interpolation=cv2.INTER_LINEAR)
    assert_allclose(out, expected, rtol=1e-5)


def test_same_size_is_a_copy():
    X = images()
    out = Resize(16).fit_transform(X)
    assert_array_equal(out, X)
    assert not np.shares_memory(out, X)


def test_nan_does_not_bleed_into_the_roi():
    X = images(1, (8, 8))
    X[0, :4, :4] = np.nan
    X[0, 4, 4] = np.nan  # one NaN of four: that block's mean skips it
    X[0, 6:8, 0] = np.nan  # two of four: coverage 0.5 is kept
    X[0, 0:2, 6:8] = [[np.nan, np.nan], [np.nan, 1.0]]  # three of four: NaN
    out = Resize(4).fit_transform(X)[0]
    assert np.isnan(out[:2, :2]).all()
    assert_allclose(out[2, 2], np.nanmean(X[0, 4:6, 4:6]), rtol=1e-6)
    assert_allclose(out[3, 0], np.nanmean(X[0, 6:8, 0:2]), rtol=1e-6)
    assert np.isnan(out[0, 3])
    assert np.isfinite(out[2:, :]).all() and np.isfinite(out[:2, 2]).all()


def test_nan_aware_enlarging_keeps_values_in_range():
    X = images(1, (10, 10))
    X[0, :, :5] = np.nan
    out = Resize(40).fit_transform(X)[0]
    roi = ~np.isnan(out)
    assert np.isnan(out[:, :18]).all() and roi[:, 22:].all()
    assert out[roi].min() >= np.nanmin(X) - 1e-6 and out[roi].max() <= np.nanmax(X) + 1e-6


@pytest.mark.parametrize(
    "size, shape, expected",
    [(5, (10, 20), (5, 5)), ((5, 8), (10, 20), (5, 8)), ((5, -1), (10, 20), (5, 10)),
     ((-1, 30), (10, 20), (15, 30)), ([4, -1], (3, 3), (4, 4))],
)
def test_size_forms(size, shape, expected):
    assert Resize(size).fit_transform(images(1, shape)).shape == (1, *expected)


def test_flattened_input():
    X = images(3, (4, 4)).reshape(3, -1)
    assert Resize(4).fit_transform(X).shape == (3, 16)  # same size: stays flat
    assert Resize(2).fit_transform(X).shape == (3, 2, 2)


@pytest.mark.parametrize("size", [0, -3, (0, 4), (2, 3, 4), (-1, -1), (2.5, 3), "big", None])
def test_bad_size(size):
    with pytest.raises(ValueError, match="size"):
        Resize(size).fit(images())


def test_bad_input():
    with pytest.raises(ValueError, match="grayscale"):
        Resize(4).fit(np.zeros((2, 8, 8, 3)))
