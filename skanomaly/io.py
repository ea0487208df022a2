"""Saving and loading fitted detectors in a format that executes no code on load.

``joblib.dump`` / ``joblib.load`` (pickle) round-trip a detector exactly, and skorch
maps a model pickled on a GPU onto the CPU; but unpickling a file runs code, so a
pickle from someone else is a security risk. :func:`save_model` writes a single
`safetensors <https://huggingface.co/docs/safetensors>`_ file instead: the network
weights as tensors, and the class name, hyperparameters and fitted attributes as JSON
in its header. :func:`load_model` only reads numbers and JSON, rebuilds the detector
from a fixed list of the package's classes, and checks a SHA-256 digest over
everything, so a modified or truncated file is refused.
"""

import hashlib
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


def _digest(tensors, header):
    """SHA-256 over the header JSON and every tensor's name, dtype, shape and bytes."""
    sha = hashlib.sha256(header.encode())
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        sha.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        sha.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def save_model(estimator, path):
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
    name = type(estimator).__name__
    if registry.get(name) is not type(estimator):
        raise ValueError(
            f"save_model saves the package's detectors ({', '.join(sorted(registry))}); "
            f"got {name}. Use joblib.dump for other objects (pickle: load only files you trust)."
        )
    check_is_fitted(estimator)
    params, dropped = {}, []
    for key, value in estimator.get_params(deep=False).items():
        try:
            params[key] = _jsonable_param(value)
        except TypeError:
            params[key] = None
            dropped.append(key)
    if dropped:
        warnings.warn(
            f"Parameters {dropped} are not plain data and are saved as None; they only "
            "affect training.",
            UserWarning,
            stacklevel=2,
        )
    tensors = {}
    for attr in estimator._net_attributes:
        net = getattr(estimator, attr)
        for module_name in net._modules:
            module = getattr(net, module_name + "_")
            for key, tensor in module.state_dict().items():
                tensors[f"{attr}{module_name}.{key}"] = tensor.detach().to("cpu").contiguous()
    header = json.dumps(
        {
            "class": name,
            "params": params,
            "fitted": estimator._fitted_state(),
            "skanomaly_version": __version__,
        },
        sort_keys=True,
    )
    metadata = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "header": header,
        "sha256": _digest(tensors, header),
    }
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_model(path, *, device="auto"):
    """Load a detector saved by :func:`save_model`; no code from the file is executed.

    Parameters
    ----------
    path : str or path-like
    device : str, default="auto"
        Where to put the networks: ``"auto"`` uses CUDA when available, so a model
        saved on a GPU machine loads on a CPU-only one and vice versa.

    Returns
    -------
    estimator : fitted detector

    Raises
    ------
    ValueError
        If the file is missing, not a skanomaly model, from an unknown class, or fails
        its integrity check (modified or truncated).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No model file at {path}.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
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
    if _digest(tensors, header) != metadata.get("sha256"):
        raise ValueError(
            f"{path} failed its integrity check (SHA-256 mismatch): the file was modified "
            "or corrupted. Refusing to load it."
        )
    content = json.loads(header)
    registry = _registry()
    cls = registry.get(content.get("class"))
    if cls is None:
        raise ValueError(f"{path} holds an unknown detector class {content.get('class')!r}.")
    params = {k: _from_json_param(v) for k, v in content["params"].items()}
    estimator = cls(**params)
    state_dicts = {}
    for key, tensor in tensors.items():
        net_module, _, param = key.partition(".")
        state_dicts.setdefault(net_module, {})[param] = tensor
    return estimator._restore_fitted(content["fitted"], state_dicts, resolve_device(device))

