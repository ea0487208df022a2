"""Evaluation protocols on public data sets, each as one function returning arrays.

A protocol fixes everything between the files on disk and the arrays a detector sees
(preprocessing, labels, split), so that results can be compared with the paper they
come from and between detectors.
"""

from __future__ import annotations

import functools
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from sklearn.base import clone
from sklearn.model_selection import GroupShuffleSplit
from sklearn.utils import Bunch, check_random_state

from ._io import _check_n_jobs, _check_size, load_images
from ._loaders import _read_mask, load_jsrt

__all__ = ["jsrt_patch_protocol"]

# P-AnoGAN's CLAHE kernel (128 px) was set on 1024 x 1024 images.
_PAPER_KERNEL = 128
_PAPER_SIZE = 1024
_LUNG_ROIS = ("dataset", "unet")


def _clahe_for(clahe, shape):
    """The CLAHE step for images of ``shape``, or None."""
    from ..preprocessing import CLAHE

    if clahe is None:
        return None
    if isinstance(clahe, str):
        # Scaling the kernel with the image keeps the tiles the same size in mm.
        kernel = tuple(max(round(_PAPER_KERNEL * s / _PAPER_SIZE), 1) for s in shape)
        return CLAHE(kernel_size=kernel, clip_limit=0.01)
    return clone(clahe)


def _lung_masker(lung_roi):
    from ..preprocessing import LungMasker

    if lung_roi == "dataset":
        return None
    if lung_roi == "unet":
        return LungMasker(output="mask")
    return clone(lung_roi).set_params(output="mask")


def _check_protocol_params(
    patch_size, stride, size, test_size, lung_roi, min_roi_fraction, clahe, chunk_size
):
    from ..preprocessing import CLAHE, LungMasker

    for name, value in (("patch_size", patch_size), ("stride", stride)):
        if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(
                f"{name} must be a positive int (pixels); got {value!r}. The paper's "
                "protocol uses patch_size=64 with stride=16 at size=1024."
            )
    size = _check_size(size)
    if size is not None and patch_size > min(size):
        raise ValueError(
            f"patch_size={patch_size} is larger than the {size[0]}x{size[1]} images "
            f"(size={size!r}). Use a patch_size of at most {min(size)}, or a larger size."
        )
    is_int = isinstance(test_size, Integral)
    is_fraction = isinstance(test_size, Real) and not is_int and 0 < test_size < 1
    if isinstance(test_size, bool) or not ((is_int and test_size >= 1) or is_fraction):
        raise ValueError(
            "test_size must be a float in (0, 1), the fraction of the normal studies "
            f"held out for testing, or an int >= 1, their number; got {test_size!r}."
        )
    if not (isinstance(lung_roi, str) and lung_roi in _LUNG_ROIS) and not isinstance(
        lung_roi, LungMasker
    ):
        raise ValueError(
            f"lung_roi must be 'dataset' (the data set's own lung masks), 'unet' "
            f"(skanomaly's LungMasker) or a LungMasker instance; got {lung_roi!r}."
        )
    if (
        isinstance(min_roi_fraction, bool)
        or not isinstance(min_roi_fraction, Real)
        or not 0 <= min_roi_fraction <= 1
    ):
        raise ValueError(
            f"min_roi_fraction must be a number in [0, 1], the share of lung pixels a "
            f"patch needs to be kept; got {min_roi_fraction!r}."
        )
    if not (clahe is None or clahe == "auto" or isinstance(clahe, CLAHE)):
        raise ValueError(
            f"clahe must be 'auto' (the paper's CLAHE, kernel scaled with size), None "
            f"(no contrast enhancement) or a CLAHE instance; got {clahe!r}."
        )
    if not isinstance(chunk_size, Integral) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(
            f"chunk_size must be a positive int (images preprocessed at once); got "
            f"{chunk_size!r}."
        )
    return size


def _masks_for(images, mask_paths, masker, shape):
    """Lung masks ``(n, H, W)`` of bool for one chunk: from files, or segmented."""
    if masker is None:
        return np.stack([_read_mask(path, shape) for path in mask_paths])
    # The segmenter sees the images as loaded, before CLAHE: that is what it was
    # trained on.
    return masker.fit_transform(images)


def _masked_images(images, masks, clahe):
    """CLAHE, then NaN outside the lungs: the images the patches are cut from."""
    from ..preprocessing._lung import apply_masks

    if clahe is not None:
        # CLAHE sees the whole radiograph, as in the paper, then the lungs are cut out.
        images = clahe.fit_transform(images)
    return apply_masks(images, masks)


def _iter_bags(filenames, mask_paths, study_ids, *, clahe, masker, extractor, n_jobs,
               batch_size=8):
    """Yield ``(study_ids, bags)`` of the given studies, ``batch_size`` at a time."""
    if not isinstance(batch_size, Integral) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
    shape = tuple(extractor.image_shape_)

    def batches():
        for start in range(0, len(filenames), batch_size):
            part = slice(start, start + batch_size)
            # load_images is what load_jsrt reads with, so the pixels are the same.
            images = load_images(filenames[part], size=shape, n_jobs=n_jobs)
            paths = None if mask_paths is None else mask_paths[part]
            masks = _masks_for(images, paths, masker, shape)
            yield study_ids[part], extractor.transform(_masked_images(images, masks, clahe))

    return batches()


def jsrt_patch_protocol(
    data_dir,
    *,
    patch_size=64,
    stride=16,
    size=1024,
    test_size=0.3,
    lung_roi="dataset",
    min_roi_fraction=0.5,
    clahe="auto",
    random_state=0,
    chunk_size=8,
    n_jobs=None,
):
    """Patch-level lung-nodule protocol of P-AnoGAN on the JSRT radiographs.

    The test protocol of the P-AnoGAN paper (unsupervised lung-nodule detection in
    chest radiograph patches) as it can be run on the JSRT development set: images at
    ``size`` (the paper: 1024 x 1024), CLAHE (kernel 128 px at 1024, clip limit 0.01),
    the lung region of interest (NaN outside), and ``patch_size`` patches on a uniform
    grid with ``stride`` (:class:`~skanomaly.preprocessing.PatchExtractor`; patches with
    less than ``min_roi_fraction`` of lung are left out). Labels:

    * every kept patch of a nodule-free study (``JPCNN``) is normal (0);
    * a kept patch of a nodule study (``JPCLN``) that contains the nodule centre is
      abnormal (1) (:meth:`PatchExtractor.patch_labels`);
    * the other patches of nodule studies are not used.

    The split is by study: ``test_size`` of the normal studies go to the test set
    (:class:`~sklearn.model_selection.GroupShuffleSplit`), and so do *all* nodule
    studies, since detectors train on normal studies only. No study has patches in
    both sets.

    Parameters
    ----------
    data_dir : str or path-like
        JSRT folder as :func:`load_jsrt` reads it (``images/``, ``lung_masks/``,
        ``metadata.csv``).
    patch_size : int, default=64
        Side of the square patches in pixels (the paper: 64).
    stride : int, default=16
        Step of the patch grid in pixels. The paper does not give it; its patch counts
        (about 1040 per normal study) match a stride of about 16 px at 1024 x 1024.
    size : int, tuple (H, W) or None, default=1024
        Image size; nodule centres and the CLAHE kernel follow it. ``None`` keeps the
        files' size.
    test_size : float in (0, 1) or int, default=0.3
        Fraction (or number) of the normal studies held out for testing.
    lung_roi : {"dataset", "unet"} or LungMasker, default="dataset"
        ``"dataset"``: the lung masks that come with the data (``lung_masks/``, the
        SCR annotations). ``"unet"``: masks segmented by
        :class:`~skanomaly.preprocessing.LungMasker` from the images as loaded
        (before CLAHE); a ``LungMasker`` instance is used with its own settings.
        Note that the packaged segmenter was trained on most JSRT studies.
    min_roi_fraction : float in [0, 1], default=0.5
        Share of lung pixels a patch needs to be kept. A patch without any lung
        pixel is never kept.
    clahe : "auto", CLAHE or None, default="auto"
        ``"auto"`` is the paper's ``CLAHE(kernel_size=128, clip_limit=0.01)`` at 1024 x
        1024, with the kernel scaled as ``round(128 * side / 1024)`` per image side so
        that the tiles cover the same anatomy (45 mm) at any ``size``. A
        :class:`~skanomaly.preprocessing.CLAHE` instance is used as given; ``None``
        skips contrast enhancement.
    random_state : int, RandomState instance or None, default=0
        Seeds the split of the normal studies.
    chunk_size : int, default=8
        Studies preprocessed at once. Memory is dominated by the returned patches plus
        the loaded images, not by this: one chunk of 1024 x 1024 bags with stride 16
        takes ``chunk_size`` x 57 MB while it is being cut.
    n_jobs : int or None, default=None
        Threads decoding image files (see :func:`load_images`).

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        X_train : ndarray of float32, shape (n_train_patches, p, p)
            Kept patches of the training (normal) studies; NaN outside the lungs.
        train_study_ids : ndarray of str, shape (n_train_patches,)
            Study of each training patch (use as ``groups`` for cross-validation).
        train_positions : ndarray of int, shape (n_train_patches, 2)
            ``(row, col)`` of each patch's top-left pixel on the ``size`` grid.
        X_test : ndarray of float32, shape (n_test_patches, p, p)
            Kept patches of the test studies: all kept patches of the held-out normal
            studies, and the patches of nodule studies that contain the centre.
        y_test : ndarray of int64, shape (n_test_patches,)
            1 = contains the nodule centre, 0 = patch of a normal study.
        test_study_ids, test_positions : ndarrays, shape (n_test_patches,) and (n_test_patches, 2)
            As for the training patches.
        train_patch_index, test_patch_index : ndarrays of int, shape (n_patches,)
            Index of each patch in its study's bag, i.e. in
            ``extractor.patch_positions_``.
        train_studies : ndarray of str
            The training studies, sorted.
        test_studies : ndarray of str
            The test studies, sorted; the per-study arrays below follow this order.
        test_study_labels : ndarray of int64
            1 = nodule study, 0 = normal study (image-level labels).
        test_study_centers : ndarray of float64, shape (n_test_studies, 2)
            Nodule centre ``(x, y)`` in pixels of the ``size`` grid; NaN for normal
            studies.
        test_study_n_abnormal : ndarray of int64
            Abnormal patches of each test study (0 for normal studies).
        nodule_studies_without_abnormal_patch : ndarray of str
            Nodule studies whose centre falls in no kept patch, so that they add no
            abnormal patch. With the data set's masks these are nodules behind the
            heart or below the diaphragm (outside the SCR lung fields); the paper
            excluded such patients. They stay in ``test_studies`` for image-level
            scoring; drop them there if the paper's exclusion is wanted.
        extractor : PatchExtractor
            The fitted patch grid: ``patch_positions_``, ``n_patches_``,
            ``inverse_transform`` to stitch patch scores into maps.
        iter_test_bags : callable
            ``iter_test_bags(batch_size=8)`` yields ``(study_ids, bags)`` for all
            ``test_studies`` in order, with ``bags`` of shape ``(batch, P, p, p)``: the
            full bags (absent patches all NaN) that image-level scoring with
            ``detector.score_samples(bags)`` needs. The bags of all test studies would
            take about 57 MB each at 1024 x 1024 with stride 16, so they are rebuilt
            from the files batch by batch, with the same preprocessing;
            ``bags[j][patch_index]`` equals the corresponding rows of ``X_test``.
        params : dict
            The settings used, including ``clahe_kernel_size``.

    Raises
    ------
    ValueError
        On bad arguments (the message names the argument and what it accepts), a
        patch larger than the images, fewer than two normal studies, or a study
        whose lung region holds no patch.

    See Also
    --------
    load_jsrt : The images, masks, labels and nodule centres this protocol starts from.
    skanomaly.preprocessing.PatchExtractor : The patch grid and ``patch_labels``.

    Notes
    -----
    **What it yields here** (``benchmarks/jsrt_patch_counts.py``; 167 studies, size
    1024, stride 16, the data set's masks, ``random_state=0``): 44 training and 19 + 104
    test studies; 55,236 training, 23,178 normal and 1,502 abnormal test patches; about
    1,245 patches per normal study and 14.4 abnormal patches per nodule study (16 for a
    centre well inside the lungs: 4 x 4 grid positions). The paper reports 96,765
    normal and 2,105 abnormal test patches from 93 + 141 studies of the full JSRT
    database, with CCNet lung masks. 9 of the 104 nodule centres lie outside the SCR
    lung masks; 8 of those studies get no abnormal patch
    (``nodule_studies_without_abnormal_patch``).

    **Memory.** The kept patches are counted from the masks first and written into
    preallocated arrays, while the images are preprocessed ``chunk_size`` at a time
    and only the kept windows are copied (never a whole bag). On the JSRT set at 1024
    x 1024 with stride 16 the process peaks at 2.8 GB resident: the loaded images
    (0.7 GB) and masks (0.17 GB), the patches (1.25 GB) and the imported libraries.
    It takes about 7 s on two CPU cores.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skanomaly.datasets._protocols import jsrt_patch_protocol
    >>> root = tempfile.mkdtemp()
    >>> for sub in ("images", "lung_masks"):
    ...     os.makedirs(os.path.join(root, sub))
    >>> rng = np.random.default_rng(0)
    >>> mask = np.zeros((128, 128), np.uint8)
    >>> mask[16:112, 8:120] = 1
    >>> studies = ["JPCLN001", "JPCNN001", "JPCNN002", "JPCNN003"]
    >>> for name in studies:
    ...     pixels = rng.integers(0, 256, (128, 128), dtype=np.uint8)
    ...     Image.fromarray(pixels).save(os.path.join(root, "images", name + ".png"))
    ...     Image.fromarray(mask).save(os.path.join(root, "lung_masks", name + ".png"))
    >>> header = "study_id,subtlety,size_mm,age,gender,x_2048,y_2048,state,position,diagnosis"
    >>> rows = ["JPCLN001.png,5,15,53,Male,1024,1024,malignant,l.upper lobe,lung cancer"]
    >>> rows += [f"{s}.png,,,30,Female,,,non-nodule,," for s in studies[1:]]
    >>> with open(os.path.join(root, "metadata.csv"), "w") as fh:
    ...     _ = fh.write("\\n".join([header, *rows]) + "\\n")
    >>> data = jsrt_patch_protocol(root, patch_size=32, stride=16, size=128)
    >>> data.X_train.shape, data.train_studies.tolist()
    ((90, 32, 32), ['JPCNN001', 'JPCNN002'])
    >>> data.test_studies.tolist(), np.bincount(data.y_test).tolist()
    (['JPCLN001', 'JPCNN003'], [45, 4])
    >>> for ids, bags in data.iter_test_bags(batch_size=2):
    ...     print(ids.tolist(), bags.shape)
    ['JPCLN001', 'JPCNN003'] (2, 49, 32, 32)
    """
    size = _check_protocol_params(
        patch_size, stride, size, test_size, lung_roi, min_roi_fraction, clahe, chunk_size
    )
    _check_n_jobs(n_jobs)
    check_random_state(random_state)  # a bad seed fails before minutes of loading
    from ..preprocessing import PatchExtractor

    data = load_jsrt(data_dir, size=size, include_masks=lung_roi == "dataset", n_jobs=n_jobs)
    images, study_ids = data.images, data.study_ids
    shape = images.shape[1:]
    if patch_size > min(shape):
        raise ValueError(
            f"patch_size={patch_size} is larger than the {shape[0]}x{shape[1]} images in "
            f"'{data_dir}'. Use a patch_size of at most {min(shape)}, or pass a larger size."
        )
    normal = np.flatnonzero(data.labels == 0)
    if len(normal) < 2:
        raise ValueError(
            f"The protocol trains and tests on normal (JPCNN) studies, so it needs at least "
            f"two of them; '{data_dir}' holds {len(normal)}. Add nodule-free studies."
        )

    extractor = PatchExtractor(patch_size, stride=stride, min_roi_fraction=min_roi_fraction)
    extractor.fit(images[:1])
    masker = _lung_masker(lung_roi)
    clahe_step = _clahe_for(clahe, shape)
    n_studies = len(images)

    # Pass 1, masks only: which patches exist, so the outputs can be allocated once.
    if masker is None:
        masks = data.masks
    else:
        masks = np.empty(images.shape, dtype=bool)
        for start in range(0, n_studies, chunk_size):
            part = slice(start, start + chunk_size)
            masks[part] = _masks_for(images[part], None, masker, shape)
    present = np.concatenate(
        [
            extractor._present_patches(masks[start : start + chunk_size])
            for start in range(0, n_studies, chunk_size)
        ]
    )
    empty = study_ids[~present.any(axis=1)]
    if empty.size:
        raise ValueError(
            f"No patch of study/studies {empty.tolist()} has min_roi_fraction="
            f"{min_roi_fraction} of its pixels inside the lung mask. Check those masks, "
            "or lower min_roi_fraction or patch_size."
        )
    contains_centre = extractor.patch_labels(data.centers).astype(bool)

    split = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=random_state)
    try:
        train_pos, _ = next(split.split(normal, groups=study_ids[normal]))
    except ValueError as err:
        raise ValueError(
            f"test_size={test_size!r} leaves no normal study for training or for testing "
            f"among the {len(normal)} normal studies: {err}"
        ) from err
    is_train = np.zeros(n_studies, dtype=bool)
    is_train[normal[train_pos]] = True
    keep = present & np.where(data.labels[:, None] == 1, contains_centre, True)

    counts = keep.sum(axis=1)
    offsets = np.zeros(n_studies, dtype=np.int64)
    for subset in (is_train, ~is_train):
        offsets[subset] = np.cumsum(counts[subset]) - counts[subset]
    p = patch_size
    X_train = np.empty((counts[is_train].sum(), p, p), dtype=np.float32)
    X_test = np.empty((counts[~is_train].sum(), p, p), dtype=np.float32)

    # Pass 2: the pixels, chunk by chunk, straight into their rows. Only the kept
    # windows are copied: extractor.transform would first build every image's full
    # bag (57 MB at 1024 px, stride 16), three quarters of it thrown away here. The
    # windows are the extractor's grid, so the pixels are those of its bags.
    for start in range(0, n_studies, chunk_size):
        part = slice(start, start + chunk_size)
        masked = _masked_images(images[part], masks[part], clahe_step)
        windows = sliding_window_view(masked, (patch_size, patch_size), axis=(1, 2))
        for i, window in enumerate(windows, start):
            rows, cols = extractor.patch_positions_[keep[i]].T
            target = X_train if is_train[i] else X_test
            target[offsets[i] : offsets[i] + counts[i]] = window[rows, cols]

    def per_patch(subset):
        rows, index = np.nonzero(keep & subset[:, None])
        return study_ids[rows], extractor.patch_positions_[index], index

    train_ids, train_positions, train_index = per_patch(is_train)
    test_ids, test_positions, test_index = per_patch(~is_train)
    y_test = np.repeat(data.labels[~is_train], counts[~is_train])

    test = np.flatnonzero(~is_train)
    test_labels = data.labels[test]
    n_abnormal = np.where(test_labels == 1, counts[test], 0)
    # Absolute paths, so that the bags can be rebuilt from another working directory.
    test_files = [Path(f).resolve() for f in data.filenames[test]]
    # load_jsrt pairs images/X.png with lung_masks/X.png.
    mask_paths = (
        [f.parent.parent / "lung_masks" / f"{f.stem}.png" for f in test_files]
        if lung_roi == "dataset"
        else None
    )
    iter_test_bags = functools.partial(
        _iter_bags,
        test_files,
        mask_paths,
        study_ids[test],
        clahe=clahe_step,
        masker=masker,
        extractor=extractor,
        n_jobs=n_jobs,
    )
    kernel = None if clahe_step is None else clahe_step.kernel_size
    return Bunch(
        X_train=X_train,
        train_study_ids=train_ids,
        train_positions=train_positions,
        train_patch_index=train_index,
        X_test=X_test,
        y_test=y_test.astype(np.int64),
        test_study_ids=test_ids,
        test_positions=test_positions,
        test_patch_index=test_index,
        train_studies=study_ids[is_train],
        test_studies=study_ids[test],
        test_study_labels=test_labels,
        test_study_centers=data.centers[test],
        test_study_n_abnormal=n_abnormal.astype(np.int64),
        nodule_studies_without_abnormal_patch=study_ids[test][
            (test_labels == 1) & (n_abnormal == 0)
        ],
        extractor=extractor,
        iter_test_bags=iter_test_bags,
        params=dict(
            patch_size=patch_size,
            stride=stride,
            size=tuple(int(s) for s in shape),
            test_size=test_size,
            random_state=random_state if isinstance(random_state, Integral) else None,
            lung_roi=lung_roi if isinstance(lung_roi, str) else repr(lung_roi),
            min_roi_fraction=min_roi_fraction,
            clahe_kernel_size=kernel,
            clahe_clip_limit=None if clahe_step is None else clahe_step.clip_limit,
        ),
    )

