"""The data and estimator contracts of BaseDeepDetector, exercised through CAEDetector."""

import re
import threading
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from skanomaly.base import resolve_device
from skanomaly.detectors import CAEDetector, VAEDetector
from skanomaly.utils.validation import as_patch_bags


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


def test_auto_contamination_threshold_on_known_scores():
    """Scores 1..9: median 5, median absolute deviation 2, so the cut-off is
    5 - 3 * 1.4826 * 2 = -3.8956; a score of -10 among them moves it by little."""
    det = fast_cae()
    assert det._offset_from(np.arange(1.0, 10.0)) == pytest.approx(-3.8956, rel=1e-5)
    assert det._offset_from(np.append(np.arange(1.0, 10.0), -10.0)) == pytest.approx(4.5 - 3 * 1.4826 * 2.5, rel=1e-5)
    assert det.set_params(contamination=0.1)._offset_from(np.arange(1.0, 11.0)) == pytest.approx(1.9)


def test_auto_contamination_flags_the_odd_image_not_the_normal_ones(fitted, images):
    assert (fitted.predict(images) == 1).mean() >= 0.9
    odd = images.copy()
    odd[:, 4:14, 4:14] = 1.0
    assert (fitted.predict(odd) == -1).mean() >= 0.9


def test_score_is_the_error_over_roi_pixels_only(fitted, images):
    """The mse score averages the squared error over non-NaN pixels, none other."""
    x = torch.from_numpy(np.nan_to_num(images)[:, None])
    with torch.inference_mode():
        squared = (fitted.net_.module_.eval()(x) - x).square()[:, 0].numpy()
    roi = ~np.isnan(images)
    by_hand = (squared * roi).sum(axis=(1, 2)) / roi.sum(axis=(1, 2))
    np.testing.assert_allclose(-fitted.score_samples(images), by_hand, rtol=1e-5)
    # Over every pixel (the band included) the error is a different number.
    assert not np.allclose(-fitted.score_samples(images), squared.mean(axis=(1, 2)), rtol=1e-3)
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
    bags = as_patch_bags(bags)  # 3 square patches would otherwise read as RGB
    bags = 0.8 * bags + np.linspace(0, 0.2, 3, dtype=np.float32)[None, :, None, None]
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
    bags = as_patch_bags(np.nan_to_num(images).reshape(24, 4, 8, 8))
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


def test_validation_batches_leave_the_global_rng_alone(images):
    # skorch's DataLoader draws a base seed from torch's global generator for every
    # iteration unless it has a generator of its own.
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    det = fast_cae(max_epochs=3, validation_fraction=0.25, random_state=0).fit(images)
    assert "valid_loss" in det.history_[-1]
    assert torch.equal(torch.rand(3), expected)


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


@pytest.mark.parametrize(
    "method", ["predict", "score_samples", "decision_function", "anomaly_map", "score_patches"]
)
def test_methods_before_fit(method):
    X = np.zeros((2, 16, 16)) if method != "score_patches" else as_patch_bags(np.zeros((2, 2, 8, 8)))
    with pytest.raises(NotFittedError):
        getattr(fast_cae(), method)(X)


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


def test_failed_fit_leaves_estimator_unfitted(images):
    det = fast_cae()
    with pytest.raises(ValueError):
        det.fit(np.full((4, 16, 16), np.inf))
    assert not hasattr(det, "net_") and not hasattr(det, "offset_")
    # A fit that fails after validation (here in the network's size check) used to
    # leave n_features_in_ / image_shape_ behind, and predict raised AttributeError.
    with pytest.raises(ValueError, match="smaller than this network's minimum"):
        det.set_params(channels=(4, 8, 8, 8, 8, 8)).fit(images)
    assert not hasattr(det, "n_features_in_") and not hasattr(det, "image_shape_")
    with pytest.raises(NotFittedError):
        det.predict(images)


def test_failed_refit_forgets_the_previous_model(fitted, images):
    import copy

    det = copy.deepcopy(fitted)
    with pytest.raises(ValueError):
        det.fit(images * 255)
    with pytest.raises(NotFittedError):
        det.score_samples(images)


# ------------------------------------------------------------------ labels (y)
def test_fit_refuses_labels_that_mark_abnormal_images(images):
    y = np.zeros(len(images), dtype=int)
    y[[3, 7]] = 1
    with pytest.raises(ValueError, match=r"y marks 2 of the 24 images as abnormal.*indices 3, 7.*X\[y == 0\]"):
        fast_cae().fit(images, y)
    # Labels that are all normal are accepted and change nothing.
    np.testing.assert_array_equal(
        fast_cae().fit(images, np.zeros(24)).score_samples(images), fast_cae().fit(images).score_samples(images)
    )
    with pytest.raises(ValueError, match="y has 3 labels but X has 24 images"):
        fast_cae().fit(images, [0, 0, 0])


# ------------------------------------------------------------- pixel range
@pytest.mark.parametrize(
    "scale, offset, seen",
    [
        (255, 0, r"holds values in \[[0-9.]+, 25[0-9.]+\].*for 8-bit data: X / 255"),
        (4095, 0, "for 12-bit data: X / 4095"),
        (2, -1, r"holds values in \[-0\.99"),
    ],
)
def test_float_input_outside_unit_range_is_refused(images, fitted, scale, offset, seen):
    bad = images * scale + offset
    with pytest.raises(ValueError, match=f"expects pixel values in \\[0, 1\\].*{seen}.*Rescale"):
        fast_cae().fit(bad)
    with pytest.raises(ValueError, match="value_range"):
        fitted.score_samples(bad)


def test_value_range_maps_the_given_range_to_unit(images):
    as_12_bit = np.round(np.nan_to_num(images) * 4095).astype(np.uint16)
    det = fast_cae(value_range=(0, 4095)).fit(as_12_bit)
    unit = fast_cae().fit(as_12_bit / np.float32(4095))
    np.testing.assert_allclose(det.score_samples(as_12_bit), unit.score_samples(as_12_bit / np.float32(4095)), rtol=1e-5)
    # None uses values as they are: standardised data trains without complaint.
    standardised = (np.nan_to_num(images) - 0.5) / 0.29
    assert np.isfinite(fast_cae(value_range=None).fit(standardised).score_samples(standardised)).all()
    with pytest.raises(ValueError, match=r"value_range=\(1, 0\) is not valid"):
        fast_cae(value_range=(1, 0)).fit(images)


def test_12_bit_data_in_uint16_warns_and_names_the_route(images):
    as_12_bit = np.round(np.nan_to_num(images) * 4095).astype(np.uint16)
    with pytest.warns(UserWarning, match=r"look like 10- or 12-bit data.*Rescale\(bits_stored=12\)"):
        fast_cae().fit(as_12_bit)


def test_uint8_dataframe_is_scaled_like_the_array(fitted, images):
    pd = pytest.importorskip("pandas")
    as_uint8 = np.round(np.nan_to_num(images) * 255).astype(np.uint8).reshape(24, -1)
    flat = fast_cae().fit(as_uint8)
    frame = pd.DataFrame(as_uint8, columns=[f"px{i}" for i in range(256)])
    np.testing.assert_allclose(flat.score_samples(frame), flat.score_samples(as_uint8), rtol=1e-6)
    det = fast_cae().fit(frame)
    assert list(det.feature_names_in_) == list(frame.columns)
    # Refitting on plain images forgets the frame's column names.
    det.fit(np.nan_to_num(images))
    assert not hasattr(det, "feature_names_in_")


# -------------------------------------------------------------- channel axes
def test_a_size_one_channel_axis_is_squeezed_and_kept_in_maps(fitted, images):
    expected = fitted.score_samples(images)
    for layout, axis in [("channels first", 1), ("channels last", 3)]:
        X = np.expand_dims(images, axis)
        np.testing.assert_allclose(fitted.score_samples(X), expected, rtol=1e-6, err_msg=layout)
        maps = fitted.anomaly_map(X)
        assert maps.shape == X.shape
        np.testing.assert_array_equal(np.squeeze(maps, axis), fitted.anomaly_map(images))
    # Training on (N, 1, H, W) is training on the images.
    np.testing.assert_array_equal(fast_cae().fit(images[:, None]).score_samples(images), expected)


@pytest.mark.parametrize("shape", [(4, 3, 16, 16), (4, 4, 16, 16)])
def test_channels_first_colour_is_refused_unless_marked_as_bags(shape):
    X = np.random.default_rng(0).random(shape).astype(np.float32)
    with pytest.raises(ValueError, match=r"RGB\(A\) colour images in PyTorch's.*as_patch_bags"):
        fast_cae().fit(X)
    det = fast_cae(channels=(4,)).fit(as_patch_bags(X))
    assert det.image_shape_ == (16, 16) and det.score_patches(as_patch_bags(X)).shape == shape[:2]


def test_non_square_four_d_input_is_refused():
    with pytest.raises(ValueError, match="hold square patches"):
        fast_cae().fit(np.zeros((4, 2, 16, 8)))


# ------------------------------------------------ scoring parameters after fit
def test_scoring_parameters_are_validated_at_scoring_time(fitted, images):
    import copy

    det = copy.deepcopy(fitted)
    bags = as_patch_bags(np.nan_to_num(images).reshape(24, 4, 8, 8))
    for bad, message in [
        (dict(patch_aggregation=("topk", 0)), r"patch_aggregation=\('topk', 0\) is not valid"),
        (dict(anomaly_score="foo"), "anomaly_score='foo' is not valid"),
        (dict(batch_size=0), "batch_size"),
    ]:
        det.set_params(**bad)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no numpy all-NaN warning on the way
            with pytest.raises(ValueError, match=message):
                det.score_samples(images)
        det.set_params(**{k: fitted.get_params()[k] for k in bad})
    assert np.isfinite(det.score_samples(images)).all()
    del bags


def test_topk_larger_than_the_present_patches_warns(images):
    bags = as_patch_bags(np.nan_to_num(images).reshape(24, 4, 8, 8))
    det = fast_cae(channels=(4,), patch_aggregation=("topk", 6)).fit(bags)
    with pytest.warns(UserWarning, match=r"\('topk', 6\).*fewer present patches.*mean over all"):
        scores = det.score_samples(bags)
    np.testing.assert_allclose(scores, np.nanmean(det.score_patches(bags), axis=1))


# ------------------------------------------------------------ validation split
def test_validation_split_keeps_every_image_on_one_side(images, monkeypatch):
    """Patches of one image never land in both the training and the validation split."""
    bags = np.nan_to_num(images).reshape(24, 4, 8, 8).copy()
    bags[:, :, 0, 0] = np.arange(24, dtype=np.float32)[:, None] / 100  # each patch names its image
    det = fast_cae(channels=(4,), validation_fraction=0.25)
    seen = {}
    original = CAEDetector._split_by_image

    def spy(self, samples, owners):
        seen["train"], seen["valid"] = original(self, samples, owners)
        return seen["train"], seen["valid"]

    monkeypatch.setattr(CAEDetector, "_split_by_image", spy)
    det.fit(as_patch_bags(bags))

    def image_of(patches):
        return set(np.round(patches.to_array()[:, 0, 0, 0] * 100).astype(int))

    assert len(seen["valid"]) == 6 * 4 and len(seen["train"]) == 18 * 4
    assert len(image_of(seen["valid"])) == 6 and len(image_of(seen["train"])) == 18
    assert not image_of(seen["train"]) & image_of(seen["valid"])
    assert "valid_loss" in det.history_[-1]
    assert det.net_.train_split is None  # the validation set is not kept
    # Both sides are views of one array: a split copies no training data.
    assert seen["train"].array is seen["valid"].array


# ------------------------------------------------------------ host memory
@pytest.mark.parametrize("detector", ["cae", "fanogan"])
@pytest.mark.parametrize("layout", ["images", "bags"])
def test_fit_trains_on_the_callers_array_without_copying_it(detector, layout, monkeypatch):
    """Present patches, padding to the networks' side and validation splits are
    gathered batch by batch from the caller's float32 array: no full-size copy."""
    from skanomaly.detectors import FAnoGANDetector

    X = np.random.default_rng(0).random((24, 30, 30), dtype=np.float32)  # f-AnoGAN pads to 32
    X[:, :, :3] = np.nan
    if layout == "bags":
        X = np.ascontiguousarray(X.reshape(24, 1, 30, 30).repeat(2, axis=1))
        X[::3, 1] = np.nan  # absent patches
    if detector == "cae":
        det = fast_cae(channels=(4,), validation_fraction=0.25)
    else:
        det = FAnoGANDetector(encoder="critic", gan_channels=(4, 4, 4, 4), latent_dim=4, gan_iterations=4,
                              max_epochs=1, batch_size=8, validation_fraction=0.25, random_state=0)
    seen = []
    original = type(det)._fit_networks

    def spy(self, samples, owners, y, device):
        seen.append(samples)
        return original(self, samples, owners, y, device)

    monkeypatch.setattr(type(det), "_fit_networks", spy)
    det.fit(X)
    (samples,) = seen
    assert np.shares_memory(samples.array, X)
    n_present = int((~np.isnan(X.reshape(-1, 30, 30)).all(axis=(1, 2))).sum())
    assert len(samples) == n_present
    if detector == "fanogan":
        assert samples.sample_shape == (32, 32)
        batch = samples.batch([0, 1])
        assert batch.shape == (2, 1, 32, 32) and torch.isnan(batch[..., 30:, :]).all()


# ------------------------------------------------------------ scoring state
def _flags(module):
    return [m.training for m in module.modules()], [p.requires_grad for p in module.parameters()]


def test_fit_leaves_the_net_trainable_and_scoring_leaves_it_as_it_was(images):
    """fit scores its training images for offset_; neither that nor later scoring may
    leave the net frozen (it used to: partial_fit then raised)."""
    det = fast_cae().fit(images)
    module = det.net_.module_
    assert all(p.requires_grad for p in module.parameters())
    before = _flags(module)
    det.score_samples(images)
    det.anomaly_map(images)
    assert _flags(module) == before
    weight = next(module.parameters()).detach().clone()
    det.net_.partial_fit(images[:, None])
    assert not torch.equal(weight, next(module.parameters()))


def test_concurrent_scorings_keep_the_networks_frozen_until_the_last_ends(images):
    """Two threads score one fitted detector (Dask workers share the scattered model):
    the one that started first and ends first must not unfreeze the networks under
    the other, nor the other leave them frozen."""
    det = fast_cae().fit(images)
    module = det.net_.module_
    before = _flags(module)
    first_inside, second_inside, first_done = threading.Event(), threading.Event(), threading.Event()
    seen = {}
    anomaly_batch = det._anomaly_batch

    def interleaved(x, roi):
        name = threading.current_thread().name
        if name == "first" and not second_inside.is_set():
            first_inside.set()
            second_inside.wait(60)
        elif name == "second" and not first_done.is_set():
            second_inside.set()
            first_done.wait(60)
            seen["modes"], seen["grads"] = _flags(module)
        return anomaly_batch(x, roi)

    def second():
        first_inside.wait(60)
        det.score_samples(images)

    det._anomaly_batch = interleaved
    threads = [threading.Thread(target=det.score_samples, args=(images,), name="first"),
               threading.Thread(target=second, name="second")]
    for thread in threads:
        thread.start()
    threads[0].join(60)
    first_done.set()  # the first scoring has ended; the second is still inside
    threads[1].join(60)
    del det._anomaly_batch
    assert not any(seen["modes"]) and not any(seen["grads"])
    assert _flags(module) == before


class _NoFloat64:
    """A score tensor on a device without float64 (MPS): it widens on the CPU only."""

    def __init__(self, tensor):
        self.tensor = tensor

    def detach(self):
        return self

    def cpu(self):
        return self.tensor

    def double(self):
        raise TypeError("Cannot convert a MPS Tensor to float64 dtype")


def test_scores_come_to_the_cpu_before_widening(images):
    det = fast_cae().fit(images)
    expected = det.score_samples(images)
    anomaly_batch = det._anomaly_batch

    def on_a_device_without_float64(x, roi):
        pixel, image = anomaly_batch(x, roi)
        return pixel, _NoFloat64(image)

    det._anomaly_batch = on_a_device_without_float64
    scores = det.score_samples(images)
    assert scores.dtype == np.float64
    np.testing.assert_array_equal(scores, expected)


# --------------------------------------------------------------------- labels
class _SemiSupervisedCAE(CAEDetector):
    """A CAE declaring HealthyGAN's label semantics: 0 normal, -1 unlabelled."""

    def __skanomaly_tags__(self):
        tags = super().__skanomaly_tags__()
        tags.labels = "semi-supervised"
        return tags


def test_label_semantics_decide_what_fit_accepts(images):
    from skanomaly.utils.estimator_checks import check_refuses_abnormal_labels

    y = np.zeros(len(images), dtype=int)
    y[::3] = -1
    semi = _SemiSupervisedCAE(channels=(4,), max_epochs=1, batch_size=16, augment=None, random_state=0)
    semi.fit(images, y)
    with pytest.raises(ValueError, match="abnormal"):
        fast_cae(channels=(4,), max_epochs=1).fit(images, y)  # -1 is not normal-only
    y[4] = 1
    with pytest.raises(ValueError, match=r"abnormal \(1\).*-1 \(unlabelled\)"):
        semi.fit(images, y)
    # The check branches on the tag: it passes on both, with the right message each.
    check_refuses_abnormal_labels(semi)
    check_refuses_abnormal_labels(fast_cae(channels=(4,), max_epochs=1))


def test_conv_weights_are_channels_last_while_scoring_and_contiguous_after(fitted, images, monkeypatch):
    """Scoring convolves channels-last (oneDNN's fast layout); training, state_dict
    and model files see the usual contiguous weights, and the scores are the NCHW
    ones to float32 rounding."""
    import skanomaly.base as base

    convs = [p for p in fitted.net_.module_.parameters() if p.ndim == 4 and p.shape[1] > 1]
    assert convs
    seen = []
    original = CAEDetector._anomaly_batch

    def record(self, x, roi):
        seen.append(all(p.is_contiguous(memory_format=torch.channels_last) for p in convs))
        return original(self, x, roi)

    monkeypatch.setattr(CAEDetector, "_anomaly_batch", record)
    scores = fitted.score_samples(images)
    assert seen and all(seen)
    assert all(p.is_contiguous() for p in fitted.net_.module_.parameters())
    monkeypatch.setattr(base, "_to_channels_last", lambda module: [])
    nchw = fitted.score_samples(images)
    tolerance = fitted.__skanomaly_tags__().score_tolerance.rtol
    np.testing.assert_allclose(scores, nchw, rtol=tolerance, atol=tolerance)


def test_all_nan_input_says_there_is_no_pixel_in_the_roi():
    """Not "values in [nan, nan]": the value-range check comes after the ROI one."""
    with pytest.raises(ValueError, match="entirely NaN, i.e. have no pixel inside the region of interest") as info:
        fast_cae().fit(np.full((4, 16, 16), np.nan, dtype=np.float32))
    assert "nan, nan" not in str(info.value)


def test_topk_larger_than_the_roi_warns_and_scores_the_mean():
    X = np.random.default_rng(0).random((8, 16, 16), dtype=np.float32)
    X[:, :, 2:] = np.nan  # 32 ROI pixels per image
    det = fast_cae(channels=(4,), anomaly_score="mse").fit(X)
    mse = det.score_samples(X)
    det.set_params(anomaly_score=("topk", 50))
    with pytest.warns(UserWarning, match=r"\('topk', 50\): some images or patches have fewer than 50 pixels"):
        topk = det.score_samples(X)
    np.testing.assert_allclose(topk, mse, rtol=1e-6)


def test_a_flat_image_warns_that_its_score_means_nothing(fitted, images):
    flat = images[:3].copy()
    flat[1] = np.where(np.isnan(flat[1]), np.nan, 0.5)  # a grey square inside the same ROI
    with pytest.warns(UserWarning, match=r"1 of 3 images have \(almost\) no contrast .*indices 1\)"):
        fitted.score_samples(flat)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fitted.score_samples(images[:3])
