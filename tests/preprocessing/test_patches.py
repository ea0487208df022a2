"""PatchExtractor: grid, absent patches, labels, stitching back, bad input."""

import pickle
import tracemalloc

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from skanomaly.preprocessing import CLAHE, PatchExtractor


def images(n=3, shape=(20, 24), seed=0):
    return np.random.default_rng(seed).random((n, *shape)).astype(np.float32)


def naive_stitch(extractor, bags):
    """Reference for inverse_transform: one patch at a time."""
    n = bags.shape[0]
    p = extractor.patch_size
    total = np.zeros((n, *extractor.image_shape_))
    count = np.zeros((n, *extractor.image_shape_))
    for k, (r, c) in enumerate(extractor.patch_positions_):
        valid = ~np.isnan(bags[:, k])
        total[:, r : r + p, c : c + p] += np.where(valid, bags[:, k], 0)
        count[:, r : r + p, c : c + p] += valid
    with np.errstate(invalid="ignore"):
        return total / count


@pytest.mark.parametrize(
    "shape, p, stride, rows, cols",
    [
        ((8, 8), 4, None, [0, 4], [0, 4]),
        ((10, 13), 4, 3, [0, 3, 6], [0, 3, 6, 9]),  # 9 + 4 = 13: no flush patch
        ((10, 14), 4, 3, [0, 3, 6], [0, 3, 6, 9, 10]),  # flush patch at 14 - 4
        ((9, 9), 4, None, [0, 4, 5], [0, 4, 5]),
        ((7, 7), 7, 2, [0], [0]),
    ],
)
def test_grid_positions(shape, p, stride, rows, cols):
    extractor = PatchExtractor(p, stride=stride).fit(images(1, shape))
    expected = np.array([(r, c) for r in rows for c in cols])
    assert_array_equal(extractor.patch_positions_, expected)
    assert extractor.n_patches_ == len(expected)
    assert extractor.image_shape_ == shape


@pytest.mark.parametrize("stride", [None, 1, 3, 5, 8])
def test_every_pixel_is_covered_when_stride_at_most_patch(stride):
    extractor = PatchExtractor(5, stride=stride).fit(images(1, (17, 23)))
    covered = np.zeros((17, 23), bool)
    for r, c in extractor.patch_positions_:
        covered[r : r + 5, c : c + 5] = True
    assert covered.all() or stride == 8


def test_bags_hold_the_patches_of_each_image():
    X = images(3, (20, 24))
    extractor = PatchExtractor(6, stride=4)
    bags = extractor.fit_transform(X)
    assert bags.shape == (3, extractor.n_patches_, 6, 6) and bags.dtype == np.float32
    for k, (r, c) in enumerate(extractor.patch_positions_):
        assert_array_equal(bags[:, k], X[:, r : r + 6, c : c + 6])
    assert bags.flags.c_contiguous and not np.shares_memory(bags, X)


def test_flattened_input():
    X = images(2, (12, 12))
    bags = PatchExtractor(4).fit_transform(X.reshape(2, -1))
    assert_array_equal(bags, PatchExtractor(4).fit_transform(X))


def test_absent_patches_follow_min_roi_fraction():
    X = images(2, (8, 8))
    X[0, :, :3] = np.nan  # patches at column 0 keep 1 of 4 columns: 25 % ROI
    X[0, 4:, 4:6] = np.nan  # bottom-right patch: 50 % ROI
    bags = PatchExtractor(4, min_roi_fraction=0.5).fit_transform(X)
    absent = np.isnan(bags).all(axis=(2, 3))
    assert_array_equal(absent[0], [True, False, True, False])
    assert not absent[1].any()
    # Present patches keep their own NaN pixels.
    assert np.isnan(bags[0, 3]).sum() == 8
    strict = PatchExtractor(4, min_roi_fraction=0.6).fit_transform(X)
    assert_array_equal(np.isnan(strict).all(axis=(2, 3))[0], [True, False, True, True])
    keep_all = PatchExtractor(4, min_roi_fraction=0.0).fit_transform(X)
    assert np.isnan(keep_all).sum() == np.isnan(X).sum()


def test_empty_roi_is_an_error():
    X = images(3, (8, 8))
    X[1, :, :] = np.nan
    X[1, 0, 0] = 0.5  # one ROI pixel: no patch reaches 50 %
    with pytest.raises(ValueError, match=r"Empty ROI.*indices 1\b.*min_roi_fraction"):
        PatchExtractor(4).fit_transform(X)


def test_transform_requires_the_fitted_size():
    extractor = PatchExtractor(4).fit(images(1, (8, 8)))
    with pytest.raises(ValueError, match="fitted on 8x8.*got 8x12.*Resize"):
        extractor.transform(images(1, (8, 12)))


@pytest.mark.parametrize(
    "params, X, match",
    [
        (dict(patch_size=9), images(1, (8, 12)), "patch_size=9 is larger than the 8x12"),
        (dict(stride=0), images(1, (8, 8)), "stride"),
        (dict(stride=-2), images(1, (8, 8)), "stride"),
        (dict(min_roi_fraction=1.5), images(1, (8, 8)), "min_roi_fraction"),
        (dict(min_roi_fraction=-0.1), images(1, (8, 8)), "min_roi_fraction"),
        (dict(patch_size=0), images(1, (8, 8)), "patch_size"),
        (dict(), np.zeros(16), "1-D"),
        (dict(), np.zeros((2, 8, 8, 3)), "RGB|grayscale"),
        (dict(), np.zeros((2, 2, 2, 2, 2)), "5-D"),
    ],
)
def test_bad_parameters_and_input(params, X, match):
    params = {"patch_size": 4, **params}
    with pytest.raises(ValueError, match=match):
        PatchExtractor(**params).fit_transform(X)


@pytest.mark.parametrize(
    "shape, p, stride", [((8, 8), 4, 2), ((10, 13), 4, 3), ((11, 14), 3, 5), ((17, 9), 5, None)]
)
def test_inverse_transform_matches_a_patch_by_patch_stitch(shape, p, stride):
    X = images(3, shape)
    X[0, : shape[0] // 2, : shape[1] // 3] = np.nan
    extractor = PatchExtractor(p, stride=stride)
    bags = extractor.fit_transform(X)
    maps = bags * 2 + np.arange(extractor.n_patches_, dtype=np.float32)[:, None, None]
    expected = naive_stitch(extractor, maps)
    assert_allclose(extractor.inverse_transform(maps), expected, equal_nan=True)


def test_round_trip_is_exact_inside_the_covered_roi():
    X = images(2, (40, 44))
    yy, xx = np.mgrid[:40, :44]
    X[0][(yy - 20) ** 2 + (xx - 22) ** 2 > 15**2] = np.nan
    extractor = PatchExtractor(8, stride=4, min_roi_fraction=0.9)
    bags = extractor.fit_transform(X)
    back = extractor.inverse_transform(bags)
    covered = ~np.isnan(back)
    assert_array_equal(back[covered], X[covered])
    assert covered[1].all()  # no NaN, every patch present
    # Pixels outside the ROI, or only in absent patches, are NaN.
    assert np.isnan(back[0][np.isnan(X[0])]).all()
    assert np.isnan(back[0]).sum() > np.isnan(X[0]).sum()


def test_inverse_transform_of_patch_scores_and_dtypes():
    extractor = PatchExtractor(2, stride=1).fit(np.zeros((1, 3, 3)))
    scores = np.arange(4.0).reshape(1, 4)
    assert_allclose(
        extractor.inverse_transform(scores)[0],
        [[0, 0.5, 1], [1, 1.5, 2], [2, 2.5, 3]],
    )
    assert extractor.inverse_transform(scores).dtype == np.float64
    assert extractor.inverse_transform(scores.astype(np.float32)).dtype == np.float32
    scores[0, 0] = np.nan  # an absent patch: the others fill in where they cover
    stitched = extractor.inverse_transform(scores)[0]
    assert np.isnan(stitched[0, 0]) and stitched[0, 1] == 1.0


def test_inverse_transform_bad_shape():
    extractor = PatchExtractor(2).fit(np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match=r"\(n_samples, 4, 2, 2\)"):
        extractor.inverse_transform(np.zeros((1, 5, 2, 2)))
    with pytest.raises(ValueError, match=r"\(n_samples, 4\)"):
        extractor.inverse_transform(np.zeros((1, 3)))


def test_patch_labels_mark_the_patches_holding_the_point():
    X = images(3, (16, 16))
    extractor = PatchExtractor(8, stride=4).fit(X)
    points = np.array([[5.0, 10.0], [15.2, 0.4], [np.nan, np.nan]])  # (x, y)
    labels = extractor.patch_labels(points)
    assert labels.shape == (3, extractor.n_patches_) and labels.dtype.kind == "i"
    # The same thing seen through the bags: mark the pixel, find the patches.
    marked = np.zeros_like(X)
    marked[0, 10, 5] = marked[1, 0, 15] = 1
    holds = extractor.transform(marked).max(axis=(2, 3)) > 0
    assert_array_equal(labels, holds.astype(int))
    assert labels[0].sum() == 4 and labels[2].sum() == 0


def test_patch_labels_several_points_per_image():
    extractor = PatchExtractor(4).fit(np.zeros((1, 8, 8)))
    points = [[[0, 0], [7, 7]], [[1, 6], [np.nan, np.nan]]]
    assert_array_equal(extractor.patch_labels(points), [[1, 0, 0, 1], [0, 0, 1, 0]])


def test_patch_labels_bad_points():
    extractor = PatchExtractor(4).fit(np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match="outside the 8x8"):
        extractor.patch_labels([[8.0, 1.0]])
    with pytest.raises(ValueError, match=r"shape \(n_samples, 2\)"):
        extractor.patch_labels([1.0, 2.0])
    with pytest.raises(ValueError, match="inf"):
        extractor.patch_labels([[np.inf, 1.0]])
    with pytest.raises(ValueError, match="numbers"):
        extractor.patch_labels([["a", "b"]])


def test_transform_makes_no_copy_beyond_the_bag():
    X = images(4, (256, 256))
    X[:, :, :40] = np.nan  # the coverage path runs too
    extractor = PatchExtractor(32, stride=8).fit(X)
    tracemalloc.start()
    bags = extractor.transform(X)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # Allow the bag plus the ROI mask, the integral images and the validation's
    # scans (a few image-sized arrays), but not a second bag.
    assert peak < bags.nbytes + 8 * X.nbytes


def test_in_a_pipeline_and_pickled():
    X = images(4, (32, 32))
    pipe = Pipeline([("clahe", CLAHE(kernel_size=8)), ("patch", PatchExtractor(8, stride=4))])
    bags = pipe.fit_transform(X)
    assert bags.shape[0] == 4
    again = pickle.loads(pickle.dumps(pipe))
    assert_array_equal(again.transform(X), bags)
    assert_array_equal(clone(pipe).fit_transform(X), bags)
