"""CLAHE against scikit-image's reference, and global histogram equalisation."""

import cv2
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.ndimage import gaussian_filter

from skanomaly.preprocessing import CLAHE, HistogramEqualization

exposure = pytest.importorskip("skimage.exposure")


def radiograph_like(shape, seed=0, noise=0.02):
    """Two dark 'lungs', rib-like bands and fine noise on a bright background."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    image = 0.7 - 0.4 * ((((xx - 0.3) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2) < 1)
    image -= 0.4 * ((((xx - 0.7) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2) < 1)
    image += 0.1 * (np.sin(40 * yy + 3 * xx) > 0.7)
    image = gaussian_filter(image, max(h, w) / 100)
    image += noise * gaussian_filter(rng.standard_normal((h, w)), 1)
    return image.astype(np.float32)


def smooth_phantom(shape, seed=0):
    """Low-frequency shading plus a bright blob and mild noise."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    image = 0.3 + 0.2 * np.sin(6 * xx) * np.cos(4 * yy)
    image += 0.3 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.4) ** 2) / 0.05)
    image += 0.05 * rng.standard_normal((h, w))
    return gaussian_filter(image, 1.5).astype(np.float32)


def agreement(shape, kernel_size, clip_limit, nbins, make):
    image = make(shape)
    ours = CLAHE(kernel_size=kernel_size, clip_limit=clip_limit, nbins=nbins)
    ours = ours.fit_transform(image[None])[0]
    reference = exposure.equalize_adapthist(
        image.astype(np.float64), kernel_size=kernel_size, clip_limit=clip_limit, nbins=nbins
    )
    mad = np.abs(ours - reference).mean()
    corr = np.corrcoef(ours.ravel(), reference.ravel())[0, 1]
    return mad, corr


# The comments give the measured (mad, corr) for the two test images (OpenCV 5,
# scikit-image 0.26); the bounds leave a margin. The one systematic difference left
# is how the clipped excess is redistributed (see CLAHE's Notes): tight without
# clipping, looser at the paper's clip_limit=0.01 with small, peaked tiles.
@pytest.mark.parametrize("make", [radiograph_like, smooth_phantom])
@pytest.mark.parametrize(
    "shape, kernel_size, clip_limit, nbins, max_mad, min_corr",
    [
        ((256, 256), 32, 0.0, 256, 0.003, 0.9999),  # .0012 .99997 / .0012 .99995
        ((256, 256), 32, 0.01, 256, 0.04, 0.985),  # .032 .9933 / .027 .9903
        ((512, 512), 128, 0.01, 256, 0.02, 0.995),  # .012 .9985 / .0097 .9981
        ((300, 400), 64, 0.02, 256, 0.01, 0.999),  # .0055 .9997 / .0050 .9994
        ((200, 333), (50, 70), 0.02, 128, 0.02, 0.995),  # .013 .9985 / .013 .9971
        ((256, 256), 64, 0.05, 256, 0.006, 0.9995),  # .0036 .9998 / .0012 .99998
        ((256, 256), 64, 0.01, 1024, 0.03, 0.993),  # uint16 path: .021 .9963 / .0001 1
        ((1, 5), 128, 0.01, 256, 0.006, 0.9999),  # kernel larger than the image
    ],
)
def test_clahe_agrees_with_skimage(shape, kernel_size, clip_limit, nbins, max_mad, min_corr, make):
    mad, corr = agreement(shape, kernel_size, clip_limit, nbins, make)
    assert mad < max_mad
    assert corr > min_corr


def test_clahe_defaults_are_the_paper_settings():
    params = CLAHE().get_params()
    assert params["kernel_size"] == 128 and params["clip_limit"] == 0.01
    assert params["nbins"] == 256


def test_clahe_output_range_shape_and_dtype():
    X = np.stack([radiograph_like((96, 80), seed=s) for s in range(3)]) * 5 + 2
    Xt = CLAHE(kernel_size=32).fit_transform(X)
    assert Xt.shape == X.shape and Xt.dtype == np.float32
    assert_allclose(Xt.min(axis=(1, 2)), 0)
    assert_allclose(Xt.max(axis=(1, 2)), 1)
    # Equalisation is monotone within a tile: darker regions stay darker on average.
    lung = Xt[:, 48, 24].mean()
    assert lung < Xt[:, 5, 40].mean()


def test_clahe_is_invariant_to_affine_intensity_changes():
    image = radiograph_like((128, 128))[None]
    a = CLAHE(kernel_size=32).fit_transform(image)
    b = CLAHE(kernel_size=32).fit_transform(3 * image - 7)
    assert np.abs(a - b).mean() < 1e-3


def test_clahe_uint8_input_is_scaled_like_floats():
    u8 = (radiograph_like((64, 64)) * 255).clip(0, 255).astype(np.uint8)[None]
    assert_allclose(
        CLAHE(kernel_size=16).fit_transform(u8),
        CLAHE(kernel_size=16).fit_transform(u8 / np.float32(255)),
        atol=1e-6,
    )


def test_clahe_nan_is_filled_with_the_nearest_roi_value_and_restored():
    image = radiograph_like((64, 96))
    masked = image.copy()
    masked[:, :30] = np.nan
    # What the docs promise: outside pixels take the nearest ROI pixel's value,
    # here the first ROI column of the same row.
    extended = image.copy()
    extended[:, :30] = image[:, 30:31]
    out = CLAHE(kernel_size=32).fit_transform(masked[None])[0]
    reference = CLAHE(kernel_size=32).fit_transform(extended[None])[0]
    assert np.isnan(out[:, :30]).all()
    assert not np.isnan(out[:, 30:]).any()
    # The min-max stretch runs over the ROI only, hence the rescaled comparison.
    roi_ref = reference[:, 30:]
    roi_ref = (roi_ref - roi_ref.min()) / (roi_ref.max() - roi_ref.min())
    assert_allclose(out[:, 30:], roi_ref, atol=1e-5)
    assert np.nanmin(out) == 0 and np.nanmax(out) == 1


def test_clahe_irregular_roi():
    image = radiograph_like((80, 80))
    yy, xx = np.mgrid[:80, :80]
    image[(yy - 40) ** 2 + (xx - 40) ** 2 > 30**2] = np.nan
    out = CLAHE(kernel_size=16).fit_transform(image[None])[0]
    assert_array_equal(np.isnan(out), np.isnan(image))
    assert np.nanmin(out) == 0 and np.nanmax(out) == 1


def test_clahe_constant_image_maps_to_zero():
    X = np.full((2, 20, 20), 0.3, np.float32)
    X[1, :5] = np.nan
    out = CLAHE(kernel_size=8).fit_transform(X)
    assert_array_equal(np.isnan(out), np.isnan(X))
    assert np.nanmax(np.abs(out)) == 0


@pytest.mark.parametrize(
    "kernel_size, equivalent", [(None, 8), (0.25, 16), ((16, 0.25), 16), ((16.0, 16), 16)]
)
def test_clahe_kernel_size_forms(kernel_size, equivalent):
    X = radiograph_like((64, 64))[None]
    assert_array_equal(
        CLAHE(kernel_size=kernel_size).fit_transform(X),
        CLAHE(kernel_size=equivalent).fit_transform(X),
    )


def test_clahe_is_stateless_about_image_size():
    clahe = CLAHE(kernel_size=16).fit(radiograph_like((32, 32))[None])
    assert clahe.transform(radiograph_like((48, 70))[None]).shape == (1, 48, 70)


def test_clahe_flattened_input_comes_back_flattened():
    X = radiograph_like((16, 16)).reshape(1, -1)
    assert CLAHE(kernel_size=8).fit_transform(X).shape == (1, 256)
    strips = np.random.default_rng(0).random((4, 30)).astype(np.float32)
    assert CLAHE(kernel_size=4, image_shape=(3, -1)).fit_transform(strips).shape == (4, 30)


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(clip_limit=2.0), "clip_limit"),
        (dict(clip_limit=-0.1), "clip_limit"),
        (dict(nbins=1), "nbins"),
        (dict(kernel_size=0), "kernel_size"),
        (dict(kernel_size=16.0), "kernel_size"),
        (dict(kernel_size=(0, 4)), "kernel_size"),
        (dict(kernel_size=(4, 4, 4)), "kernel_size"),
        (dict(kernel_size=(1.5, 4)), "kernel_size"),
        (dict(kernel_size="big"), "kernel_size"),
    ],
)
def test_clahe_bad_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        CLAHE(**params).fit(np.zeros((1, 8, 8)))


def test_clahe_bad_input():
    with pytest.raises(ValueError, match="grayscale"):
        CLAHE().fit(np.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match="entirely NaN"):
        CLAHE().fit(np.full((1, 8, 8), np.nan))
    with pytest.raises(ValueError, match="inf"):
        CLAHE().fit(np.full((1, 8, 8), np.inf))
    with pytest.raises(ValueError, match="not a square"):
        CLAHE().fit(np.zeros((2, 10)))


def test_clahe_kernel_larger_than_the_image_warns():
    X = np.random.default_rng(0).random((2, 64, 64)).astype(np.float32)
    with pytest.warns(UserWarning, match=r"kernel_size=128 \(128x128 px\) is larger than the 64x64 images.*whole height and width.*kernel_size=0.125"):
        CLAHE().fit_transform(X)
    with pytest.warns(UserWarning, match="whole width"):
        CLAHE(kernel_size=(16, 100)).fit_transform(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        local = CLAHE(kernel_size=0.125).fit_transform(X)
    # The fraction gives 8x8 tiles: local equalisation, unlike the one-tile result.
    assert not np.allclose(local, CLAHE(kernel_size=64).fit_transform(X), atol=0.05)


# --------------------------------------------------------------------------------
# HistogramEqualization
# --------------------------------------------------------------------------------


def test_histogram_equalization_matches_opencv_on_uint8():
    rng = np.random.default_rng(0)
    u8 = (rng.random((3, 64, 64)) ** 3 * 255).astype(np.uint8)
    u8[:, 0, 0], u8[:, 0, 1] = 0, 255  # full range: OpenCV does not stretch first
    ours = HistogramEqualization().fit_transform(u8)
    reference = np.stack([cv2.equalizeHist(image) for image in u8]) / 255.0
    assert np.abs(ours - reference).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("nbins", [64, 256, 1000])
def test_histogram_equalization_ignores_nan_in_the_histogram(nbins):
    rng = np.random.default_rng(1)
    image = (rng.random((40, 50)) ** 2).astype(np.float32)
    masked = image.copy()
    masked[:, :20] = np.nan
    masked[5:9, 30:34] = np.nan
    out = HistogramEqualization(nbins=nbins).fit_transform(masked[None])[0]
    roi = ~np.isnan(masked)
    # Equalising the ROI pixels alone (as a one-row image) gives the same values.
    alone = HistogramEqualization(nbins=nbins).fit_transform(masked[roi][None, None, :])
    assert_array_equal(np.isnan(out), ~roi)
    assert_allclose(out[roi], alone.ravel(), atol=1e-6)
    assert out[roi].min() == 0 and out[roi].max() == 1
    # Rank preserving: a brighter input pixel never gets a darker output.
    order = np.argsort(masked[roi], kind="stable")
    assert (np.diff(out[roi][order]) >= 0).all()


def test_histogram_equalization_flattens_the_histogram():
    rng = np.random.default_rng(2)
    X = np.exp(rng.normal(size=(2, 128, 128))).astype(np.float32)  # skewed, long tail
    out = HistogramEqualization().fit_transform(X)
    counts = np.histogram(out[0], bins=4, range=(0, 1))[0] / out[0].size
    assert_allclose(counts, 0.25, atol=0.03)
    assert np.median(X / X.max()) < 0.1 and abs(np.median(out) - 0.5) < 0.03


def test_histogram_equalization_nbins_sets_the_number_of_levels():
    X = np.random.default_rng(3).random((1, 64, 64)).astype(np.float32)
    assert len(np.unique(HistogramEqualization(nbins=16).fit_transform(X))) == 16


def test_histogram_equalization_constant_image_maps_to_zero():
    X = np.full((1, 8, 8), 0.4, np.float32)
    assert_array_equal(HistogramEqualization().fit_transform(X), 0)


def test_histogram_equalization_bad_parameters():
    with pytest.raises(ValueError, match="nbins"):
        HistogramEqualization(nbins=1).fit(np.zeros((1, 4, 4)))
