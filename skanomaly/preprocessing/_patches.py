"""Patch bags: images ``(N, H, W)`` to patches ``(N, P, p, p)`` on a fixed grid, and back."""

from numbers import Integral, Real

import cv2
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_array, check_is_fitted

from ..utils.validation import as_patch_bags
from ._base import BaseImageTransformer, _over_image_slices

__all__ = ["PatchExtractor"]


def _grid_starts(size, patch_size, stride):
    """Top-left coordinates along one axis: 0, s, 2s, ... plus one flush with the end."""
    starts = np.arange(0, size - patch_size + 1, stride)
    if starts[-1] + patch_size < size:
        starts = np.append(starts, size - patch_size)
    return starts


class PatchExtractor(BaseImageTransformer):
    """Cut every image into a bag of square patches on one fixed grid.

    Maps images ``(N, H, W)`` to patch bags ``(N, P, p, p)``: each image keeps its
    row, so ``n_samples`` never changes inside a Pipeline (the package's data
    contract). Patches start at ``0, stride, 2 * stride, ...`` along each axis while
    they fit; when that leaves a strip at the far border uncovered, one more row or
    column of patches is added flush with the border (overlapping its neighbours
    more), so that with ``stride <= patch_size`` every pixel lies in a patch. Patches
    whose region-of-interest coverage (share of non-NaN pixels) is below
    ``min_roi_fraction`` are set entirely to NaN: they are *absent*, and detectors
    skip them. Present patches keep their NaN pixels.

    Parameters
    ----------
    patch_size : int, default=64
        Side ``p`` of the square patches, in pixels (P-AnoGAN: 64).
    stride : int or None, default=None
        Step between neighbouring patches; ``None`` means ``patch_size``
        (non-overlapping patches). A stride below ``patch_size`` gives overlapping
        patches, which :meth:`inverse_transform` averages.
    min_roi_fraction : float in [0, 1], default=0.5
        Patches with a smaller share of non-NaN pixels become absent (all NaN).
    image_shape : tuple (H, W) or None, default=None
        Shape of the images when ``X`` is flattened ``(n_samples, H * W)``; one entry
        may be -1. ``None`` expects square images.

    Attributes
    ----------
    patch_positions_ : ndarray of shape (``n_patches_``, 2)
        ``(row, col)`` of each patch's top-left pixel, in bag order (row-major).
    n_patches_ : int
        Number of patches per image, ``P``.
    image_shape_ : tuple of int
        ``(H, W)`` of the images seen in ``fit``; :meth:`transform` requires it.
    n_features_in_ : int
        Pixels per image seen in ``fit``.

    See Also
    --------
    Resize : Bring images to the size the grid was fitted on.

    Notes
    -----
    Extraction gathers the grid's windows from a
    :func:`~numpy.lib.stride_tricks.sliding_window_view` in one indexing operation,
    so the bag is the only copy made: mind its size, ``N * P * p * p * 4`` bytes
    (about 57 MiB per 1024x1024 image with ``p=64, stride=16``).

    Examples
    --------
    >>> import numpy as np
    >>> from skanomaly.preprocessing import PatchExtractor
    >>> X = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    >>> X[:, :, :3] = np.nan  # left of column 3 is outside the ROI
    >>> pe = PatchExtractor(4, stride=2)
    >>> bags = pe.fit_transform(X)
    >>> bags.shape, pe.n_patches_
    ((2, 9, 4, 4), 9)
    >>> np.isnan(bags).all(axis=(2, 3))[0]  # patches at column 0 are absent
    array([ True, False, False,  True, False, False,  True, False, False])
    >>> back = pe.inverse_transform(bags)
    >>> bool(np.allclose(back[:, :, 4:], X[:, :, 4:]))
    True
    >>> pe.patch_labels([[5.0, 1.0], [np.nan, np.nan]])  # (x, y) of a lesion per image
    array([[0, 1, 1, 0, 0, 0, 0, 0, 0],
           [0, 0, 0, 0, 0, 0, 0, 0, 0]])
    """

    _parameter_constraints = {
        "patch_size": [Interval(Integral, 1, None, closed="left")],
        "stride": [Interval(Integral, 1, None, closed="left"), None],
        "min_roi_fraction": [Interval(Real, 0, 1, closed="both")],
        "image_shape": [tuple, list, None],
    }

    def __init__(self, patch_size=64, *, stride=None, min_roi_fraction=0.5, image_shape=None):
        self.patch_size = patch_size
        self.stride = stride
        self.min_roi_fraction = min_roi_fraction
        self.image_shape = image_shape

    @property
    def _stride(self):
        return self.patch_size if self.stride is None else self.stride

    def _fit_images(self, images):
        height, width = images.shape[1:]
        p = self.patch_size
        if p > height or p > width:
            raise ValueError(
                f"patch_size={p} is larger than the {height}x{width} images. Use a "
                f"patch_size of at most {min(height, width)}, or enlarge the images "
                "with Resize first."
            )
        self._rows = _grid_starts(height, p, self._stride)
        self._cols = _grid_starts(width, p, self._stride)
        rows, cols = np.meshgrid(self._rows, self._cols, indexing="ij")
        self.patch_positions_ = np.column_stack([rows.ravel(), cols.ravel()])
        self.n_patches_ = len(self.patch_positions_)

    def _transform_images(self, images):
        if images.shape[1:] != tuple(self.image_shape_):
            h, w = self.image_shape_
            raise ValueError(
                f"PatchExtractor was fitted on {h}x{w} images, so its patch grid only "
                f"fits that size; got {images.shape[1]}x{images.shape[2]} images. "
                f"Resize them to {h}x{w} (skanomaly.preprocessing.Resize) or refit."
            )
        n, p = images.shape[0], self.patch_size
        grid = np.empty((n, len(self._rows), len(self._cols), p, p), dtype=images.dtype)
        bags = grid.reshape(n, self.n_patches_, p, p)
        present = np.ones((n, self.n_patches_), dtype=bool)

        def extract(part):
            self._fill_grid(images[part], grid[part])
            roi = ~np.isnan(images[part])
            if not roi.all():
                present[part] = self._present_patches(roi)
                bags[part][~present[part]] = np.nan

        # The bag is memory-bound work (about 57 MiB per 1024 px image at stride 16,
        # written once and mostly NaN): one thread leaves the other cores idle.
        _over_image_slices(extract, n, min_bytes=2**25, bytes_per_image=bags[0].nbytes if n else 0)
        empty = np.flatnonzero(~present.any(axis=1))
        if empty.size:
            shown = ", ".join(map(str, empty[:10])) + (" ..." if empty.size > 10 else "")
            raise ValueError(
                f"Empty ROI: in {empty.size} image(s) (indices {shown}) no patch has "
                f"at least min_roi_fraction={self.min_roi_fraction} of its pixels "
                "inside the region of interest, so their bags would hold no patch. "
                "Lower min_roi_fraction or patch_size, or check the mask that "
                "produced the NaN."
            )
        # Marked, so that detectors read a bag of 3 or 4 patches as a bag and not as
        # RGB(A) images (the data contract's one ambiguous shape).
        return as_patch_bags(bags)

    def _fill_grid(self, images, grid):
        """Copy the windows of ``images`` ``(n, H, W)`` into ``grid`` ``(n, rows, cols, p, p)``."""
        p, s = self.patch_size, self._stride
        windows = sliding_window_view(images, (p, p), axis=(1, 2))
        # Each regular run of the grid is a strided view of the windows, copied
        # straight into the C-ordered bag: the bag is the only copy made.
        for row_part, r0 in self._regular_parts(self._rows):
            for col_part, c0 in self._regular_parts(self._cols):
                target = grid[:, row_part, col_part]
                nr, nc = target.shape[1:3]
                rows = slice(r0, r0 + (nr - 1) * s + 1, s)
                cols = slice(c0, c0 + (nc - 1) * s + 1, s)
                target[...] = windows[:, rows, cols]

    def _present_patches(self, roi):
        """Which patches are kept, ``(N, P)`` of bool, from the ROI masks ``(N, H, W)``.

        A patch without a single ROI pixel is never kept, even at ``min_roi_fraction=0``.
        """
        coverage = self._roi_coverage(roi)
        return (coverage >= self.min_roi_fraction) & (coverage > 0)

    def _roi_coverage(self, roi):
        """Share of ROI pixels in every patch, ``(N, P)``, from an integral image."""
        p = self.patch_size
        integral = np.stack([cv2.integral(mask.view(np.uint8)) for mask in roi])
        r, c = self.patch_positions_.T
        counts = (
            integral[:, r + p, c + p]
            - integral[:, r, c + p]
            - integral[:, r + p, c]
            + integral[:, r, c]
        )
        return counts / float(p * p)

    def patch_labels(self, points):
        """Label the patches that contain a point (e.g. a nodule's centre) of each image.

        Parameters
        ----------
        points : array-like of shape (n_samples, 2) or (n_samples, n_points, 2)
            ``(x, y)`` = (column, row) pixel coordinates, pixel centres at integers,
            one point (or several) per image. A point labels the patches holding the
            pixel nearest to it. NaN points label nothing (an image without a
            lesion), so several points per image can be NaN-padded.

        Returns
        -------
        labels : ndarray of int, shape (n_samples, n_patches_)
            1 for each patch that contains a point of that image, else 0. Absent
            patches are labelled too; the bag's NaN patches tell which are absent.

        Examples
        --------
        >>> import numpy as np
        >>> from skanomaly.preprocessing import PatchExtractor
        >>> pe = PatchExtractor(2).fit(np.zeros((1, 4, 4)))
        >>> pe.patch_labels([[3, 0]])
        array([[0, 1, 0, 0]])
        """
        check_is_fitted(self)
        try:
            pts = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"points must be numbers: an (n_samples, 2) array of (x, y) pixel "
                f"coordinates; converting to float failed: {err}"
            ) from err
        if pts.ndim == 2 and pts.shape[1] == 2:
            pts = pts[:, None, :]
        if pts.ndim != 3 or pts.shape[2] != 2:
            raise ValueError(
                f"points must have shape (n_samples, 2), one (x, y) per image, or "
                f"(n_samples, n_points, 2); got shape {np.shape(points)}. For a single "
                "image pass [[x, y]]."
            )
        if np.isinf(pts).any():
            raise ValueError("points contain inf; use NaN for an image without a point.")
        height, width = self.image_shape_
        # Pixel centres sit at integer coordinates, so the nearest pixel is a rounding.
        col, row = np.floor(pts[..., 0] + 0.5), np.floor(pts[..., 1] + 0.5)
        with np.errstate(invalid="ignore"):
            outside = (row < 0) | (row >= height) | (col < 0) | (col >= width)
        if outside.any():
            i = np.argwhere(outside)[0]
            raise ValueError(
                f"Point (x={pts[i[0], i[1], 0]}, y={pts[i[0], i[1], 1]}) of image {i[0]} "
                f"lies outside the {height}x{width} images the grid was fitted on. "
                "Points are (x, y) = (column, row) pixel coordinates of the transformed "
                "images; rescale them if the images were resized."
            )
        r, c = self.patch_positions_.T
        p = self.patch_size
        with np.errstate(invalid="ignore"):
            inside = (
                (row[..., None] >= r)
                & (row[..., None] < r + p)
                & (col[..., None] >= c)
                & (col[..., None] < c + p)
            )
        return inside.any(axis=1).astype(np.int64)

    def inverse_transform(self, X):
        """Stitch patch maps back into images, averaging where patches overlap.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_patches_, p, p) or (n_samples, n_patches_)
            Patch bags (or per-patch maps such as reconstructions or anomaly maps),
            or one score per patch, which then fills its whole patch.

        Returns
        -------
        images : ndarray of shape (n_samples, H, W)
            Each pixel is the mean of the non-NaN values that the patches covering
            it hold; NaN where no present patch covers it (outside the ROI or only in
            absent patches). float64 input stays float64, anything else is float32.

        Examples
        --------
        >>> import numpy as np
        >>> from skanomaly.preprocessing import PatchExtractor
        >>> pe = PatchExtractor(2, stride=1).fit(np.zeros((1, 3, 3)))
        >>> pe.inverse_transform(np.arange(4.0).reshape(1, 4))
        array([[[0. , 0.5, 1. ],
                [1. , 1.5, 2. ],
                [2. , 2.5, 3. ]]])
        """
        check_is_fitted(self)
        bags = check_array(
            X,
            dtype=(np.float32, np.float64),
            allow_nd=True,
            ensure_all_finite="allow-nan",
            ensure_min_features=0,
            input_name="X",
        )
        n, n_patches, p = bags.shape[0], self.n_patches_, self.patch_size
        if bags.ndim == 2 and bags.shape[1] == n_patches:
            bags = np.broadcast_to(bags[:, :, None, None], (n, n_patches, p, p))
        elif bags.ndim != 4 or bags.shape[1:] != (n_patches, p, p):
            raise ValueError(
                f"inverse_transform expects patch bags of shape (n_samples, {n_patches}, "
                f"{p}, {p}) or per-patch scores (n_samples, {n_patches}), as this "
                f"extractor's transform produces; got shape {bags.shape}."
            )
        height, width = self.image_shape_
        s = self._stride
        # Accumulators are float64 so that averaging k equal values gives them back
        # exactly; the margin of one stride lets every offset block be one slice.
        total = np.zeros((n, height + s, width + s))
        has_nan = bool(np.isnan(bags).any())
        nan_count = np.zeros((n, height + s, width + s), dtype=np.int32) if has_nan else None
        grid = bags.reshape(n, len(self._rows), len(self._cols), p, p)
        for row_part, r0 in self._regular_parts(self._rows):
            for col_part, c0 in self._regular_parts(self._cols):
                self._accumulate(total, nan_count, grid[:, row_part, col_part], r0, c0)
        total = total[:, :height, :width]
        # The number of patches over a pixel is separable: (patches over its row) x
        # (patches over its column); NaN values seen there are taken off.
        count = np.outer(
            self._coverage_1d(self._rows, height), self._coverage_1d(self._cols, width)
        )
        if has_nan:
            count = count - nan_count[:, :height, :width]
        with np.errstate(invalid="ignore", divide="ignore"):
            images = np.divide(total, count, out=total)
        return images.astype(bags.dtype, copy=False)

    def _coverage_1d(self, starts, size):
        """How many patch starts cover each coordinate along one axis."""
        delta = np.zeros(size + 1, dtype=np.int64)
        np.add.at(delta, starts, 1)
        np.add.at(delta, starts + self.patch_size, -1)
        return np.cumsum(delta[:-1])

    def _regular_parts(self, starts):
        """Split grid starts into runs of constant stride: the regular run and the flush one."""
        s = self._stride
        flush = len(starts) > 1 and starts[-1] - starts[-2] != s
        n_regular = len(starts) - flush
        parts = [(slice(0, n_regular), int(starts[0]))]
        if n_regular < len(starts):
            parts.append((slice(n_regular, None), int(starts[-1])))
        return parts

    def _accumulate(self, total, nan_count, grid, r0, c0):
        """Add a regular sub-grid of patches ``(N, nr, nc, p, p)`` into the accumulators.

        Cutting every patch into ``s x s`` blocks, the blocks with the same offset
        inside their patch tile the image without overlapping, so each offset is one
        vectorised addition into a reshaped view: ``ceil(p / s) ** 2`` additions
        instead of one per patch. NaN values add 0 to ``total`` and 1 to
        ``nan_count`` (``None`` when the bags hold no NaN).
        """
        n, nr, nc, p, _ = grid.shape
        s = self._stride
        for di in range(0, p, s):
            h = min(s, p - di)
            for dj in range(0, p, s):
                w = min(s, p - dj)
                # Gathering the blocks contiguously first keeps the arithmetic below
                # in long runs instead of s-element ones.
                # (A copy, never a view: the NaN are zeroed in place below.)
                block = grid[:, :, :, di : di + h, dj : dj + w].transpose(0, 1, 3, 2, 4).copy()
                rows = slice(r0 + di, r0 + di + nr * s)
                cols = slice(c0 + dj, c0 + dj + nc * s)
                # Splitting an axis of a slice is always a view, so += writes through.
                target = total[:, rows, cols].reshape(n, nr, s, nc, s)[:, :, :h, :, :w]
                if nan_count is not None:
                    invalid = np.isnan(block)
                    np.copyto(block, 0, where=invalid)
                    hits = nan_count[:, rows, cols].reshape(n, nr, s, nc, s)[:, :, :h, :, :w]
                    hits += invalid
                target += block
