"""The data and estimator contracts of BaseDeepDetector, exercised through CAEDetector."""

import re

import numpy as np
import pytest
import torch

from skanomaly.base import resolve_device
from skanomaly.detectors import CAEDetector, VAEDetector


def fast_cae(**params):
    settings = dict(channels=(4, 8), max_epochs=2, batch_size=16, augment=None, random_state=0)
    settings.update(params)
    return CAEDetector(**settings)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    X = rng.random((24, 16, 16)).astype(np.float32)
    X[:, :, :3] = np.nan  # a strip outside the region of interest
    return X


@pytest.fixture(scope="module")
def fitted(images):
    return fast_cae().fit(images)


# ----------------------------------------------------------------- data contract
def test_scores_are_float64_and_higher_is_more_normal(fitted, images):
    scores = fitted.score_samples(images)
    assert scores.dtype == np.float64 and scores.shape == (len(images),)
    # A bright square is reconstructed worse than the training texture: less normal.
    odd = images.copy()
    odd[:, 6:12, 6:12] = 1.0
    assert (fitted.score_samples(odd) < scores).mean() > 0.9


def test_decision_function_and_predict_use_offset(fitted, images):
    decision = fitted.decision_function(images)
    np.testing.assert_allclose(decision, fitted.score_samples(images) - fitted.offset_)
    np.testing.assert_array_equal(fitted.predict(images), np.where(decision < 0, -1, 1))


def test_float_contamination_flags_that_fraction_of_training_images(images):
    det = fast_cae(contamination=0.25).fit(images)
    assert (det.predict(images) == -1).mean() == pytest.approx(0.25, abs=1 / len(images))


def test_auto_contamination_is_median_minus_three_robust_sd(fitted, images):
    scores = fitted.score_samples(images)
    median = np.median(scores)
    expected = median - 3 * 1.4826 * np.median(np.abs(scores - median))
    assert fitted.offset_ == pytest.approx(expected)


def test_nan_pixels_do_not_influence_scores(fitted, images):
    other_fill = images.copy()
    # Different values outside the ROI must not change anything: they are NaN.
    assert np.array_equal(fitted.score_samples(other_fill), fitted.score_samples(images))
    anomaly = fitted.anomaly_map(images)
    assert np.isnan(anomaly[:, :, :3]).all() and np.isfinite(anomaly[:, :, 3:]).all()


def test_anomaly_map_aggregates_to_the_mse_score(fitted, images):
    maps = fitted.anomaly_map(images)
    np.testing.assert_allclose(-np.nanmean(maps, axis=(1, 2)), fitted.score_samples(images), rtol=1e-5)


def test_uint8_and_uint16_are_scaled_by_dtype_range(fitted):
    rng = np.random.default_rng(1)
    as_uint8 = rng.integers(0, 256, (4, 16, 16), dtype=np.uint8)
    np.testing.assert_allclose(
        fitted.score_samples(as_uint8), fitted.score_samples(as_uint8 / np.float32(255)), rtol=1e-6
    )
    as_uint16 = (as_uint8.astype(np.uint16) * 257).astype(np.uint16)
    np.testing.assert_allclose(
        fitted.score_samples(as_uint16), fitted.score_samples(as_uint8 / np.float32(255)), rtol=1e-5
    )


def test_flattened_square_images_equal_3d_images(images):
    flat = np.nan_to_num(images).reshape(len(images), -1)
    det3d = fast_cae().fit(np.nan_to_num(images))
    det2d = fast_cae().fit(flat)
    np.testing.assert_array_equal(det3d.score_samples(np.nan_to_num(images)), det2d.score_samples(flat))
    assert det2d.n_features_in_ == 256 and det3d.n_features_in_ == 256


def test_flattened_non_square_needs_image_shape(images):
    strip = np.nan_to_num(images[:, :8]).reshape(len(images), -1)  # 8 x 16
    with pytest.raises(ValueError, match=r"not a square image.*image_shape=\(H, W\)"):
        fast_cae().fit(strip)
    det = fast_cae(image_shape=(8, -1)).fit(strip)
    assert det.image_shape_ == (8, 16)


# -------------------------------------------------------------------- patch bags
def test_bags_train_on_present_patches_and_aggregate(images):
    bags = np.nan_to_num(images).reshape(24, 1, 16, 16).repeat(3, axis=1)
    bags = bags + np.linspace(0, 0.2, 3, dtype=np.float32)[None, :, None, None]
    bags[:, 2] = np.nan  # absent patch
    det = fast_cae(patch_aggregation="max").fit(bags)
    patch_scores = det.score_patches(bags)
    assert patch_scores.shape == (24, 3) and np.isnan(patch_scores[:, 2]).all()
    np.testing.assert_allclose(det.score_samples(bags), np.nanmin(patch_scores, axis=1))
    det.set_params(patch_aggregation="mean")
    np.testing.assert_allclose(det.score_samples(bags), np.nanmean(patch_scores, axis=1))
    det.set_params(patch_aggregation=("topk", 1))
    np.testing.assert_allclose(det.score_samples(bags), np.nanmin(patch_scores, axis=1))
    maps = det.anomaly_map(bags)
    assert maps.shape == bags.shape and np.isnan(maps[:, 2]).all()


def test_bags_may_have_another_patch_count_at_scoring(images):
    bags = np.nan_to_num(images).reshape(24, 4, 8, 8)
    det = fast_cae(channels=(4,)).fit(bags)
    assert det.image_shape_ == (8, 8)
    assert det.score_samples(bags[:, :2]).shape == (24,)
    # Single images of the patch size are scored as images.
    assert det.score_samples(bags[:, 0]).shape == (24,)


def test_score_patches_requires_bags(fitted, images):
    with pytest.raises(ValueError, match="score_patches expects patch bags"):
        fitted.score_patches(images)


def test_bad_patch_aggregation(images):
    with pytest.raises(ValueError, match=r"patch_aggregation=\('topk', 0\) is not valid"):
        fast_cae(patch_aggregation=("topk", 0)).fit(images)


# ---------------------------------------------------------------- determinism
def test_same_random_state_same_model_and_global_rng_untouched(images):
    torch.manual_seed(123)
    np.random.seed(123)
    expected_torch = torch.rand(3)
    expected_numpy = np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(123)
    first = fast_cae(random_state=7, augment="advanced").fit(images).score_samples(images)
    assert torch.equal(torch.rand(3), expected_torch)
    assert np.array_equal(np.random.rand(3), expected_numpy)
    second = fast_cae(random_state=7, augment="advanced").fit(images).score_samples(images)
    np.testing.assert_array_equal(first, second)
    third = fast_cae(random_state=8, augment="advanced").fit(images).score_samples(images)
    assert not np.array_equal(first, third)


def test_history_and_n_iter(fitted):
    assert fitted.n_iter_ == 2 and len(fitted.history_) == 2
    assert all("train_loss" in epoch for epoch in fitted.history_)


def test_skorch_callbacks_reach_the_net_and_are_not_mutated(images):
    from skorch.callbacks import EarlyStopping

    stopper = EarlyStopping(monitor="train_loss", patience=1, threshold=10.0)
    det = fast_cae(max_epochs=20, callbacks=[stopper]).fit(images)
    assert det.n_iter_ < 20  # a threshold of 10 means no epoch ever improves enough
    assert stopper.misses_ == 0 and stopper.dynamic_threshold_ is None  # user's copy untouched


def test_validation_fraction_gives_valid_loss(images):
    det = fast_cae(validation_fraction=0.25).fit(images)
    assert "valid_loss" in det.history_[-1]


# -------------------------------------------------------------------- bad input
BAD_INPUTS = [
    (np.full((4, 16, 16), np.inf, dtype=np.float32), "contains inf"),
    (np.concatenate([np.zeros((3, 16, 16)), np.full((1, 16, 16), np.nan)]), r"entirely NaN.*indices 3"),
    (np.zeros((4, 16, 16, 3)), "looks like RGB"),
    (np.zeros((0, 16, 16)), r"0 sample\(s\)"),
    (np.zeros((1, 16, 16)), r"1 sample\(s\).*minimum of 2"),
    (np.zeros(16), "got a 1-D array"),
    (np.zeros((2, 2, 2, 2, 2)), "got a 5-D array"),
    (np.array([["a", "b"], ["c", "d"]]), "must hold numbers"),
]


@pytest.mark.parametrize("X, message", BAD_INPUTS)
def test_bad_input_messages(X, message):
    with pytest.raises(ValueError, match=message):
        fast_cae().fit(X)


def test_images_smaller_than_the_network(images):
    with pytest.raises(ValueError, match=r"smaller than this network's minimum input of 32x32"):
        fast_cae(channels=(4, 8, 8, 8, 8, 8)).fit(images)


def test_other_image_size_at_scoring(fitted):
    with pytest.raises(ValueError, match=r"fitted on 16x16 .* got images of 8x8.*Resize"):
        fitted.score_samples(np.zeros((2, 8, 8)))


def test_flattened_wrong_feature_count_at_scoring(images):
    det = fast_cae().fit(np.nan_to_num(images).reshape(24, -1))
    with pytest.raises(ValueError, match="X has 255 features, but CAEDetector is expecting 256"):
        det.score_samples(np.zeros((2, 255)))


@pytest.mark.parametrize("method", ["predict", "score_samples", "decision_function", "anomaly_map"])
def test_methods_before_fit(method):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        getattr(fast_cae(), method)(np.zeros((2, 16, 16)))


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu"])
def test_unknown_device(device, images):
    with pytest.raises(ValueError, match=re.escape(f"device={device!r} is not a valid device")):
        fast_cae(device=device).fit(images)


def test_cuda_requested_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"


@pytest.mark.parametrize("detector", [CAEDetector, VAEDetector])
@pytest.mark.parametrize("score", ["foo", ("topk", 0), ("topk", 5, "l2"), ("top", 5)])
def test_unknown_anomaly_score(detector, score, images):
    with pytest.raises(ValueError, match="anomaly_score=.* is not valid"):
        detector(anomaly_score=score, channels=(4,), max_epochs=1).fit(images)


def test_failed_fit_leaves_estimator_unfitted():
    det = fast_cae()
    with pytest.raises(ValueError):
        det.fit(np.full((4, 16, 16), np.inf))
    assert not hasattr(det, "net_") and not hasattr(det, "offset_")
