"""FilmCrop (film detection, upright crop, padding) and HandMasker (foreground mask)."""

import pickle

import cv2
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.pipeline import Pipeline

from skanomaly.preprocessing import FilmCrop, HandMasker, HistogramEqualization, Resize

FILM_H, FILM_W = 60, 120


def film_content():
    """A film with a bright marker near its top-left corner and a dark bar at the right."""
    film = np.full((FILM_H, FILM_W), 0.7, np.float32)
    film[8:20, 10:22] = 1.0
    film[20:50, 100:110] = 0.45
    return film


def film_on_background(angle, size=200, centre=(100, 100), background=0.1):
    """The film rotated by ``angle`` degrees (counter-clockwise) onto a dark background."""
    film = film_content()
    matrix = cv2.getRotationMatrix2D(((FILM_W - 1) / 2, (FILM_H - 1) / 2), angle, 1.0)
    matrix[:, 2] += [centre[0] - (FILM_W - 1) / 2, centre[1] - (FILM_H - 1) / 2]
    warped = cv2.warpAffine(film, matrix, (size, size), flags=cv2.INTER_LINEAR)
    inside = cv2.warpAffine(np.ones_like(film), matrix, (size, size), flags=cv2.INTER_LINEAR)
    return np.where(inside > 0.5, warped, background).astype(np.float32)


@pytest.mark.parametrize("angle", [0, 12, -25, 40])
def test_film_crop_recovers_the_rotated_film_upright(angle):
    X = film_on_background(angle)[None]
    crop = FilmCrop(pad_to_square=False, output_size=(FILM_H, FILM_W)).fit_transform(X)[0]
    interior = (slice(3, -3), slice(3, -3))
    assert np.abs(crop - film_content())[interior].mean() < 0.01
    assert crop[8:20, 10:22].mean() > 0.95  # the marker is top-left again


@pytest.mark.parametrize("angle", [0, 20])
def test_film_crop_box_matches_the_film(angle):
    X = film_on_background(angle)[None]
    tl, tr, br, bl = FilmCrop().fit(X).crop_boxes(X)[0]
    assert_allclose(np.linalg.norm(tr - tl) + 1, FILM_W, atol=2)
    assert_allclose(np.linalg.norm(bl - tl) + 1, FILM_H, atol=2)
    assert_allclose(np.degrees(np.arctan2(*(tr - tl)[::-1])), -angle, atol=1)
    assert_allclose((tl + br) / 2, [100, 100], atol=1)


def test_axis_aligned_film_is_cropped_exactly():
    image = np.full((50, 70), 0.05, np.float32)
    film = np.random.default_rng(0).uniform(0.5, 1.0, (20, 30)).astype(np.float32)
    image[10:30, 25:55] = film
    crop = FilmCrop(pad_to_square=False, output_size=(20, 30)).fit_transform(image[None])
    assert_allclose(crop[0], film, atol=1e-6)


def test_pad_to_square_keeps_the_aspect_ratio_and_pads_with_nan():
    X = film_on_background(15)[None]
    out = FilmCrop().fit_transform(X)[0]
    assert out.shape == (200, 200)
    film_rows = ~np.isnan(out).all(axis=1)
    assert_allclose(film_rows.sum(), 200 * FILM_H / FILM_W, atol=2)
    # Centred: as many padded rows above as below (within one).
    rows = np.flatnonzero(film_rows)
    assert abs(rows[0] - (199 - rows[-1])) <= 1
    assert not np.isnan(out[rows[0] + 1 : rows[-1]]).any()
    zero_padded = FilmCrop(pad_value=0.0, output_size=64).fit_transform(X)[0]
    assert zero_padded.shape == (64, 64) and not np.isnan(zero_padded).any()
    assert (zero_padded[:5] == 0).all()


def test_output_size_default_and_forms():
    X = np.stack([film_on_background(a, size=120, centre=(60, 60)) for a in (0, 10, -10)])
    X = X[:, :, :100]  # H=120, W=100
    assert FilmCrop().fit_transform(X).shape == (3, 120, 120)
    assert FilmCrop(pad_to_square=False).fit_transform(X).shape == (3, 120, 100)
    assert FilmCrop(output_size=(32, 64)).fit_transform(X).shape == (3, 32, 64)


def test_film_tilted_beyond_45_degrees_comes_out_turned():
    X = film_on_background(60)[None]
    tl, tr, _, bl = FilmCrop().fit(X).crop_boxes(X)[0]
    # Read as a film tilted by -30 degrees with its sides swapped (see the Notes).
    assert_allclose(np.linalg.norm(tr - tl) + 1, FILM_H, atol=2)
    assert_allclose(np.linalg.norm(bl - tl) + 1, FILM_W, atol=2)


def test_dark_film_on_bright_background():
    X = 1.0 - film_on_background(10)[None]
    crop = FilmCrop(foreground="dark", pad_to_square=False, output_size=(FILM_H, FILM_W))
    out = crop.fit_transform(X)[0]
    assert np.abs(out - (1 - film_content()))[3:-3, 3:-3].mean() < 0.01


def test_film_reaching_outside_the_image_gives_nan():
    X = film_on_background(0, size=100, centre=(30, 50))[None]  # left 10 px cut off
    X[0, :, :] = np.where(X[0] > 0.3, X[0], 0.1)
    crop = FilmCrop(pad_to_square=False, output_size=(FILM_H, 110)).fit_transform(X)[0]
    assert not np.isnan(crop).any()  # only the visible part is found: a smaller film
    masked = X.copy()
    masked[0, :, 80:] = np.nan  # NaN is ignored by Otsu and stays out of the crop
    out = FilmCrop(pad_to_square=False).fit_transform(masked)[0]
    assert np.isfinite(out).mean() > 0.9


def test_constant_image_keeps_its_frame_with_a_warning():
    X = np.full((2, 20, 30), 0.5, np.float32)
    X[1, 5:15, 5:25] = 0.9
    with pytest.warns(UserWarning, match=r"no film in 1 image\(s\) \(indices 0\)"):
        out = FilmCrop(pad_to_square=False).fit_transform(X)
    assert_array_equal(out[0], X[0])


def test_film_crop_bad_parameters():
    X = film_on_background(0)[None]
    for params, match in [
        (dict(output_size=0), "output_size"),
        (dict(output_size=(3, 0)), "output_size"),
        (dict(foreground="grey"), "foreground"),
        (dict(pad_to_square="yes"), "pad_to_square"),
    ]:
        with pytest.raises(ValueError, match=match):
            FilmCrop(**params).fit_transform(X)


# --------------------------------------------------------------------------------
# HandMasker
# --------------------------------------------------------------------------------


def hand_phantom(size=96, seed=0):
    """A bright 'palm' with four 'fingers', a dark hole, and a separate bright speck."""
    rng = np.random.default_rng(seed)
    image = 0.1 + 0.02 * rng.standard_normal((size, size))
    hand = np.zeros((size, size), bool)
    hand[50:85, 25:70] = True  # palm
    for x in (27, 38, 49, 60):
        hand[15:50, x : x + 7] = True  # fingers with background between them
    image[hand] = 0.7 + 0.02 * rng.standard_normal(hand.sum())
    image[62:70, 40:50] = 0.1  # a dark hole in the palm
    image[3:6, 88:92] = 0.8  # a speck: smaller than the hand
    return image.astype(np.float32), hand


def test_hand_masker_keeps_the_largest_component_with_holes_filled():
    image, hand = hand_phantom()
    out = HandMasker().fit_transform(image[None])[0]
    kept = ~np.isnan(out)
    assert_array_equal(kept, hand)  # the hole is filled, the speck dropped
    assert_array_equal(out[kept], image[kept])


def test_hand_masker_without_hole_filling_and_with_dilation():
    image, hand = hand_phantom()
    no_fill = ~np.isnan(HandMasker(fill_holes=False).fit_transform(image[None])[0])
    assert not no_fill[62:70, 40:50].any() and no_fill.sum() == hand.sum() - 80
    dilated = ~np.isnan(HandMasker(dilation=2).fit_transform(image[None])[0])
    assert dilated[hand].all() and dilated.sum() > hand.sum() + 100
    assert not dilated[3:6, 88:92].any()
    grown = cv2.dilate(hand.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5)))
    assert_array_equal(dilated, grown.astype(bool))


def test_hand_masker_dark_foreground_and_nan_roi():
    image, hand = hand_phantom()
    dark = ~np.isnan(HandMasker(foreground="dark").fit_transform(1 - image[None])[0])
    assert_array_equal(dark, hand)
    masked = image.copy()
    masked[:, :10] = np.nan  # outside the ROI already: stays NaN, does not sway Otsu
    out = HandMasker().fit_transform(masked[None])[0]
    assert_array_equal(~np.isnan(out), hand & ~np.isnan(masked))


def test_hand_masker_constant_image_keeps_its_roi_with_a_warning():
    X = np.stack([hand_phantom()[0], np.full((96, 96), 0.3, np.float32)])
    X[1, :5] = np.nan
    with pytest.warns(UserWarning, match=r"no foreground in 1 image\(s\) \(indices 1\)"):
        out = HandMasker().fit_transform(X)
    assert_array_equal(np.isnan(out[1]), np.isnan(X[1]))


def test_hand_masker_bad_parameters():
    for params, match in [(dict(dilation=-1), "dilation"), (dict(foreground=1), "foreground")]:
        with pytest.raises(ValueError, match=match):
            HandMasker(**params).fit(np.zeros((1, 8, 8)))


def test_hand_xray_pipeline():
    X = np.stack([film_on_background(a) for a in (5, -8)])
    # A 'hand' on each film: a bright blob in the film's middle.
    X[:, 85:115, 80:120] = 0.95
    pipe = Pipeline(
        [
            ("crop", FilmCrop(output_size=64)),
            ("mask", HandMasker()),
            ("equalize", HistogramEqualization()),
            ("resize", Resize(32)),
        ]
    )
    out = pipe.fit_transform(X)
    assert out.shape == (2, 32, 32)
    assert np.nanmin(out) >= 0 and np.nanmax(out) <= 1 and np.isnan(out).any()
    assert_array_equal(pickle.loads(pickle.dumps(pipe)).transform(X), out)
