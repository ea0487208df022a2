"""BaseDeepDetector: the estimator contract every detector of the package follows.

Validation, NaN-as-ROI handling, patch bags, batched scoring, ``offset_`` / ``predict``,
anomaly maps, seeding and devices live here once; a detector adds its networks, its
training stages (skorch nets from :mod:`skanomaly.training`) and its score through a
few private hooks (the public methods validate, the hooks work), in the style of
imbalanced-learn. Persistence, built on the same hooks, is
:class:`skanomaly._model_state.ModelStateMixin`'s. See ``docs/design.rst`` for the
contract.
"""

import contextlib
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
from skorch.helper import predefined_split

from ._model_state import ModelStateMixin
from .training.data import SampleSet
from .training.nets import pad_to_side
from .training.progress import StageProgress
from .utils.scoring import aggregate_patches, score_in_batches
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


class BaseDeepDetector(ModelStateMixin, OutlierMixin, BaseEstimator):
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
    * ``_network_config()`` and ``_check_network_config(config, image_shape)`` (whose
      default is :class:`~skanomaly._model_state.ModelStateMixin`'s): the
      architecture resolved at fit (``network_config_``), which every net is built
      from in training and loading alike, and its validation when read from a file;
      a ``"side"`` entry makes the base pad training samples (NaN) and scoring
      batches (0, ROI False) to that square and crop maps back, so no detector pads;
    * ``_torch_modules()``: every fitted ``nn.Module`` by name, each once;
    * ``_scoring_context()``: ``torch.inference_mode()`` by default;
      ``torch.enable_grad()`` for a detector that searches latents when scoring;
    * ``_offset_scores(images, y)``: the training scores ``offset_`` is set from.

    Everything else (the data contract, bags, ``offset_``, ``predict``, maps, batching,
    seeding, and persistence through ``ModelStateMixin``) is shared.
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
        rows, present, owners = self._present_samples(images)
        if present.size < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 training images (or present "
                f"patches); got {present.size}."
            )
        self.image_shape_ = tuple(int(s) for s in rows.shape[1:])
        check_image_size(self.image_shape_, self._min_image_size(), hint=self._min_size_hint())
        device = resolve_device(self.device)
        self._seed = _torch_seed(self.random_state)
        config = self._network_config()
        if config is not None:
            self.network_config_ = config
        # Samples are gathered and padded (NaN: outside the ROI) batch by batch; the
        # validated images are the only full-size array the fit holds.
        samples = SampleSet(rows, present, side=(config or {}).get("side"))
        histories = self._fit_networks(samples, owners, y, device)
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
        """Fit one skorch net on ``samples`` (a :class:`~skanomaly.training.data.SampleSet`),
        holding out ``validation_fraction`` of the images (all patches of an image on
        one side) as its validation split."""
        train, valid = self._split_by_image(samples, owners)
        if valid is not None:
            net.set_params(train_split=predefined_split(valid))
        net.fit(train, None)
        # The predefined split references the training data: drop it so the fitted
        # detector does not carry (and pickle) it.
        net.train_split = None
        return net

    def _split_by_image(self, samples, owners):
        """``(train, validation)`` subsets of ``samples`` with every image on one side
        only (views of the same array: nothing is copied)."""
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
        train, valid = next(splitter.split(np.empty((len(owners), 0)), groups=owners))
        return samples.subset(train), samples.subset(valid)

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

    def _skorch_kwargs(self, device, stage=None):
        """The flat parameters every detector passes to its skorch net (``stage``
        names the training stage in progress output, where there are several)."""
        callbacks = [(f"user_{i}", _clone_callback(cb)) for i, cb in enumerate(self.callbacks or [])]
        if self.verbose:
            name = type(self).__name__ + (f" {stage} stage" if stage else "")
            callbacks.append(("progress", StageProgress(name, hint=self._small_settings_hint())))
        return dict(
            lr=self.lr,
            batch_size=self.batch_size,
            max_epochs=self._max_epochs(),
            device=device,
            train_split=None,
            callbacks=callbacks,
            iterator_train__shuffle=True,
            verbose=int(self.verbose),
            random_seed=getattr(self, "_seed", 0),
        )

    def _max_epochs(self):
        """Epochs of the training stage (detectors that count iterations derive them)."""
        return self.max_epochs

    def _small_settings_hint(self):
        """What to do instead when a stage would take hours on this CPU (shown once by
        :class:`~skanomaly.training.progress.StageProgress`)."""
        return (
            f"Use fewer epochs (max_epochs), narrower networks or smaller images for a CPU "
            f"(the docstring of {type(self).__name__} shows small settings), or a GPU (device='cuda')."
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
        """``(rows, present, owners)``: the samples as rows ``(R, H, W)`` of a view of
        ``images``, the indices of the present ones ``(M,)`` and the image each
        present sample came from ``(M,)``.

        Images are their own samples; bags give their present (not all-NaN) patches.
        Nothing is copied: a view of contiguous bags is a reshape.
        """
        if images.ndim == 3:
            return images, np.arange(images.shape[0]), np.arange(images.shape[0])
        rows = images.reshape(-1, *images.shape[-2:])
        present = np.flatnonzero(~np.isnan(rows).all(axis=(1, 2)))
        return rows, present, present // images.shape[1]

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

        Convolution weights are held channels-last while frozen (on the CPU and CUDA):
        the convolutions then run in the layout oneDNN and cuDNN are fastest in (an
        f-AnoGAN at width 16 scored 7-18 % faster on this 2-core CPU), and their
        layout is restored on leaving, so training, ``state_dict`` and model files
        see the usual contiguous weights. Scores change by float32 rounding only.
        """
        modules = list(self._torch_modules().values())
        with _FREEZE_LOCK:
            for module in modules:
                entry = _FROZEN.get(id(module))
                if entry is None:
                    entry = _FROZEN[id(module)] = [0, _training_state(module), _to_channels_last(module)]
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
                        _restore_layout(entry[2])

    def _run_batches(self, samples, want_maps, indices=None, batch_fn=None):
        """Score ``(M, H, W)`` samples (the rows ``indices`` of them, where given)
        batch by batch: image anomaly and optional maps.

        The networks compute in float32; anomalies are returned as float64 (the dtype
        scikit-learn's outlier API asks for), an exact widening of float32 values
        whose precision is float32's (``docs/design.rst``, section 3). ``batch_fn``
        replaces ``_anomaly_batch`` (a detector's other per-pixel maps).
        """
        with self._freeze_for_scoring() as device:
            return self._run_frozen_batches(samples, want_maps, device, indices, batch_fn)

    def _run_frozen_batches(self, samples, want_maps, device, indices=None, batch_fn=None):
        desc = f"{type(self).__name__} scoring" if self.verbose else None
        batch_fn = self._anomaly_batch if batch_fn is None else batch_fn

        def anomaly_batch(x, roi):
            height, width = x.shape[-2:]
            pixel, image = batch_fn(self._pad_to_network(x, 0.0), self._pad_to_network(roi, False))
            return pixel[..., :height, :width], image

        return score_in_batches(
            samples, anomaly_batch, batch_size=self._scoring_batch_size(), device=device,
            context=self._scoring_context, want_maps=want_maps, desc=desc, indices=indices,
        )  # fmt: skip

    def _pad_to_network(self, x, value):
        """``(..., H, W)`` padded at the bottom and right with ``value`` to the square
        side the networks take (``network_config_["side"]``), where a detector keeps
        one; as it is otherwise. Training samples are padded with NaN (outside the
        region of interest) batch by batch (``SampleSet``), and scoring batches
        with 0 and a False ROI before ``_anomaly_batch`` does; maps are cropped back."""
        side = getattr(self, "network_config_", None) or {}
        side = side.get("side")
        return x if side is None else pad_to_side(x, side, value)

    def _patch_anomalies(self, bags):
        """``(N, P)`` patch anomalies of bags, NaN for absent patches."""
        patches, present, _ = self._present_samples(bags)
        out = np.full(patches.shape[0], np.nan)
        out[present], _ = self._run_batches(patches, want_maps=False, indices=present)
        return out.reshape(bags.shape[:2])

    def _score_images(self, images):
        """Normality scores of validated images or bags."""
        _warn_if_flat(images, self.value_range)
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
        return self._pixel_maps(X)

    def _pixel_maps(self, X, batch_fn=None):
        """Per-pixel maps of ``batch_fn`` (``_anomaly_batch``'s by default) in the
        layout of ``X``, NaN outside the ROI and for absent patches."""
        check_is_fitted(self)
        self._check_scoring_params()
        layout = read_layout(X, type(self).__name__) if input_ndim(X) == 4 else "images"
        images = self._validate_input(X, reset=False)
        samples, present, _ = self._present_samples(images)
        maps = np.full(samples.shape, np.nan, dtype=np.float32)
        maps[present] = self._run_batches(samples, want_maps=True, indices=present, batch_fn=batch_fn)[1]
        maps = maps.reshape(images.shape)
        return np.expand_dims(maps, layout) if isinstance(layout, int) else maps

    # ------------------------------------------------------ network configuration
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


# Below this spread (max - min) inside the ROI, pixels in [0, 1], an image has no
# anatomy to judge: about one 8-bit grey level.
_FLAT_RANGE = 4e-3


def _warn_if_flat(images, value_range):
    """Warn about images (or whole bags) with (almost) no contrast inside the ROI: a
    blank or saturated film reconstructs perfectly and would score as most normal.

    Min and max are reductions without temporaries (a standard deviation would copy
    the scoring input several times on every call)."""
    per_image = images.reshape(images.shape[0], -1)
    spread = np.fmax.reduce(per_image, axis=1) - np.fmin.reduce(per_image, axis=1)  # NaN-skipping
    flat = np.flatnonzero(spread < (_FLAT_RANGE if value_range is not None else np.finfo(np.float32).tiny))
    if flat.size:
        shown = ", ".join(map(str, flat[:10])) + (" ..." if flat.size > 10 else "")
        warnings.warn(
            f"{flat.size} of {images.shape[0]} images have (almost) no contrast inside the "
            f"region of interest (indices {shown}): a blank or saturated film has no anatomy "
            "to judge and scores as very normal. Check them (exposure, masks) before "
            "trusting their scores.",
            UserWarning,
            stacklevel=4,
        )


def _to_channels_last(module):
    """Hold ``module``'s 4-D weights channels-last; return what to restore."""
    converted = []
    for param in module.parameters():
        if (
            param.ndim == 4
            and param.device.type in ("cpu", "cuda")
            and param.is_contiguous()
            and not param.is_contiguous(memory_format=torch.channels_last)
        ):
            converted.append(param)
            param.data = param.data.contiguous(memory_format=torch.channels_last)
    return converted


def _restore_layout(params):
    for param in params:
        param.data = param.data.contiguous()


def _module_device(modules):
    """The device of the first parameter (or buffer) of ``modules``; the CPU if none."""
    for module in modules:
        tensor = next(iter(module.parameters()), None)
        if tensor is None:
            tensor = next(iter(module.buffers()), None)
        if tensor is not None:
            return tensor.device
    return torch.device("cpu")
