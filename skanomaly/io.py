"""Saving and loading fitted detectors in a format that executes no code on load.

``joblib.dump`` / ``joblib.load`` (pickle) round-trip a detector exactly, and skorch
maps a model pickled on a GPU onto the CPU; but unpickling a file runs code, so a
pickle from someone else is a security risk. :func:`save_model` writes a single
`safetensors <https://huggingface.co/docs/safetensors>`_ file instead: the network
weights as tensors, and the class name, hyperparameters and fitted attributes as JSON
in its header. :func:`load_model` only reads numbers and JSON, rebuilds the detector
from a fixed list of the package's classes after validating every parameter and
checking every tensor's name and shape against the networks those parameters build
(on torch's meta device, so nothing is allocated first).

Integrity and authenticity are two different promises. A SHA-256 digest over the
header and every tensor detects corruption (a truncated download, flipped bits), but
it is not a signature: anyone can edit a file and recompute it. Pass a secret
``key`` to :func:`save_model` and :func:`load_model` to sign with HMAC-SHA256; a
file that was changed by anyone without the key is then refused, and so is an
unsigned file.
"""

import hashlib
import hmac
import json
import os
import tempfile
import warnings
from numbers import Integral, Real
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from sklearn.utils.validation import check_is_fitted

from . import __version__
from .base import resolve_device

__all__ = ["save_model", "load_model"]

_FORMAT = "skanomaly-model"
_FORMAT_VERSION = "1"


def _registry():
    from . import detectors

    return {name: getattr(detectors, name) for name in detectors.__all__}


def _jsonable_param(value):
    """Parameters as JSON; tuples are tagged so that they come back as tuples."""
    if isinstance(value, tuple):
        return {"__tuple__": [_jsonable_param(v) for v in value]}
    if isinstance(value, list):
        return [_jsonable_param(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        return float(value)
    if isinstance(value, torch.device):
        return str(value)
    raise TypeError(type(value).__name__)


def _from_json_param(value):
    if isinstance(value, dict) and "__tuple__" in value:
        return tuple(_from_json_param(v) for v in value["__tuple__"])
    if isinstance(value, list):
        return [_from_json_param(v) for v in value]
    return value


def _hmac(key, digest):
    """HMAC-SHA256 of the content digest under a user key (bytes or str)."""
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, (bytes, bytearray)) or len(key) == 0:
        raise ValueError("key must be a non-empty bytes or str secret.")
    return hmac.new(bytes(key), digest.encode(), hashlib.sha256).hexdigest()


def _digest(tensors, header):
    """SHA-256 over the header JSON and every tensor's name, dtype, shape and bytes."""
    sha = hashlib.sha256(header.encode())
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        sha.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        sha.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def save_model(estimator, path, *, key=None):
    """Save a fitted detector to a safetensors file that runs no code when loaded.

    Parameters
    ----------
    estimator : fitted detector
        One of the detectors in :mod:`skanomaly.detectors`. Parameters that are not
        plain data (``callbacks``, a ``RandomState`` instance) are saved as ``None``,
        with a warning: they only matter for training.
    path : str or path-like
        Destination, conventionally ending in ``.safetensors``. The file is written to
        a temporary name and moved into place, so a failure leaves nothing behind.
    key : bytes, str or None, default=None
        A secret to sign the file with (HMAC-SHA256). Without it the file carries
        only a SHA-256 checksum, which detects corruption but not deliberate edits.

    Examples
    --------
    >>> import tempfile, os
    >>> from skanomaly.datasets import make_chest_phantoms
    >>> from skanomaly.detectors import CAEDetector
    >>> from skanomaly.io import save_model, load_model
    >>> X = make_chest_phantoms(20, image_size=16, anomaly_fraction=0, random_state=0).images
    >>> det = CAEDetector(channels=(4, 8), max_epochs=1, random_state=0).fit(X)
    >>> path = os.path.join(tempfile.mkdtemp(), "cae.safetensors")
    >>> save_model(det, path)
    >>> bool((load_model(path).score_samples(X) == det.score_samples(X)).all())
    True
    """
    registry = _registry()
    class_name = type(estimator).__name__
    if registry.get(class_name) is not type(estimator):
        raise ValueError(
            f"save_model saves the package's detectors ({', '.join(sorted(registry))}); "
            f"got {class_name}. Use joblib.dump for other objects (pickle: load only files you trust)."
        )
    check_is_fitted(estimator)
    params, dropped = {}, []
    for name, value in estimator.get_params(deep=False).items():
        try:
            params[name] = _jsonable_param(value)
        except TypeError:
            params[name] = None
            dropped.append(name)
    if dropped:
        warnings.warn(
            f"Parameters {dropped} are not plain data and are saved as None; they only "
            "affect training.",
            UserWarning,
            stacklevel=2,
        )
    tensors = {}
    for module_name, module in estimator._torch_modules().items():
        for tensor_name, tensor in module.state_dict().items():
            tensors[f"{module_name}.{tensor_name}"] = tensor.detach().to("cpu").contiguous()
    header = json.dumps(
        {
            "class": class_name,
            "params": params,
            "fitted": estimator._fitted_state(),
            "skanomaly_version": __version__,
        },
        sort_keys=True,
    )
    digest = _digest(tensors, header)
    metadata = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "header": header,
        "sha256": digest,
    }
    if key is not None:
        metadata["hmac_sha256"] = _hmac(key, digest)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_model(path, *, device=None, key=None):
    """Load a detector saved by :func:`save_model`; no code from the file is executed.

    Before anything is built, every parameter is validated as ``fit`` would, and the
    name, shape and dtype of every tensor is checked against the networks those
    parameters describe (computed on torch's meta device, without allocating).

    Parameters
    ----------
    path : str or path-like
    device : str or None, default=None
        Where to put the networks, which also becomes the loaded detector's
        ``device`` parameter. ``None`` keeps the saved ``device`` parameter when this
        machine has that device, and otherwise falls back to ``"auto"`` (CUDA when
        available, else the CPU) with a warning: a model saved with
        ``device="cuda"`` loads on a CPU-only machine.
    key : bytes, str or None, default=None
        The secret the file was signed with (:func:`save_model`). With a key, a file
        whose signature does not match, or that is not signed, is refused. Without
        one, only the SHA-256 checksum is verified: it catches corruption, not a
        deliberate edit.

    Returns
    -------
    estimator : fitted detector

    Raises
    ------
    ValueError
        If the file is missing, not a skanomaly model, from an unknown class, holds
        invalid parameters or tensors that do not fit them, fails its checksum, or
        (with ``key``) is unsigned or fails its signature.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No model file at {path}.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable skanomaly model file: {err}") from err
    if metadata.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a skanomaly model file (no '{_FORMAT}' header).")
    if metadata.get("format_version") != _FORMAT_VERSION:
        raise ValueError(
            f"{path} uses model format version {metadata.get('format_version')!r}; this "
            f"skanomaly reads version {_FORMAT_VERSION}."
        )
    header = metadata.get("header", "")
    digest = _digest(tensors, header)
    if not hmac.compare_digest(digest, str(metadata.get("sha256", ""))):
        raise ValueError(
            f"{path} failed its integrity check (SHA-256 mismatch): the file was modified "
            "or corrupted. Refusing to load it."
        )
    if key is not None:
        signature = metadata.get("hmac_sha256")
        if signature is None:
            raise ValueError(
                f"{path} is not signed, but a key was given: refusing to load it. Sign "
                "files with save_model(..., key=...)."
            )
        if not hmac.compare_digest(_hmac(key, digest), str(signature)):
            raise ValueError(
                f"{path} failed its signature check (HMAC-SHA256): it was modified by "
                "someone without the key, or signed with another key. Refusing to load it."
            )
    try:
        content = json.loads(header)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} has an unreadable header: {err}") from err
    if not isinstance(content, dict) or not isinstance(content.get("params"), dict):
        raise ValueError(f"{path} has no parameter table in its header.")
    registry = _registry()
    cls = registry.get(content.get("class"))
    if cls is None:
        raise ValueError(
            f"{path} holds an unknown detector class {content.get('class')!r}; this "
            f"skanomaly loads {', '.join(sorted(registry))}."
        )
    estimator = _build_estimator(cls, content["params"], path, device)
    try:
        estimator._set_fitted_state(content.get("fitted"))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    state_dicts = _check_tensors(estimator, tensors, path)
    return estimator._load_networks(state_dicts, resolve_device(estimator.device))


def _build_estimator(cls, raw_params, path, device):
    """An unfitted ``cls`` from JSON parameters, validated as ``fit`` would."""
    import inspect

    known = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(raw_params) - known)
    if unknown:
        raise ValueError(
            f"{path} sets parameters {unknown} that {cls.__name__} does not have (a file "
            "from another skanomaly version, or edited)."
        )
    params = {name: _from_json_param(value) for name, value in raw_params.items()}
    if device is not None:
        params["device"] = device
    else:
        saved = params.get("device", "auto")
        try:
            resolve_device(saved)
        except ValueError:
            warnings.warn(
                f"{path} was saved with device={saved!r}, which this machine does not have; "
                "loading with device='auto'.",
                UserWarning,
                stacklevel=3,
            )
            params["device"] = "auto"
    estimator = cls(**params)
    try:
        estimator._check_scoring_params()
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path} holds invalid parameters for {cls.__name__}: {err}") from err
    return estimator


def _check_tensors(estimator, tensors, path):
    """Group the file's tensors by module, after checking them against the networks
    the parameters describe; return ``{module name: state dict}``."""
    try:
        expected = estimator._module_shapes()
    except Exception as err:  # parameters that validate but cannot build a network
        raise ValueError(f"{path}: its parameters do not describe a network: {err}") from err
    state_dicts = {}
    for name, tensor in tensors.items():
        module_name, _, tensor_name = name.partition(".")
        state_dicts.setdefault(module_name, {})[tensor_name] = tensor
    problems = []
    for module_name in sorted(set(expected) | set(state_dicts)):
        want, have = expected.get(module_name, {}), state_dicts.get(module_name, {})
        for tensor_name in sorted(set(want) | set(have)):
            full = f"{module_name}.{tensor_name}"
            if tensor_name not in have:
                problems.append(f"{full} missing")
            elif tensor_name not in want:
                problems.append(f"{full} unexpected")
            else:
                shape, dtype = want[tensor_name]
                tensor = have[tensor_name]
                if tuple(tensor.shape) != shape or tensor.dtype != dtype:
                    problems.append(
                        f"{full} is {tuple(tensor.shape)} {tensor.dtype}, the parameters "
                        f"need {shape} {dtype}"
                    )
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(f"{path}: its tensors do not fit its parameters: {shown}.")
    return state_dicts
