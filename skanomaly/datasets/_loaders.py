"""Loaders for public chest radiograph sets kept in local folders.

The loaders read what is on disk and download nothing; each docstring gives the folder
layout it expects.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import cv2
import numpy as np
from sklearn.utils import Bunch

from ._io import _check_n_jobs, _check_size, _read_with_pil, load_images, resize_image

__all__ = ["load_jsrt", "load_pediatric_cxr"]

_JSRT_NAME = re.compile(r"^JPC(LN|NN)\d+$", re.IGNORECASE)
_JSRT_IMAGE_EXTENSIONS = (".png", ".img")
# Nodule centres in metadata.csv are given on the 2048 x 2048 grid of the original films.
_JSRT_GRID = 2048.0

_PEDIATRIC_CLASSES = {"NORMAL": 0, "PNEUMONIA": 1}
_PEDIATRIC_EXTENSIONS = (".jpeg", ".jpg", ".png")
# personN_bacteria_M.jpeg / personN_virus_M[_K].jpeg: N identifies the patient.
_PNEUMONIA_NAME = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
# IM-0115-0001.jpeg, NORMAL2-IM-1427-0001.jpeg, IM-0429-0001-0002.jpeg: the patient is
# the IM number with its optional prefix; later numbers count that patient's films.
_NORMAL_NAME = re.compile(r"^((?:[A-Za-z0-9]+-)?IM-\d+)-\d+", re.IGNORECASE)


def _check_folder(path, what):
    path = Path(os.fspath(path))
    if not path.is_dir():
        state = "is not a folder" if path.exists() else "does not exist"
        raise ValueError(f"The {what} '{path}' {state}. Pass the folder that holds the data.")
    return path


def _parse_value(text):
    """csv text -> int, float, str, or None for an empty cell."""
    text = text.strip()
    if text == "":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _read_jsrt_metadata(csv_path):
    if not csv_path.is_file():
        raise ValueError(
            f"JSRT metadata file '{csv_path}' does not exist. It is needed for the nodule "
            "centres: put metadata.csv (study_id, ..., x_2048, y_2048, ...) next to images/."
        )
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        required = {"study_id", "x_2048", "y_2048"}
        if not required.issubset(columns):
            raise ValueError(
                f"JSRT metadata file '{csv_path}' lacks the column(s) "
                f"{sorted(required - set(columns))}; its header is {columns}. Expected "
                "study_id, subtlety, size_mm, age, gender, x_2048, y_2048, state, "
                "position, diagnosis."
            )
        rows = {}
        for raw in reader:
            row = {k.strip(): _parse_value(v or "") for k, v in raw.items() if k is not None}
            study = Path(str(row["study_id"])).stem.upper()
            row["study_id"] = study
            rows[study] = row
    return columns, rows


def _read_mask(path, shape):
    """Read a 0/1 (or 0/255) lung mask and bring it to ``shape`` as bool."""
    arr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
    binary = (arr > 0) if arr is not None else (_read_with_pil(path) > 0)
    return resize_image(binary.astype(np.float32), shape, mask=True)


def load_jsrt(data_dir, *, size=None, include_masks=True, n_jobs=None):
    """Load the JSRT chest radiographs with lung masks, nodule labels and centres.

    Parameters
    ----------
    data_dir : str or path-like
        Folder laid out as::

            images/JPCLN001.png ...   nodule studies (JPCLN###), PNG or raw .IMG
            images/JPCNN001.png ...   nodule-free studies (JPCNN###)
            lung_masks/JPCLN001.png   binary lung-field masks (0/1 or 0/255)
            metadata.csv              study_id, subtlety, size_mm, age, gender,
                                      x_2048, y_2048, state, position, diagnosis

        Raw JSRT ``.IMG`` files (2048 x 2048, 12 bit) may stand in for the PNGs; see
        :func:`read_image` for how they are converted. Other files are ignored.
    size : None, int or tuple (H, W), default=None
        Output size of images and masks; ``None`` keeps the files' size.
    include_masks : bool, default=True
        Load ``lung_masks/``; with ``False`` the folder may be absent and ``masks`` is
        ``None``.
    n_jobs : int or None, default=None
        Threads decoding images in parallel (see :func:`load_images`).

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        images : ndarray (n_studies, H, W)
            float32 in [0, 1], bone bright.
        masks : ndarray (n_studies, H, W) of bool, or None
            Resized by area fraction and thresholded at 0.5.
        labels : ndarray (n_studies,) of int64
            1 = lung nodule (abnormal, ``JPCLN``), 0 = normal (``JPCNN``).
        centers : ndarray (n_studies, 2) of float64
            Nodule centre ``(x, y)`` in pixels of the returned images,
            ``x = x_2048 * W / 2048`` (and ``y`` with ``H``); NaN for normal studies.
        study_ids : ndarray (n_studies,) of str
            e.g. ``"JPCLN001"``, sorted.
        filenames : ndarray (n_studies,) of str
            The image paths.
        metadata : list of dict
            One dict per study, in the same order, with the columns of metadata.csv
            (numbers parsed as int/float, empty cells as ``None``; ``study_id`` without
            extension). A plain list keeps pandas optional:
            ``pandas.DataFrame(data.metadata)`` gives a table.

    Raises
    ------
    ValueError
        If a folder, metadata.csv or a mask is missing (the message names the path),
        a nodule study has no centre in metadata.csv, or a study exists both as PNG and
        as ``.IMG``.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skanomaly.datasets import load_jsrt
    >>> root = tempfile.mkdtemp()
    >>> for sub in ("images", "lung_masks"):
    ...     os.makedirs(os.path.join(root, sub))
    >>> for name in ("JPCLN001", "JPCNN001"):
    ...     Image.fromarray(np.full((64, 64), 128, np.uint8)).save(
    ...         os.path.join(root, "images", name + ".png"))
    ...     Image.fromarray(np.ones((64, 64), np.uint8)).save(
    ...         os.path.join(root, "lung_masks", name + ".png"))
    >>> with open(os.path.join(root, "metadata.csv"), "w") as fh:
    ...     _ = fh.write("study_id,subtlety,size_mm,age,gender,x_2048,y_2048,state,"
    ...                  "position,diagnosis\\n"
    ...                  "JPCLN001.png,5,15,53,Male,1024,512,malignant,l.upper lobe,"
    ...                  "lung cancer\\n"
    ...                  "JPCNN001.png,,,30,Female,,,non-nodule,,\\n")
    >>> data = load_jsrt(root, size=32)
    >>> data.images.shape, data.labels.tolist(), data.centers[0].tolist()
    ((2, 32, 32), [1, 0], [16.0, 8.0])
    """
    root = _check_folder(data_dir, "JSRT data folder")
    size = _check_size(size)
    _check_n_jobs(n_jobs)
    image_dir = _check_folder(root / "images", "JSRT images folder")

    by_study = {}
    for p in sorted(image_dir.iterdir()):
        if p.suffix.lower() not in _JSRT_IMAGE_EXTENSIONS or not _JSRT_NAME.match(p.stem):
            continue
        study = p.stem.upper()
        if study in by_study:
            raise ValueError(
                f"JSRT study {study} is in '{image_dir}' twice ('{by_study[study].name}' and "
                f"'{p.name}'). Keep one format (PNG or raw .IMG) per study."
            )
        by_study[study] = p
    if not by_study:
        raise ValueError(
            f"JSRT images folder '{image_dir}' holds no JPCLN###/JPCNN### files with "
            "extension .png or .IMG."
        )
    study_ids = sorted(by_study)
    paths = [by_study[s] for s in study_ids]
    labels = np.array([1 if s.startswith("JPCLN") else 0 for s in study_ids], dtype=np.int64)

    csv_path = root / "metadata.csv"
    columns, rows = _read_jsrt_metadata(csv_path)

    mask_paths = None
    if include_masks:
        mask_dir = root / "lung_masks"
        if not mask_dir.is_dir():
            raise ValueError(
                f"JSRT lung mask folder '{mask_dir}' does not exist. Add the masks, or "
                "pass include_masks=False."
            )
        mask_paths = [mask_dir / f"{p.stem}.png" for p in paths]
        for m in mask_paths:
            if not m.is_file():
                raise ValueError(
                    f"JSRT lung mask '{m}' is missing (every image needs one with the same "
                    "name). Add it, or pass include_masks=False."
                )

    images = load_images(paths, size=size, n_jobs=n_jobs)
    out_h, out_w = images.shape[1:]

    centers = np.full((len(study_ids), 2), np.nan)
    metadata = []
    for i, study in enumerate(study_ids):
        row = rows.get(study)
        if labels[i] == 1:
            if row is None or not all(
                isinstance(row.get(k), (int, float)) for k in ("x_2048", "y_2048")
            ):
                raise ValueError(
                    f"Nodule study {study} has no centre (x_2048, y_2048) in '{csv_path}'. "
                    "Add its row, or remove the image from the images folder."
                )
            centers[i] = (row["x_2048"] * out_w / _JSRT_GRID, row["y_2048"] * out_h / _JSRT_GRID)
        if row is None:
            row = {c: None for c in columns}
            row["study_id"] = study
        metadata.append(dict(row))

    masks = None
    if mask_paths is not None:
        masks = np.stack([_read_mask(m, (out_h, out_w)) for m in mask_paths])

    return Bunch(
        images=images,
        masks=masks,
        labels=labels,
        centers=centers,
        study_ids=np.array(study_ids),
        filenames=np.array([str(p) for p in paths]),
        metadata=metadata,
    )


def _pediatric_patient(path, cls):
    """Return (patient_id, subtype) from a file name, or raise naming the file."""
    if cls == "PNEUMONIA":
        match = _PNEUMONIA_NAME.match(path.name)
        if match:
            return match.group(1).lower(), match.group(2).lower()
        expected = "personN_bacteria_M.jpeg or personN_virus_M.jpeg"
    else:
        match = _NORMAL_NAME.match(path.name)
        if match:
            return match.group(1).upper(), "normal"
        expected = "IM-NNNN-MMMM.jpeg or NORMAL2-IM-NNNN-MMMM.jpeg"
    raise ValueError(
        f"Cannot read the patient id from '{path}': {cls} files are named like "
        f"{expected}. Rename or remove the file, since patient ids are needed to split "
        "by patient."
    )


def load_pediatric_cxr(
    data_dir, *, split="train", size=64, classes=("NORMAL", "PNEUMONIA"), n_jobs=None
):
    """Load the pediatric chest X-ray set (Kermany et al. 2018): normal vs pneumonia.

    Parameters
    ----------
    data_dir : str or path-like
        Folder laid out as ``<split>/NORMAL/*.jpeg`` and ``<split>/PNEUMONIA/*.jpeg``.
        NORMAL files are named ``IM-0115-0001.jpeg`` or ``NORMAL2-IM-1427-0001.jpeg``,
        PNEUMONIA files ``person1_bacteria_1.jpeg`` or ``person1_virus_6.jpeg``.
    split : str, default="train"
        Subfolder of ``data_dir`` to read (e.g. ``"train"``, ``"test"``).
    size : None, int or tuple (H, W), default=64
        Output size (64 is the size of the one-class protocol); ``None`` keeps the
        files' size, which must then agree.
    classes : sequence of {"NORMAL", "PNEUMONIA"}, default=("NORMAL", "PNEUMONIA")
        Classes to load, in this order (e.g. ``("NORMAL",)`` for a training set of
        normals).
    n_jobs : int or None, default=None
        Threads decoding images in parallel (see :func:`load_images`). Decoding is
        fast: about 2 s for the 5216 training images on one core.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        images : ndarray (n_images, H, W), float32 in [0, 1]
            The files are RGB with equal channels; they become BT.601 luma.
        labels : ndarray (n_images,) of int64
            1 = pneumonia, 0 = normal.
        patient_ids : ndarray (n_images,) of str
            ``"person1"``, ``"IM-0115"``, ``"NORMAL2-IM-1427"``: use them as ``groups``
            (e.g. :class:`~sklearn.model_selection.GroupShuffleSplit`) so that no
            patient is in both training and test data.
        filenames : ndarray (n_images,) of str
            The image paths.
        subtypes : ndarray (n_images,) of str
            ``"normal"``, ``"bacteria"`` or ``"virus"``.

    Raises
    ------
    ValueError
        If a folder is missing or empty, a class is unknown, or a file name does not
        carry a patient id (the message names the file).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skanomaly.datasets import load_pediatric_cxr
    >>> root = tempfile.mkdtemp()
    >>> names = {"NORMAL": ["IM-0115-0001.jpeg"], "PNEUMONIA": ["person1_virus_6.jpeg"]}
    >>> for cls, files in names.items():
    ...     os.makedirs(os.path.join(root, "train", cls))
    ...     for name in files:
    ...         Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(
    ...             os.path.join(root, "train", cls, name))
    >>> data = load_pediatric_cxr(root, size=16)
    >>> data.images.shape, data.labels.tolist(), data.patient_ids.tolist()
    ((2, 16, 16), [0, 1], ['IM-0115', 'person1'])
    """
    root = _check_folder(data_dir, "pediatric CXR data folder")
    size = _check_size(size)
    _check_n_jobs(n_jobs)
    if not isinstance(split, str) or not split:
        raise ValueError(f"split must be a folder name such as 'train'; got {split!r}.")
    split_dir = root / split
    if not split_dir.is_dir():
        available = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise ValueError(
            f"Split folder '{split_dir}' does not exist; '{root}' holds {available}. "
            "Pass one of those as split=."
        )
    if isinstance(classes, str):
        classes = (classes,)
    classes = tuple(classes)
    unknown = [c for c in classes if c not in _PEDIATRIC_CLASSES]
    if not classes or unknown or len(set(classes)) != len(classes):
        raise ValueError(
            f"classes must be a non-empty selection of {tuple(_PEDIATRIC_CLASSES)} without "
            f"repeats; got {classes!r}."
        )

    paths, labels, patients, subtypes = [], [], [], []
    for cls in classes:
        folder = split_dir / cls
        if not folder.is_dir():
            raise ValueError(f"Class folder '{folder}' does not exist. Check data_dir/split.")
        files = sorted(
            p
            for p in folder.iterdir()
            if p.suffix.lower() in _PEDIATRIC_EXTENSIONS and not p.name.startswith(".")
        )
        if not files:
            raise ValueError(f"Class folder '{folder}' holds no .jpeg/.jpg/.png images.")
        for p in files:
            patient, subtype = _pediatric_patient(p, cls)
            paths.append(p)
            labels.append(_PEDIATRIC_CLASSES[cls])
            patients.append(patient)
            subtypes.append(subtype)

    images = load_images(paths, size=size, n_jobs=n_jobs)
    return Bunch(
        images=images,
        labels=np.array(labels, dtype=np.int64),
        patient_ids=np.array(patients),
        filenames=np.array([str(p) for p in paths]),
        subtypes=np.array(subtypes),
    )

