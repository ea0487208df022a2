"""BestValidationAUC leaves the best epoch's weights, and nothing of its own training
state, in a fitted detector."""

import pickle

import numpy as np
import pytest
from sklearn.base import clone

from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import FAnoGANDetector
from skanomaly.detectors.fanogan import BestValidationAUC

TINY = dict(encoder="critic", gan_channels=(16, 8, 8), latent_dim=8, gan_iterations=30, max_epochs=2,
            batch_size=8, random_state=0)


@pytest.fixture(scope="module")
def data():
    train = make_chest_phantoms(24, image_size=16, anomaly_fraction=0.0, random_state=0).images
    valid = make_chest_phantoms(200, image_size=16, anomaly_fraction=0.5, random_state=1)
    # 2000 validation images, 2 MB of float32: a copy of them anywhere in a fitted
    # detector shows in its pickle.
    return train, np.tile(valid.images, (10, 1, 1)), np.tile(valid.labels, 10)


def _fitted_bytes(detector, X):
    """The fitted detector and the bytes it pickles beyond its unfitted parameters
    (which hold the user's callback, validation images included, as given)."""
    fitted = clone(detector).fit(X)
    return fitted, len(pickle.dumps(fitted)) - len(pickle.dumps(clone(detector)))


def test_a_fitted_detector_carries_no_validation_set_or_weight_copy(data):
    train, X_valid, y_valid = data
    _, plain = _fitted_bytes(FAnoGANDetector(**TINY), train)
    selecting = FAnoGANDetector(**TINY, callbacks=[BestValidationAUC(X_valid, y_valid)])
    fitted, selected = _fitted_bytes(selecting, train)
    callback = dict(fitted.encoder_.callbacks_)["user_0"]
    assert callback.best_epoch_ in (1, 2) and 0 <= callback.best_score_ <= 1
    assert callback.X_ is None and callback.y_ is None and callback.best_state_ is None
    # Beyond the history's valid_auc columns and the callback object, nothing: the
    # validation images alone would be 2,048,000 bytes.
    assert abs(selected - plain) < 20_000, f"{selected - plain} bytes more with BestValidationAUC"
    # Training on prepares the validation set again, and drops it again.
    fitted.encoder_.partial_fit(train[:, None])
    assert len(fitted.encoder_.history) == 4 and np.isfinite(fitted.encoder_.history[-1, "valid_auc"])
    assert callback.X_ is None and callback.best_state_ is None


def test_a_cloned_callback_shares_the_validation_arrays(data):
    _, X_valid, y_valid = data
    callback = BestValidationAUC(X_valid, y_valid)
    copied = clone(callback)
    assert copied is not callback and copied.X is X_valid and copied.y is y_valid
    assert copied.get_params()["name"] == "valid_auc"


def test_validation_scoring_puts_the_encoder_back_in_its_mode(data):
    """BestValidationAUC scores between training epochs: the encoder returns to
    training mode, the frozen GAN stays in eval mode."""
    train, X_valid, _ = data
    net = FAnoGANDetector(**TINY).fit(train).encoder_
    for training in (True, False):
        net._set_training(training)
        net.anomaly_scores(X_valid[:5])
        assert net.module_.training is training
        assert not net.generator_.training and not net.discriminator_.training
