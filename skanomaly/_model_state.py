"""Persistence of fitted detectors: what :mod:`skanomaly.io` saves and restores.

:class:`ModelStateMixin` turns a fitted :class:`~skanomaly.base.BaseDeepDetector`
into plain, JSON-serialisable fitted state and back (every value type- and
range-checked, since it may come from a file), computes the shapes of the networks
its parameters build on torch's meta device, and loads saved weights into freshly
built networks. It uses only the detector hooks (``_initialize_networks``,
``_torch_modules``, ``_network_config``, ``_net_attributes``); a detector that keeps
a ``network_config_`` overrides ``_check_network_config`` with the helpers below.
The file format itself (safetensors, the JSON tree, checksums) is
:mod:`skanomaly.io`'s.
"""

import copy
import warnings

import numpy as np
import torch

from .utils.validation import _short_repr

__all__ = ["ModelStateMixin"]


class ModelStateMixin:
    """The fitted state of a deep detector, for :func:`skanomaly.io.save_model` and
    :func:`skanomaly.io.load_model`.

    Saving reads ``_fitted_state()`` (plain attributes) and the state dicts of
    ``_torch_modules()``; loading calls ``_set_fitted_state(state)``, checks the
    file's tensors against ``_module_shapes()`` and then ``_load_networks``. A
    detector that keeps a ``network_config_`` overrides ``_check_network_config``.
    """

    def _fitted_state(self):
        """JSON-serialisable fitted attributes (for :func:`skanomaly.io.save_model`)."""
        state = {
            "image_shape_": list(self.image_shape_),
            "offset_": self.offset_,
            "n_features_in_": self.n_features_in_,
            "n_iter_": self.n_iter_,
            "histories_": {
                stage: _jsonable_history(h) for stage, h in self.histories_.items()
            },
        }
        if hasattr(self, "feature_names_in_"):
            state["feature_names_in_"] = [str(n) for n in self.feature_names_in_]
        if hasattr(self, "network_config_"):
            state["network_config_"] = {
                key: list(value) if isinstance(value, tuple) else value
                for key, value in self.network_config_.items()
            }
        return state

    def _set_fitted_state(self, state):
        """Set the non-network fitted attributes from ``_fitted_state()`` output.

        Everything is type- and range-checked, since it may come from a file.
        """
        from skorch.history import History

        def fail(what):
            raise ValueError(f"invalid fitted state in the model file: {what}")

        if not isinstance(state, dict):
            fail("not a mapping")
        shape = state.get("image_shape_")
        if not (
            isinstance(shape, list)
            and len(shape) == 2
            and all(
                isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 2**16
                for s in shape
            )
        ):
            fail(f"image_shape_={shape!r}")
        offset = state.get("offset_")
        if (
            not isinstance(offset, (int, float))
            or isinstance(offset, bool)
            or not np.isfinite(offset)
        ):
            fail(f"offset_={offset!r}")
        n_features = state.get("n_features_in_")
        if n_features != shape[0] * shape[1]:
            fail(f"n_features_in_={n_features!r} for images of {shape}")
        histories = state.get("histories_")
        if (
            not isinstance(histories, dict)
            or not histories
            or not all(isinstance(h, list) for h in histories.values())
        ):
            fail("histories_")
        names = state.get("feature_names_in_")
        if names is not None and (
            not isinstance(names, list)
            or len(names) != n_features
            or not all(isinstance(n, str) for n in names)
        ):
            fail("feature_names_in_")
        config = None
        if "network_config_" in state:
            try:
                config = self._check_network_config(
                    state["network_config_"], tuple(shape)
                )
            except (ValueError, TypeError) as err:
                fail(f"network_config_: {err}")
        self.image_shape_ = tuple(shape)
        self.offset_ = float(offset)
        self.n_features_in_ = int(n_features)
        self.histories_ = {str(stage): History(h) for stage, h in histories.items()}
        if len(self.histories_) == 1:
            (self.history_,) = self.histories_.values()
            self.n_iter_ = len(self.history_)
        else:
            self.n_iter_ = {stage: len(h) for stage, h in self.histories_.items()}
        if names is not None:
            self.feature_names_in_ = np.asarray(names, dtype=object)
        if config is None:
            # A file from before network_config_ was saved: its parameters are the
            # ones it was fitted with, unless they were changed after fitting.
            try:
                config = self._network_config()
            except ValueError as err:
                fail(f"the parameters do not describe the saved networks: {err}")
        if config is not None:
            self.network_config_ = config

    def _check_network_config(self, config, image_shape):
        """``network_config_`` read from a model file, type- and range-checked (for
        samples of ``image_shape``), with tuples restored; a ValueError names the entry
        at fault."""
        raise ValueError(f"{type(self).__name__} keeps no network configuration")

    def _module_shapes(self):
        """``{module name: {tensor name: (shape, dtype)}}`` of the networks these
        parameters (and ``network_config_``, where the detector keeps one) build,
        computed on torch's meta device: nothing is allocated, so a file's tensors can
        be checked against it before any real module is built.

        The networks are built on a shallow copy, so a fitted detector keeps its own
        networks and seed.
        """
        builder = copy.copy(self)
        builder._seed = 0  # meta tensors hold no values: any seed will do
        with torch.device("meta"):
            builder._initialize_networks("meta")
        return {
            name: {
                key: (tuple(t.shape), t.dtype) for key, t in module.state_dict().items()
            }
            for name, module in builder._torch_modules().items()
        }

    def _load_networks(self, state_dicts, device):
        """Build the networks on ``device`` and load saved weights into them (for
        :func:`skanomaly.io.load_model`, after ``_set_fitted_state``).

        ``state_dicts`` maps every name of ``_torch_modules()`` to its state dict; the
        caller has checked names and shapes against ``_module_shapes()``.
        """
        missing = object()
        seed = getattr(self, "_seed", missing)
        self._seed = 0  # initial weights are overwritten; any seed will do
        try:
            self._initialize_networks(device)
        finally:
            if seed is missing:
                del self._seed
            else:
                self._seed = seed
        for name, module in self._torch_modules().items():
            module.load_state_dict(state_dicts[name])
        for attribute in self._net_attributes:
            stage = attribute.rstrip("_")
            if stage in self.histories_:
                getattr(self, attribute).history = self.histories_[stage]
        return self


def _config_mapping(config, keys):
    """``config`` (a ``network_config_`` from a file) if it is a mapping with exactly
    ``keys``; a ValueError naming what is missing or unexpected otherwise."""
    if not isinstance(config, dict):
        raise ValueError(f"{_short_repr(config)} is not a mapping")
    missing, extra = sorted(set(keys) - set(config)), sorted(set(config) - set(keys))
    if missing or extra:
        raise ValueError(f"entries missing {missing}, unexpected {extra}")
    return config


def _config_int(config, key, low, high):
    value = config[key]
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not low <= value <= high
    ):
        raise ValueError(f"{key}={_short_repr(value)} (an integer in [{low}, {high}])")
    return value


def _config_float(config, key, low, high, closed="both"):
    """A finite number in ``[low, high]`` (``closed="left"``: ``[low, high)``; ``high``
    None: no upper bound), as a float."""
    value = config[key]
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and np.isfinite(value)
        and value >= low
    )
    if ok and high is not None:
        ok = value <= high if closed == "both" else value < high
    if not ok:
        bound = (
            "inf)" if high is None else (f"{high}]" if closed == "both" else f"{high})")
        )
        raise ValueError(f"{key}={_short_repr(value)} (a number in [{low}, {bound})")
    return float(value)


def _jsonable_history(history):
    """skorch History as plain lists/dicts of numbers and strings."""

    def convert(value):
        if isinstance(value, dict):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, (bool, int, float, str)) or value is None:
            return value
        if isinstance(value, (np.generic, torch.Tensor)):
            return value.item()
        warnings.warn(
            f"history value of type {type(value).__name__} not saved", stacklevel=3
        )
        return None

    return convert(list(history))
