"""Saving and loading fitted detectors and pipelines in a format that executes no code on load.

``joblib.dump`` / ``joblib.load`` (pickle) round-trip a detector exactly, and skorch
maps a model pickled on a GPU onto the CPU; but unpickling a file runs code, so a
pickle from someone else is a security risk. :func:`save_model` writes a single
`safetensors <https://huggingface.co/docs/safetensors>`_ file instead: the network
weights as tensors, and the classes, hyperparameters and fitted attributes as JSON in
its header. It saves a detector, or a whole :class:`sklearn.pipeline.Pipeline` /
:class:`imblearn.pipeline.Pipeline` (``make_pipeline``) of the package's transformers,
samplers and detectors, or a :class:`~skanomaly.conformal.ConformalDetector` around
either (with its calibration scores). :func:`load_model` only reads numbers and JSON and rebuilds
the estimators from a fixed registry of classes (:func:`supported_classes`), after
validating every step's parameters and fitted attributes and checking every tensor's
name, shape and dtype against the networks those parameters build (on torch's meta
device, so nothing is allocated first).

Integrity and authenticity are two different promises. A SHA-256 digest over the
header and every tensor detects corruption (a truncated download, flipped bits), but
it is not a signature: anyone can edit a file and recompute it. Pass a secret
``key`` to :func:`save_model` and :func:`load_model` to sign with HMAC-SHA256; a
file that was changed by anyone without the key is then refused, and so is an
unsigned file.

The file format
---------------
A safetensors file whose metadata holds ``format = "skanomaly-model"``,
``format_version`` (``"2"``; version ``"1"`` files, single detectors written by
skanomaly before pipelines could be saved, still load), ``header`` (the JSON below),
``sha256`` (over the header and every tensor's name, dtype, shape and bytes) and,
when signed, ``hmac_sha256`` (of that digest). The header is one node::

    {"class": "skanomaly.detectors.CAEDetector", "params": {...}, "fitted": {...},
     "skanomaly_version": "..."}

or, for a pipeline, ``{"class": "sklearn.pipeline.Pipeline", "params": {"verbose":
false, ...}, "steps": [[name, node | "passthrough" | null], ...]}`` (nested nodes
carry no version); a :class:`~skanomaly.conformal.ConformalDetector` is
``{"class": ..., "params": {...}, "estimator": node, "fitted": {"calibration_scores_":
[...], "n_calibration_": n}}``, its detector's tensors named as if it stood alone.
Tuples, non-finite floats and numpy ufuncs are tagged
(``{"__tuple__": [...]}``, ``{"__float__": "nan"}``, ``{"__ufunc__": "log1p"}``). The
tensors of the detector at step ``i`` of the root pipeline are named
``"i/<module>.<tensor>"`` (``"i/j/..."`` for nested pipelines); those of a single
detector have no prefix.
"""

import hashlib
import hmac
import inspect
import json
import math
import os
import secrets
import warnings
from collections.abc import Mapping
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from sklearn.utils.validation import check_is_fitted

from . import __version__
from .base import resolve_device

__all__ = ["save_model", "load_model", "supported_classes"]

_FORMAT = "skanomaly-model"
_FORMAT_VERSION = "2"
_READABLE_VERSIONS = ("1", "2")

# Limits on what a file may describe (checked before anything is built).
_MAX_DEPTH = 8  # pipelines nested in pipelines
_MAX_STEPS = 256
_MAX_PATCHES = 2**22  # PatchExtractor grid positions (64 MB of coordinates)
_MAX_CALIBRATION_SCORES = 2**22  # ConformalDetector's calibration set (32 MB of scores)

# Element-wise numpy ufuncs a FunctionTransformer may hold: saved by name, looked up in
# numpy on load, so the file names a function but never carries one.
_UFUNCS = frozenset(
    {
        "absolute", "negative", "positive", "sign", "sqrt", "cbrt", "square", "reciprocal",
        "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sin", "cos", "tan",
        "arcsin", "arccos", "arctan", "sinh", "cosh", "tanh", "arcsinh", "arctanh",
        "floor", "ceil", "rint", "trunc", "fabs",
    }
)  # fmt: skip

# safetensors dtype codes -> torch dtypes (those a detector's networks can hold).
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


def _registry():
    """``{qualified name: (class, kind)}`` of every class a model file may name.

    Built from the package's public classes when called (a class added to
    ``skanomaly.detectors``, ``skanomaly.preprocessing`` or, for samplers,
    ``skanomaly.model_selection`` is registered with it), plus the two pipeline classes
    and sklearn's ``FunctionTransformer`` (with numpy ufuncs only). Nothing in a file
    can add to it.
    """
    from imblearn.pipeline import Pipeline as ImbPipeline
    from sklearn.base import BaseEstimator
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    from . import detectors, preprocessing

    registry = {}
    for name in detectors.__all__:
        registry[f"skanomaly.detectors.{name}"] = (getattr(detectors, name), "detector")
    for name in preprocessing.__all__:
        registry[f"skanomaly.preprocessing.{name}"] = (getattr(preprocessing, name), "transformer")
    try:
        from . import model_selection
    except ModuleNotFoundError as err:
        if err.name != f"{__package__}.model_selection":
            raise
        model_selection = None
    for name in getattr(model_selection, "__all__", ()):
        obj = getattr(model_selection, name, None)
        # Samplers (NormalOnly) only: they act in fit and are skipped when scoring.
        is_class = isinstance(obj, type) and issubclass(obj, BaseEstimator)
        if is_class and hasattr(obj, "fit_resample"):
            registry[f"skanomaly.model_selection.{name}"] = (obj, "sampler")
    from .conformal import ConformalDetector

    registry["skanomaly.conformal.ConformalDetector"] = (ConformalDetector, "wrapper")
    registry["sklearn.pipeline.Pipeline"] = (Pipeline, "pipeline")
    registry["imblearn.pipeline.Pipeline"] = (ImbPipeline, "pipeline")
    registry["sklearn.preprocessing.FunctionTransformer"] = (FunctionTransformer, "function")
    return registry


def supported_classes():
    """The classes :func:`save_model` saves and :func:`load_model` rebuilds.

    Returns
    -------
    names : list of str
        Qualified class names: the package's detectors, transformers and samplers,
        ``sklearn.pipeline.Pipeline`` and ``imblearn.pipeline.Pipeline`` (what
        ``make_pipeline`` builds), and ``sklearn.preprocessing.FunctionTransformer``
        holding a numpy ufunc (``np.log1p``, ...) or nothing. Pipeline steps may also
        be ``"passthrough"`` or ``None``.

    Examples
    --------
    >>> from skanomaly.io import supported_classes
    >>> "skanomaly.detectors.CAEDetector" in supported_classes()
    True
    """
    return sorted(_registry())


def _supported_message(registry):
    groups = {}
    for name, (_, kind) in sorted(registry.items()):
        groups.setdefault(kind, []).append(name.rsplit(".", 1)[-1])
    parts = [
        ("detectors", "detector"),
        ("transformers", "transformer"),
        ("samplers", "sampler"),
    ]
    text = "; ".join(
        f"{label} {', '.join(groups[kind])}" for label, kind in parts if kind in groups
    )
    return (
        f"{text}; sklearn or imblearn Pipeline (make_pipeline) of those; "
        "skanomaly.conformal.ConformalDetector around a detector or pipeline; "
        "'passthrough' / None steps; FunctionTransformer holding a numpy ufunc (np.log1p, ...)"
    )


# ------------------------------------------------------------------ values as JSON
def _jsonable_param(value):
    """A parameter as JSON; tuples, non-finite floats and ufuncs are tagged."""
    if isinstance(value, tuple):
        return {"__tuple__": [_jsonable_param(v) for v in value]}
    if isinstance(value, list):
        return [_jsonable_param(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        value = float(value)
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, torch.device):
        return str(value)
    if _is_allowed_ufunc(value):
        return {"__ufunc__": value.__name__}
    raise TypeError(type(value).__name__)


def _is_allowed_ufunc(value):
    if not isinstance(value, np.ufunc) or value.__name__ not in _UFUNCS:
        return False
    return getattr(np, value.__name__) is value


def _from_json_param(value):
    if isinstance(value, dict):
        if set(value) == {"__tuple__"} and isinstance(value["__tuple__"], list):
            return tuple(_from_json_param(v) for v in value["__tuple__"])
        if set(value) == {"__float__"} and value["__float__"] in ("nan", "inf", "-inf"):
            return float(value["__float__"])
        if set(value) == {"__ufunc__"} and value["__ufunc__"] in _UFUNCS:
            return getattr(np, value["__ufunc__"])
        raise ValueError(f"unsupported value {json.dumps(value)[:80]}")
    if isinstance(value, list):
        return [_from_json_param(v) for v in value]
    return value


# ------------------------------------------------------------------ digests
def _hmac(key, digest):
    """HMAC-SHA256 of the content digest under a user key (bytes or str)."""
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, (bytes, bytearray)) or len(key) == 0:
        raise ValueError("key must be a non-empty bytes or str secret.")
    return hmac.new(bytes(key), digest.encode(), hashlib.sha256).hexdigest()


def _digest(tensors, header):
    """SHA-256 over the header JSON and every tensor's name, dtype, shape and bytes.

    ``tensors`` is any mapping; :func:`load_model` passes one that reads each tensor
    from the file when asked, so that at most one tensor is in memory at a time.
    """
    sha = hashlib.sha256(header.encode())
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        sha.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        sha.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


def _declared_tensors(path):
    """``{name: (shape, dtype)}`` from a safetensors file's own header, no tensor data
    read (the file was opened by ``safe_open`` first, which validated that header)."""
    with open(path, "rb") as file:
        size = int.from_bytes(file.read(8), "little")
        table = json.loads(file.read(size))
    return {
        name: (tuple(entry["shape"]), _DTYPES.get(entry["dtype"], entry["dtype"]))
        for name, entry in table.items()
        if name != "__metadata__"
    }


class _FileTensors(Mapping):
    """The tensors of an open safetensors file, read one at a time on access."""

    def __init__(self, handle):
        self._handle, self._names = handle, list(handle.keys())

    def __getitem__(self, name):
        return self._handle.get_tensor(name)

    def __iter__(self):
        return iter(self._names)

    def __len__(self):
        return len(self._names)


# ------------------------------------------------------------------ saving
def save_model(estimator, path, *, key=None):
    """Save a fitted detector or pipeline to one safetensors file that runs no code when loaded.

    Parameters
    ----------
    estimator : fitted detector or pipeline
        One of the detectors in :mod:`skanomaly.detectors`, or a fitted
        :class:`sklearn.pipeline.Pipeline` / :class:`imblearn.pipeline.Pipeline`
        (``make_pipeline``) whose steps are the package's transformers
        (:mod:`skanomaly.preprocessing`; ``LungMasker`` with its packaged weights),
        samplers and detectors, ``"passthrough"`` / ``None``, or a
        :class:`~sklearn.preprocessing.FunctionTransformer` holding a numpy ufunc
        (see :func:`supported_classes`). Anything else is refused with a
        ``ValueError`` listing what is supported. Detector parameters that are not
        plain data (``callbacks``, a ``RandomState`` instance) are saved as ``None``,
        with a warning: they only matter for training; so is a pipeline's ``memory``.
        Samplers act only in ``fit`` and are saved with their parameters, unfitted.
        A fitted :class:`~skanomaly.conformal.ConformalDetector` around any of
        these is saved with its calibration scores.
    path : str or path-like
        Destination, conventionally ending in ``.safetensors``. The file is written to
        a temporary name and moved into place, so a failure leaves nothing behind.
    key : bytes, str or None, default=None
        A secret to sign the file with (HMAC-SHA256, over the whole pipeline: every
        step's parameters, fitted state and weights). Without it the file carries
        only a SHA-256 checksum, which detects corruption but not deliberate edits.

    Examples
    --------
    >>> import tempfile, os
    >>> from sklearn.pipeline import make_pipeline
    >>> from skanomaly.datasets import make_chest_phantoms
    >>> from skanomaly.detectors import CAEDetector
    >>> from skanomaly.preprocessing import CLAHE
    >>> from skanomaly.io import save_model, load_model
    >>> X = make_chest_phantoms(20, image_size=16, anomaly_fraction=0, random_state=0).images
    >>> detector = CAEDetector(channels=(4, 8), max_epochs=1, random_state=0)
    >>> pipe = make_pipeline(CLAHE(kernel_size=8), detector).fit(X)
    >>> path = os.path.join(tempfile.mkdtemp(), "pipe.safetensors")
    >>> save_model(pipe, path)
    >>> bool((load_model(path).score_samples(X) == pipe.score_samples(X)).all())
    True
    """
    _checked_destination(path)  # before any work: a bad path fails at once
    registry = _registry()
    by_class = {cls: (name, kind) for name, (cls, kind) in registry.items()}
    _check_supported(estimator, by_class, registry, "the estimator", 0)
    check_is_fitted(estimator)
    tensors, dropped = {}, []
    root = _describe(estimator, by_class, "the estimator", "", tensors, dropped)
    if dropped:
        warnings.warn(
            f"Parameters {dropped} are not plain data and are saved as None; they only "
            "affect training.",
            UserWarning,
            stacklevel=2,
        )
    root["skanomaly_version"] = __version__
    header = json.dumps(root, sort_keys=True, allow_nan=False)
    digest = _digest(tensors, header)
    metadata = {
        "format": _FORMAT,
        "format_version": _FORMAT_VERSION,
        "header": header,
        "sha256": digest,
    }
    if key is not None:
        metadata["hmac_sha256"] = _hmac(key, digest)
    path = _checked_destination(path)
    tmp = _new_temporary_file(path)
    try:
        mode = tmp.stat().st_mode & 0o777  # 0666 less the umask
        save_file(tensors, str(tmp), metadata=metadata)
        os.chmod(tmp, mode)  # safetensors writes the file private (0600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _checked_destination(path):
    """``path`` as a Path, or a ValueError saying what is wrong with it as a file to write."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"save_model: {path} is a folder; give the file to write, e.g. {path / 'model.safetensors'}."
        )
    if not path.parent.is_dir():
        raise ValueError(f"save_model: the folder {path.parent} does not exist; create it first.")
    return path


def _pickle_kind(path):
    """What kind of pickle ``path`` holds by its first bytes, or None."""
    try:
        with open(path, "rb") as file:
            start = file.read(4)
    except OSError:
        return None
    if start[:1] == b"\x80":
        return "pickle (joblib.dump or pickle.dump)"
    if start[:2] == b"PK":
        return "zip archive (torch.save)"
    if start[:2] == b"\x1f\x8b" or start[:1] == b"\x78":
        return "compressed pickle (joblib.dump with compress=)"
    return None


def _new_temporary_file(path):
    """An empty new file next to ``path``, for writing and then renaming into place,
    with the permissions of any new file (mode 0666 less the umask)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"could not create a temporary file next to {path}")


def _step_label(parent, name):
    return f"step {name!r}" if parent == "the estimator" else f"{parent} > {name!r}"


def _check_supported(estimator, by_class, registry, label, depth):
    """Refuse, before anything is written, an estimator or step the format cannot hold."""
    entry = by_class.get(type(estimator))
    if entry is None:
        kind = type(estimator)
        what = f"{kind.__module__}.{kind.__qualname__}"
        raise ValueError(
            f"save_model saves the package's detectors and pipelines of supported steps; "
            f"{label} is {what}. Supported: {_supported_message(registry)}. Use "
            "joblib.dump for other objects (pickle: load only files you trust)."
        )
    if entry[1] in ("transformer", "function"):
        _check_content(estimator, label)
    if entry[1] == "wrapper":
        inner = getattr(estimator, "estimator_", estimator.estimator)
        _check_supported(inner, by_class, registry, f"{label} > estimator", depth + 1)
    if entry[1] == "pipeline":
        if depth >= _MAX_DEPTH:
            raise ValueError(f"save_model: {label} nests pipelines more than {_MAX_DEPTH} deep.")
        for name, step in estimator.steps:
            if step is not None and not (isinstance(step, str) and step == "passthrough"):
                _check_supported(step, by_class, registry, _step_label(label, name), depth + 1)


def _check_content(estimator, label):
    """Refuse a supported class holding what a model file cannot: code, a local file."""
    cls_name = type(estimator).__name__
    if getattr(estimator, "weights", None) is not None:  # LungMasker(weights=path)
        raise ValueError(
            f"save_model cannot save {label} ({cls_name}): weights={estimator.weights!r} "
            "is a file on this machine, which the model file would not hold. Save "
            "pipelines with the packaged lung segmenter (weights=None), or use joblib."
        )
    if hasattr(estimator, "func"):  # FunctionTransformer
        for name in ("func", "inverse_func"):
            value = getattr(estimator, name)
            if value is not None and not _is_allowed_ufunc(value):
                raise ValueError(
                    f"save_model cannot save {label} (FunctionTransformer): {name}={value!r} is "
                    "code, which a safe model file does not hold. Supported: None or one of "
                    f"the numpy ufuncs {', '.join(sorted(_UFUNCS))}; or write the step as a "
                    "transformer of skanomaly.preprocessing, or use joblib."
                )
        for name in ("kw_args", "inv_kw_args"):
            if getattr(estimator, name) is not None:
                raise ValueError(
                    f"save_model cannot save {label} (FunctionTransformer): {name} must be None."
                )
        if estimator.feature_names_out not in (None, "one-to-one"):
            raise ValueError(
                f"save_model cannot save {label} (FunctionTransformer): feature_names_out must "
                "be None or 'one-to-one'."
            )


def _strict_params(estimator, label, skip=()):
    """Every parameter as JSON, or a ValueError naming the step and the parameter."""
    params = {}
    for name, value in estimator.get_params(deep=False).items():
        if name in skip:
            continue
        try:
            params[name] = _jsonable_param(value)
        except TypeError:
            raise ValueError(
                f"save_model cannot save {label} ({type(estimator).__name__}): its parameter "
                f"{name}={value!r} is not plain data (numbers, strings, tuples, lists, None)."
            ) from None
    return params


def _describe(estimator, by_class, label, prefix, tensors, dropped):
    """The JSON node of a fitted estimator; its tensors go into ``tensors``."""
    qualname, kind = by_class[type(estimator)]
    if kind == "pipeline":
        params = _strict_params(estimator, label, skip=("steps", "memory"))
        params["memory"] = None
        if estimator.memory is not None:
            warnings.warn(
                f"{label}: memory={estimator.memory!r} is not saved (a cache of this "
                "machine; a loaded pipeline gets memory=None).",
                UserWarning,
                stacklevel=3,
            )
        steps = []
        for i, (name, step) in enumerate(estimator.steps):
            if step is None or (isinstance(step, str) and step == "passthrough"):
                steps.append([name, step])
                continue
            step_label = _step_label(label, name)
            if by_class[type(step)][1] in ("detector", "transformer", "wrapper"):
                check_is_fitted(step)
            node = _describe(step, by_class, step_label, f"{prefix}{i}/", tensors, dropped)
            steps.append([name, node])
        return {"class": qualname, "params": params, "steps": steps}
    if kind == "wrapper":
        # ConformalDetector: the fitted detector (or pipeline) it wraps, under the same
        # tensor prefix (it holds exactly one), and the calibration scores.
        params = _strict_params(estimator, label, skip=("estimator",))
        inner = _describe(
            estimator.estimator_, by_class, f"{label} > estimator", prefix, tensors, dropped
        )
        fitted = {
            "calibration_scores_": [float(s) for s in estimator.calibration_scores_],
            "n_calibration_": int(estimator.n_calibration_),
        }
        return {"class": qualname, "params": params, "estimator": inner, "fitted": fitted}
    if kind == "detector":
        params = {}
        for name, value in estimator.get_params(deep=False).items():
            if name == "memory" and value is not None:
                # A cache folder of this machine means nothing elsewhere, and a loaded
                # detector that refits would read joblib pickles from it.
                params[name] = None
                warnings.warn(
                    f"{label}: memory={value!r} is not saved (a cache of this machine; the "
                    "loaded detector gets memory=None).",
                    UserWarning,
                    stacklevel=3,
                )
                continue
            try:
                params[name] = _jsonable_param(value)
            except TypeError:
                params[name] = None
                dropped.append(name if label == "the estimator" else f"{label}: {name}")
        for module_name, module in estimator._torch_modules().items():
            for tensor_name, tensor in module.state_dict().items():
                tensor = tensor.detach().to("cpu").contiguous()
                tensors[f"{prefix}{module_name}.{tensor_name}"] = tensor
        return {"class": qualname, "params": params, "fitted": estimator._fitted_state()}
    if kind == "transformer":
        params, fitted = _strict_params(estimator, label), estimator._fitted_state()
        node = {"class": qualname, "params": params, "fitted": fitted}
        if hasattr(estimator, "weights"):  # LungMasker: which packaged segmenter it used
            node["weights_sha256"] = _packaged_segmenter_sha256()
        return node
    if kind == "function":
        fitted = {}
        if hasattr(estimator, "n_features_in_"):
            fitted["n_features_in_"] = int(estimator.n_features_in_)
        if hasattr(estimator, "feature_names_in_"):
            fitted["feature_names_in_"] = [str(n) for n in estimator.feature_names_in_]
        return {"class": qualname, "params": _strict_params(estimator, label), "fitted": fitted}
    # sampler: acts in fit only (skipped when scoring); its fitted attributes are
    # bookkeeping (NormalOnly's image counts), saved when they are plain scalars.
    fitted = {
        name: value.item() if isinstance(value, np.generic) else value
        for name, value in sorted(vars(estimator).items())
        if _is_fitted_scalar_name(type(estimator), name) and _is_scalar(value)
    }
    return {"class": qualname, "params": _strict_params(estimator, label), "fitted": fitted}


def _packaged_segmenter_sha256():
    """SHA-256 of the lung segmenter weights shipped with this skanomaly (or None)."""
    from .preprocessing._lung import _WEIGHTS

    try:
        return hashlib.sha256(Path(_WEIGHTS).read_bytes()).hexdigest()
    except OSError:
        return None


def _image_output_shape(step):
    """``(H, W)`` of the images (patches) a fitted transformer or detector passes on."""
    from .preprocessing import FilmCrop, PatchExtractor, Resize
    from .preprocessing._resize import _output_shape

    shape = tuple(step.image_shape_)
    if isinstance(step, PatchExtractor):
        return (step.patch_size, step.patch_size)
    if isinstance(step, Resize):
        return tuple(_output_shape(step.size, shape))
    if isinstance(step, FilmCrop):
        return tuple(step._output_shape(shape))
    return shape


def _is_fitted_scalar_name(cls, name):
    public = name.isidentifier() and name.endswith("_") and not name.startswith("_")
    return public and not hasattr(cls, name)


def _is_scalar(value):
    if isinstance(value, (bool, np.bool_, str)) or value is None:
        return True
    return isinstance(value, (Integral, Real)) and math.isfinite(float(value))


# ------------------------------------------------------------------ loading
def load_model(path, *, device=None, key=None):
    """Load a detector or pipeline saved by :func:`save_model`; no code from the file runs.

    Before anything is built, every step's class is looked up in a fixed registry
    (:func:`supported_classes`), its parameters are validated as ``fit`` would (unknown
    names, scikit-learn's parameter constraints), its fitted attributes are type- and
    range-checked, and the name, shape and dtype of every tensor is checked against the
    networks those parameters describe (computed on torch's meta device, without
    allocating). Only then are tensors read and networks built.

    Parameters
    ----------
    path : str or path-like
    device : str or None, default=None
        Where to put the networks, which also becomes the ``device`` parameter of every
        step that has one (detectors, ``LungMasker``). ``None`` keeps each saved
        ``device`` parameter when this machine has that device, and otherwise falls
        back to ``"auto"`` (CUDA when available, else the CPU) with a warning: a model
        saved with ``device="cuda"`` loads on a CPU-only machine.
    key : bytes, str or None, default=None
        The secret the file was signed with (:func:`save_model`). With a key, a file
        whose signature does not match, or that is not signed, is refused. Without
        one, only the SHA-256 checksum is verified: it catches corruption, not a
        deliberate edit.

    Returns
    -------
    estimator : fitted detector or pipeline

    Raises
    ------
    ValueError
        If the file is missing, not a skanomaly model, names a class outside the
        registry, holds invalid parameters or fitted attributes or tensors that do not
        fit them (the message names the step), fails its checksum, or (with ``key``)
        is unsigned or fails its signature.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"No model file at {path}.")
    try:
        opened = safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        kind = _pickle_kind(path)
        if kind is not None:
            raise ValueError(
                f"{path} is a {kind}, not a skanomaly model file. Load it with joblib.load "
                "(or torch.load) only if you trust where it came from: unpickling runs "
                "code. save_model writes the safe format."
            ) from err
        raise ValueError(f"{path} is not a readable skanomaly model file: {err}") from err
    try:
        with opened as handle:
            return _load_open(handle, path, device, key)
    except SafetensorError as err:
        raise ValueError(f"{path} is not a readable skanomaly model file: {err}") from err


def _load_open(handle, path, device, key):
    metadata = handle.metadata() or {}
    if metadata.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a skanomaly model file (no '{_FORMAT}' header).")
    version = metadata.get("format_version")
    if version not in _READABLE_VERSIONS:
        raise ValueError(
            f"{path} uses model format version {version!r}; this skanomaly reads versions "
            f"{', '.join(_READABLE_VERSIONS)}."
        )
    header = metadata.get("header", "")
    digest = _digest(_FileTensors(handle), header)
    if not hmac.compare_digest(digest, str(metadata.get("sha256", ""))):
        raise ValueError(
            f"{path} failed its integrity check (SHA-256 mismatch): the file was modified "
            "or corrupted. Refusing to load it."
        )
    if key is None and metadata.get("hmac_sha256") is not None:
        warnings.warn(
            f"{path} is signed, but no key was given: its signature was not checked, only "
            "its checksum (which anyone can recompute). Pass key= to verify who wrote it.",
            UserWarning,
            stacklevel=3,
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
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path} has an unreadable header: {err}") from err
    if not isinstance(content, dict):
        raise ValueError(f"{path} has no estimator description in its header.")
    content = dict(content)
    content.pop("skanomaly_version", None)
    registry = _registry()
    if version == "1":  # a single detector, named without its module
        name = content.get("class")
        qualified = f"skanomaly.detectors.{name}"
        if isinstance(name, str) and registry.get(qualified, (None, None))[1] == "detector":
            content["class"] = qualified
        else:
            raise ValueError(
                f"{path} holds an unknown class {name!r}; this skanomaly loads "
                f"{', '.join(sorted(registry))}."
            )

    # 1. Validate every step and plan every tensor; nothing is allocated here.
    loader = _Loader(path, registry, device)
    estimator = loader.node(content, "the estimator", "", 0)
    loader.check_tensors(_declared_tensors(path))
    # 2. Build the networks from the checked tensors.
    for detector, prefix, _ in loader.detectors:
        state_dicts = {}
        for module_name, shapes in loader.expected[prefix].items():
            state_dicts[module_name] = {
                tensor_name: handle.get_tensor(f"{prefix}{module_name}.{tensor_name}")
                for tensor_name in shapes
            }
        detector._load_networks(state_dicts, resolve_device(detector.device))
    return estimator


class _Loader:
    """Rebuild a node tree, unfitted-but-validated estimators first, networks later."""

    def __init__(self, path, registry, device):
        self.path, self.registry, self.device = path, registry, device
        self.detectors = []  # (detector, tensor prefix, label)
        self.expected = {}  # prefix -> {module: {tensor: (shape, dtype)}}

    def fail(self, label, cls_name, message):
        where = label if cls_name is None else f"{label} ({cls_name})"
        raise ValueError(f"{self.path}: {where}: {message}")

    def node(self, node, label, prefix, depth):
        if not isinstance(node, dict):
            self.fail(label, None, "is not an estimator description")
        name = node.get("class")
        cls, kind = self.registry.get(name, (None, None)) if isinstance(name, str) else (None, None)
        if cls is None:
            raise ValueError(
                f"{self.path}: {label} has an unknown class {name!r} (a file from another "
                "skanomaly version, or edited); this skanomaly loads "
                f"{', '.join(sorted(self.registry))}."
            )
        allowed = {"class", "params", "steps" if kind == "pipeline" else "fitted"}
        if kind == "wrapper":
            allowed.add("estimator")
        if kind == "transformer" and "weights" in inspect.signature(cls.__init__).parameters:
            allowed.add("weights_sha256")
        extra = sorted(set(node) - allowed)
        if extra:
            self.fail(label, cls.__name__, f"unexpected entries {extra} in its description")
        raw = node.get("params")
        if not isinstance(raw, dict):
            self.fail(label, cls.__name__, "has no parameter table")
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        if kind == "pipeline":
            known -= {"steps"}
        if kind == "wrapper":
            known -= {"estimator"}
        unknown = sorted(set(raw) - known)
        if unknown:
            self.fail(
                label,
                cls.__name__,
                f"sets parameters {unknown} that {cls.__name__} does not have (a file from "
                "another skanomaly version, or edited)",
            )
        try:
            params = {k: _from_json_param(v) for k, v in raw.items()}
        except ValueError as err:
            self.fail(label, cls.__name__, f"invalid parameters: {err}")
        if "device" in known:
            self._choose_device(params, label)
        build = getattr(self, f"_{kind}")
        return build(cls, params, node, label, prefix, depth)

    def _choose_device(self, params, label):
        if self.device is not None:
            params["device"] = self.device
            return
        saved = params.get("device", "auto")
        try:
            resolve_device(saved)
        except (ValueError, TypeError):
            where = "" if label == "the estimator" else f" ({label})"
            warnings.warn(
                f"{self.path}{where} was saved with device={saved!r}, which this machine does "
                "not have; loading with device='auto'.",
                UserWarning,
                stacklevel=5,
            )
            params["device"] = "auto"

    def _validated(self, cls, params, label, check="_validate_params"):
        try:
            estimator = cls(**params)
            getattr(estimator, check)()
        except (ValueError, TypeError) as err:
            self.fail(label, cls.__name__, f"invalid parameters for {cls.__name__}: {err}")
        return estimator

    def _set_fitted(self, estimator, state, label):
        try:
            estimator._set_fitted_state(state)
        except (ValueError, TypeError) as err:
            self.fail(label, type(estimator).__name__, str(err))

    def _pipeline(self, cls, params, node, label, prefix, depth):
        if depth >= _MAX_DEPTH:
            self.fail(label, cls.__name__, f"pipelines nested more than {_MAX_DEPTH} deep")
        if params.get("memory") is not None:
            self.fail(
                label,
                cls.__name__,
                "memory must be None in a model file (a cache directory would make the "
                "pipeline read joblib pickles)",
            )
        raw_steps = node.get("steps")
        if not isinstance(raw_steps, list) or not 1 <= len(raw_steps) <= _MAX_STEPS:
            self.fail(label, cls.__name__, f"needs a list of 1 to {_MAX_STEPS} steps")
        steps, names = [], set()
        for i, entry in enumerate(raw_steps):
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
                self.fail(label, cls.__name__, f"step {i} is not a [name, step] pair")
            name, child = entry
            if not name or len(name) > 200 or "__" in name or name in names:
                message = f"step {i} has an invalid or repeated name {name[:200]!r}"
                self.fail(label, cls.__name__, message)
            names.add(name)
            if child is None or child == "passthrough":
                steps.append((name, child))
            else:
                child_label = _step_label(label, name)
                steps.append((name, self.node(child, child_label, f"{prefix}{i}/", depth + 1)))
        try:
            pipeline = cls(steps, **params)
            pipeline._validate_params()
            pipeline._validate_steps()
        except (ValueError, TypeError) as err:
            self.fail(label, cls.__name__, f"invalid pipeline: {err}")
        self._check_image_chain(steps, label)
        return pipeline

    def _check_image_chain(self, steps, label):
        """Each step was fitted on the image size the step before it passes on (as in
        any fitted pipeline), and no step passes on images over 2**16 pixels a side:
        so an edited size (``Resize(size=10**9)``) cannot make scoring allocate."""
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import FunctionTransformer

        previous = None  # (label, image shape it passes on)
        for name, step in steps:
            shape_preserving = isinstance(step, (str, FunctionTransformer))
            if step is None or shape_preserving or hasattr(step, "fit_resample"):
                continue  # shape-preserving: passthrough, element-wise ufuncs, samplers
            step_label = _step_label(label, name)
            while hasattr(step, "calibration_scores_"):  # ConformalDetector: its detector's size
                step = step.estimator_
            if isinstance(step, Pipeline):
                previous = None  # not followed into nested pipelines
                continue
            shape = tuple(step.image_shape_)
            if previous is not None and shape != previous[1]:
                self.fail(
                    step_label,
                    type(step).__name__,
                    f"was fitted on {shape[0]}x{shape[1]} images, but {previous[0]} passes "
                    f"on {previous[1][0]}x{previous[1][1]} images (an edited file)",
                )
            out = _image_output_shape(step)
            if max(out) > 2**16:
                self.fail(step_label, type(step).__name__, f"would make {out[0]}x{out[1]} images")
            previous = (step_label, out)

    def _wrapper(self, cls, params, node, label, prefix, depth):
        if depth >= _MAX_DEPTH:
            self.fail(label, cls.__name__, f"estimators nested more than {_MAX_DEPTH} deep")
        inner = self.node(node.get("estimator"), f"{label} > estimator", prefix, depth + 1)
        wrapper = self._validated(cls, {**params, "estimator": inner}, label)
        state, bad = node.get("fitted"), "invalid fitted state in the model file"
        if not isinstance(state, dict) or set(state) != {"calibration_scores_", "n_calibration_"}:
            self.fail(label, cls.__name__, bad)
        scores, n = state["calibration_scores_"], state["n_calibration_"]
        if not isinstance(scores, list) or not 1 <= len(scores) <= _MAX_CALIBRATION_SCORES:
            self.fail(label, cls.__name__, f"{bad}: 1 to {_MAX_CALIBRATION_SCORES} calibration scores")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores):
            self.fail(label, cls.__name__, f"{bad}: calibration scores must be numbers")
        scores = np.asarray(scores, dtype=np.float64)
        if not np.all(np.isfinite(scores)) or np.any(np.diff(scores) < 0) or n != scores.size:
            self.fail(label, cls.__name__, f"{bad}: calibration scores finite, sorted, n_calibration_ of them")
        wrapper.estimator_ = inner
        for name in ("n_features_in_", "feature_names_in_"):
            if hasattr(inner, name):
                setattr(wrapper, name, getattr(inner, name))
        wrapper.calibration_scores_ = scores
        wrapper.n_calibration_ = int(n)
        return wrapper

    def _detector(self, cls, params, node, label, prefix, depth):
        if params.get("memory") is not None:
            # Files written before the writer dropped it: a cache path of another
            # machine, which a refit would read pickles from.
            warnings.warn(
                f"{label}: the file's memory={params['memory']!r} is ignored (a cache "
                "folder of the machine that saved it); the detector gets memory=None.",
                UserWarning,
                stacklevel=4,
            )
            params = {**params, "memory": None}
        detector = self._validated(cls, params, label, check="_check_scoring_params")
        self._set_fitted(detector, node.get("fitted"), label)
        try:
            expected = detector._module_shapes()
        except Exception as err:  # parameters that validate but cannot build a network
            self.fail(label, cls.__name__, f"its parameters do not describe a network: {err}")
        self.detectors.append((detector, prefix, label))
        self.expected[prefix] = expected
        return detector

    def _transformer(self, cls, params, node, label, prefix, depth):
        transformer = self._validated(cls, params, label)
        if getattr(transformer, "weights", None) is not None:
            self.fail(label, cls.__name__, "weights must be None (the packaged lung segmenter)")
        saved_sha = node.get("weights_sha256")
        if saved_sha is not None and saved_sha != _packaged_segmenter_sha256():
            warnings.warn(
                f"{self.path}: {label} ({cls.__name__}) was saved with another packaged lung "
                "segmenter than this skanomaly's (another version): its masks, and the "
                "pipeline's scores, may differ from the original's.",
                UserWarning,
                stacklevel=5,
            )
        state = node.get("fitted")
        from .preprocessing import PatchExtractor

        if isinstance(transformer, PatchExtractor) and isinstance(state, dict):
            # Its patch grid is derived from the image size: bound it before deriving.
            shape = state.get("image_shape_")
            p, stride = transformer.patch_size, transformer._stride
            if isinstance(shape, list) and all(isinstance(s, int) and s >= p for s in shape):
                positions = math.prod((s - p) // stride + 2 for s in shape)
                if positions > _MAX_PATCHES:
                    self.fail(
                        label,
                        cls.__name__,
                        f"image_shape_={shape} with patch_size={p}, stride={stride} makes "
                        f"{positions} patches per image, more than {_MAX_PATCHES}",
                    )
        self._set_fitted(transformer, state, label)
        return transformer

    def _function(self, cls, params, node, label, prefix, depth):
        for name in ("func", "inverse_func"):
            if params.get(name) is not None and not isinstance(params[name], np.ufunc):
                self.fail(label, cls.__name__, f"{name} must be None or a numpy ufunc")
        for name in ("kw_args", "inv_kw_args"):
            if params.get(name) is not None:
                self.fail(label, cls.__name__, f"{name} must be None")
        if params.get("feature_names_out") not in (None, "one-to-one"):
            self.fail(label, cls.__name__, "feature_names_out must be None or 'one-to-one'")
        transformer = self._validated(cls, params, label)
        state, bad = node.get("fitted"), "invalid fitted state in the model file"
        if not isinstance(state, dict) or set(state) - {"n_features_in_", "feature_names_in_"}:
            self.fail(label, cls.__name__, bad)
        n = state.get("n_features_in_")
        if n is not None:
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 2**32:
                self.fail(label, cls.__name__, f"{bad}: n_features_in_={n!r}")
            transformer.n_features_in_ = n
        names = state.get("feature_names_in_")
        if names is not None:
            if not isinstance(names, list) or len(names) != n:
                self.fail(label, cls.__name__, f"{bad}: feature_names_in_")
            if not all(isinstance(s, str) for s in names):
                self.fail(label, cls.__name__, f"{bad}: feature_names_in_")
            transformer.feature_names_in_ = np.asarray(names, dtype=object)
        return transformer

    def _sampler(self, cls, params, node, label, prefix, depth):
        validate = "_validate_params" if hasattr(cls, "_validate_params") else "get_params"
        sampler = self._validated(cls, params, label, check=validate)
        state = node.get("fitted", {})
        if not isinstance(state, dict) or len(state) > 32 or not all(
            _is_fitted_scalar_name(cls, name) and _is_scalar(value) for name, value in state.items()
        ):
            self.fail(label, cls.__name__, "invalid fitted state in the model file (scalars only)")
        for name, value in state.items():
            setattr(sampler, name, value)
        return sampler

    def check_tensors(self, declared):
        """Compare the file's tensors (names, shapes, dtypes read from its header, no
        data) with those the detectors' parameters need; one error lists all problems."""
        owners = {prefix: label for _, prefix, label in self.detectors}
        problems, wanted = [], set()
        for prefix, modules in self.expected.items():
            for module_name, shapes in modules.items():
                for tensor_name, (shape, dtype) in shapes.items():
                    full = f"{prefix}{module_name}.{tensor_name}"
                    wanted.add(full)
                    who = "" if not prefix else f"{owners[prefix]}: "
                    if full not in declared:
                        problems.append(f"{who}{full} missing")
                    elif declared[full] != (shape, dtype):
                        have_shape, have_dtype = declared[full]
                        problems.append(
                            f"{who}{full} is {have_shape} {have_dtype}, the parameters need "
                            f"{shape} {dtype}"
                        )
        for full in sorted(set(declared) - wanted):
            prefix = full.rpartition("/")[0]
            prefix = f"{prefix}/" if prefix else ""
            who = f"{owners[prefix]}: " if prefix in owners and prefix else ""
            problems.append(f"{who}{full} unexpected")
        if problems:
            more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
            shown = "; ".join(problems[:5]) + more
            raise ValueError(f"{self.path}: its tensors do not fit its parameters: {shown}.")
