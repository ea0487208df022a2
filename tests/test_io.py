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


def test_loading_unpickles_nothing(fitted, images, tmp_path, monkeypatch):
    """load_model never reaches pickle or torch.load: both are booby-trapped here."""
    path = tmp_path / "model.safetensors"
    save_model(fitted, path)

    def trap(*args, **kwargs):
        raise AssertionError("load_model unpickled something")

    monkeypatch.setattr(pickle, "loads", trap)
    monkeypatch.setattr(pickle, "load", trap)
    monkeypatch.setattr(pickle, "Unpickler", trap)
    monkeypatch.setattr(torch, "load", trap)
    np.testing.assert_array_equal(load_model(path).score_samples(images), fitted.score_samples(images))


def _rewrite(path, edit, *, fix_digest=True, key=None):
    """Edit a model file's header or tensors as an attacker would, recomputing the
    unkeyed checksum (and, with ``key``, the signature) so that only deeper checks
    can catch the edit."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from skanomaly import io as skio

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    header = json.loads(metadata["header"])
    edit(header, tensors)
    metadata["header"] = json.dumps(header, sort_keys=True)
    if fix_digest:
        metadata["sha256"] = skio._digest(tensors, metadata["header"])
        if key is not None:
            metadata["hmac_sha256"] = skio._hmac(key, metadata["sha256"])
    save_file(tensors, str(path), metadata=metadata)


def test_unsigned_checksum_detects_corruption_not_forgery(fitted, images, tmp_path):
    """The documented limit: a forged offset_ with a recomputed digest loads without a key."""
    path = tmp_path / "model.safetensors"
    save_model(fitted, path)
    _rewrite(path, lambda header, tensors: header["fitted"].update(offset_=123.0))
    assert load_model(path).offset_ == 123.0


def test_signed_file_refuses_forgery_and_unsigned_files(fitted, images, tmp_path):
    path = tmp_path / "model.safetensors"
    save_model(fitted, path, key="secret")
    np.testing.assert_array_equal(load_model(path, key="secret").score_samples(images), fitted.score_samples(images))
    _rewrite(path, lambda header, tensors: header["fitted"].update(offset_=123.0))
    with pytest.raises(ValueError, match="failed its signature check"):
        load_model(path, key="secret")
    save_model(fitted, path, key="secret")
    with pytest.raises(ValueError, match="failed its signature check"):
        load_model(path, key="another secret")
    save_model(fitted, path)
    with pytest.raises(ValueError, match="is not signed, but a key was given"):
        load_model(path, key="secret")
    # A forger who strips the signature and recomputes the checksum is still refused.
    save_model(fitted, path, key=b"secret")
    _rewrite(path, lambda header, tensors: header["fitted"].update(offset_=1.0))
    with pytest.raises(ValueError, match="is not signed|signature check"):
        load_model(path, key=b"secret")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda h, t: h.update({"class": "builtins.eval"}), "unknown class 'builtins.eval'"),
        (lambda h, t: h["params"].update(batch_size=0), r"invalid parameters.*batch_size"),
        (lambda h, t: h["params"].update(lr="x"), r"invalid parameters.*lr"),
        (lambda h, t: h["params"].update(surprise=1), r"parameters \['surprise'\] that"),
        # The networks are built from what was fitted (network_config_), not from
        # parameters that may have changed since.
        (lambda h, t: h["fitted"]["network_config_"].update(channels=[4, 10**7]), "do not fit its parameters"),
        (lambda h, t: h["fitted"].update(offset_="nan"), "offset_"),
        (lambda h, t: h["fitted"].update(image_shape_=[16, 10**9]), "image_shape_"),
        (lambda h, t: t.popitem(), "missing"),
        (lambda h, t: t.update(extra=torch.zeros(3)), "unexpected"),
    ],
    ids=["class", "batch_size", "lr-type", "unknown-param", "huge-channels", "offset", "shape", "missing", "extra"],
)
def test_load_model_validates_before_building(fitted, tmp_path, edit, message):
    path = tmp_path / "model.safetensors"
    save_model(fitted, path)
    _rewrite(path, edit)
    with pytest.raises(ValueError, match=message):
        load_model(path)


def test_huge_channels_are_refused_without_allocating(tmp_path, images):
    """Shapes are checked on the meta device: a forged 10^5-channel net is never built
    (a real 100k x 100k x 3 x 3 float32 conv needs 360 GB: building it would fail with
    torch's allocation RuntimeError, not this ValueError)."""
    det = CAEDetector(channels=(4, 8), max_epochs=1, random_state=0).fit(images)
    path = tmp_path / "model.safetensors"
    save_model(det, path)
    _rewrite(path, lambda h, t: h["fitted"]["network_config_"].update(channels=[100_000, 100_000]))
    with pytest.raises(ValueError, match="do not fit its parameters"):
        load_model(path)


def test_model_saved_for_cuda_loads_on_a_cpu_only_machine(fitted, images, tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    save_model(fitted, path)
    _rewrite(path, lambda h, t: h["params"].update(device="cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="saved with device='cuda'.*device='auto'"):
        loaded = load_model(path)
    assert loaded.device == "auto"
    np.testing.assert_array_equal(loaded.score_samples(images), fitted.score_samples(images))
    # An explicit device wins, and a bad one is a clear error.
    assert load_model(path, device="cpu").device == "cpu"
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_model(path, device="cuda")


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


# ------------------------------------------------- the architecture a GAN was fitted with
@pytest.fixture(scope="module")
def fitted_anogan(images):
    from skanomaly.detectors import AnoGANDetector

    return AnoGANDetector(channels=(4, 8), latent_dim=4, max_epochs=1, batch_size=8, n_search_steps=3,
                          random_state=0).fit(images)


@pytest.mark.parametrize(
    "config, message",
    [
        ("nonsense", "network_config_"),
        (dict(side=16, channels=[4, 8], latent_dim=0), "latent_dim"),
        (dict(side=16, channels=[4, 8], latent_dim=True), "latent_dim"),
        (dict(side=16, channels=[4, 100_000], latent_dim=4), "channels"),
        (dict(side=16, channels=[], latent_dim=4), "channels"),
        (dict(side=64, channels=[4, 8], latent_dim=4), "side"),
        (dict(side=16, channels=[4, 8], latent_dim=4, surprise=1), "surprise"),
        (dict(side=16, channels=[4, 8]), "latent_dim"),
    ],
    ids=["type", "latent-zero", "latent-bool", "huge-channels", "no-channels", "side", "extra-key", "missing-key"],
)
def test_network_config_from_a_file_is_validated(fitted_anogan, tmp_path, config, message):
    path = tmp_path / "anogan.safetensors"
    save_model(fitted_anogan, path)
    _rewrite(path, lambda h, t: h["fitted"].update(network_config_=config))
    with pytest.raises(ValueError, match=f"network_config_.*{message}"):
        load_model(path)


def test_network_config_builds_the_loaded_networks(fitted_anogan, images, tmp_path):
    """A loaded detector builds what was fitted, whatever its parameters say now; a
    file written before network_config_ existed builds from its parameters."""
    path = tmp_path / "anogan.safetensors"
    save_model(fitted_anogan, path)
    expected = fitted_anogan.score_samples(images[:4])
    _rewrite(path, lambda h, t: h["params"].update(latent_dim=9, channels={"__tuple__": [8, 8, 8]}))
    loaded = load_model(path)
    assert loaded.latent_dim == 9 and loaded.network_config_["latent_dim"] == 4
    np.testing.assert_array_equal(loaded.score_samples(images[:4]), expected)
    save_model(fitted_anogan, path)
    _rewrite(path, lambda h, t: h["fitted"].pop("network_config_"))
    old = load_model(path)
    assert old.network_config_ == fitted_anogan.network_config_
    np.testing.assert_array_equal(old.score_samples(images[:4]), expected)


# ------------------------------------------------------------- paths and pickles
def test_a_pickle_is_recognised_and_the_safe_route_named(fitted, tmp_path):
    joblib.dump(fitted, tmp_path / "model.joblib")
    with pytest.raises(ValueError, match=r"is a pickle .*not a skanomaly model file.*joblib\.load.*trust"):
        load_model(tmp_path / "model.joblib")
    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match=r"zip archive \(torch\.save\)"):
        load_model(tmp_path / "weights.pt")


@pytest.mark.parametrize("where, message", [("folder", r"is a folder; give the file to write"),
                                            ("missing", r"the folder .* does not exist; create it first")])
def test_save_model_says_what_is_wrong_with_the_path(fitted, tmp_path, where, message):
    target = tmp_path if where == "folder" else tmp_path / "nowhere" / "model.safetensors"
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=message) as info:
        save_model(fitted, target)
    assert ".tmp" not in str(info.value)
    assert sorted(tmp_path.rglob("*")) == before


def test_a_signed_file_loaded_without_a_key_warns_that_nobody_checked_the_signature(fitted, tmp_path):
    save_model(fitted, tmp_path / "signed.safetensors", key=b"secret")
    with pytest.warns(UserWarning, match="signature was not checked"):
        load_model(tmp_path / "signed.safetensors")
    save_model(fitted, tmp_path / "plain.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_model(tmp_path / "plain.safetensors")
