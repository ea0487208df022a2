"""Lung-field region of interest: segmentation (:class:`LungMasker`) and given masks.

Both transformers put the region of interest into the images themselves, as NaN
outside the lungs (the package's data contract), so that the mask travels through a
:class:`~sklearn.pipeline.Pipeline`, ``GridSearchCV`` and the detectors without a
side channel.

* :class:`LungMasker` segments the lung fields with a small U-Net shipped with the
  package (``weights/lung_unet.pt``, trained by ``scripts/train_lung_segmenter.py`` on
  the JSRT lung masks). It works offline, on any image size.
* For data sets that ship their own lung masks (JSRT, Montgomery, Shenzhen ...),
  :func:`apply_masks` sets the pixels outside a given mask to NaN. Scikit-learn passes
  only ``X`` along a pipeline, so the transformer form :class:`MaskApplier` takes the
  image and its mask stacked as one sample, ``np.stack([images, masks], axis=1)`` of
  shape ``(n_samples, 2, H, W)``: row ``i`` carries its own mask, and any row subset
  that cross-validation takes keeps images and masks aligned.
"""

from __future__ import annotations

import functools
import os
import warnings
from numbers import Integral, Real
from pathlib import Path

import cv2
import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ..utils.validation import reshape_flat_images, validate_images
from ._base import BaseImageTransformer, _over_image_slices

__all__ = ["LungMasker", "MaskApplier", "apply_masks"]

_WEIGHTS = Path(__file__).parent / "weights" / "lung_unet.pt"
# Below this, a radiograph holds no recognisable anatomy for the network.
MIN_IMAGE_SIZE = 32
# A second component this much smaller than the largest one is noise, not a lung.
_MIN_SECOND_LUNG = 0.1
# Nor is a component under this fraction of the image: a lung field covers 5-25 % of a
# chest radiograph.
_MIN_LUNG_FRACTION = 0.01


@functools.lru_cache(maxsize=4)
def _load_segmenter(path, device):
    """The U-Net of a weights file, as a fused channels-last inference copy, and its
    config; cached so that it loads once per process."""
    import torch

    from ..nn.unet import UNet

    # weights_only: the file holds tensors and plain ints/strings, never code.
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    config = dict(checkpoint["config"])
    net = UNet(**config["architecture"])
    state = {k: v.float() if v.is_floating_point() else v for k, v in checkpoint["state_dict"].items()}
    net.load_state_dict(state)
    return net.eval().inference_copy().to(device), config


def network_input(images, size):
    """Resize and standardise images the way the lung segmenter was trained.

    Shared by :class:`LungMasker` and the training script, so that inference sees
    exactly the training preprocessing. NaN is filled with the image's mean first.

    Parameters
    ----------
    images : ndarray of shape (n_samples, H, W)
    size : int
        Side of the square network input.

    Returns
    -------
    batch : ndarray of float32, shape (n_samples, size, size)
    """
    batch = np.empty((len(images), size, size), dtype=np.float32)
    for i, image in enumerate(images):
        image = np.asarray(image, dtype=np.float32)
        if np.isnan(image).any():
            image = np.where(np.isnan(image), np.nanmean(image), image)
        shrink = image.shape[0] > size or image.shape[1] > size
        # INTER_AREA averages when shrinking (no aliasing of the rib edges).
        batch[i] = cv2.resize(
            image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        )
    # Per-image standardisation makes the network indifferent to exposure and window.
    mean = batch.mean(axis=(1, 2), keepdims=True)
    std = batch.std(axis=(1, 2), keepdims=True)
    return (batch - mean) / np.maximum(std, 1e-4)


def clean_mask(mask):
    """Keep the two largest connected components (the lungs) and fill their holes.

    Components under 1 % of the image, or under a tenth of the largest one, are
    dropped: they are noise, not lungs.

    Parameters
    ----------
    mask : ndarray of bool, shape (H, W)

    Returns
    -------
    mask : ndarray of bool, shape (H, W)
    """
    # 0/1 whatever the input's nonzero values: the flood fill below writes a 2.
    mask = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    # Labels and a bincount of them: the same areas as connectedComponentsWithStats
    # (same algorithm, same labels), which takes several times longer to gather its
    # other statistics at 1024 x 1024.
    n, labels = cv2.connectedComponents(mask, connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, dtype=bool)
    areas = np.bincount(labels.ravel(), minlength=n)[1:]
    order = np.argsort(areas)[::-1][:2]
    floor = max(_MIN_LUNG_FRACTION * mask.size, _MIN_SECOND_LUNG * areas[order[0]])
    keep = [k for k in order if areas[k] >= floor]
    if not keep:
        return np.zeros(mask.shape, dtype=bool)
    if len(keep) < n - 1:
        kept = np.zeros(n, dtype=bool)
        kept[np.asarray(keep) + 1] = True
        mask = kept[labels].view(np.uint8)
    # A hole is a background region (4-connected) that does not touch the border. A
    # one-pixel background frame joins every region that does into one, so a single
    # flood fill from the frame marks all of them; what it does not reach is lung or
    # hole. Several times faster than labelling the background at 1024 x 1024.
    framed = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    cv2.floodFill(framed, None, (0, 0), 2, flags=4)
    return framed[1:-1, 1:-1] != 2


def apply_masks(images, masks):
    """Set the pixels outside the given masks to NaN.

    Parameters
    ----------
    images : array-like of shape (n_samples, H, W)
        ``uint8`` / ``uint16`` are scaled to [0, 1].
    masks : array-like of shape (n_samples, H, W) or (H, W)
        Nonzero (or True) inside the region of interest; 0/1 and 0/255 masks both
        work. A single ``(H, W)`` mask applies to every image.

    Returns
    -------
    masked : ndarray of float32, shape (n_samples, H, W)
        The images, NaN outside the masks.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.preprocessing._lung import apply_masks
    >>> images = np.full((2, 4, 4), 0.5, dtype=np.float32)
    >>> masks = np.zeros((2, 4, 4), dtype=bool)
    >>> masks[:, 1:3, 1:3] = True
    >>> out = apply_masks(images, masks)
    >>> int(np.isnan(out).sum())
    24
    """
    if np.ndim(images) != 3:
        raise ValueError(
            f"apply_masks takes images of shape (n_samples, H, W); got shape "
            f"{np.shape(images)}. Add the sample axis for one image: images[None]."
        )
    images = validate_images(None, images, reset=False)
    masks = np.asarray(masks)
    if masks.shape != images.shape and masks.shape != images.shape[1:]:
        raise ValueError(
            f"masks of shape {masks.shape} do not match images of shape {images.shape}: "
            "pass one (H, W) mask per image, (n_samples, H, W), or a single (H, W) mask."
        )
    inside = np.broadcast_to(_as_bool_mask(masks), images.shape)
    return _masked(images, inside)


def _as_array_like(X):
    # Lists and array-likes that refuse NumPy's function dispatch (np.ndim, np.shape)
    # become arrays; arrays and DataFrames pass through untouched.
    return X if hasattr(X, "shape") else np.asarray(X)


def _as_bool_mask(masks):
    if masks.dtype == bool:
        return masks
    masks = masks.astype(np.float32, copy=False)
    # NaN in a mask means "unknown": outside, like everything else that is not lung.
    return np.nan_to_num(masks, nan=0.0) > 0


def _masked(images, inside):
    out = np.where(inside, images, np.float32(np.nan)).astype(np.float32, copy=False)
    empty = np.flatnonzero(np.isnan(out).reshape(len(out), -1).all(axis=1))
    if empty.size:
        shown = ", ".join(map(str, empty[:10])) + (" ..." if empty.size > 10 else "")
        raise ValueError(
            f"{empty.size} image(s) have no pixel inside their mask (indices {shown}); "
            "their masked image would be all NaN. Check those masks, or drop the images."
        )
    return out


class LungMasker(BaseImageTransformer):
    """Segment the lung fields of chest radiographs with a packaged U-Net.

    Each image is resized to the network's input (256 x 256), the lung probability is
    predicted and resized back to the image's own size, thresholded, and cleaned: the
    two largest connected components (the lungs) are kept and their holes filled.
    Works offline: the weights (about 1 MB) ship with the package and load once per
    process. The network was trained on the JSRT lung masks (SCR annotations) with
    heavy augmentation of contrast, gamma, geometry, blur, noise and borders; see
    ``scripts/train_lung_segmenter.py`` and ``benchmarks/results/lung_segmenter.json``.

    The masks follow the SCR convention: the lung fields projected in front of the
    heart and above the diaphragm; the parts of the lungs behind the heart and below
    the domes are outside.

    Parameters
    ----------
    output : {"masked", "mask"}, default="masked"
        ``"masked"`` returns the images with NaN outside the lungs (what the detectors
        and :class:`PatchExtractor` take); ``"mask"`` returns the boolean lung masks.
    on_empty : {"keep", "raise"}, default="keep"
        What ``output="masked"`` does with an image in which no lung field is found
        (a densely consolidated film, a lateral view, not a chest at all): ``"keep"``
        returns that image unmasked (no NaN) with a ``UserWarning`` naming its
        index, so that one such film does not fail a whole batch (or turn a
        grid-search cell into NaN); ``"raise"`` raises a ``ValueError`` instead.
        A detector trained on lung fields usually scores an unmasked film as
        abnormal, which is what such a film is for a lung-field model.
    method : {"unet"}, default="unet"
        Segmentation method; the packaged U-Net.
    weights : None or path, default=None
        A weights file written by ``scripts/train_lung_segmenter.py``; ``None`` uses
        the packaged one.
    threshold : float in (0, 1), default=0.5
        Probability above which a pixel is lung. Lower values give larger masks.
    batch_size : int, default=8
        Images per forward pass.
    device : {"auto", "cpu", "cuda"} or str, default="auto"
        ``"auto"`` uses CUDA when available.
    min_image_size : int, default=32
        Images whose height or width is smaller raise a ``ValueError``: they hold too
        little anatomy for a meaningful mask. Lower it only to run the transformer on
        tiny arrays (scikit-learn's estimator checks do).
    image_shape : None or tuple of two ints, default=None
        How to unflatten ``(n_samples, H * W)`` input; ``None`` for square images.

    Attributes
    ----------
    n_features_in_ : int
        Pixels per image seen in ``fit``.
    image_shape_ : tuple of int
        ``(H, W)`` of the images seen in ``fit``. ``transform`` accepts any size.

    See Also
    --------
    MaskApplier : Apply lung masks that come with a data set.

    Examples
    --------
    >>> from skanomaly.datasets._phantoms import make_chest_phantoms
    >>> from skanomaly.preprocessing import LungMasker
    >>> data = make_chest_phantoms(4, image_size=128, random_state=0)
    >>> masks = LungMasker(output="mask").fit_transform(data.images)
    >>> masks.shape, masks.dtype
    ((4, 128, 128), dtype('bool'))
    """

    _parameter_constraints = {
        "output": [StrOptions({"masked", "mask"})],
        "on_empty": [StrOptions({"keep", "raise"})],
        "method": [StrOptions({"unet"})],
        "weights": [None, str, os.PathLike],
        "threshold": [Interval(Real, 0, 1, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [str],
        "min_image_size": [Interval(Integral, 1, None, closed="left")],
        "image_shape": [None, tuple, list],
    }

    def __init__(
        self,
        *,
        output="masked",
        on_empty="keep",
        method="unet",
        weights=None,
        threshold=0.5,
        batch_size=8,
        device="auto",
        min_image_size=MIN_IMAGE_SIZE,
        image_shape=None,
    ):
        self.output = output
        self.on_empty = on_empty
        self.method = method
        self.weights = weights
        self.threshold = threshold
        self.batch_size = batch_size
        self.device = device
        self.min_image_size = min_image_size
        self.image_shape = image_shape

    def _validate(self, X, *, reset):
        X = _as_array_like(X)
        shape = X.shape
        if len(shape) == 4 and shape[-1] in (3, 4):
            raise ValueError(
                f"LungMasker expects grayscale images (n_samples, H, W); got shape {shape}, "
                "which looks like RGB(A) colour images. Convert to grayscale first, e.g. "
                "X = X[..., :3] @ [0.299, 0.587, 0.114], or load files with "
                "skanomaly.datasets.load_images, which converts for you."
            )
        return super()._validate(X, reset=reset)

    def transform(self, X):
        """Segment the lungs of each image.

        Parameters
        ----------
        X : array-like of shape (n_samples, H, W) or (n_samples, H * W)
            Any size of at least ``min_image_size``; NaN pixels are filled with the
            image's mean for the network and stay NaN in the masked output.

        Returns
        -------
        X_out : ndarray of float32 (``output="masked"``) or bool (``output="mask"``)
            Same shape as ``X``: the images with NaN outside the lungs, or the masks.
        """
        return super().transform(_as_array_like(X))

    def _fit_images(self, images):
        self._check_size(images)

    def _check_size(self, images):
        height, width = images.shape[1:]
        if min(height, width) < self.min_image_size:
            raise ValueError(
                f"LungMasker needs images of at least {self.min_image_size}x"
                f"{self.min_image_size} pixels to see the anatomy; got {height}x{width}. "
                "Pass the radiographs at their native resolution (64x64 or more), or, for "
                "flattened input, set image_shape=(H, W)."
            )

    def probability_map(self, X):
        """Lung probability of every pixel, before thresholding and cleaning.

        Parameters
        ----------
        X : array-like of shape (n_samples, H, W) or (n_samples, H * W)

        Returns
        -------
        proba : ndarray of float32, shape (n_samples, H, W)
        """
        check_is_fitted(self)
        images = self._validate(X, reset=False)
        self._check_size(images)
        return self._predict_proba(images)

    def _predict_proba(self, images):
        proba = np.empty(images.shape, dtype=np.float32)

        def store(i, p):
            proba[i] = p

        self._map_proba(images, store)
        return proba

    def _map_proba(self, images, consume):
        """Call ``consume(index, probability map)`` for every image, one network batch
        at a time, so that large inputs never hold every full-size probability map at
        once. ``consume`` runs in threads (on disjoint images)."""
        import torch

        from ..base import resolve_device

        device = resolve_device(self.device)
        path = str(self.weights if self.weights is not None else _WEIGHTS)
        if not os.path.isfile(path):
            raise ValueError(
                f"Lung segmenter weights not found at {path!r}. Reinstall skanomaly, or "
                "pass weights= a file written by scripts/train_lung_segmenter.py."
            )
        net, config = _load_segmenter(os.path.abspath(path), device)
        size = int(config["input_size"])
        height, width = images.shape[1:]
        # INTER_AREA when the map shrinks to a small input, bilinear when it grows.
        interpolation = cv2.INTER_AREA if height < size or width < size else cv2.INTER_LINEAR
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                chunk = images[start : start + self.batch_size]
                batch = torch.from_numpy(network_input(chunk, size)).unsqueeze(1)
                batch = batch.to(device, memory_format=torch.channels_last)
                small = torch.sigmoid(net(batch)).squeeze(1).cpu().numpy()
                flat = chunk.reshape(len(chunk), -1)
                # A flat image holds no anatomy, whatever the network's prior says.
                small[np.nanmax(flat, axis=1) - np.nanmin(flat, axis=1) < 1e-3] = 0

                def post(part, small=small, start=start):
                    for j in range(part.start, part.stop):
                        # Resizing the probability, not the binary mask, gives sub-pixel
                        # accurate borders at the input's resolution.
                        p = cv2.resize(small[j], (width, height), interpolation=interpolation)
                        consume(start + j, p)

                # Per-image OpenCV work at full size, serial by itself while the
                # network's batch used every core.
                _over_image_slices(
                    post, len(small), min_bytes=2**22, bytes_per_image=4 * height * width
                )

    def _transform_images(self, images):
        self._check_size(images)
        masks = np.empty(images.shape, dtype=bool)

        def clean(i, p):
            masks[i] = clean_mask(p > self.threshold)

        self._map_proba(images, clean)
        if self.output == "mask":
            return masks
        empty = np.flatnonzero(~masks.reshape(len(masks), -1).any(axis=1))
        if empty.size:
            shown = ", ".join(map(str, empty[:10])) + (" ..." if empty.size > 10 else "")
            problem = (
                f"No lung field found in {empty.size} of {len(masks)} image(s) (indices {shown})"
            )
            advice = (
                "Check that they are frontal chest radiographs; use "
                "LungMasker(output='mask') to inspect the masks, or MaskApplier / "
                "apply_masks with masks of your own."
            )
            if self.on_empty == "raise":
                raise ValueError(f"{problem}, so their masked image would be all NaN. {advice}")
            warnings.warn(
                f"{problem}: they are returned unmasked (on_empty='keep'). {advice}",
                UserWarning,
                stacklevel=3,
            )
            masks[empty] = ~np.isnan(images[empty])
        return _masked(images, masks)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # Masks are boolean whatever the input; masked images are float32.
        tags.transformer_tags.preserves_dtype = [] if self.output == "mask" else ["float32"]
        return tags


class MaskApplier(BaseImageTransformer):
    """Apply masks that come with the data: NaN outside each image's own mask.

    Scikit-learn passes only ``X`` through a pipeline, so each sample carries its
    image and its mask together: ``X = np.stack([images, masks], axis=1)`` of shape
    ``(n_samples, 2, H, W)``. Put this step first in a pipeline; the rest of the
    pipeline then sees images ``(n_samples, H, W)`` with NaN outside the masks. Any row
    subset (cross-validation folds) keeps images and masks aligned. Outside a
    pipeline, :func:`apply_masks` does the same with two arrays.

    Parameters
    ----------
    image_shape : None or tuple of two ints, default=None
        For flattened input ``(n_samples, 2 * H * W)`` (the image's pixels, then the
        mask's): the ``(H, W)`` of one image; ``None`` for square images.

    Attributes
    ----------
    n_features_in_ : int
        Features per sample of flattened input (``2 * H * W``), or pixels per image
        (``H * W``) of stacked input, seen in ``fit``.
    image_shape_ : tuple of int
        ``(H, W)`` of the images seen in ``fit``.

    See Also
    --------
    apply_masks : The same as a function of images and masks.
    LungMasker : Segment the lungs when the data set has no masks.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.preprocessing import MaskApplier
    >>> images = np.full((3, 8, 8), 0.5, dtype=np.float32)
    >>> masks = np.zeros((3, 8, 8), dtype=bool)
    >>> masks[:, 2:6, 1:7] = True
    >>> out = MaskApplier().fit_transform(np.stack([images, masks], axis=1))
    >>> out.shape, int(np.isnan(out[0]).sum())
    ((3, 8, 8), 40)
    """

    _parameter_constraints = {"image_shape": [None, tuple, list]}
    # n_features_in_: the pixels of one image (stacked input) or of image + mask (flat).
    _fitted_planes = (1, 2)

    def __init__(self, *, image_shape=None):
        self.image_shape = image_shape

    def _validate(self, X, *, reset):
        X = _as_array_like(X)
        if X.ndim == 3:
            raise ValueError(
                f"MaskApplier takes images and masks stacked as (n_samples, 2, H, W); got "
                f"shape {np.shape(X)}. Use np.stack([images, masks], axis=1), or "
                "apply_masks(images, masks) outside a pipeline."
            )
        if X.ndim == 2:
            flat = validate_images(self, X, reset=reset, image_shape=(1, -1))[:, 0]
            half = flat.shape[1] // 2
            if flat.shape[1] % 2:
                raise ValueError(
                    "Flattened input to MaskApplier holds each image's pixels followed by "
                    f"its mask's, so an even number of features; got n_features={flat.shape[1]}."
                )
            images = reshape_flat_images(flat[:, :half], self.image_shape)
            masks = reshape_flat_images(flat[:, half:], self.image_shape)
            return np.stack([images, masks], axis=1)
        if X.ndim == 4 and X.shape[1] != 2:
            raise ValueError(
                f"MaskApplier takes images and masks stacked as (n_samples, 2, H, W); got "
                f"shape {X.shape}. Use np.stack([images, masks], axis=1)."
            )
        pairs = validate_images(self, X, reset=reset, raw_4d=True)
        if pairs.shape[1] != 2:
            raise ValueError(
                f"MaskApplier takes images and masks stacked as (n_samples, 2, H, W); got "
                f"shape {pairs.shape}. Use np.stack([images, masks], axis=1)."
            )
        return pairs

    def fit(self, X, y=None):
        """Validate ``X``; nothing is learned.

        Parameters
        ----------
        X : array-like of shape (n_samples, 2, H, W) or (n_samples, 2 * H * W)
            Images and masks stacked along axis 1.
        y : ignored

        Returns
        -------
        self
        """
        self._validate_params()
        pairs = self._validate(X, reset=True)
        self.image_shape_ = pairs.shape[2:]
        return self

    def transform(self, X):
        """Return the images with NaN outside their masks.

        Parameters
        ----------
        X : array-like of shape (n_samples, 2, H, W) or (n_samples, 2 * H * W)
            Images and masks stacked along axis 1.

        Returns
        -------
        masked : ndarray of float32, shape (n_samples, H, W)
            Flattened ``(n_samples, H * W)`` when ``X`` was flattened.
        """
        check_is_fitted(self)
        pairs = self._validate(X, reset=False)
        out = _masked(pairs[:, 0], _as_bool_mask(pairs[:, 1]))
        return out.reshape(len(out), -1) if _as_array_like(X).ndim == 2 else out
