"""BaseDeepDetector: the estimator contract every detector of the package follows.

Validation, NaN-as-ROI handling, patch bags, batched scoring, ``offset_`` / ``predict``,
anomaly maps, seeding, devices and persistence live here once; a detector adds its
network, its training stage (a skorch net from :mod:`skanomaly.training`) and its score.
"""

import re
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from skorch.callbacks import ProgressBar
from skorch.dataset import ValidSplit
from tqdm.auto import tqdm

from .utils.validation import check_image_size, input_ndim, validate_images

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
    """A torch seed from ``random_state`` without touching numpy's global RNG."""
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1)[0])
    if isinstance(random_state, Integral):
        return int(random_state) % (2**63)
    return int(random_state.randint(np.iinfo(np.int32).max))


class _SeededTorch:
    """Run a block with torch's global RNGs seeded, restoring them afterwards.

    Module initialisation, skorch's DataLoader shuffling, dropout, VAE sampling and
    augmentation all draw from torch's global generators. Forking them for the
    duration of ``fit`` makes ``random_state`` reproducible and leaves the user's own
    RNG state exactly as it was, without threading a generator through every call.
    """

    def __init__(self, seed, device):
        devices = []
        if str(device).startswith("cuda"):
            devices = [torch.device(device).index or 0]
        self._fork = torch.random.fork_rng(devices=devices)
        self._seed = seed

    def __enter__(self):
        self._fork.__enter__()
        torch.manual_seed(self._seed)

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


class BaseDeepDetector(OutlierMixin, BaseEstimator):
    """Base class of the deep anomaly detectors (scikit-learn outlier detectors).

    Subclasses set ``_net_attributes`` (the fitted skorch nets, e.g. ``("net_",)``)
    and implement:

    * ``_min_image_size()`` -> int, the network's minimum input side;
    * ``_validate_detector_params()`` for parameters the constraint table cannot check;
    * ``_make_net(device)`` -> an unfitted skorch net for the training images;
    * ``_anomaly_batch(x, roi)`` -> ``(pixel_anomaly (B, H, W), image_anomaly (B,))``
      for a NaN-filled batch ``x`` of shape ``(B, 1, H, W)`` on the net's device.

    Everything else (the data contract, bags, ``offset_``, ``predict``, maps, batching,
    seeding, pickling) is shared.
    """

    _net_attributes = ("net_",)

    _parameter_constraints: dict = {
        "lr": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "contamination": [StrOptions({"auto"}), Interval(Real, 0, 0.5, closed="right")],
        "patch_aggregation": [StrOptions({"max", "mean"}), tuple],
        "image_shape": [None, tuple],
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
            present (not all-NaN) patch.
        y : ignored
            Present for API consistency; training is unsupervised.

        Returns
        -------
        self : object
        """
        self._validate_detector_params()
        self._check_patch_aggregation()
        images = self._validate_input(X, reset=True)
        samples = self._present_samples(images)
        if samples.shape[0] < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least 2 training images (or present "
                f"patches); got {samples.shape[0]}."
            )
        self.image_shape_ = tuple(int(s) for s in samples.shape[1:])
        check_image_size(
            self.image_shape_,
            self._min_image_size(),
            hint=self._min_size_hint(),
        )
        device = resolve_device(self.device)
        with _SeededTorch(_torch_seed(self.random_state), device):
            net = self._make_net(device)
            net.fit(samples[:, None], None)
        setattr(self, self._net_attributes[0], net)
        self.history_ = net.history
        self.n_iter_ = len(net.history)
        self.offset_ = self._offset_from(self.score_samples(images))
        return self

    def _offset_from(self, train_scores):
        """Threshold on ``score_samples`` that ``predict`` uses.

        A float ``contamination`` flags that fraction of the training images.
        ``"auto"`` flags images more than three robust standard deviations (median
        absolute deviation x 1.4826) below the median training score: no fraction of
        the training set is assumed abnormal, which fits training on normal images.
        """
        if self.contamination == "auto":
            median = np.median(train_scores)
            spread = 1.4826 * np.median(np.abs(train_scores - median))
            return float(median - 3.0 * spread)
        return float(np.percentile(train_scores, 100.0 * self.contamination))

    def _skorch_kwargs(self, device):
        """The flat parameters every detector passes to its skorch net."""
        callbacks = [(f"user_{i}", _clone_callback(cb)) for i, cb in enumerate(self.callbacks or [])]
        if self.verbose:
            callbacks.append(("progress_bar", ProgressBar()))
        if self.validation_fraction is None:
            train_split = None
        else:
            train_split = ValidSplit(
                self.validation_fraction, stratified=False, random_state=_torch_seed(self.random_state) % (2**32)
            )
        return dict(
            lr=self.lr,
            batch_size=self.batch_size,
            max_epochs=self.max_epochs,
            device=device,
            train_split=train_split,
            callbacks=callbacks,
            iterator_train__shuffle=True,
            verbose=int(self.verbose),
        )

    # ---------------------------------------------------------------- validation
    def _validate_detector_params(self):
        """Hook for checks the constraint table cannot express."""

    def _min_image_size(self):
        return 1

    def _min_size_hint(self):
        return "Resize the images (skanomaly.preprocessing.Resize) or use a shallower network."

    def _check_patch_aggregation(self):
        agg = self.patch_aggregation
        if isinstance(agg, str):
            return
        if len(agg) == 2 and agg[0] == "topk" and isinstance(agg[1], Integral) and agg[1] >= 1:
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
        """The images, or for bags the patches that are not entirely NaN."""
        if images.ndim == 3:
            return images
        patches = images.reshape(-1, *images.shape[-2:])
        present = ~np.isnan(patches).all(axis=(1, 2))
        return patches[present]

    # ------------------------------------------------------------------- scoring
    def _net(self):
        return getattr(self, self._net_attributes[0])

    def _run_batches(self, samples, want_maps):
        """Score ``(M, H, W)`` samples batch by batch: image anomaly and optional maps."""
        net = self._net()
        device = net.device
        for name in net._modules:
            getattr(net, name + "_").eval()
        n = samples.shape[0]
        anomalies = np.empty(n, dtype=np.float64)
        maps = np.empty(samples.shape, dtype=np.float32) if want_maps else None
        starts = range(0, n, self.batch_size)
        if self.verbose:
            starts = tqdm(starts, desc=f"{type(self).__name__} scoring", unit="batch")
        with torch.inference_mode():
            for start in starts:
                batch = torch.from_numpy(samples[start : start + self.batch_size]).to(device)[:, None]
                roi = ~torch.isnan(batch)
                pixel, image = self._anomaly_batch(torch.nan_to_num(batch, nan=0.0), roi)
                anomalies[start : start + len(batch)] = image.double().cpu().numpy()
                if want_maps:
                    pixel = pixel.reshape(batch.shape).masked_fill(~roi, float("nan"))
                    maps[start : start + len(batch)] = pixel[:, 0].float().cpu().numpy()
        return anomalies, maps

    def _patch_anomalies(self, bags):
        """``(N, P)`` patch anomalies of bags, NaN for absent patches."""
        patches = bags.reshape(-1, *bags.shape[-2:])
        present = ~np.isnan(patches).all(axis=(1, 2))
        out = np.full(patches.shape[0], np.nan)
        out[present], _ = self._run_batches(patches[present], want_maps=False)
        return out.reshape(bags.shape[:2])

    def _aggregate_patches(self, patch_anomaly):
        """Image anomaly from ``(N, P)`` patch anomalies, ignoring absent patches."""
        agg = self.patch_aggregation
        if agg == "max":
            return np.nanmax(patch_anomaly, axis=1)
        if agg == "mean":
            return np.nanmean(patch_anomaly, axis=1)
        k = agg[1]
        ranked = -np.sort(-np.where(np.isnan(patch_anomaly), -np.inf, patch_anomaly), axis=1)[:, :k]
        return np.nanmean(np.where(np.isfinite(ranked), ranked, np.nan), axis=1)

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
        images = self._validate_input(X, reset=False)
        if images.ndim == 4:
            return -self._aggregate_patches(self._patch_anomalies(images))
        return -self._run_batches(images, want_maps=False)[0]

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
        if input_ndim(X) != 4:
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
            ``(n_samples, H, W)`` for images; ``(n_samples, P, p, p)`` for bags (stitch
            them with ``PatchExtractor.inverse_transform``); all-NaN for absent patches.
        """
        check_is_fitted(self)
        images = self._validate_input(X, reset=False)
        samples = images.reshape(-1, *images.shape[-2:])
        present = ~np.isnan(samples).all(axis=(1, 2))
        maps = np.full(samples.shape, np.nan, dtype=np.float32)
        maps[present] = self._run_batches(samples[present], want_maps=True)[1]
        return maps.reshape(images.shape)

    # --------------------------------------------------------------- persistence
    def _fitted_state(self):
        """JSON-serialisable fitted attributes (for :func:`skanomaly.io.save_model`)."""
        state = {
            "image_shape_": list(self.image_shape_),
            "offset_": self.offset_,
            "n_features_in_": self.n_features_in_,
            "n_iter_": self.n_iter_,
            "history_": _jsonable_history(self.history_),
        }
        if hasattr(self, "feature_names_in_"):
            state["feature_names_in_"] = [str(n) for n in self.feature_names_in_]
        return state

    def _restore_fitted(self, state, state_dicts, device):
        """Rebuild the fitted nets from saved weights (for :func:`skanomaly.io.load_model`)."""
        from skorch.history import History

        self.image_shape_ = tuple(state["image_shape_"])
        self.offset_ = float(state["offset_"])
        self.n_features_in_ = int(state["n_features_in_"])
        self.n_iter_ = int(state["n_iter_"])
        if "feature_names_in_" in state:
            self.feature_names_in_ = np.asarray(state["feature_names_in_"], dtype=object)
        net = self._make_net(device)
        net.initialize()
        for name in net._modules:
            getattr(net, name + "_").load_state_dict(state_dicts[f"{self._net_attributes[0]}{name}"])
        net.history = History(state["history_"])
        setattr(self, self._net_attributes[0], net)
        self.history_ = net.history
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.non_deterministic = self.random_state is None
        return tags


def _clone_callback(callback):
    """A fresh copy of a user's skorch callback, so fitting never mutates theirs."""
    from sklearn.base import clone

    try:
        return clone(callback)
    except Exception:  # callbacks that are not sklearn-clonable are copied instead
        import copy

        return copy.deepcopy(callback)


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
