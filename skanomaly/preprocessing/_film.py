"""Hand X-ray preprocessing: crop the film (image carrier) and mask the hand."""

import warnings
from numbers import Integral, Real

import cv2
import numpy as np
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._base import BaseImageTransformer, _check_size_pair, _otsu_foreground, _resample
from ._resize import _resize_image

__all__ = ["FilmCrop", "HandMasker"]


def _upright_corners(box):
    """Order a rotated rectangle's corners as (top-left, top-right, bottom-right, bottom-left).

    "Upright" is the smallest rotation: the top edge is the one closest to
    horizontal, so a rectangle tilted by 30 degrees is turned back by 30, and one
    tilted by 60 is read as tilted by -30 with its sides swapped (a minimum-area
    rectangle carries no other clue to its orientation).
    """
    centre = box.mean(axis=0)
    # In image coordinates (y down) increasing atan2 runs clockwise on screen.
    box = box[np.argsort(np.arctan2(box[:, 1] - centre[1], box[:, 0] - centre[0]))]
    edges = np.roll(box, -1, axis=0) - box
    start = int(np.argmin(np.abs(np.arctan2(edges[:, 1], edges[:, 0]))))
    return np.roll(box, -start, axis=0)


def _film_box(image, roi, bright):
    """Corners of the film: the min-area rectangle of Otsu's largest bright contour.

    Corners are pixel centres of the outermost film pixels, ordered upright, and
    whether a film was found; the whole image when not (constant image, a line).
    """
    height, width = image.shape
    whole = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], float)
    foreground = _otsu_foreground(image, roi, bright=bright)
    if foreground is None:
        return whole, False
    contours, _ = cv2.findContours(
        foreground.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    if not contours:
        return whole, False
    rect = cv2.minAreaRect(max(contours, key=cv2.contourArea))
    if min(rect[1]) < 1:
        return whole, False
    return _upright_corners(cv2.boxPoints(rect).astype(float)), True


class FilmCrop(BaseImageTransformer):
    """Find the X-ray film in each image, crop it upright and fit it to one size.

    The first step of the hand X-ray pipeline: Otsu binarisation of the image,
    the largest external contour (``cv2.findContours``), its minimum-area rectangle
    (``cv2.minAreaRect``, not necessarily axis-aligned), and an affine warp that
    turns that rectangle upright (the smallest rotation, see Notes). The crop is
    then scaled to fit ``output_size`` and, with ``pad_to_square``, centre-padded
    with ``pad_value`` so the film keeps its aspect ratio. Images in which no film
    is found (a constant image) keep their whole frame, with a warning. Stateless:
    ``fit`` only validates.

    Parameters
    ----------
    pad_to_square : bool, default=True
        Keep the film's aspect ratio: scale the crop to fit the output and pad the
        rest (square unless ``output_size`` says otherwise). ``False`` stretches
        the crop to the output size.
    output_size : int, tuple (h, w) or None, default=None
        Size of every output image. ``None``: the input's longer side, squared,
        with ``pad_to_square``; the input's ``(H, W)`` without.
    pad_value : float, default=nan
        Value of the padding. NaN (the default) marks it outside the region of
        interest, so later steps (equalisation, masks, detectors' losses) ignore it
        rather than mistake a black border for anatomy; the paper pads with 0.
    foreground : {"bright", "dark"}, default="bright"
        Whether the film is brighter or darker than the background around it.
    image_shape : tuple (H, W) or None, default=None
        Shape of the images when ``X`` is flattened ``(n_samples, H * W)``; one entry
        may be -1. ``None`` expects square images.

    Attributes
    ----------
    image_shape_ : tuple of int
        ``(H, W)`` of the images seen in ``fit``.
    n_features_in_ : int
        Pixels per image seen in ``fit``.

    See Also
    --------
    HandMasker : The foreground (hand) mask that follows the crop.

    Notes
    -----
    The Otsu threshold is computed from region-of-interest pixels only (NaN are
    ignored). A minimum-area rectangle does not tell which way is up: the crop
    undoes the smallest rotation, so a film tilted by more than 45 degrees comes
    out turned by 90. Film corners outside the image give NaN in the crop. The
    warp and the final resize are NaN-aware (see :class:`Resize`).

    Examples
    --------
    >>> import numpy as np
    >>> import cv2
    >>> from skanomaly.preprocessing import FilmCrop
    >>> X = np.zeros((1, 64, 64), np.float32)
    >>> box = cv2.boxPoints(((32, 32), (40, 20), 20)).astype(np.int32)
    >>> X[0] = cv2.fillPoly(X[0].copy(), [box], 1.0)  # a film tilted by 20 degrees
    >>> crop = FilmCrop(output_size=40).fit_transform(X)
    >>> crop.shape
    (1, 40, 40)
    >>> rows_with_film = (crop[0] > 0.5).any(axis=1).sum()
    >>> bool(18 <= rows_with_film <= 22)  # upright again: 40 wide, 20 high
    True
    """

    _parameter_constraints = {
        "pad_to_square": ["boolean"],
        "output_size": [Interval(Integral, 1, None, closed="left"), tuple, list, None],
        "pad_value": [Real],
        "foreground": [StrOptions({"bright", "dark"})],
        "image_shape": [tuple, list, None],
    }

    def __init__(
        self,
        *,
        pad_to_square=True,
        output_size=None,
        pad_value=np.nan,
        foreground="bright",
        image_shape=None,
    ):
        self.pad_to_square = pad_to_square
        self.output_size = output_size
        self.pad_value = pad_value
        self.foreground = foreground
        self.image_shape = image_shape

    def _output_shape(self, image_shape):
        if self.output_size is not None:
            return _check_size_pair(self.output_size, "output_size")
        if self.pad_to_square:
            side = max(image_shape)
            return side, side
        return tuple(image_shape)

    def _fit_images(self, images):
        self._output_shape(images.shape[1:])

    def _transform_images(self, images):
        out_h, out_w = self._output_shape(images.shape[1:])
        out = np.empty((images.shape[0], out_h, out_w), dtype=np.float32)
        bright = self.foreground == "bright"
        missing = []
        for i, (image, result) in enumerate(zip(images, out)):
            corners, found = _film_box(image, ~np.isnan(image), bright)
            if not found:
                missing.append(i)
            result[:] = self._crop_one(image, corners, out_h, out_w)
        if missing:
            message = _nothing_found_message(
                "FilmCrop", "no film", missing, "keep their whole frame"
            )
            warnings.warn(message, UserWarning, stacklevel=3)
        return out

    def crop_boxes(self, X):
        """Corners of the film found in each image, for inspection and plotting.

        Parameters
        ----------
        X : array-like of shape (n_samples, H, W) or (n_samples, H * W)

        Returns
        -------
        boxes : ndarray of shape (n_samples, 4, 2)
            ``(x, y)`` of the top-left, top-right, bottom-right and bottom-left
            corners (pixel centres of the outermost film pixels) in each image.

        Examples
        --------
        >>> import numpy as np
        >>> from skanomaly.preprocessing import FilmCrop
        >>> X = np.zeros((1, 40, 60), np.float32)
        >>> X[0, 10:30, 5:45] = 1  # rows 10-29, columns 5-44
        >>> FilmCrop().fit(X).crop_boxes(X)
        array([[[ 5., 10.],
                [44., 10.],
                [44., 29.],
                [ 5., 29.]]])
        """
        check_is_fitted(self)
        images = self._validate(X, reset=False)
        bright = self.foreground == "bright"
        return np.stack([_film_box(im, ~np.isnan(im), bright)[0] for im in images])

    def _crop_one(self, image, corners, out_h, out_w):
        tl, tr, _, bl = corners
        along = np.linalg.norm(tr - tl)
        across = np.linalg.norm(bl - tl)
        u = (tr - tl) / along if along > 0 else np.array([1.0, 0.0])
        v = (bl - tl) / across if across > 0 else np.array([0.0, 1.0])
        # Corners are pixel centres: the film's outer edges lie half a pixel beyond.
        crop_w, crop_h = max(1, round(along + 1)), max(1, round(across + 1))
        src = np.float32([tl - (u + v) / 2, tr + (u - v) / 2, bl + (v - u) / 2])
        dst = np.float32([[-0.5, -0.5], [crop_w - 0.5, -0.5], [-0.5, crop_h - 0.5]])
        matrix = cv2.getAffineTransform(src, dst)
        crop = _resample(
            image,
            lambda stacked: cv2.warpAffine(
                stacked,
                matrix,
                (crop_w, crop_h),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            ),
        )
        if not self.pad_to_square:
            return _resize_image(crop, out_h, out_w)
        scale = min(out_h / crop_h, out_w / crop_w)
        fit_h = min(out_h, max(1, round(crop_h * scale)))
        fit_w = min(out_w, max(1, round(crop_w * scale)))
        result = np.full((out_h, out_w), self.pad_value, dtype=np.float32)
        top, left = (out_h - fit_h) // 2, (out_w - fit_w) // 2
        result[top : top + fit_h, left : left + fit_w] = _resize_image(crop, fit_h, fit_w)
        return result


class HandMasker(BaseImageTransformer):
    """Mask the hand (the foreground): NaN outside it, the image unchanged inside.

    The hand X-ray paper's foreground segmentation, done without a learned model:
    Otsu binarisation of the region of interest, the largest connected component
    (8-connectivity), its holes filled, and an optional dilation to keep a margin
    of soft tissue. Pixels outside the mask become NaN, which every later step of
    the package reads as "outside the region of interest" (masked reconstruction
    loss). Stateless: ``fit`` only validates.

    Parameters
    ----------
    foreground : {"bright", "dark"}, default="bright"
        Whether the hand is brighter (usual radiograph display) or darker than the
        background.
    fill_holes : bool, default=True
        Fill holes enclosed by the component (dark trabecular regions, gaps
        between touching fingers count as holes too).
    dilation : int >= 0, default=0
        Radius in pixels of an elliptical dilation of the mask.
    image_shape : tuple (H, W) or None, default=None
        Shape of the images when ``X`` is flattened ``(n_samples, H * W)``; one entry
        may be -1. ``None`` expects square images.

    Attributes
    ----------
    image_shape_ : tuple of int
        ``(H, W)`` of the images seen in ``fit``.
    n_features_in_ : int
        Pixels per image seen in ``fit``.

    See Also
    --------
    FilmCrop : The crop that precedes the mask.

    Notes
    -----
    An image whose region of interest is constant has no foreground to find: it
    keeps its whole region of interest, with a warning.

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.preprocessing import HandMasker
    >>> X = np.full((1, 32, 32), 0.1, np.float32)
    >>> X[0, 8:24, 8:24] = 0.8      # the "hand"
    >>> X[0, 14:18, 14:18] = 0.1    # a dark hole inside it
    >>> X[0, 1, 1] = 0.9            # a bright speck, not the largest component
    >>> Xt = HandMasker().fit_transform(X)
    >>> int((~np.isnan(Xt[0])).sum()), round(float(Xt[0, 15, 15]), 2), bool(np.isnan(Xt[0, 1, 1]))
    (256, 0.1, True)
    """

    _parameter_constraints = {
        "foreground": [StrOptions({"bright", "dark"})],
        "fill_holes": ["boolean"],
        "dilation": [Interval(Integral, 0, None, closed="left")],
        "image_shape": [tuple, list, None],
    }

    def __init__(self, *, foreground="bright", fill_holes=True, dilation=0, image_shape=None):
        self.foreground = foreground
        self.fill_holes = fill_holes
        self.dilation = dilation
        self.image_shape = image_shape

    def _transform_images(self, images):
        masks = self._masks(images)
        return np.where(masks, images, np.float32(np.nan))

    def _masks(self, images):
        """Boolean foreground masks ``(N, H, W)`` of validated float32 images."""
        bright = self.foreground == "bright"
        kernel = None
        if self.dilation:
            side = 2 * self.dilation + 1
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
        masks = np.zeros(images.shape, dtype=bool)
        constant = []
        for i, image in enumerate(images):
            roi = ~np.isnan(image)
            foreground = _otsu_foreground(image, roi, bright=bright)
            if foreground is None or not foreground.any():
                constant.append(i)
                masks[i] = roi
                continue
            _, labels, stats, _ = cv2.connectedComponentsWithStats(
                foreground.view(np.uint8), connectivity=8
            )
            largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            mask = (labels == largest).view(np.uint8)
            if self.fill_holes:
                contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                mask = cv2.drawContours(mask.copy(), contours, -1, 1, thickness=cv2.FILLED)
            if kernel is not None:
                mask = cv2.dilate(mask, kernel)
            masks[i] = mask.view(bool) & roi
        if constant:
            message = _nothing_found_message(
                "HandMasker", "no foreground", constant, "keep their whole region of interest"
            )
            warnings.warn(message, UserWarning, stacklevel=3)
        return masks


def _nothing_found_message(name, what, indices, outcome):
    shown = ", ".join(map(str, indices[:10])) + (" ..." if len(indices) > 10 else "")
    return (
        f"{name} found {what} in {len(indices)} image(s) (indices {shown}); they "
        f"{outcome}. Such images are usually blank or corrupt files (a constant "
        "region of interest): consider dropping them."
    )
