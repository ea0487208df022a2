"""Persistence: joblib round trips, GPU-pickled models on CPU, the safe model format."""

import io
import json
import pickle
import warnings

import joblib
import numpy as np
import pytest
import torch

from skanomaly.detectors import CAEDetector, VAEDetector
from skanomaly.io import load_model, save_model


@pytest.fixture(scope="module")
def images():
    X = np.random.default_rng(0).random((20, 16, 16)).astype(np.float32)
    X[:, :2] = np.nan
    return X


@pytest.fixture(scope="module", params=["cae", "vae"])
def fitted(request, images):
    if request.param == "cae":
        det = CAEDetector(channels=(4, 8), max_epochs=2, random_state=0, anomaly_score=("topk", 10))
    else:
        det = VAEDetector(channels=(4,), latent_dim=4, max_epochs=2, random_state=0, anomaly_score="mse+kld")
    return det.fit(images)


def test_joblib_round_trip_is_exact(fitted, images, tmp_path):
    joblib.dump(fitted, tmp_path / "model.joblib")
    loaded = joblib.load(tmp_path / "model.joblib")
    np.testing.assert_array_equal(loaded.score_samples(images), fitted.score_samples(images))
    np.testing.assert_array_equal(loaded.anomaly_map(images), fitted.anomaly_map(images))
    assert loaded.offset_ == fitted.offset_


def test_model_pickled_on_gpu_loads_on_cpu_only_machine(fitted, images, monkeypatch):
    """Pickle as a CUDA machine would (storages tagged 'cuda:0'), load without CUDA."""
    expected = fitted.score_samples(images)
    fitted.net_.device = "cuda"
    try:
        with monkeypatch.context() as patch:
            patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
            buffer = pickle.dumps(fitted)
    finally:
        fitted.net_.device = "cpu"
    assert b"cuda:0" in buffer  # the storages really claim to live on a GPU
    # A plain torch.load of such storages fails without CUDA; the detector must not.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skorch's DeviceWarning announces the move to CPU
        loaded = pickle.loads(buffer)
    assert str(loaded.net_.device) == "cpu"
    assert next(loaded.net_.module_.parameters()).device.type == "cpu"
    np.testing.assert_array_equal(loaded.score_samples(images), expected)


def test_safe_format_round_trip_is_exact(fitted, images, tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(fitted, path)
    loaded = load_model(path)
    assert type(loaded) is type(fitted)
    assert loaded.get_params() == fitted.get_params()
    np.testing.assert_array_equal(loaded.score_samples(images), fitted.score_samples(images))
    np.testing.assert_array_equal(loaded.predict(images), fitted.predict(images))
    assert loaded.n_iter_ == fitted.n_iter_ and loaded.image_shape_ == fitted.image_shape_
    assert [e["train_loss"] for e in loaded.history_] == [e["train_loss"] for e in fitted.history_]


def test_safe_format_executes_no_code(fitted, tmp_path):
    """The file is safetensors: a JSON header and raw tensor bytes, no pickle opcodes."""
    path = tmp_path / "model.safetensors"
    save_model(fitted, path)
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    assert header["__metadata__"]["format"] == "skanomaly-model"
    assert b"\x80\x04\x95" not in raw[: 8 + header_len]  # no pickle protocol-4 frame


def test_tampered_file_is_refused(fitted, tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(fitted, path)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # flip bits inside the last tensor
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="failed its integrity check"):
        load_model(path)


def test_edited_header_is_refused(fitted, tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(fitted, path)
    raw = path.read_bytes()
    edited = raw.replace(b'\\"offset_\\": ', b'\\"offset_\\": 1')
    assert edited != raw and len(edited) == len(raw) + 1
    header_len = int.from_bytes(raw[:8], "little") + 1
    path.write_bytes(header_len.to_bytes(8, "little") + edited[8:])
    with pytest.raises(ValueError, match="failed its integrity check"):
        load_model(path)


def test_not_a_model_file(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="not a readable skanomaly model file"):
        load_model(path)
    with pytest.raises(ValueError, match="No model file at"):
        load_model(tmp_path / "missing.safetensors")


def test_save_refuses_unfitted_and_foreign_estimators(tmp_path):
    from sklearn.exceptions import NotFittedError
    from sklearn.ensemble import IsolationForest

    with pytest.raises(NotFittedError):
        save_model(CAEDetector(), tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="saves the package's detectors"):
        save_model(IsolationForest(), tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file


def test_callbacks_are_dropped_with_a_warning(images, tmp_path):
    from skorch.callbacks import EarlyStopping

    det = CAEDetector(channels=(4,), max_epochs=1, callbacks=[EarlyStopping(monitor="train_loss")])
    det.fit(images)
    with pytest.warns(UserWarning, match=r"\['callbacks'\] are not plain data"):
        save_model(det, tmp_path / "m.safetensors")
    assert load_model(tmp_path / "m.safetensors").callbacks is None


def test_pickle_buffer_round_trip_for_vae_sampling_state(images):
    """Scoring after unpickling is deterministic even though training samples z."""
    det = VAEDetector(channels=(4,), latent_dim=4, max_epochs=1, random_state=0).fit(images)
    buffer = io.BytesIO()
    joblib.dump(det, buffer)
    buffer.seek(0)
    loaded = joblib.load(buffer)
    np.testing.assert_array_equal(loaded.score_samples(images), loaded.score_samples(images))
    np.testing.assert_array_equal(loaded.score_samples(images), det.score_samples(images))
