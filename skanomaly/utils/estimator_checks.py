"""Detector-level checks that every detector of the package must pass.

scikit-learn's :func:`~sklearn.utils.estimator_checks.parametrize_with_checks` checks
the estimator API on tiny tabular arrays. These checks hold a detector to the
package's own contract on images (as imbalanced-learn ships checks for samplers):

* scores do not depend on ``batch_size``, on the order of the samples, or on which
  samples share a scoring batch;
* scoring changes no weight and no buffer (BatchNorm statistics included);
* scoring, also inside ``fit``, leaves every module's training mode and every
  parameter's ``requires_grad`` as it found them, so the fitted nets train on;
* pixels outside the region of interest (NaN) influence neither scores nor maps, and
  maps are NaN exactly there;
* ``joblib`` and :func:`skanomaly.io.save_model` round trips give identical scores;
* a one-patch bag (and an image with a channel axis) is scored like the image;
* the same ``random_state`` gives the same model, in threads as in sequence, and
  leaves torch's global RNG alone;
* a failed ``fit`` leaves an unfitted detector; labels that mark abnormal images
  are refused (by the detector's label semantics); float input outside [0, 1] is
  refused.

Tolerances and label semantics come from the detector's own tags
(:func:`skanomaly.utils.tags.get_detector_tags`): scores computed twice by the same
networks agree to its ``score_tolerance`` (float32 rounding, see
:func:`~skanomaly.utils.tags.float32_rtol`), scores of two trainings to its
``training_tolerance``.

Use :func:`parametrize_with_detector_checks` in a test module::

    @parametrize_with_detector_checks([CAEDetector(channels=(4,), max_epochs=2)])
    def test_detector_contract(detector, check):
        check(detector)

Pass small settings: every check fits the detector at least once on a few dozen
images of 16 x 16 pixels (or the detector's minimum size, if larger).
"""

import functools
import io
import os
import signal
import tempfile
import threading

import joblib
import numpy as np
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from skorch.callbacks import Callback

from .tags import get_detector_tags

__all__ = ["detector_checks", "parametrize_with_detector_checks"]

_N_IMAGES = 24


def _images(detector, n=_N_IMAGES, seed=0):
    """Smooth random images with a NaN band (outside the ROI) on the left."""
    size = max(16, int(detector._min_image_size()))
    rng = np.random.default_rng(seed)
    noise = rng.random((n, size // 4, size // 4)).astype(np.float32)
    images = np.kron(noise, np.ones((4, 4), np.float32))
    images = 0.25 + 0.5 * images + 0.05 * rng.random(images.shape).astype(np.float32)
    images[:, :, : size // 8] = np.nan
    return images


def _training_labels(detector, n):
    """The ``y`` a check fits with: none for a normal-only detector; for a
    semi-supervised one, every second image unlabelled (-1), the others normal (0)."""
    if get_detector_tags(detector).labels != "semi-supervised":
        return None
    y = np.zeros(n, dtype=int)
    y[1::2] = -1
    return y


def _fit(detector, images):
    """``detector.fit(images)``, with the labels its semantics need."""
    return detector.fit(images, _training_labels(detector, len(images)))


def _fitted(detector, images=None):
    detector = clone(detector).set_params(random_state=0)
    return _fit(detector, _images(detector) if images is None else images)


def _state(detector):
    return {
        f"{name}.{key}": tensor.detach().cpu().clone()
        for name, module in detector._torch_modules().items()
        for key, tensor in module.state_dict().items()
    }


def _assert_scores_close(actual, expected, what, detector):
    """Scores (or maps) of the same fitted networks, batched differently, agree to the
    detector's ``score_tolerance``: relative, and as much again in absolute terms,
    since the roundings are relative to the networks' values (pixels in [0, 1] or
    [-1, 1], normalised activations, all of order 1), which a residual near 0
    inherits through the cancellation in ``x - x~``."""
    tolerance = get_detector_tags(detector).score_tolerance
    np.testing.assert_allclose(
        actual, expected, rtol=tolerance.rtol, atol=tolerance.rtol, err_msg=f"{what} ({tolerance.reason})"
    )


def check_scores_independent_of_batch_size(detector):
    """Scores and maps are the same whatever the scoring batch size."""
    fitted = _fitted(detector)
    images = _images(fitted, n=10, seed=1)
    expected = fitted.score_samples(images)
    maps = fitted.anomaly_map(images)
    for batch_size in (1, 3, 64):
        fitted.set_params(batch_size=batch_size)
        _assert_scores_close(fitted.score_samples(images), expected, f"batch_size={batch_size}", fitted)
        # Maps are differences of pixels in [0, 1], rounded like the scores (measured up
        # to ~1e-5 behind PixelNorm); any real coupling of samples (batch statistics)
        # moves them by orders more.
        _assert_scores_close(fitted.anomaly_map(images), maps, f"maps, batch_size={batch_size}", fitted)


def check_scores_independent_of_sample_order(detector):
    """Permuting the samples permutes the scores, nothing more."""
    fitted = _fitted(detector)
    images = _images(fitted, n=10, seed=1)
    order = np.random.default_rng(0).permutation(len(images))
    _assert_scores_close(
        fitted.score_samples(images[order]), fitted.score_samples(images)[order], "permuted", fitted
    )


def check_scoring_leaves_weights_unchanged(detector):
    """No scoring path moves a weight or a buffer (BatchNorm running statistics)."""
    fitted = _fitted(detector)
    before = _state(fitted)
    images = _images(fitted, n=6, seed=2)
    fitted.score_samples(images)
    fitted.anomaly_map(images)
    fitted.predict(images)
    after = _state(fitted)
    assert before.keys() == after.keys()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert not changed, f"scoring changed {changed}"


def _training_flags(detector):
    """``{name: flag}``: ``training`` of every (sub)module, ``requires_grad`` of every
    parameter, over the detector's fitted modules."""
    flags = {}
    for name, module in detector._torch_modules().items():
        for sub, child in module.named_modules():
            flags[f"{name}.{sub}.training"] = child.training
        for key, param in module.named_parameters():
            flags[f"{name}.{key}.requires_grad"] = param.requires_grad
    return flags


def check_scoring_restores_training_state(detector):
    """Scoring, also the scoring of ``offset_`` inside ``fit`` and a scoring that fails
    half-way, freezes the networks while it runs and leaves every module's training
    mode and every parameter's ``requires_grad`` as it found them: the fitted last
    stage (the net no later stage froze) can be trained further."""
    fitted = _fitted(detector)
    images = _images(fitted, n=6, seed=2)
    last = getattr(fitted, fitted._net_attributes[-1])
    trainable = [param for _, param in last.get_all_learnable_params()]
    frozen_by_fit = sum(not param.requires_grad for param in trainable)
    assert trainable and not frozen_by_fit, (
        f"after fit, {frozen_by_fit} of the {len(trainable)} trainable parameters of "
        f"{fitted._net_attributes[-1]} have requires_grad=False: the scoring of offset_ "
        "froze them"
    )
    before = _training_flags(fitted)
    fitted.score_samples(images)
    fitted.anomaly_map(images)
    fitted.predict(images)
    changed = [name for name, flag in _training_flags(fitted).items() if before[name] != flag]
    assert not changed, f"scoring changed {changed}"

    def failing_batch(x, roi):
        flags = _training_flags(fitted)
        leaked = [name for name, flag in flags.items() if flag]
        assert not leaked, f"scoring ran with {leaked} in training mode or with gradients"
        raise RuntimeError("scoring failed half-way")

    fitted._anomaly_batch = failing_batch
    try:
        fitted.score_samples(images)
    except RuntimeError as err:
        assert "half-way" in str(err), err
    else:
        raise AssertionError("the failing scoring batch was never called")
    finally:
        del fitted._anomaly_batch
    changed = [name for name, flag in _training_flags(fitted).items() if before[name] != flag]
    assert not changed, f"a failed scoring changed {changed}"

    weights = [param.detach().clone() for param in trainable]
    last.partial_fit(images[:, None])
    moved = sum(not torch.equal(w, param.detach()) for w, param in zip(weights, trainable))
    assert moved, f"{fitted._net_attributes[-1]}.partial_fit changed no weight"


def check_roi_contract(detector):
    """Maps are NaN exactly outside the ROI and finite inside; scores are finite; absent
    patches of a bag get NaN patch scores and all-NaN maps, and no say in the image
    score."""
    from .validation import as_patch_bags

    fitted = _fitted(detector)
    images = _images(fitted, n=6, seed=3)
    maps = fitted.anomaly_map(images)
    np.testing.assert_array_equal(np.isnan(maps), np.isnan(images))
    assert np.isfinite(fitted.score_samples(images)).all()
    bags = np.stack([images, np.full_like(images, np.nan), images[::-1]], axis=1)
    bags = as_patch_bags(bags)
    patch_scores = fitted.score_patches(bags)
    assert np.isnan(patch_scores[:, 1]).all() and np.isfinite(patch_scores[:, [0, 2]]).all()
    assert np.isnan(fitted.anomaly_map(bags)[:, 1]).all()
    without_absent = as_patch_bags(np.ascontiguousarray(bags[:, [0, 2]]))
    np.testing.assert_array_equal(fitted.score_samples(bags), fitted.score_samples(without_absent))


def check_joblib_round_trip(detector):
    """joblib.dump / joblib.load gives identical scores, maps and offset."""
    fitted = _fitted(detector)
    images = _images(fitted, n=6, seed=4)
    buffer = io.BytesIO()
    joblib.dump(fitted, buffer)
    buffer.seek(0)
    loaded = joblib.load(buffer)
    np.testing.assert_array_equal(loaded.score_samples(images), fitted.score_samples(images))
    np.testing.assert_array_equal(loaded.anomaly_map(images), fitted.anomaly_map(images))
    assert loaded.offset_ == fitted.offset_


def check_save_model_round_trip(detector):
    """skanomaly.io.save_model / load_model gives identical scores, signed or not."""
    from ..io import load_model, save_model

    fitted = _fitted(detector)
    images = _images(fitted, n=6, seed=4)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.safetensors")
        save_model(fitted, path, key=b"check")
        loaded = load_model(path, key=b"check")
    assert type(loaded) is type(fitted)
    np.testing.assert_array_equal(loaded.score_samples(images), fitted.score_samples(images))
    np.testing.assert_array_equal(loaded.anomaly_map(images), fitted.anomaly_map(images))
    assert loaded.offset_ == fitted.offset_ and loaded.n_iter_ == fitted.n_iter_


def check_one_patch_bag_equals_image(detector):
    """A bag of one patch, an image with a channel axis and the image score alike."""
    from .validation import as_patch_bags

    fitted = _fitted(detector)
    images = _images(fitted, n=5, seed=5)
    expected = fitted.score_samples(images)
    bags = as_patch_bags(images[:, None])
    _assert_scores_close(fitted.score_samples(bags), expected, "one-patch bag", fitted)
    _assert_scores_close(fitted.score_patches(bags)[:, 0], expected, "score_patches", fitted)
    _assert_scores_close(fitted.score_samples(images[..., None]), expected, "channels last", fitted)
    maps = fitted.anomaly_map(images)
    _assert_scores_close(fitted.anomaly_map(bags)[:, 0], maps, "one-patch bag maps", fitted)
    _assert_scores_close(fitted.anomaly_map(images[..., None])[..., 0], maps, "channels last maps", fitted)


def check_random_state_determinism(detector):
    """The same random_state gives the same model; torch's global RNG is untouched."""
    images = _images(detector)
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    first = _fit(clone(detector).set_params(random_state=7), images)
    assert torch.equal(torch.rand(3), expected_draw), "fit drew from torch's global RNG"
    second = _fit(clone(detector).set_params(random_state=7), images)
    np.testing.assert_array_equal(first.score_samples(images), second.score_samples(images))
    third = _fit(clone(detector).set_params(random_state=8), images)
    assert not np.array_equal(first.score_samples(images), third.score_samples(images))


def check_threaded_fits_match_sequential(detector):
    """Detectors fitted at once in threads equal the same detectors fitted in turn."""
    images = _images(detector)
    seeds = (1, 2, 3)
    sequential = [_fit(clone(detector).set_params(random_state=s), images).score_samples(images) for s in seeds]
    results = {}
    barrier = threading.Barrier(len(seeds))

    def work(seed):
        fresh = clone(detector).set_params(random_state=seed)
        barrier.wait()
        results[seed] = _fit(fresh, images).score_samples(images)

    threads = [threading.Thread(target=work, args=(s,)) for s in seeds]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for seed, expected in zip(seeds, sequential):
        np.testing.assert_array_equal(results[seed], expected, err_msg=f"random_state={seed}")


def check_failed_fit_leaves_unfitted(detector):
    """A fit that fails, also a refit of a fitted detector, leaves it unfitted."""
    fitted = _fitted(detector)
    images = _images(fitted)
    broken = images.copy()
    broken[0, 0, -1] = np.inf
    try:
        _fit(fitted, broken)
    except ValueError:
        pass
    else:
        raise AssertionError("fit accepted inf")
    try:
        fitted.predict(images)
    except NotFittedError:
        return
    raise AssertionError("a failed refit left the detector usable with stale state")


class _InterruptAtBatch(Callback):
    """Send this process SIGINT (Ctrl-C) at the end of the ``batch``-th training batch."""

    def __init__(self, batch=1):
        self.batch = batch

    def initialize(self):
        self.batches_ = 0
        return self

    def on_batch_end(self, net, training=False, **kwargs):
        if training:
            self.batches_ += 1
            if self.batches_ == self.batch:
                signal.raise_signal(signal.SIGINT)


def check_interrupted_fit_leaves_unfitted(detector):
    """Ctrl-C in any training stage ends ``fit`` with ``KeyboardInterrupt`` and
    leaves the detector unfitted (also one fitted before): skorch's own stop signal
    must not turn an interrupted stage into a finished one.

    Every ``*callbacks`` parameter (one per stage: ``callbacks``, ``gan_callbacks``)
    gets the interrupt in turn. Signals reach the main thread only: elsewhere the
    check passes without running.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    stages = sorted(name for name in detector.get_params(deep=False) if name.endswith("callbacks"))
    assert stages, f"{type(detector).__name__} has no callbacks parameter to interrupt a stage with"
    for stage in stages:
        fitted = _fitted(detector)
        images = _images(fitted)
        fitted.set_params(**{stage: [*(fitted.get_params()[stage] or []), _InterruptAtBatch(batch=1)]})
        try:
            _fit(fitted, images)
        except KeyboardInterrupt:
            pass
        else:
            raise AssertionError(f"fit returned normally after Ctrl-C in the stage of {stage}")
        try:
            fitted.predict(images)
        except NotFittedError:
            continue
        raise AssertionError(f"Ctrl-C in the stage of {stage} left the detector looking fitted")


def check_fit_and_score_any_memory_layout(detector):
    """Reversed and strided Fortran-ordered views train and score like C arrays
    (torch refuses negative strides; numpy hands them out for ``X[::-1]``)."""
    images = _images(detector)
    expected = _fitted(detector, images).score_samples(images)
    for name, view in (
        ("reversed", np.ascontiguousarray(images[::-1])[::-1]),
        ("strided Fortran-ordered", np.asfortranarray(np.repeat(images, 2, axis=2))[:, :, ::2]),
    ):
        fitted = _fitted(detector, view)
        _assert_scores_close(fitted.score_samples(view), expected, f"fit and scores on a {name} view", fitted)


def check_refuses_abnormal_labels(detector):
    """fit(X, y) refuses labels that mark abnormal images, by the detector's label
    semantics: all-normal labels are fine; a semi-supervised detector also takes -1
    (unlabelled)."""
    semantics = get_detector_tags(detector).labels
    images = _images(detector)
    y = np.zeros(len(images), dtype=int)
    if semantics == "semi-supervised":
        y[1::2] = -1
    clone(detector).set_params(random_state=0).fit(images, y)
    y[[2, 5]] = 1
    try:
        clone(detector).fit(images, y)
    except ValueError as err:
        message = str(err)
        if semantics == "semi-supervised":
            assert "abnormal" in message and "-1" in message, message
        else:
            assert "abnormal" in message and "X[y == 0]" in message, message
        return
    raise AssertionError(f"fit ({semantics} labels) trained on images labelled abnormal (1)")


def check_refuses_values_outside_range(detector):
    """Float images outside [0, 1] are refused in fit and in scoring, naming the fix."""
    detector = clone(detector).set_params(value_range="auto", random_state=0)
    images = _images(detector)
    for bad in (images * 255, images * 2 - 1):
        try:
            _fit(clone(detector), bad)
        except ValueError as err:
            assert "value_range" in str(err) and "Rescale" in str(err)
        else:
            raise AssertionError("fit accepted floats outside [0, 1]")
    fitted = _fit(detector, images)
    try:
        fitted.score_samples(images * 255)
    except ValueError as err:
        assert "value_range" in str(err)
    else:
        raise AssertionError("scoring accepted floats outside [0, 1]")
    # An explicit range maps to [0, 1]: 8-bit data held as floats scores like [0, 1].
    as_255 = _fit(clone(detector).set_params(value_range=(0, 255)), np.round(images * 255))
    scores_255 = as_255.score_samples(np.round(images * 255))
    # Scoring: the same fitted networks see the same pixels, up to the rounding of
    # (x - 0) / 255 against x / 255.
    _assert_scores_close(
        scores_255,
        as_255.set_params(value_range=(0, 1)).score_samples(np.round(images * 255) / 255),
        "value_range=(0, 255) against [0, 1] pixels",
        detector,
    )
    # Training: not bit-equal, since training (a GAN's, a ResNet's with BatchNorm, above
    # all) carries those last bits on and amplifies them, by as much as the detector's
    # training_tolerance says; a wrong mapping (pixels 255 times too bright) is off by
    # far more.
    tolerance = get_detector_tags(detector).training_tolerance
    np.testing.assert_allclose(
        scores_255,
        _fit(clone(detector), np.round(images * 255) / 255).score_samples(np.round(images * 255) / 255),
        rtol=tolerance.rtol,
        err_msg=f"training on (x - 0) / 255 against x / 255 ({tolerance.reason})",
    )


_CHECKS = [
    check_scores_independent_of_batch_size,
    check_scores_independent_of_sample_order,
    check_scoring_leaves_weights_unchanged,
    check_scoring_restores_training_state,
    check_roi_contract,
    check_joblib_round_trip,
    check_save_model_round_trip,
    check_one_patch_bag_equals_image,
    check_random_state_determinism,
    check_threaded_fits_match_sequential,
    check_failed_fit_leaves_unfitted,
    check_interrupted_fit_leaves_unfitted,
    check_fit_and_score_any_memory_layout,
    check_refuses_abnormal_labels,
    check_refuses_values_outside_range,
]


def detector_checks():
    """The detector-level check functions, each taking an (unfitted) detector."""
    return list(_CHECKS)


def parametrize_with_detector_checks(detectors):
    """A ``pytest.mark.parametrize`` over ``(detector, check)`` for every detector.

    Parameters
    ----------
    detectors : list of detector instances
        Small, fast settings; each check clones its detector.

    Returns
    -------
    decorator : pytest mark
        Parametrises the arguments ``detector`` and ``check``.
    """
    import pytest

    params, ids = [], []
    for detector in detectors:
        for check in _CHECKS:
            params.append((detector, functools.partial(check)))
            ids.append(f"{type(detector).__name__}-{check.__name__}")
    return pytest.mark.parametrize("detector, check", params, ids=ids)
