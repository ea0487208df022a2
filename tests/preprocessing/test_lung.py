"""LungMasker (packaged U-Net), MaskApplier and apply_masks."""

import pickle
import socket

import numpy as np
import pytest
import torch
from sklearn.pipeline import make_pipeline
from sklearn.utils._param_validation import InvalidParameterError

from skanomaly.datasets._phantoms import make_chest_phantoms
from skanomaly.metrics import dice_score
from skanomaly.preprocessing import LungMasker, MaskApplier
from skanomaly.preprocessing._lung import _WEIGHTS, _load_segmenter, apply_masks, clean_mask

# Mean Dice of LungMasker (trained on real radiographs only) on 256 px phantoms:
# measured 0.943 on these 8 (minimum 0.891), 0.952 on 64 others (minimum 0.844).
PHANTOM_DICE_FLOOR = 0.9


@pytest.fixture(scope="module")
def phantoms():
    return make_chest_phantoms(8, image_size=256, random_state=0)


@pytest.fixture(scope="module")
def predicted(phantoms):
    return LungMasker(output="mask").fit_transform(phantoms.images)


def test_packaged_weights_load_without_code_or_network(monkeypatch):
    checkpoint = torch.load(_WEIGHTS, map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"config", "state_dict"}
    assert _WEIGHTS.stat().st_size < 3_000_000

    def no_network(*args, **kwargs):
        raise AssertionError("LungMasker tried to open a network connection")

    monkeypatch.setattr(socket, "socket", no_network)
    _load_segmenter.cache_clear()
    images = make_chest_phantoms(1, image_size=64, random_state=1).images
    assert LungMasker(output="mask").fit_transform(images).any()


def test_segments_phantoms(phantoms, predicted):
    scores = dice_score(phantoms.masks, predicted)
    assert np.mean(scores) >= PHANTOM_DICE_FLOOR, scores


def test_mask_and_masked_agree(phantoms, predicted):
    masked = LungMasker().fit_transform(phantoms.images)
    assert masked.dtype == np.float32 and masked.shape == phantoms.images.shape
    np.testing.assert_array_equal(~np.isnan(masked), predicted)
    np.testing.assert_array_equal(masked[predicted], phantoms.images[predicted])


def test_cleaning_leaves_at_most_two_solid_lungs(predicted):
    from scipy import ndimage

    for mask in predicted:
        assert 1 <= ndimage.label(mask)[1] <= 2
        np.testing.assert_array_equal(ndimage.binary_fill_holes(mask), mask)


@pytest.mark.parametrize("shape", [(300, 260), (40, 48), (1024, 1024)])
def test_any_size(shape):
    image = make_chest_phantoms(1, image_size=256, random_state=2).images[0]
    import cv2

    resized = cv2.resize(image, shape[::-1], interpolation=cv2.INTER_LINEAR)[None]
    mask = LungMasker(output="mask").fit(resized).transform(resized)
    assert mask.shape == (1, *shape) and mask.dtype == bool
    assert 0.15 < mask.mean() < 0.6


def test_nan_input(phantoms):
    images = phantoms.images[:2].copy()
    images[:, :20, :] = np.nan  # e.g. a cropped film edge
    masker = LungMasker()
    out = masker.fit_transform(images)
    assert np.isnan(out[:, :20]).all()
    reference = LungMasker(output="mask").fit_transform(phantoms.images[:2])
    got = ~np.isnan(out)
    assert dice_score(reference, got).min() > 0.95


def test_uint8_and_flattened_input(phantoms):
    images = phantoms.images[:2]
    as_uint8 = np.round(images * 255).astype(np.uint8)
    expected = LungMasker(output="mask").fit_transform(images)
    got = LungMasker(output="mask").fit_transform(as_uint8)
    assert dice_score(expected, got).min() > 0.98
    flat = LungMasker(output="mask").fit_transform(images.reshape(2, -1))
    assert flat.shape == (2, 256 * 256)
    np.testing.assert_array_equal(flat.reshape(images.shape), expected)
    strip = LungMasker(output="mask", image_shape=(256, -1)).fit_transform(images.reshape(2, -1))
    np.testing.assert_array_equal(strip.reshape(images.shape), expected)


def test_batch_size_does_not_change_the_result(phantoms):
    a = LungMasker(output="mask", batch_size=1).fit_transform(phantoms.images[:3])
    b = LungMasker(output="mask", batch_size=3).fit_transform(phantoms.images[:3])
    assert np.mean(a != b) < 1e-4


def test_predict_proba_and_threshold(phantoms):
    masker = LungMasker().fit(phantoms.images[:2])
    proba = masker.probability_map(phantoms.images[:2])
    assert proba.shape == (2, 256, 256) and proba.min() >= 0 and proba.max() <= 1
    low = LungMasker(output="mask", threshold=0.2).fit_transform(phantoms.images[:2])
    high = LungMasker(output="mask", threshold=0.8).fit_transform(phantoms.images[:2])
    assert low.sum() >= high.sum()


def test_no_lung_found():
    blank = np.full((3, 64, 64), 0.5, dtype=np.float32)
    blank[1] = make_chest_phantoms(1, image_size=64, random_state=0).images[0]
    masks = LungMasker(output="mask").fit_transform(blank)
    assert not masks[0].any() and masks[1].any() and not masks[2].any()
    with pytest.raises(ValueError, match=r"No lung field found in 2 of 3 image\(s\) \(indices 0, 2\).*output='mask'"):
        LungMasker(on_empty="raise").fit_transform(blank)
    # By default one film without lungs does not fail the batch: it comes back
    # unmasked, with a warning naming it, and the others are masked as usual.
    with pytest.warns(UserWarning, match=r"indices 0, 2\): they are returned unmasked"):
        masked = LungMasker().fit_transform(blank)
    np.testing.assert_array_equal(masked[[0, 2]], blank[[0, 2]])
    np.testing.assert_array_equal(np.isnan(masked[1]), ~masks[1])


def test_pickle_and_pipeline(phantoms):
    masker = pickle.loads(pickle.dumps(LungMasker(output="mask").fit(phantoms.images[:1])))
    assert masker.transform(phantoms.images[:1]).any()
    pipe = make_pipeline(LungMasker())
    assert np.isnan(pipe.fit_transform(phantoms.images[:1])).any()


@pytest.mark.parametrize(
    "X, match",
    [
        (np.zeros(64), "got a 1-D array"),
        (np.zeros((2, 64, 64, 3)), r"looks like RGB.*X\[..., :3\] @ \[0.299, 0.587, 0.114\]"),
        (np.zeros((2, 3, 64, 64)), r"RGB\(A\) colour images in PyTorch's"),
        (np.zeros((2, 1, 64, 64)), r"grayscale channel axis: squeeze it with X\[:, 0\]"),
        (np.zeros((2, 20, 64)), "at least 32x32 pixels"),
        (np.zeros((2, 20 * 20)), "at least 32x32 pixels"),
        (np.full((2, 64, 64), np.inf), "inf"),
        (np.full((2, 64, 64), np.nan), "entirely NaN"),
    ],
)
def test_bad_input(X, match):
    with pytest.raises(ValueError, match=match):
        LungMasker().fit_transform(X)


def test_small_images_allowed_when_asked():
    out = LungMasker(output="mask", min_image_size=1).fit_transform(np.random.rand(3, 1, 5))
    assert out.shape == (3, 1, 5) and out.dtype == bool


@pytest.mark.parametrize(
    "params",
    [dict(output="nan"), dict(threshold=1.0), dict(batch_size=0), dict(method="ccnet")],
)
def test_bad_parameters(params):
    with pytest.raises(InvalidParameterError):
        LungMasker(**params).fit(np.zeros((1, 64, 64)))


def test_missing_weights_file(tmp_path):
    with pytest.raises(ValueError, match="weights not found"):
        LungMasker(weights=tmp_path / "none.pt").fit_transform(np.zeros((1, 64, 64)))


# --------------------------------------------------------------------------- masks given


def test_clean_mask_keeps_two_largest_and_fills_holes():
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:35, 2:15] = True  # large, with a hole
    mask[10:12, 6:8] = False
    mask[5:30, 20:30] = True  # second
    mask[36:39, 36:39] = True  # specks
    mask[1, 1] = True
    cleaned = clean_mask(mask)
    expected = np.zeros_like(mask)
    expected[5:35, 2:15] = True
    expected[5:30, 20:30] = True
    np.testing.assert_array_equal(cleaned, expected)
    assert not clean_mask(np.zeros((8, 8), dtype=bool)).any()


def test_apply_masks():
    images = np.random.default_rng(0).random((3, 16, 16), dtype=np.float32)
    masks = np.zeros((3, 16, 16), dtype=np.uint8)
    masks[:, 4:12, 2:10] = 255
    out = apply_masks(images, masks)
    np.testing.assert_array_equal(np.isnan(out), masks == 0)
    np.testing.assert_array_equal(out[masks > 0], images[masks > 0])
    single = apply_masks(images, masks[0] > 0)
    np.testing.assert_array_equal(single, out)
    with pytest.raises(ValueError, match="do not match images"):
        apply_masks(images, masks[:, :8])
    with pytest.raises(ValueError, match=r"no pixel inside their mask \(indices 1\)"):
        masks[1] = 0
        apply_masks(images, masks)
    with pytest.raises(ValueError, match=r"images\[None\]"):
        apply_masks(images[0], masks[0])


def test_mask_applier_stacked_and_flattened():
    rng = np.random.default_rng(0)
    images = rng.random((4, 8, 8), dtype=np.float32)
    masks = np.zeros((4, 8, 8), dtype=np.float32)
    masks[:, 2:6, 1:7] = 1
    pairs = np.stack([images, masks], axis=1)
    applier = MaskApplier().fit(pairs)
    out = applier.transform(pairs)
    assert out.shape == (4, 8, 8) and applier.image_shape_ == (8, 8)
    np.testing.assert_array_equal(out, apply_masks(images, masks))
    flat = MaskApplier().fit_transform(pairs.reshape(4, -1))
    assert flat.shape == (4, 64)
    np.testing.assert_array_equal(flat.reshape(4, 8, 8), out)
    strips = MaskApplier(image_shape=(2, -1)).fit_transform(pairs.reshape(4, -1))
    np.testing.assert_array_equal(strips.reshape(4, 8, 8), out)


def test_mask_applier_bad_input():
    with pytest.raises(ValueError, match=r"np.stack\(\[images, masks\], axis=1\)"):
        MaskApplier().fit(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match=r"np.stack\(\[images, masks\], axis=1\)"):
        MaskApplier().fit(np.zeros((2, 3, 8, 8)))
    with pytest.raises(ValueError, match="even number of features"):
        MaskApplier().fit(np.zeros((2, 9)))
