"""Reading radiograph files into float images in [0, 1].

Every reader returns a 2-D ``float32`` array in [0, 1] where dense matter (bone) is bright,
whatever the file's own convention: DICOM ``MONOCHROME1`` and raw JSRT ``.IMG`` files are
inverted so that all sources agree with the PNG/JPEG renderings users look at.
"""

from __future__ import annotations

import os
import warnings
from numbers import Integral
from pathlib import Path

import cv2
import numpy as np
from joblib import Parallel, delayed

__all__ = ["read_image", "load_images"]

# Extensions that are listed when a folder is given; other files are taken only when they
# carry the DICOM preamble (DICOM files are often named by UID, e.g. ``1.2.840.1``).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".img"})
_DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
_JPEG_EXTENSIONS = frozenset({".jpg", ".jpeg"})
_TIFF_EXTENSIONS = frozenset({".tif", ".tiff"})

# JSRT raw files: 2048 x 2048 pixels, 12 bits stored in big-endian uint16, no header.
JSRT_SHAPE = (2048, 2048)
JSRT_MAX = 4095

# ITU-R BT.601 luma, the weights that JPEG's own Y channel uses.
_LUMA_RGB = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _has_dicom_preamble(path):
    """Whether ``path`` starts with a 128-byte preamble followed by ``DICM``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _check_file(path):
    path = Path(os.fspath(path))
    if not path.exists():
        raise ValueError(
            f"Image file '{path}' does not exist. Check the path (it is resolved from the "
            f"current directory, {os.getcwd()!r}, when relative)."
        )
    if path.is_dir():
        raise ValueError(
            f"'{path}' is a folder, not an image file. Use load_images('{path}') to read "
            "every image in a folder."
        )
    return path


def _to_unit_float(arr, path):
    """Scale integer or float pixel data to float32 in [0, 1] by its dtype range."""
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype.kind == "u":
        # uint8 / uint16 cover the bit depths image files use; their full range is 1.
        top = np.iinfo(arr.dtype).max
        if arr.dtype.itemsize >= 2 and arr.size and 0 < int(arr.max()) <= 4095:
            warnings.warn(
                f"Image file '{path}' holds {8 * arr.dtype.itemsize}-bit pixels whose largest "
                f"value is {int(arr.max())}: it looks like 10- or 12-bit data, which scaled "
                f"by {top} uses only {100 * int(arr.max()) / top:.1f} % of [0, 1]. Read it "
                "as an array and use skanomaly.preprocessing.Rescale(bits_stored=12).",
                UserWarning,
                stacklevel=4,
            )
        return arr.astype(np.float32) / np.float32(top)
    if arr.dtype.kind in "if":
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise ValueError(f"Image file '{path}' holds NaN or infinite pixel values.")
        if arr.dtype.kind == "f" and arr.size and arr.min() >= 0 and arr.max() <= 1:
            return arr
        # Signed or float data have no fixed full range: use the image's own.
        lo, hi = float(arr.min()), float(arr.max())
        if hi <= lo:
            return np.zeros_like(arr)
        return (arr - lo) / np.float32(hi - lo)
    raise ValueError(
        f"Image file '{path}' holds pixels of dtype {arr.dtype}, which is not an image "
        "type (expected unsigned integers or floats)."
    )


def _to_gray(arr, path, channel_order="RGB"):
    """Collapse a channel axis to luma; ``arr`` is already float in [0, 1]."""
    if arr.ndim == 2:
        return arr
    if arr.ndim != 3:
        raise ValueError(
            f"Image file '{path}' decodes to an array of shape {arr.shape}; expected a 2-D "
            "grayscale image or a colour image (H, W, 3 or 4). Multi-frame files are "
            "not supported: save one frame per file."
        )
    n_channels = arr.shape[2]
    if n_channels == 1:
        return arr[..., 0]
    if n_channels == 2:  # gray + alpha: the alpha channel is not intensity
        return arr[..., 0]
    if n_channels in (3, 4):
        rgb = arr[..., :3]
        weights = _LUMA_RGB if channel_order == "RGB" else _LUMA_RGB[::-1]
        return rgb @ weights
    raise ValueError(
        f"Image file '{path}' has {n_channels} channels; expected 1 (gray), 3 (RGB) or 4 (RGBA)."
    )


# --------------------------------------------------------------------------- readers
def _read_dicom(path, force):
    try:
        import pydicom
    except ImportError as err:  # pragma: no cover - pydicom is a dependency
        raise ValueError(
            f"Reading the DICOM file '{path}' needs pydicom: pip install pydicom"
        ) from err
    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pragma: no cover - pydicom < 3
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path, force=force)
    except Exception as err:
        raise ValueError(f"Could not read the DICOM file '{path}': {err}") from err
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if force and not _has_dicom_preamble(path):
            raise ValueError(
                f"'{path}' is not a readable DICOM file: it has neither the DICM preamble "
                "nor pixel data. The file may be corrupt or not DICOM at all."
            )
        raise ValueError(
            f"DICOM file '{path}' has no pixel data (no PixelData element): it is not an "
            "image (e.g. a structured report or a DICOMDIR). Leave it out of the input."
        )
    try:
        arr = ds.pixel_array
    except Exception as err:
        raise ValueError(
            f"Could not decode the pixel data of DICOM file '{path}' "
            f"(transfer syntax {getattr(ds.file_meta, 'TransferSyntaxUID', 'unknown')}): "
            f"{err}. Compressed DICOM may need a decoder plugin, e.g. "
            "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg."
        ) from err

    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if n_frames > 1:
        raise ValueError(
            f"DICOM file '{path}' holds {n_frames} frames; read_image reads single-frame "
            "radiographs. Split the frames into separate files first."
        )
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        # Colour DICOM (secondary captures): pydicom returns RGB; no grayscale LUTs apply.
        bits = int(ds.get("BitsStored", 8 * arr.dtype.itemsize))
        rgb = arr.astype(np.float32) / np.float32(2**bits - 1)
        return np.clip(_to_gray(rgb, path, "RGB"), 0, 1)

    def lut_chain(values):
        return apply_voi_lut(apply_modality_lut(values, ds), ds)

    try:
        out = np.asarray(lut_chain(arr), dtype=np.float64)
        # Scale by the range the LUT chain can reach from every storable value, so that
        # a window keeps its meaning across images instead of being stretched per image.
        bits = int(ds.get("BitsStored", 0) or 0)
        if arr.dtype.kind in "iu" and 0 < bits <= 16:
            if int(ds.get("PixelRepresentation", 0)) == 1:
                stored = np.arange(-(2 ** (bits - 1)), 2 ** (bits - 1), dtype=np.int64)
            else:
                stored = np.arange(0, 2**bits, dtype=np.int64)
            reach = np.asarray(lut_chain(stored.astype(arr.dtype)), dtype=np.float64)
            lo, hi = float(reach.min()), float(reach.max())
        else:
            lo, hi = float(out.min()), float(out.max())
    except Exception as err:
        raise ValueError(
            f"Could not apply the modality / VOI LUT of DICOM file '{path}': {err}"
        ) from err

    if hi <= lo:
        image = np.zeros(out.shape, dtype=np.float32)
    else:
        image = np.clip((out - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    if photometric == "MONOCHROME1":
        # MONOCHROME1 shows the lowest value as white; flip so that bone is bright.
        image = 1.0 - image
    return image


def _read_jsrt_raw(path):
    n_bytes = path.stat().st_size
    expected = JSRT_SHAPE[0] * JSRT_SHAPE[1] * 2
    if n_bytes != expected:
        raise ValueError(
            f"'{path}' is not a JSRT raw image: it has {n_bytes} bytes, but a JSRT .IMG "
            f"file is {JSRT_SHAPE[0]}x{JSRT_SHAPE[1]} big-endian uint16 with no header "
            f"({expected} bytes). Convert other raw formats to PNG or TIFF first."
        )
    raw = np.fromfile(path, dtype=">u2").reshape(JSRT_SHAPE)
    # JSRT stores 12-bit values where 0 is white (the film's clear end) and 4095 black,
    # the inverse of the PNG renderings, so invert to keep bone bright.
    values = np.minimum(raw, JSRT_MAX).astype(np.float32)
    return 1.0 - values / np.float32(JSRT_MAX)


def _read_tiff(path):
    try:
        import tifffile
    except ImportError:  # tifffile is optional; OpenCV and Pillow read most TIFFs
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            arr = page.asarray()
            photometric = int(page.photometric)
    except Exception:
        return None
    if photometric == 3:  # palette: let Pillow apply the colour map
        return None
    if arr.ndim == 3 and photometric in (0, 1) and arr.shape[0] <= 4 < arr.shape[-1]:
        arr = np.moveaxis(arr, 0, -1)  # planar grayscale+extra samples
    image = _to_gray(_to_unit_float(arr, path), path, "RGB")
    if photometric == 0:
        # MinIsWhite is TIFF's MONOCHROME1: flip so that dense = bright.
        image = 1.0 - image
    return image


def _read_with_pil(path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            if im.mode == "1":
                im = im.convert("L")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise ValueError(
            f"Could not read image file '{path}': {err}. Supported formats are PNG, JPEG, "
            "TIFF, DICOM and JSRT raw .IMG; the file may be corrupt or truncated."
        ) from err
    if arr.dtype.kind == "i" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        # Pillow opens 16-bit grayscale as 32-bit mode "I"; keep the 16-bit scale.
        arr = arr.astype(np.uint16)
    return _to_gray(_to_unit_float(arr, path), path, "RGB")


# libjpeg's messages for damaged data, which OpenCV and Pillow print to stderr (or
# not at all) while returning an image with garbage or grey blocks in it.
_CORRUPT_JPEG_MESSAGES = ("corrupt jpeg data", "premature end of jpeg file", "bogus", "invalid")


def _read_jpeg_strictly(buffer, path):
    """Gray float image of a JPEG, decoded by libjpeg-turbo with warnings as errors;
    None for a valid JPEG it cannot convert (CMYK), which OpenCV then decodes.

    Same pixels as OpenCV's grayscale decoding (both take libjpeg's Y channel), but a
    damaged file is refused with its name instead of scored.
    """
    import simplejpeg

    try:
        arr = simplejpeg.decode_jpeg(buffer.tobytes(), colorspace="GRAY", strict=True)
    except ValueError as err:
        message = str(err)
        if any(text in message.lower() for text in _CORRUPT_JPEG_MESSAGES):
            raise ValueError(
                f"'{path}' is a damaged JPEG ({message}): its pixels would be partly "
                "garbage. Re-export it from the source, or leave it out."
            ) from None
        return None
    return _to_unit_float(arr[..., 0], path)


def _decode(path):
    """Decode one file into float32 (H, W) in [0, 1], bone bright."""
    path = _check_file(path)
    suffix = path.suffix.lower()
    if suffix in _DICOM_EXTENSIONS or _has_dicom_preamble(path):
        return _read_dicom(path, force=suffix in _DICOM_EXTENSIONS)
    if suffix == ".img":
        return _read_jsrt_raw(path)
    if suffix in _TIFF_EXTENSIONS:
        image = _read_tiff(path)
        if image is not None:
            return image
    try:
        buffer = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise ValueError(f"Could not read image file '{path}': {err}") from err
    is_jpeg = suffix in _JPEG_EXTENSIONS or buffer[:3].tobytes() == b"\xff\xd8\xff"
    if is_jpeg:
        image = _read_jpeg_strictly(buffer, path)
        if image is not None:
            return image
    # Decoding JPEG straight to gray skips the colour conversion and is ~3x faster; its
    # Y channel is the BT.601 luma used for every other format.
    flag = cv2.IMREAD_GRAYSCALE if is_jpeg else cv2.IMREAD_UNCHANGED
    arr = cv2.imdecode(buffer, flag) if buffer.size else None
    if arr is None:
        # OpenCV lacks some formats/modes (GIF, odd TIFFs); Pillow reports why it fails.
        return _read_with_pil(path)
    return _to_gray(_to_unit_float(arr, path), path, "BGR")


def read_image(path):
    """Read one radiograph file as a float image in [0, 1].

    Parameters
    ----------
    path : str or path-like
        A PNG (8 or 16 bit), JPEG, TIFF (8/16 bit), DICOM (``.dcm`` or any file with the
        ``DICM`` preamble) or JSRT raw ``.IMG`` file.

    Returns
    -------
    image : ndarray of shape (H, W), dtype float32
        Values in [0, 1] with dense matter (bone) bright. Colour images become ITU-R
        BT.601 luma; integer data is divided by its dtype maximum (255, 65535).

    Raises
    ------
    ValueError
        If the file is missing, unreadable or corrupt, or is a DICOM file without pixel
        data. The message names the file.

    Notes
    -----
    DICOM: the Modality LUT (or rescale slope/intercept) and then the first VOI LUT or
    window are applied with :mod:`pydicom.pixels`; the result is scaled to [0, 1] by the
    range that the LUTs can reach from every value representable in ``BitsStored`` bits,
    so the same window gives the same scale on every image. ``MONOCHROME1`` is inverted
    so that it matches ``MONOCHROME2``.

    JSRT raw ``.IMG``: 2048 x 2048, 12-bit values in big-endian uint16, no header. In
    these files 0 is white and 4095 black (the convention of the widely used JSRT/SCR
    preprocessing scripts, which compute ``1 - raw / 4096``), so the image is returned as
    ``1 - raw / 4095``: bone bright, like the JSRT PNG renderings.

    TIFF pages with ``MinIsWhite`` photometry are inverted likewise; only the first page
    of a multi-page TIFF is read. Float data already in [0, 1] is kept; signed integer
    or other float data has no fixed full range and is min-max scaled per image.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skanomaly.datasets import read_image
    >>> path = os.path.join(tempfile.mkdtemp(), "ramp.png")
    >>> Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).save(path)
    >>> image = read_image(path)
    >>> image.shape, image.dtype, float(image.max())
    ((16, 16), dtype('float32'), 1.0)
    """
    return np.ascontiguousarray(_decode(path), dtype=np.float32)


# --------------------------------------------------------------------------- many files
def _check_size(size):
    """Return ``size`` as ``(H, W)`` or ``None``."""
    if size is None:
        return None
    if isinstance(size, Integral) and not isinstance(size, bool):
        size = (size, size)
    if (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(s, Integral) and not isinstance(s, bool) for s in size)
        and all(s > 0 for s in size)
    ):
        return int(size[0]), int(size[1])
    raise ValueError(
        f"size must be None, a positive int (square images) or a tuple (H, W) of two "
        f"positive ints; got {size!r}."
    )


def _check_n_jobs(n_jobs):
    if n_jobs is None or (
        isinstance(n_jobs, Integral) and not isinstance(n_jobs, bool) and n_jobs != 0
    ):
        return
    raise ValueError(
        f"n_jobs must be None or a non-zero int (-1 for all cores); got {n_jobs!r}."
    )


def resize_image(image, size, *, mask=False):
    """Resize a 2-D float image to ``size=(H, W)`` (area when shrinking, linear when growing).

    ``mask=True`` resizes a 0/1 mask by area fraction and thresholds at 0.5, which keeps
    thin structures smoother than nearest-neighbour and returns ``bool``.
    """
    h, w = size
    src = image.astype(np.float32, copy=False)
    if src.shape != (h, w):
        shrinking = h <= src.shape[0] and w <= src.shape[1]
        # INTER_AREA averages the source pixels under each output pixel (no aliasing when
        # shrinking) but is blocky when enlarging, where bilinear is the better choice.
        interp = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        src = cv2.resize(src, (w, h), interpolation=interp)
    if mask:
        return src >= 0.5
    return np.clip(src, 0.0, 1.0, out=src)


def _list_folder(folder, recursive):
    walker = folder.rglob("*") if recursive else folder.iterdir()
    files = []
    for p in walker:
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if p.suffix.lower() in IMAGE_EXTENSIONS or _has_dicom_preamble(p):
            files.append(p)
    if not files:
        where = "or its subfolders " if recursive else ""
        hint = "" if recursive else " Pass recursive=True to search subfolders."
        raise ValueError(
            f"Folder '{folder}' {where}holds no image files (extensions "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}, or DICOM files without extension).{hint}"
        )
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def _resolve_paths(paths_or_folder, recursive):
    if isinstance(paths_or_folder, (str, os.PathLike)):
        path = Path(os.fspath(paths_or_folder))
        if path.is_dir():
            return _list_folder(path, recursive)
        return [_check_file(path)]
    if isinstance(paths_or_folder, np.ndarray) and paths_or_folder.dtype.kind not in "USO":
        raise ValueError(
            "load_images takes file paths or a folder, not pixel data; got an array of "
            f"dtype {paths_or_folder.dtype}. Pass the array to the estimator directly."
        )
    try:
        paths = [Path(os.fspath(p)) for p in paths_or_folder]
    except TypeError as err:
        raise ValueError(
            "load_images takes a folder, one file path, or a list of file paths (str or "
            f"pathlib.Path); got {type(paths_or_folder).__name__}: {err}"
        ) from err
    if not paths:
        raise ValueError("load_images got an empty list of paths: pass at least one file.")
    return paths


def load_images(paths_or_folder, *, size=None, recursive=False, n_jobs=None):
    """Read radiograph files into one ``(n_images, H, W)`` float array in [0, 1].

    Parameters
    ----------
    paths_or_folder : str, path-like or list of them
        A folder (every image file in it, sorted by name), one file, or a list of files
        (kept in the given order). In a folder, files with the extensions png, jpg, jpeg,
        tif, tiff, dcm and img are read, and so is any other file that starts with the
        DICOM preamble (DICOM files are often named by UID without extension). Hidden
        files are skipped.
    size : None, int or tuple (H, W), default=None
        Output size. ``None`` keeps the files' size, which must then be the same for all.
        An int gives square images. Shrinking uses area averaging
        (``cv2.INTER_AREA``), enlarging bilinear interpolation.
    recursive : bool, default=False
        With a folder, also read images in its subfolders (sorted by relative path).
    n_jobs : int or None, default=None
        Number of threads that decode files in parallel (OpenCV and NumPy release the
        GIL). ``None`` means 1 unless in a :func:`joblib.parallel_config` context;
        ``-1`` uses all cores.

    Returns
    -------
    images : ndarray of shape (n_images, H, W), dtype float32
        Bone-bright grayscale images in [0, 1]; see :func:`read_image` for how each
        format is converted.

    Raises
    ------
    ValueError
        If a path is missing, a file cannot be decoded (the message names it), a folder
        holds no images, or the images differ in size while ``size=None``.

    See Also
    --------
    read_image : read one file at its own size.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skanomaly.datasets import load_images
    >>> folder = tempfile.mkdtemp()
    >>> for i, side in enumerate([32, 48]):
    ...     pixels = np.full((side, side), 100 * i, dtype=np.uint8)
    ...     Image.fromarray(pixels).save(os.path.join(folder, f"img{i}.png"))
    >>> load_images(folder, size=16).shape
    (2, 16, 16)
    """
    size = _check_size(size)
    _check_n_jobs(n_jobs)
    if not isinstance(recursive, (bool, np.bool_)):
        raise ValueError(f"recursive must be True or False; got {recursive!r}.")
    paths = _resolve_paths(paths_or_folder, recursive)
    if size is None:
        # Fixing the shape from the first file lets every image be written into one
        # preallocated array (no second copy when stacking 1024 px radiographs).
        first = read_image(paths[0])
        shape = first.shape
    else:
        first, shape = None, size
    out = np.empty((len(paths), *shape), dtype=np.float32)

    def load_one(i):
        image = first if (i == 0 and first is not None) else read_image(paths[i])
        if size is None:
            if image.shape != shape:
                raise ValueError(
                    f"Images differ in size: '{paths[0]}' is {shape[0]}x{shape[1]} "
                    f"(HxW) but '{paths[i]}' is {image.shape[0]}x{image.shape[1]}. Pass "
                    "size=(H, W) (or an int for square images) to resize them all."
                )
        else:
            image = resize_image(image, size)
        out[i] = image

    if len(paths) == 1:
        load_one(0)
    else:
        # Threads, not processes: decoders release the GIL and the workers fill `out`.
        Parallel(n_jobs=n_jobs, prefer="threads")(delayed(load_one)(i) for i in range(len(paths)))
    return out

