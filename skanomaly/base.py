"""BaseDeepDetector: the estimator contract every detector of the package follows.

Validation, NaN-as-ROI handling, patch bags, batched scoring, ``offset_`` / ``predict``,
anomaly maps, seeding, devices and persistence live here once; a detector adds its
networks, its training stages (skorch nets from :mod:`skanomaly.training`) and its
score through a few private hooks (the public methods validate, the hooks work), in
the style of imbalanced-learn. See ``docs/design.rst`` for the contract.
"""

import contextlib
import copy
import re
import threading
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from scipy.stats import median_abs_deviation
from sklearn.base import BaseEstimator, OutlierMixin, _fit_context
from sklearn.model_selection import GroupShuffleSplit
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, column_or_1d
from skorch.callbacks import ProgressBar
from skorch.dataset import Dataset
from skorch.helper import predefined_split

from .training.nets import pad_to_side
from .utils.scoring import aggregate_patches, as_torch_buffer, score_in_batches
from .utils.tags import DetectorTags
from .utils.validation import check_image_size, input_ndim, read_layout, validate_images

__all__ = ["BaseDeepDetector", "resolve_device"]

_DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(device):
    """Turn the ``device`` parameter into a concrete torch device string.

    ``"auto"`` picks CUDA when available, else the CPU. An explicit CUDA device
    without a GPU is an error rather than a silent fallback, so a user who asked for
    the GPU learns that they are not getting it.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str) or not _DEVICE_PATTERN.match(device):
        raise ValueError(
            f"device={device!r} is not a valid device: use 'auto', 'cpu', 'cuda' or "
            "'cuda:N' (or 'mps' on Apple silicon)."
        )
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this machine: "
            "use device='auto' or device='cpu'."
        )
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device='mps' was requested but MPS is not available: use 'auto'.")
    return device


def _torch_seed(random_state):
    """A seed from ``random_state`` without touching numpy's global RNG."""
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1)[0])
    if isinstance(random_state, Integral):
        return int(random_state) % (2**63)
    return int(random_state.randint(np.iinfo(np.int32).max))


def _check_value_range(value_range):
    if value_range is None or value_range == "auto":
        return
    ok = isinstance(value_range, (tuple, list)) and len(value_range) == 2
    ok = ok and all(isinstance(v, Real) and not isinstance(v, bool) and np.isfinite(v) for v in value_range)
    if not ok or value_range[0] >= value_range[1]:
        raise ValueError(
            f"value_range={value_range!r} is not valid: use 'auto', None, or (low, high) "
            "with finite low < high, e.g. (0, 4095) for 12-bit data."
        )


class BaseDeepDetector(OutlierMixin, BaseEstimator):
    """Base class of the deep anomaly detectors (scikit-learn outlier detectors).

    The public methods validate; private hooks do the work. A single-stage detector
    sets ``_net_attributes`` (e.g. ``("net_",)``) and implements:

    * ``_min_image_size()`` -> int, the network's minimum input side;
    * ``_validate_detector_params()`` for parameters the constraint table cannot check;
    * ``_make_net(device)`` -> an unfitted skorch net for the training images;
    * ``_anomaly_batch(x, roi)`` -> ``(pixel_anomaly (B, H, W), image_anomaly (B,))``
      for a NaN-filled batch ``x`` of shape ``(B, 1, H, W)`` on the net's device.

    Multi-stage, multi-network detectors (GAN, then encoder) override as well:

    * ``_fit_networks(samples, owners, y, device)``: train every stage in order and
      return ``{stage name: skorch History}``; ``owners[i]`` is the image that
      training sample (patch) ``i`` came from, so per-image labels or groups can
      follow patches;
    * ``_initialize_networks(device)``: build every net, initialised but untrained,
      with shared modules shared (used to restore saved weights);
    * ``_network_config()`` and ``_check_network_config(config, image_shape)``: the
      architecture resolved at fit (``network_config_``), which every net is built
      from in training and loading alike, and its validation when read from a file;
      a ``"side"`` entry makes the base pad training samples (NaN) and scoring
      batches (0, ROI False) to that square and crop maps back, so no detector pads;
    * ``_torch_modules()``: every fitted ``nn.Module`` by name, each once;
    * ``_scoring_context()``: ``torch.inference_mode()`` by default;
      ``torch.enable_grad()`` for a detector that searches latents when scoring;
    * ``_offset_scores(images, y)``: the training scores ``offset_`` is set from.

    Everything else (the data contract, bags, ``offset_``, ``predict``, maps, batching,
    seeding, persistence) is shared.
    """

    _net_attributes = ("net_",)

    _parameter_constraints: dict = {
        "lr": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "contamination": [StrOptions({"auto"}), Interval(Real, 0, 0.5, closed="right")],
        "patch_aggregation": [StrOptions({"max", "mean"}), tuple],
        "image_shape": [None, tuple],
        "value_range": [StrOptions({"auto"}), tuple, list, None],
        "validation_fraction": [None, Interval(Real, 0, 1, closed="neither")],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "callbacks": [None, list],
    }

    # ------------------------------------------------------------------ fitting
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Train on normal images (or patch bags of normal images).

        Parameters
        ----------
        X : array-like of shape (n_samples, H, W), (n_samples, H * W) or (n_samples, P, p, p)
            Normal images, NaN outside the region of interest. Bags train on every
            present (not all-NaN) patch. ``(n_samples, 1, H, W)`` and
            ``(n_samples, H, W, 1)`` are read as images with a channel axis.
        y : None or array-like of shape (n_samples,), default=None
            Image labels, 0 = normal, 1 = abnormal (the package's convention). The
            detectors learn from normal images only, so a ``y`` that marks any image
            abnormal (any label other than 0) is refused rather than trained on;
            ``None`` or all zeros trains on every image. A semi-supervised detector
            (``labels="semi-supervised"`` in its :class:`~skanomaly.utils.tags.DetectorTags`)
            also takes -1, unlabelled.

        Returns
        -------
        self : object
        """
        # A failed fit must leave an unfitted estimator, not a mix of old and new state.
        self._reset_fitted()
        try:
            return self._fit(X, y)
        except BaseException:
            self._reset_fitted()
            raise

    def _fit(self, X, y):
        self._check_scoring_params()
        images = self._validate_input(X, reset=True)
        y = self._check_training_labels(y, images.shape[0])
        samples, owners = self._present_samples(images)
        if samples.shape[0] < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 training images (or present "
                f"patches); got {samples.shape[0]}."
            )
        self.image_shape_ = tuple(int(s) for s in samples.shape[1:])
        check_image_size(self.image_shape_, self._min_image_size(), hint=self._min_size_hint())
        device = resolve_device(self.device)
        self._seed = _torch_seed(self.random_state)
        config = self._network_config()
        if config is not None:
            self.network_config_ = config
        padded = self._pad_to_network(torch.from_numpy(as_torch_buffer(samples)), float("nan")).numpy()
        histories = self._fit_networks(padded, owners, y, device)
        self.histories_ = dict(histories)
        if len(self.histories_) == 1:
            (self.history_,) = self.histories_.values()
            self.n_iter_ = len(self.history_)
        else:
            self.n_iter_ = {stage: len(history) for stage, history in self.histories_.items()}
        self.offset_ = self._offset_from(self._offset_scores(images, y))
        return self

    def _reset_fitted(self):
        """Forget every fitted attribute (names ending in ``_``) and private fit state."""
        for name in list(vars(self)):
            if (name.endswith("_") and not name.startswith("__")) or name == "_seed":
                delattr(self, name)

    def __sklearn_is_fitted__(self):
        # offset_ is set last, after every network trained.
        return hasattr(self, "offset_")

    def _check_training_labels(self, y, n_images):
        """Refuse labels that mark abnormal images; return ``y`` as an array or None."""
        if y is None:
            return None
        y = column_or_1d(y, warn=True)
        if y.shape[0] != n_images:
            raise ValueError(f"y has {y.shape[0]} labels but X has {n_images} images.")
        if y.dtype.kind not in "biuf":
            raise ValueError(
                f"y must hold numeric image labels (0 = normal, 1 = abnormal); got dtype {y.dtype}."
            )
        if self.__skanomaly_tags__().labels == "semi-supervised":
            # 0 = normal, -1 = unlabelled (HealthyGAN); only images marked abnormal
            # are refused.
            abnormal = np.flatnonzero(np.asarray((y != 0) & (y != -1)))
            if abnormal.size:
                raise ValueError(
                    f"{type(self).__name__} trains on normal (y = 0) and unlabelled (y = -1) "
                    f"images, but {abnormal.size} of the {n_images} images have another label "
                    f"(first: {y[abnormal[0]].item()!r} at index {abnormal[0]}); it never trains "
                    "on images marked abnormal (1): mark them -1 (unlabelled) or leave them "
                    "out, e.g. fit(X[y != 1], y[y != 1])."
                )
            return y
        abnormal = np.flatnonzero(np.asarray(y != 0))
        if abnormal.size:
            shown = ", ".join(map(str, abnormal[:10])) + (" ..." if abnormal.size > 10 else "")
            raise ValueError(
                f"{type(self).__name__} learns normal anatomy from normal images only, but "
                f"y marks {abnormal.size} of the {n_images} images as abnormal (label != 0; "
                f"indices {shown}). Fit on the normal images alone, detector.fit(X[y == 0]); "
                "in cross-validation use training folds of normal images only, e.g. "
                "cv=[(train[y[train] == 0], test) for train, test in splitter.split(X, y)], "
                "and refit on the normal images (a GridSearchCV with refit=True refits on "
                "all of X)."
            )
        return y

    def _fit_networks(self, samples, owners, y, device):
        """Train the networks on ``samples`` ``(M, H, W)``; return ``{stage: History}``.

        The default trains the single net of ``_net_attributes`` (``_make_net``). With
        ``validation_fraction``, whole images (all patches of an image, via
        ``owners``) are held out, so no image is in both the training and the
        validation split.
        """
        net = self._fit_stage(self._make_net(device), samples, owners)
        attribute = self._net_attributes[0]
        setattr(self, attribute, net)
        return {attribute.rstrip("_"): net.history}

    def _fit_stage(self, net, samples, owners):
        """Fit one skorch net on ``samples``, holding out ``validation_fraction`` of the
        images (all patches of an image on one side) as its validation split."""
        train, valid = self._split_by_image(samples, owners)
        if valid is not None:
            net.set_params(train_split=predefined_split(Dataset(valid[:, None], None)))
        net.fit(train[:, None], None)
        # The predefined split holds a copy of the validation patches: drop it so the
        # fitted detector does not carry (and pickle) them.
        net.train_split = None
        return net

    def _split_by_image(self, samples, owners):
        """``(train, validation)`` samples with every image on one side only."""
        if self.validation_fraction is None:
            return samples, None
        images = np.unique(owners)
        n_valid = int(round(self.validation_fraction * images.size))
        if images.size < 2 or not 1 <= n_valid < images.size:
            raise ValueError(
                f"validation_fraction={self.validation_fraction} leaves no image on one side "
                f"of the split of {images.size} training images; use a fraction between "
                f"{1 / max(images.size, 1):.3g} and {1 - 1 / max(images.size, 1):.3g}, or "
                "validation_fraction=None."
            )
        splitter = GroupShuffleSplit(n_splits=1, test_size=n_valid, random_state=self._seed % 2**32)
        train, valid = next(splitter.split(samples, groups=owners))
        return samples[train], samples[valid]

    def _initialize_networks(self, device):
        """Build every net, initialised and untrained, as fitted attributes (from
        ``network_config_`` where the detector keeps one, as ``fit`` built them)."""
        net = self._make_net(device)
        net.initialize()
        setattr(self, self._net_attributes[0], net)

    def _offset_scores(self, images, y):
        """The scores ``offset_`` is set from: every training image by default."""
        return self._score_images(images)

    def _offset_from(self, train_scores):
        """Threshold on ``score_samples`` that ``predict`` uses.

        A float ``contamination`` flags that fraction of the training images.
        ``"auto"`` flags images more than three robust standard deviations (median
        absolute deviation x 1.4826) below the median training score: no fraction of
        the training set is assumed abnormal, which fits training on normal images.
        """
        if self.contamination == "auto":
            # scale="normal": the MAD rescaled to estimate a normal distribution's
            # standard deviation (x 1.4826).
            spread = median_abs_deviation(train_scores, scale="normal")
            return float(np.median(train_scores) - 3.0 * spread)
        return float(np.percentile(train_scores, 100.0 * self.contamination))

    def _skorch_kwargs(self, device):
        """The flat parameters every detector passes to its skorch net."""
        callbacks = [(f"user_{i}", _clone_callback(cb)) for i, cb in enumerate(self.callbacks or [])]
        if self.verbose:
            callbacks.append(("progress_bar", ProgressBar()))
        return dict(
            lr=self.lr,
            batch_size=self.batch_size,
            max_epochs=self.max_epochs,
            device=device,
            train_split=None,
            callbacks=callbacks,
            iterator_train__shuffle=True,
            verbose=int(self.verbose),
            random_seed=getattr(self, "_seed", 0),
        )

    # ---------------------------------------------------------------- validation
    def _validate_detector_params(self):
        """Hook for checks the constraint table cannot express."""

    def _check_scoring_params(self):
        """Validate every parameter; scoring re-checks those ``set_params`` may change."""
        self._validate_params()
        _check_value_range(self.value_range)
        self._validate_detector_params()
        self._check_patch_aggregation()

    def _min_image_size(self):
        return 1

    def _min_size_hint(self):
        return "Resize the images (skanomaly.preprocessing.Resize) or use a shallower network."

    def _check_patch_aggregation(self):
        agg = self.patch_aggregation
        if isinstance(agg, str):
            return
        if (
            len(agg) == 2
            and agg[0] == "topk"
            and isinstance(agg[1], Integral)
            and not isinstance(agg[1], bool)
            and agg[1] >= 1
        ):
            return
        raise ValueError(
            f"patch_aggregation={agg!r} is not valid: use 'max', 'mean' or ('topk', k) "
            "with an integer k >= 1."
        )

    def _validate_input(self, X, *, reset):
        images = validate_images(
            self,
            X,
            reset=reset,
            image_shape=self.image_shape,
            allow_bags=True,
            ensure_min_samples=1 if input_ndim(X) == 4 else (2 if reset else 1),
            value_range=self.value_range,
        )
        if not reset:
            size = tuple(images.shape[-2:])
            if size != self.image_shape_:
                kind = "patches" if images.ndim == 4 else "images"
                raise ValueError(
                    f"{type(self).__name__} was fitted on {self.image_shape_[0]}x"
                    f"{self.image_shape_[1]} images or patches but got {kind} of "
                    f"{size[0]}x{size[1]}. Resize them (skanomaly.preprocessing.Resize) "
                    "or extract patches of the fitted size (PatchExtractor)."
                )
        return images

    @staticmethod
    def _present_samples(images):
        """The training samples ``(M, H, W)`` and the image each came from ``(M,)``.

        Images are their own samples; bags give their present (not all-NaN) patches.
        """
        if images.ndim == 3:
            return images, np.arange(images.shape[0])
        patches = images.reshape(-1, *images.shape[-2:])
        present = ~np.isnan(patches).all(axis=(1, 2))
        owners = np.repeat(np.arange(images.shape[0]), images.shape[1])
        return patches[present], owners[present]

    # ------------------------------------------------------------------- scoring
    def _torch_modules(self):
        """Every fitted ``nn.Module`` by name, each module object once.

        Names are ``<net attribute><module name>`` (``"net_module"``). A module shared
        by two nets (a frozen generator used by a second stage) is listed once, under
        its first name, so it is saved once and restored shared.
        """
        modules, seen = {}, set()
        for attribute in self._net_attributes:
            net = getattr(self, attribute)
            for name in net._modules:
                module = getattr(net, name + "_")
                if id(module) not in seen:
                    seen.add(id(module))
                    modules[f"{attribute}{name}"] = module
        return modules

    def _scoring_batch_size(self):
        """Samples scored together; scores never depend on it."""
        return self.batch_size

    def _scoring_context(self):
        """Autograd mode of scoring: none at all, unless a detector needs gradients."""
        return torch.inference_mode()

    @contextlib.contextmanager
    def _freeze_for_scoring(self):
        """Context in which every module is in eval mode without gradients; yields
        their device.

        No scoring path can then move a weight or a BatchNorm statistic, whatever
        autograd mode the detector scores under. On leaving (also on an exception),
        every submodule's training mode and every parameter's ``requires_grad`` are
        restored: ``fit`` scores its own training images for ``offset_``, and a fitted
        net must still train (``partial_fit``) afterwards. Scorings of one fitted
        detector in several threads at once (Dask workers share the scattered model)
        freeze once and restore when the last one leaves, never in between.
        """
        modules = list(self._torch_modules().values())
        with _FREEZE_LOCK:
            for module in modules:
                entry = _FROZEN.get(id(module))
                if entry is None:
                    entry = _FROZEN[id(module)] = [0, _training_state(module)]
                    module.eval()
                    module.requires_grad_(False)
                entry[0] += 1
        try:
            yield _module_device(modules)
        finally:
            with _FREEZE_LOCK:
                for module in modules:
                    entry = _FROZEN[id(module)]
                    entry[0] -= 1
                    if not entry[0]:
                        del _FROZEN[id(module)]
                        _restore_training_state(entry[1])

    def _run_batches(self, samples, want_maps):
        """Score ``(M, H, W)`` samples batch by batch: image anomaly and optional maps.

        The networks compute in float32; anomalies are returned as float64 (the dtype
        scikit-learn's outlier API asks for), an exact widening of float32 values
        whose precision is float32's (``docs/design.rst``, section 3).
        """
        with self._freeze_for_scoring() as device:
            return self._run_frozen_batches(samples, want_maps, device)

    def _run_frozen_batches(self, samples, want_maps, device):
        desc = f"{type(self).__name__} scoring" if self.verbose else None

        def anomaly_batch(x, roi):
            height, width = x.shape[-2:]
            pixel, image = self._anomaly_batch(self._pad_to_network(x, 0.0), self._pad_to_network(roi, False))
            return pixel[..., :height, :width], image

        return score_in_batches(
            samples, anomaly_batch, batch_size=self._scoring_batch_size(), device=device,
            context=self._scoring_context, want_maps=want_maps, desc=desc,
        )  # fmt: skip

    def _pad_to_network(self, x, value):
        """``(..., H, W)`` padded at the bottom and right with ``value`` to the square
        side the networks take (``network_config_["side"]``), where a detector keeps
        one; as it is otherwise. Training samples are padded with NaN (outside the
        region of interest) before ``_fit_networks`` sees them, and scoring batches
        with 0 and a False ROI before ``_anomaly_batch`` does; maps are cropped back."""
        side = getattr(self, "network_config_", None) or {}
        side = side.get("side")
        return x if side is None else pad_to_side(x, side, value)

    def _patch_anomalies(self, bags):
        """``(N, P)`` patch anomalies of bags, NaN for absent patches."""
        patches = bags.reshape(-1, *bags.shape[-2:])
        present = ~np.isnan(patches).all(axis=(1, 2))
        out = np.full(patches.shape[0], np.nan)
        out[present], _ = self._run_batches(patches[present], want_maps=False)
        return out.reshape(bags.shape[:2])

    def _score_images(self, images):
        """Normality scores of validated images or bags."""
        if images.ndim == 4:
            return -aggregate_patches(self._patch_anomalies(images), self.patch_aggregation)
        return -self._run_batches(images, want_maps=False)[0]

    def score_samples(self, X):
        """Normality score of each image: higher means more normal.

        The negative of the paper's anomaly score. For patch bags, patch scores are
        aggregated per image with ``patch_aggregation``.

        Parameters
        ----------
        X : array-like of shape (n_samples, H, W), (n_samples, H * W) or (n_samples, P, p, p)

        Returns
        -------
        scores : ndarray of float64, shape (n_samples,)
        """
        check_is_fitted(self)
        self._check_scoring_params()
        return self._score_images(self._validate_input(X, reset=False))

    def score_patches(self, X):
        """Normality score of every patch of patch bags (higher = more normal).

        Parameters
        ----------
        X : array-like of shape (n_samples, P, p, p)
            Patch bags from :class:`skanomaly.preprocessing.PatchExtractor`.

        Returns
        -------
        scores : ndarray of float64, shape (n_samples, P)
            NaN for absent (all-NaN) patches.
        """
        check_is_fitted(self)
        self._check_scoring_params()
        if input_ndim(X) != 4 or read_layout(X, type(self).__name__) != "bags":
            raise ValueError(
                f"score_patches expects patch bags (n_samples, P, p, p); got an array of "
                f"shape {np.shape(X)}. Use PatchExtractor to make bags, or score_samples "
                "for whole images."
            )
        return -self._patch_anomalies(self._validate_input(X, reset=False))

    def decision_function(self, X):
        """``score_samples(X) - offset_``: negative for outliers.

        Parameters
        ----------
        X : array-like of shape (n_samples, H, W), (n_samples, H * W) or (n_samples, P, p, p)

        Returns
        -------
        decision : ndarray of float64, shape (n_samples,)
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """+1 for inliers (normal), -1 for outliers (anomalous).

        Parameters
        ----------
        X : array-like of shape (n_samples, H, W), (n_samples, H * W) or (n_samples, P, p, p)

        Returns
        -------
        labels : ndarray of int, shape (n_samples,)
        """
        return np.where(self.decision_function(X) < 0, -1, 1)

    def anomaly_map(self, X):
        """Per-pixel anomaly (higher = more abnormal), NaN outside the ROI.

        Parameters
        ----------
        X : array-like of shape (n_samples, H, W), (n_samples, H * W) or (n_samples, P, p, p)

        Returns
        -------
        maps : ndarray of float32
            ``(n_samples, H, W)`` for images (also for flattened input);
            ``(n_samples, P, p, p)`` for bags (stitch them with
            ``PatchExtractor.inverse_transform``), all-NaN for absent patches. Input
            with a channel axis, ``(n_samples, 1, H, W)`` or ``(n_samples, H, W, 1)``,
            gets its maps in the same layout.
        """
        check_is_fitted(self)
        self._check_scoring_params()
        layout = read_layout(X, type(self).__name__) if input_ndim(X) == 4 else "images"
        images = self._validate_input(X, reset=False)
        samples = images.reshape(-1, *images.shape[-2:])
        present = ~np.isnan(samples).all(axis=(1, 2))
        maps = np.full(samples.shape, np.nan, dtype=np.float32)
        maps[present] = self._run_batches(samples[present], want_maps=True)[1]
        maps = maps.reshape(images.shape)
        return np.expand_dims(maps, layout) if isinstance(layout, int) else maps

    # --------------------------------------------------------------- persistence
    def _fitted_state(self):
        """JSON-serialisable fitted attributes (for :func:`skanomaly.io.save_model`)."""
        state = {
            "image_shape_": list(self.image_shape_),
            "offset_": self.offset_,
            "n_features_in_": self.n_features_in_,
            "n_iter_": self.n_iter_,
            "histories_": {stage: _jsonable_history(h) for stage, h in self.histories_.items()},
        }
        if hasattr(self, "feature_names_in_"):
            state["feature_names_in_"] = [str(n) for n in self.feature_names_in_]
        if hasattr(self, "network_config_"):
            state["network_config_"] = {
                key: list(value) if isinstance(value, tuple) else value for key, value in self.network_config_.items()
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
            and all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 2**16 for s in shape)
        ):
            fail(f"image_shape_={shape!r}")
        offset = state.get("offset_")
        if not isinstance(offset, (int, float)) or isinstance(offset, bool) or not np.isfinite(offset):
            fail(f"offset_={offset!r}")
        n_features = state.get("n_features_in_")
        if n_features != shape[0] * shape[1]:
            fail(f"n_features_in_={n_features!r} for images of {shape}")
        histories = state.get("histories_")
        if not isinstance(histories, dict) or not histories or not all(
            isinstance(h, list) for h in histories.values()
        ):
            fail("histories_")
        names = state.get("feature_names_in_")
        if names is not None and (
            not isinstance(names, list) or len(names) != n_features or not all(isinstance(n, str) for n in names)
        ):
            fail("feature_names_in_")
        config = None
        if "network_config_" in state:
            try:
                config = self._check_network_config(state["network_config_"], tuple(shape))
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

    def _network_config(self):
        """What the networks are built from (``network_config_``), resolved at fit.

        A detector whose scoring depends on the architecture its parameters describe
        (``latent_dim``, widths, the side padded to) overrides this, sets
        ``network_config_`` in ``_fit_networks``, and builds its nets from
        ``network_config_`` alone, in training and in loading alike; then a parameter
        changed after fitting takes effect at the next fit, as in scikit-learn, and a
        model file rebuilds exactly the fitted networks. Values are ints, floats,
        strings, None or tuples of ints (saved as JSON). The base keeps none.
        """
        return None

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
            name: {key: (tuple(t.shape), t.dtype) for key, t in module.state_dict().items()}
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

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.non_deterministic = self.random_state is None
        return tags

    def __skanomaly_tags__(self):
        """The package's own tags (:class:`skanomaly.utils.tags.DetectorTags`): label
        semantics and the detector checks' tolerances. Detectors extend them; read
        them with :func:`skanomaly.utils.tags.get_detector_tags`."""
        return DetectorTags()


def _clone_callback(callback):
    """A fresh copy of a user's skorch callback, so fitting never mutates theirs."""
    from sklearn.base import clone

    try:
        return clone(callback)
    except Exception:  # callbacks that are not sklearn-clonable are copied instead
        import copy

        return copy.deepcopy(callback)


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
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{key}={_short_repr(value)} (an integer in [{low}, {high}])")
    return value


def _config_float(config, key, low, high, closed="both"):
    """A finite number in ``[low, high]`` (``closed="left"``: ``[low, high)``; ``high``
    None: no upper bound), as a float."""
    value = config[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) and value >= low
    if ok and high is not None:
        ok = value <= high if closed == "both" else value < high
    if not ok:
        bound = "inf)" if high is None else (f"{high}]" if closed == "both" else f"{high})")
        raise ValueError(f"{key}={_short_repr(value)} (a number in [{low}, {bound})")
    return float(value)


def _config_widths(config, key, min_len, max_len):
    """Layer widths: ``min_len`` to ``max_len`` integers in [1, 4096], as a tuple."""
    value = config[key]
    ok = isinstance(value, (list, tuple)) and min_len <= len(value) <= max_len
    if not ok or not all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= 4096 for c in value):
        raise ValueError(f"{key}={_short_repr(value)} ({min_len} to {max_len} integer widths in [1, 4096])")
    return tuple(value)


def _short_repr(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
        warnings.warn(f"history value of type {type(value).__name__} not saved", stacklevel=3)
        return None

    return convert(list(history))


# Modules frozen by scorings in flight: id(module) -> [number of scorings, the state to
# restore when the last one leaves]. Keyed by module, not by detector: the state is the
# modules', and one module may serve several detector objects (shallow copies).
_FREEZE_LOCK = threading.Lock()
_FROZEN = {}


def _training_state(module):
    """Every submodule's training mode and every parameter's ``requires_grad``."""
    return (
        [(child, child.training) for child in module.modules()],
        [(param, param.requires_grad) for param in module.parameters()],
    )


def _restore_training_state(state):
    # Flags set one by one: Module.train(mode) would set a submodule that was
    # deliberately in eval mode (a frozen helper inside a trained net) to mode too.
    modes, grads = state
    for child, training in modes:
        child.training = training
    for param, requires_grad in grads:
        param.requires_grad_(requires_grad)


def _module_device(modules):
    """The device of the first parameter (or buffer) of ``modules``; the CPU if none."""
    for module in modules:
        tensor = next(iter(module.parameters()), None)
        if tensor is None:
            tensor = next(iter(module.buffers()), None)
        if tensor is not None:
            return tensor.device
    return torch.device("cpu")
