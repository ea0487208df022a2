"""The safe model format for whole pipelines: exact round trips (also in a fresh
process), validation of every step before anything is built, signing, refusals at save
time, atomic writes, and files written by the single-detector format (version 1)."""

import base64
import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from imblearn.pipeline import make_pipeline as imb_make_pipeline
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from skanomaly.base import BaseDeepDetector
from skanomaly.datasets import make_chest_phantoms
from skanomaly.detectors import CAEDetector, VAEDetector
from skanomaly.io import load_model, save_model, supported_classes
from skanomaly.preprocessing import CLAHE, LungMasker, PatchExtractor, Rescale, Resize

FAST = dict(max_epochs=1, batch_size=16, random_state=0, augment=None)


def _normal_only():
    """skanomaly.model_selection.NormalOnly, or a skip while it does not exist."""
    model_selection = pytest.importorskip("skanomaly.model_selection")
    if not hasattr(model_selection, "NormalOnly"):
        pytest.skip("skanomaly.model_selection.NormalOnly does not exist yet")
    return model_selection.NormalOnly()


@pytest.fixture(scope="module")
def data():
    X = np.random.default_rng(0).random((10, 32, 32)).astype(np.float32)
    X[:, :3] = np.nan  # outside the region of interest
    y = np.r_[np.zeros(7, dtype=int), np.ones(3, dtype=int)]
    return X, y


def _patch_pipeline():
    return make_pipeline(CLAHE(kernel_size=8), PatchExtractor(16, stride=8), CAEDetector(channels=(4,), **FAST))


PIPELINES = {
    "sklearn-clahe-patches-cae": _patch_pipeline,
    "imblearn-normalonly-clahe-patches-cae": lambda: imb_make_pipeline(
        _normal_only(), CLAHE(kernel_size=8), PatchExtractor(16, stride=8), CAEDetector(channels=(4,), **FAST)
    ),
    "sklearn-rescale-resize-vae": lambda: Pipeline(
        [
            ("rescale", Rescale()),
            ("resize", Resize((16, -1))),
            ("sqrt", FunctionTransformer(np.sqrt)),
            ("nothing", "passthrough"),
            ("vae", VAEDetector(channels=(4,), latent_dim=2, anomaly_score="mse+kld", **FAST)),
        ]
    ),
    "sklearn-nested": lambda: make_pipeline(
        make_pipeline(Rescale(), Resize(16)), None, CAEDetector(channels=(4,), **FAST)
    ),
}


@pytest.fixture(scope="module")
def patch_pipeline(data):
    X, y = data
    return _patch_pipeline().fit(X[y == 0])


@pytest.fixture(scope="module")
def lung_pipeline():
    X = make_chest_phantoms(3, image_size=32, anomaly_fraction=0, random_state=0).images
    pipe = make_pipeline(LungMasker(), PatchExtractor(16, stride=8), CAEDetector(channels=(4,), **FAST))
    return pipe.fit(X), X


@pytest.fixture(scope="module", params=sorted(PIPELINES))
def fitted(request, data):
    X, y = data
    pipe = PIPELINES[request.param]()
    return pipe.fit(X, y) if "normalonly" in request.param else pipe.fit(X[y == 0])


def _assert_same_steps(loaded, pipe):
    """Same classes, parameters and fitted attributes, step by step (recursively)."""
    assert type(loaded) is type(pipe)
    assert [name for name, _ in loaded.steps] == [name for name, _ in pipe.steps]
    for (_, a), (_, b) in zip(loaded.steps, pipe.steps):
        assert type(a) is type(b)
        if isinstance(b, Pipeline):
            _assert_same_steps(a, b)
            continue
        if not hasattr(b, "get_params"):  # "passthrough", None
            assert a == b
            continue
        assert a.get_params(deep=False) == b.get_params(deep=False)
        fitted = {k for k in vars(b) if k.endswith("_") and not k.startswith("_")}
        assert fitted == {k for k in vars(a) if k.endswith("_") and not k.startswith("_")}
        for name in sorted(fitted - {"net_", "history_", "histories_"}):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def _assert_same_pipeline(loaded, pipe, X):
    _assert_same_steps(loaded, pipe)
    np.testing.assert_array_equal(loaded.score_samples(X), pipe.score_samples(X))
    np.testing.assert_array_equal(loaded.decision_function(X), pipe.decision_function(X))
    np.testing.assert_array_equal(loaded.predict(X), pipe.predict(X))
    np.testing.assert_array_equal(loaded[:-1].transform(X), pipe[:-1].transform(X))


def test_pipeline_round_trip_is_exact(fitted, data, tmp_path):
    X, _ = data
    path = tmp_path / "pipe.safetensors"
    save_model(fitted, path)
    _assert_same_pipeline(load_model(path), fitted, X)


def test_saved_file_is_readable_like_any_new_file(fitted, tmp_path):
    """The temporary file mkstemp makes is private (0600); the model file is not."""
    umask = os.umask(0o022)
    try:
        save_model(fitted, tmp_path / "pipe.safetensors")
    finally:
        os.umask(umask)
    assert (tmp_path / "pipe.safetensors").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.safetensors"]


def test_pipeline_loads_in_a_fresh_process_and_scores_identically(data, patch_pipeline, tmp_path):
    """Saved by this process, loaded by another Python that never saw the objects."""
    X, _ = data
    pipe = patch_pipeline
    save_model(pipe, tmp_path / "pipe.safetensors", key="secret")
    np.save(tmp_path / "X.npy", X)
    script = textwrap.dedent(
        """
        import sys, numpy as np
        from skanomaly.io import load_model
        pipe = load_model(sys.argv[1] + "/pipe.safetensors", key="secret")
        X = np.load(sys.argv[1] + "/X.npy")
        np.save(sys.argv[1] + "/scores.npy", pipe.score_samples(X))
        np.save(sys.argv[1] + "/maps.npy", pipe[-1].anomaly_map(pipe[:-1].transform(X)))
        """
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, timeout=300)
    np.testing.assert_array_equal(np.load(tmp_path / "scores.npy"), pipe.score_samples(X))
    maps = pipe[-1].anomaly_map(pipe[:-1].transform(X))
    np.testing.assert_array_equal(np.load(tmp_path / "maps.npy"), maps)


def test_lung_masker_pipeline_round_trip(lung_pipeline, tmp_path):
    """LungMasker's U-Net ships with the package (not fitted): the file records which
    packaged weights it used, holds no copy, and the masks come out identical."""
    pipe, X = lung_pipeline
    path = tmp_path / "lungs.safetensors"
    save_model(pipe, path)
    loaded = load_model(path)
    assert vars(loaded[0]) == vars(pipe[0])
    np.testing.assert_array_equal(loaded.score_samples(X), pipe.score_samples(X))
    header = _header(path)
    assert len(header["steps"][0][1]["weights_sha256"]) == 64
    # Another packaged segmenter (another skanomaly) is announced.
    _rewrite(path, lambda h, t: h["steps"][0][1].update(weights_sha256="0" * 64))
    with pytest.warns(UserWarning, match="another packaged lung segmenter"):
        load_model(path)


def test_loading_a_pipeline_unpickles_nothing(fitted, data, tmp_path, monkeypatch):
    X, _ = data
    path = tmp_path / "pipe.safetensors"
    save_model(fitted, path)

    def trap(*args, **kwargs):
        raise AssertionError("load_model unpickled something")

    for name in ("loads", "load", "Unpickler"):
        monkeypatch.setattr(pickle, name, trap)
    monkeypatch.setattr(torch, "load", trap)
    np.testing.assert_array_equal(load_model(path).score_samples(X), fitted.score_samples(X))


# ----------------------------------------------------------------- tampering
def _header(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["header"])


def _rewrite(path, edit, *, key=None):
    """Edit the header or tensors as an attacker would, recomputing the checksum (and,
    with ``key``, the signature) so that only the deeper checks can catch the edit."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from skanomaly import io as skio

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    header = json.loads(metadata["header"])
    edit(header, tensors)
    metadata["header"] = json.dumps(header, sort_keys=True)
    metadata["sha256"] = skio._digest(tensors, metadata["header"])
    if key is not None:
        metadata["hmac_sha256"] = skio._hmac(key, metadata["sha256"])
    save_file(tensors, str(path), metadata=metadata)


def _step(header, name):
    return dict(header["steps"])[name]


def _cae_tensor(tensors):
    return next(name for name in sorted(tensors) if name.startswith("2/") and name.endswith("weight"))


TAMPERING = {
    "class-os-system": (
        lambda h, t: _step(h, "clahe").update({"class": "os.system"}),
        r"step 'clahe' has an unknown class 'os.system'.*loads .*skanomaly.preprocessing.CLAHE",
    ),
    "pipeline-class": (
        lambda h, t: h.update({"class": "subprocess.Popen"}),
        r"the estimator has an unknown class 'subprocess.Popen'",
    ),
    "clip-limit-out-of-range": (
        lambda h, t: _step(h, "clahe")["params"].update(clip_limit=5.0),
        r"step 'clahe' \(CLAHE\): invalid parameters .*clip_limit",
    ),
    "detector-batch-size": (
        lambda h, t: _step(h, "caedetector")["params"].update(batch_size=0),
        r"step 'caedetector' \(CAEDetector\): invalid parameters .*batch_size",
    ),
    "unknown-parameter": (
        lambda h, t: _step(h, "patchextractor")["params"].update(command="rm -rf /"),
        r"step 'patchextractor' \(PatchExtractor\): sets parameters \['command'\]",
    ),
    "huge-channels": (
        # The networks are built from what was fitted (network_config_).
        lambda h, t: _step(h, "caedetector")["fitted"]["network_config_"].update(channels=[100_000, 100_000]),
        r"tensors do not fit its parameters: step 'caedetector': 2/net_module.* is \(4, 1, 3, 3\)",
    ),
    "oversized-tensor": (
        lambda h, t: t.update({_cae_tensor(t): torch.zeros(512, 512)}),
        r"step 'caedetector': 2/net_module\..* is \(512, 512\) torch.float32, the parameters need",
    ),
    "wrong-dtype": (
        lambda h, t: t.update({_cae_tensor(t): t[_cae_tensor(t)].double()}),
        r"step 'caedetector': 2/net_module\..*torch.float64, the parameters need .*torch.float32",
    ),
    "extra-tensor": (
        lambda h, t: t.update({"2/net_module.backdoor": torch.zeros(3)}),
        r"step 'caedetector': 2/net_module.backdoor unexpected",
    ),
    "tensor-of-no-step": (
        lambda h, t: t.update({"0/net_module.weight": torch.zeros(3)}),
        r"0/net_module.weight unexpected",
    ),
    "missing-tensor": (
        lambda h, t: t.pop(_cae_tensor(t)),
        r"step 'caedetector': 2/net_module\..* missing",
    ),
    "huge-image-shape": (
        lambda h, t: _step(h, "clahe")["fitted"].update(image_shape_=[16, 10**9], n_features_in_=16 * 10**9),
        r"step 'clahe' \(CLAHE\): invalid fitted state .*image_shape_",
    ),
    "huge-patch-grid": (
        lambda h, t: (
            _step(h, "patchextractor")["params"].update(stride=1),
            _step(h, "patchextractor")["fitted"].update(image_shape_=[60000, 60000], n_features_in_=60000**2),
        ),
        r"step 'patchextractor' \(PatchExtractor\): .* patches per image, more than",
    ),
    "inconsistent-features": (
        lambda h, t: _step(h, "patchextractor")["fitted"].update(n_features_in_=7),
        r"step 'patchextractor' \(PatchExtractor\): invalid fitted state .*n_features_in_=7",
    ),
    "detector-offset": (
        lambda h, t: _step(h, "caedetector")["fitted"].update(offset_="nan"),
        r"step 'caedetector' \(CAEDetector\): invalid fitted state .*offset_",
    ),
    "patch-size-of-another-detector": (
        lambda h, t: _step(h, "patchextractor")["params"].update(patch_size=8),
        r"step 'caedetector' \(CAEDetector\): was fitted on 16x16 images, but step "
        r"'patchextractor' passes on 8x8 images",
    ),
    "memory-cache": (
        lambda h, t: h["params"].update(memory="/tmp/joblib-cache"),
        r"the estimator \(Pipeline\): memory must be None",
    ),
    "step-name": (
        lambda h, t: h["steps"][0].__setitem__(0, "a__b"),
        r"invalid or repeated name 'a__b'",
    ),
    "tagged-value": (
        lambda h, t: _step(h, "clahe")["params"].update(kernel_size={"__ufunc__": "frompyfunc"}),
        r"step 'clahe' \(CLAHE\): invalid parameters: unsupported value",
    ),
    "extra-node-entry": (
        lambda h, t: _step(h, "clahe").update(code="import os"),
        r"step 'clahe' \(CLAHE\): unexpected entries \['code'\]",
    ),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_tampered_pipeline_is_refused_before_anything_is_built(patch_pipeline, tmp_path, monkeypatch, case):
    path = tmp_path / "pipe.safetensors"
    save_model(patch_pipeline, path)
    edit, message = TAMPERING[case]
    _rewrite(path, edit)

    def trap(self, *args, **kwargs):
        raise AssertionError("a network was built from a file that fails validation")

    monkeypatch.setattr(BaseDeepDetector, "_load_networks", trap)
    with pytest.raises(ValueError, match=message):
        load_model(path)


def test_edited_output_size_is_refused(data, tmp_path):
    """Resize(size=...) validates on its own; the chain of image sizes does not."""
    X, y = data
    path = tmp_path / "pipe.safetensors"
    pipe = make_pipeline(Resize(16), CAEDetector(channels=(4,), **FAST)).fit(X[y == 0])
    save_model(pipe, path)
    _rewrite(path, lambda h, t: _step(h, "resize")["params"].update(size=32))
    with pytest.raises(ValueError, match=r"'caedetector' .*fitted on 16x16 .*'resize' passes on 32x32"):
        load_model(path)
    save_model(pipe, path)
    _rewrite(path, lambda h, t: _step(h, "resize")["params"].update(size=10**9))
    with pytest.raises(ValueError, match=r"step 'resize' \(Resize\): would make 1000000000x"):
        load_model(path)


def test_signed_pipeline(data, patch_pipeline, tmp_path):
    """The signature covers every step: a forged parameter of any step is refused."""
    X, _ = data
    pipe = patch_pipeline
    path = tmp_path / "pipe.safetensors"
    save_model(pipe, path, key="secret")
    np.testing.assert_array_equal(load_model(path, key="secret").score_samples(X), pipe.score_samples(X))
    with pytest.raises(ValueError, match="failed its signature check"):
        load_model(path, key="wrong secret")
    # A forger without the key: valid edits, checksum recomputed, signature kept or redone.
    _rewrite(path, lambda h, t: _step(h, "clahe")["params"].update(clip_limit=0.5))
    with pytest.raises(ValueError, match="failed its signature check"):
        load_model(path, key="secret")
    _rewrite(path, lambda h, t: _step(h, "caedetector")["fitted"].update(offset_=-1e9), key="guess")
    with pytest.raises(ValueError, match="failed its signature check"):
        load_model(path, key="secret")
    save_model(pipe, path)
    with pytest.raises(ValueError, match="is not signed, but a key was given"):
        load_model(path, key="secret")


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: make_pipeline(StandardScaler(), CAEDetector(channels=(4,), **FAST)),
            r"step 'standardscaler' is sklearn.preprocessing._data.StandardScaler",
        ),
        (
            lambda: make_pipeline(FunctionTransformer(lambda x: x), CAEDetector(channels=(4,), **FAST)),
            r"step 'functiontransformer' \(FunctionTransformer\): func=.*lambda.* is code",
        ),
        (
            lambda: make_pipeline(FunctionTransformer(np.sqrt, kw_args={"out": None}), CAEDetector(channels=(4,))),
            r"kw_args must be None",
        ),
        (
            lambda: make_pipeline(LungMasker(weights="/somewhere/lung_unet.pt"), CAEDetector(channels=(4,))),
            r"step 'lungmasker' \(LungMasker\): weights='/somewhere/lung_unet.pt' is a file on this machine",
        ),
        (
            lambda: make_pipeline(make_pipeline(Rescale(), StandardScaler()), CAEDetector(channels=(4,))),
            r"step 'pipeline' > 'standardscaler' is sklearn.preprocessing._data.StandardScaler",
        ),
    ],
    ids=["StandardScaler", "lambda", "kw_args", "lung-weights-path", "nested"],
)
def test_unsupported_step_is_refused_at_save_and_nothing_is_written(tmp_path, make, message):
    pipe = make()  # unfitted: what the format cannot hold is refused before fittedness
    path = tmp_path / "pipe.safetensors"
    with pytest.raises(ValueError, match=message):
        save_model(pipe, path)
    assert list(tmp_path.iterdir()) == []  # no file, no temporary file


def test_refusal_lists_what_is_supported(tmp_path):
    with pytest.raises(ValueError) as info:
        save_model(make_pipeline(StandardScaler()), tmp_path / "m.safetensors")
    text = str(info.value)
    for name in ("CAEDetector", "CLAHE", "PatchExtractor", "LungMasker", "make_pipeline", "passthrough", "ufunc"):
        assert name in text
    assert "skanomaly.preprocessing.Resize" in supported_classes()


def test_unfitted_pipeline_is_refused(data, tmp_path):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        save_model(_patch_pipeline(), tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_nothing_and_keeps_the_old_file(patch_pipeline, tmp_path, monkeypatch):
    from skanomaly import io as skio

    pipe = patch_pipeline
    path = tmp_path / "pipe.safetensors"
    save_model(pipe, path)
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(skio, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model(pipe, tmp_path / "new.safetensors")
    with pytest.raises(OSError, match="disk full"):
        save_model(pipe, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.safetensors"]
    assert path.read_bytes() == before


def test_pipeline_memory_is_not_saved(data, tmp_path):
    X, y = data
    pipe = make_pipeline(Resize(16), CAEDetector(channels=(4,), **FAST), memory=str(tmp_path / "cache"))
    pipe.fit(X[y == 0])
    with pytest.warns(UserWarning, match="memory=.* is not saved"):
        save_model(pipe, tmp_path / "pipe.safetensors")
    loaded = load_model(tmp_path / "pipe.safetensors")
    assert loaded.memory is None
    np.testing.assert_array_equal(loaded.score_samples(X), pipe.score_samples(X))


def test_device_applies_to_every_step(lung_pipeline, tmp_path, monkeypatch):
    path = tmp_path / "pipe.safetensors"
    save_model(lung_pipeline[0], path)
    _rewrite(path, lambda h, t: [h["steps"][i][1]["params"].update(device="cuda") for i in (0, 2)])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="saved with device='cuda'") as record:
        loaded = load_model(path)
    assert len([w for w in record if "device='cuda'" in str(w.message)]) == 2  # one per step
    assert (loaded[0].device, loaded[2].device) == ("auto", "auto")
    cpu = load_model(path, device="cpu")
    assert (cpu[0].device, cpu[2].device) == ("cpu", "cpu")


# ------------------------------------------------------- format version 1 files
# A CAEDetector(channels=(4,), max_epochs=1, random_state=0, anomaly_score=("topk", 10))
# fitted on np.random.default_rng(0).random((6, 16, 16)).astype(np.float32) and saved by
# skanomaly.io.save_model before pipelines could be saved (format version 1), with its
# score_samples on the same images.
_V1_FILE = """
kAYAAAAAAAB7Il9fbWV0YWRhdGFfXyI6eyJmb3JtYXRfdmVyc2lvbiI6IjEiLCJzaGEyNTYiOiI3Y2Y1YzQx
NGRiOWRlNWRlMTMyZGU0ZTBiYmJhYzgwZDQ3OTFiMGY5NTRjZTYxMjIzMjkzM2NiN2ExNGU0ZjczIiwiZm9y
bWF0Ijoic2thbm9tYWx5LW1vZGVsIiwiaGVhZGVyIjoie1wiY2xhc3NcIjogXCJDQUVEZXRlY3RvclwiLCBc
ImZpdHRlZFwiOiB7XCJoaXN0b3JpZXNfXCI6IHtcIm5ldFwiOiBbe1wiYmF0Y2hlc1wiOiBbe1widHJhaW5f
YmF0Y2hfc2l6ZVwiOiA2LCBcInRyYWluX2xvc3NcIjogMC4wNTk2MTA2NDYyMTgwNjE0NX1dLCBcImR1clwi
OiAwLjAwNzgzNDY3MjkyNzg1NjQ0NSwgXCJlcG9jaFwiOiAxLCBcInRyYWluX2JhdGNoX2NvdW50XCI6IDEs
IFwidHJhaW5fbG9zc1wiOiAwLjA1OTYxMDY0NjIxODA2MTQ1LCBcInRyYWluX2xvc3NfYmVzdFwiOiB0cnVl
fV19LCBcImltYWdlX3NoYXBlX1wiOiBbMTYsIDE2XSwgXCJuX2ZlYXR1cmVzX2luX1wiOiAyNTYsIFwibl9p
dGVyX1wiOiAxLCBcIm9mZnNldF9cIjogLTAuMjkyMDUwOTYzMjYxNzIzNTN9LCBcInBhcmFtc1wiOiB7XCJh
bm9tYWx5X3Njb3JlXCI6IHtcIl9fdHVwbGVfX1wiOiBbXCJ0b3BrXCIsIDEwXX0sIFwiYXVnbWVudFwiOiBc
ImFkdmFuY2VkXCIsIFwiYmF0Y2hfc2l6ZVwiOiAzMiwgXCJjYWxsYmFja3NcIjogbnVsbCwgXCJjaGFubmVs
c1wiOiB7XCJfX3R1cGxlX19cIjogWzRdfSwgXCJjb250YW1pbmF0aW9uXCI6IFwiYXV0b1wiLCBcImRldmlj
ZVwiOiBcImF1dG9cIiwgXCJpbWFnZV9zaGFwZVwiOiBudWxsLCBcImxyXCI6IDAuMDAwMSwgXCJtYXhfZXBv
Y2hzXCI6IDEsIFwicGF0Y2hfYWdncmVnYXRpb25cIjogXCJtYXhcIiwgXCJyYW5kb21fc3RhdGVcIjogMCwg
XCJ2YWxpZGF0aW9uX2ZyYWN0aW9uXCI6IG51bGwsIFwidmFsdWVfcmFuZ2VcIjogXCJhdXRvXCIsIFwidmVy
Ym9zZVwiOiAwfSwgXCJza2Fub21hbHlfdmVyc2lvblwiOiBcIjAuMS4wLmRldjBcIn0ifSwibmV0X21vZHVs
ZS5lbmNvZGVyLjEubnVtX2JhdGNoZXNfdHJhY2tlZCI6eyJkdHlwZSI6Ikk2NCIsInNoYXBlIjpbXSwiZGF0
YV9vZmZzZXRzIjpbMCw4XX0sIm5ldF9tb2R1bGUuZGVjb2Rlci4wLmJpYXMiOnsiZHR5cGUiOiJGMzIiLCJz
aGFwZSI6WzFdLCJkYXRhX29mZnNldHMiOls4LDEyXX0sIm5ldF9tb2R1bGUuZGVjb2Rlci4wLndlaWdodCI6
eyJkdHlwZSI6IkYzMiIsInNoYXBlIjpbMSw0LDMsM10sImRhdGFfb2Zmc2V0cyI6WzEyLDE1Nl19LCJuZXRf
bW9kdWxlLmVuY29kZXIuMC53ZWlnaHQiOnsiZHR5cGUiOiJGMzIiLCJzaGFwZSI6WzQsMSwzLDNdLCJkYXRh
X29mZnNldHMiOlsxNTYsMzAwXX0sIm5ldF9tb2R1bGUuZW5jb2Rlci4xLmJpYXMiOnsiZHR5cGUiOiJGMzIi
LCJzaGFwZSI6WzRdLCJkYXRhX29mZnNldHMiOlszMDAsMzE2XX0sIm5ldF9tb2R1bGUuZW5jb2Rlci4xLnJ1
bm5pbmdfbWVhbiI6eyJkdHlwZSI6IkYzMiIsInNoYXBlIjpbNF0sImRhdGFfb2Zmc2V0cyI6WzMxNiwzMzJd
fSwibmV0X21vZHVsZS5lbmNvZGVyLjEucnVubmluZ192YXIiOnsiZHR5cGUiOiJGMzIiLCJzaGFwZSI6WzRd
LCJkYXRhX29mZnNldHMiOlszMzIsMzQ4XX0sIm5ldF9tb2R1bGUuZW5jb2Rlci4xLndlaWdodCI6eyJkdHlw
ZSI6IkYzMiIsInNoYXBlIjpbNF0sImRhdGFfb2Zmc2V0cyI6WzM0OCwzNjRdfX0gICABAAAAAAAAANkECD5i
rka9o40mvjLkhDt6dxO+RwE3O3mgCD4s4CE+jhmhPST5Xz2qdjC9zYDzvAddBL6WTCQ+JC54Penm3TytNY68
60cXPi1eHz4/CYU8okGIvBw1Wz0MZ0E97mv9vU8TCz71sgC+P717PTiSyr1SZXk86PZ9PDzcNr1Zhhy+eobX
vY+CFT3vZGY9pBQivTcgjDyr5YO+ibWKPo2sib0a9ia995ZgviTG970xOpI+u56mPsf1kr7eteA9apcVPoi/
7r0ScZq9D1gSvf8HQz6NRO28ByZZvh+EFD4lSJg+hPqZPQ7Fj714JKq+Oa7gvRdfZz4L/5E+aV3rvZIrPLzG
MoA+9T6aPjCkar1MqRi+uELAPbpbJL5hBZC+PwGcvhsnJL32ttG43rbROIG20bjRttE42/ihu+GVrzs/iSI8
24yCvNAoZz++p2Y/DupmP5RIZz9y+X8/RwOAP3L5fz9HA4A/
"""
_V1_SCORES = [
    -0.2676185965538025,
    -0.2692876160144806,
    -0.2767550051212311,
    -0.27969515323638916,
    -0.2747640311717987,
    -0.27914950251579285,
]


def test_format_version_1_file_still_loads(tmp_path):
    path = tmp_path / "old.safetensors"
    path.write_bytes(base64.b64decode("".join(_V1_FILE.split())))
    detector = load_model(path)
    assert type(detector) is CAEDetector and detector.anomaly_score == ("topk", 10)
    assert detector.offset_ == pytest.approx(-0.29205096326172353)
    X = np.random.default_rng(0).random((6, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(detector.score_samples(X), _V1_SCORES, rtol=1e-5)
    # Saved again, it becomes a version 2 file that scores the same.
    save_model(detector, tmp_path / "new.safetensors")
    np.testing.assert_array_equal(load_model(tmp_path / "new.safetensors").score_samples(X), detector.score_samples(X))
