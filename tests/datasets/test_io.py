"""Tests for read_image / load_images, on files each test writes into tmp_path."""

import os

import cv2
import numpy as np
import pytest
from PIL import Image

from skanomaly.datasets import load_images, read_image
from skanomaly.datasets._io import JSRT_SHAPE

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def write_dicom(path, pixels, *, photometric="MONOCHROME2", bits_stored=12, pixel_data=True,
                preamble=True, **elements):
    """Write a single-frame uint16 DICOM file with the given extra elements."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DX_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    for key, value in elements.items():
        setattr(ds, key, value)
    if pixel_data:
        ds.PixelData = pixels.astype("<u2").tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=preamble)
    return path


def ramp(h=8, w=16, maximum=255, dtype=np.uint8):
    values = np.linspace(0, maximum, h * w).round().astype(dtype)
    return values.reshape(h, w)


# ---------------------------------------------------------------- common formats
def test_png_8bit(tmp_path):
    pixels = ramp()
    cv2.imwrite(str(tmp_path / "a.png"), pixels)
    image = read_image(tmp_path / "a.png")
    assert image.dtype == np.float32 and image.shape == pixels.shape
    np.testing.assert_allclose(image, pixels / 255.0, atol=1e-6)


def test_png_16bit_divided_by_65535(tmp_path):
    pixels = ramp(maximum=65535, dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "a.png"), pixels)
    image = read_image(str(tmp_path / "a.png"))
    np.testing.assert_allclose(image, pixels / 65535.0, atol=1e-6)
    assert image.max() == 1.0 and image.min() == 0.0


def test_png_16bit_holding_12_bit_values_warns(tmp_path):
    pixels = ramp(maximum=4095, dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "a.png"), pixels)
    with pytest.warns(UserWarning, match=r"largest value is 4095.*Rescale\(bits_stored=12\)"):
        image = read_image(str(tmp_path / "a.png"))
    np.testing.assert_allclose(image, pixels / 65535.0, atol=1e-6)


def test_jpeg_is_grayscale(tmp_path):
    pixels = np.full((16, 16), 120, np.uint8)
    Image.fromarray(np.stack([pixels] * 3, axis=-1)).save(tmp_path / "a.jpeg", quality=95)
    image = read_image(tmp_path / "a.jpeg")
    assert image.shape == (16, 16)
    np.testing.assert_allclose(image, 120 / 255, atol=3 / 255)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_colour_png_becomes_bt601_luma(tmp_path, mode):
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    arr = rgb if mode == "RGB" else np.dstack([rgb, np.full((4, 6), 255, np.uint8)])
    Image.fromarray(arr, mode).save(tmp_path / "c.png")
    image = read_image(tmp_path / "c.png")
    expected = (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255
    assert image.shape == (4, 6)
    np.testing.assert_allclose(image, expected, atol=1e-5)


def test_palette_png(tmp_path):
    im = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    im.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    im.save(tmp_path / "p.png")
    np.testing.assert_allclose(read_image(tmp_path / "p.png"), [[0, 1], [1, 0]], atol=1e-6)


def test_tiff_16bit(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    pixels = ramp(maximum=65535, dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", pixels)
    np.testing.assert_allclose(read_image(tmp_path / "a.tif"), pixels / 65535.0, atol=1e-6)


def test_tiff_min_is_white_is_inverted(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    pixels = ramp()
    tifffile.imwrite(tmp_path / "w.tiff", pixels, photometric="miniswhite")
    np.testing.assert_allclose(read_image(tmp_path / "w.tiff"), 1 - pixels / 255.0, atol=1e-6)


# ---------------------------------------------------------------- DICOM
def test_dicom_monochrome2_scaled_by_bits_stored(tmp_path):
    pixels = ramp(maximum=4095, dtype=np.uint16)
    path = write_dicom(tmp_path / "a.dcm", pixels)
    image = read_image(path)
    assert image.dtype == np.float32
    np.testing.assert_allclose(image, pixels / 4095.0, atol=1e-6)


def test_dicom_monochrome1_is_inverted(tmp_path):
    pixels = ramp(maximum=4095, dtype=np.uint16)
    mono2 = read_image(write_dicom(tmp_path / "m2.dcm", pixels))
    mono1 = read_image(write_dicom(tmp_path / "m1.dcm", pixels, photometric="MONOCHROME1"))
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)
    assert mono1[0, 0] == 1.0  # stored 0 is white in MONOCHROME1


def test_dicom_rescale_then_window(tmp_path):
    # Rescaled value = 2 * stored - 1000; window [0, 2000) in rescaled units means stored
    # 500 sits at the window's bottom and 1500 at its top; without the rescale the window
    # would fall elsewhere, so this checks that the slope/intercept are applied first.
    pixels = np.array([[0, 500, 1000], [1500, 2000, 4095]], np.uint16)
    path = write_dicom(tmp_path / "w.dcm", pixels, RescaleSlope=2, RescaleIntercept=-1000,
                       WindowCenter=1000, WindowWidth=2000)
    image = read_image(path)
    np.testing.assert_allclose(image[0, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(image[0, 1], 0.0, atol=1e-3)
    np.testing.assert_allclose(image[0, 2], 0.5, atol=1e-3)
    np.testing.assert_allclose(image[1, 1:], 1.0, atol=1e-6)


def test_dicom_window_alone_clips(tmp_path):
    pixels = np.array([[0, 1000, 1500, 2000, 4095]], np.uint16)
    path = write_dicom(tmp_path / "w.dcm", pixels, WindowCenter=1500, WindowWidth=1001)
    np.testing.assert_allclose(read_image(path), [[0, 0, 0.5, 1, 1]], atol=1e-3)


def test_dicom_without_extension_detected_by_preamble(tmp_path):
    pixels = ramp(maximum=4095, dtype=np.uint16)
    write_dicom(tmp_path / "1.2.840.99", pixels)
    write_dicom(tmp_path / "IM0001", pixels)
    (tmp_path / "notes.txt").write_text("not an image")
    images = load_images(tmp_path)
    assert images.shape == (2, *pixels.shape)
    np.testing.assert_allclose(images[0], pixels / 4095.0, atol=1e-6)


def test_dcm_without_preamble_is_read(tmp_path):
    pixels = ramp(maximum=4095, dtype=np.uint16)
    path = write_dicom(tmp_path / "raw.dcm", pixels, preamble=False)
    np.testing.assert_allclose(read_image(path), pixels / 4095.0, atol=1e-6)


def test_dicom_without_pixel_data_names_file(tmp_path):
    path = write_dicom(tmp_path / "report.dcm", ramp(dtype=np.uint16), pixel_data=False)
    with pytest.raises(ValueError, match=r"report\.dcm.*no pixel data"):
        read_image(path)


# ---------------------------------------------------------------- JSRT raw
def test_jsrt_raw_img_is_inverted_big_endian(tmp_path):
    raw = np.zeros(JSRT_SHAPE, dtype=">u2")
    raw[:1024] = 4095  # top half black in JSRT's convention (high = dark)
    raw[1024:, :1024] = 1000
    raw.tofile(tmp_path / "JPCLN001.IMG")
    image = read_image(tmp_path / "JPCLN001.IMG")
    assert image.shape == JSRT_SHAPE and image.dtype == np.float32
    assert image[0, 0] == 0.0 and image[-1, -1] == 1.0
    np.testing.assert_allclose(image[-1, 0], 1 - 1000 / 4095, atol=1e-6)


def test_jsrt_raw_of_wrong_size_is_rejected(tmp_path):
    np.zeros((100, 100), ">u2").tofile(tmp_path / "small.img")
    with pytest.raises(ValueError, match=r"small\.img.*2048x2048"):
        read_image(tmp_path / "small.img")


# ---------------------------------------------------------------- bad input
def test_corrupt_file_names_it(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(ValueError, match=r"broken\.png"):
        read_image(path)
    with pytest.raises(ValueError, match=r"broken\.png"):
        load_images([path])


def test_random_bytes_named_dcm(tmp_path):
    (tmp_path / "noise.dcm").write_bytes(np.random.default_rng(1).bytes(300))
    with pytest.raises(ValueError, match=r"noise\.dcm' is not a readable DICOM"):
        read_image(tmp_path / "noise.dcm")


def test_empty_file_names_it(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.jpg"):
        read_image(tmp_path / "empty.jpg")


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"nothere\.png' does not exist"):
        read_image(tmp_path / "nothere.png")
    with pytest.raises(ValueError, match=r"nothere\.png' does not exist"):
        load_images([tmp_path / "nothere.png"])
    with pytest.raises(ValueError, match="does not exist"):
        load_images(tmp_path / "no_such_folder")


def test_folder_passed_to_read_image(tmp_path):
    with pytest.raises(ValueError, match="is a folder.*load_images"):
        read_image(tmp_path)


def test_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no image files"):
        load_images(tmp_path)


def test_empty_path_list():
    with pytest.raises(ValueError, match="empty list"):
        load_images([])


def test_pixel_array_instead_of_paths():
    with pytest.raises(ValueError, match="not pixel data"):
        load_images(np.zeros((2, 4, 4)))


@pytest.mark.parametrize("size", [0, -3, (4,), (4, 0), 2.5, "64", True])
def test_bad_size(tmp_path, size):
    cv2.imwrite(str(tmp_path / "a.png"), ramp())
    with pytest.raises(ValueError, match="size must be"):
        load_images(tmp_path, size=size)


def test_bad_n_jobs(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), ramp())
    with pytest.raises(ValueError, match="n_jobs"):
        load_images(tmp_path, n_jobs=0)


# ---------------------------------------------------------------- many files
def test_mixed_sizes_need_size(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((20, 30), np.uint8))
    cv2.imwrite(str(tmp_path / "b.png"), np.full((40, 10), 255, np.uint8))
    with pytest.raises(ValueError, match="differ in size") as info:
        load_images(tmp_path)
    message = str(info.value)
    for part in ("a.png' is 20x30", "b.png' is 40x10", "size="):
        assert part in message
    images = load_images(tmp_path, size=(16, 12))
    assert images.shape == (2, 16, 12) and images.dtype == np.float32
    np.testing.assert_allclose(images[0], 0.0)
    np.testing.assert_allclose(images[1], 1.0, atol=1e-6)
    assert load_images(tmp_path, size=8).shape == (2, 8, 8)


def test_resize_uses_area_when_shrinking(tmp_path):
    checker = (np.indices((8, 8)).sum(axis=0) % 2 * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "c.png"), checker)
    small = load_images(tmp_path, size=4)
    np.testing.assert_allclose(small, 0.5, atol=1e-6)  # averaging, not sampling
    big = load_images(tmp_path, size=16)
    assert big.shape == (1, 16, 16) and 0 <= big.min() and big.max() <= 1


def test_folder_order_and_filtering(tmp_path):
    for value, name in [(30, "b.png"), (10, "a.jpg"), (20, "C.tif"), (40, "d.png")]:
        cv2.imwrite(str(tmp_path / name), np.full((6, 6), value, np.uint8))
    (tmp_path / "labels.csv").write_text("a,b\n")
    (tmp_path / ".hidden.png").write_bytes(b"junk")
    sub = tmp_path / "sub"
    sub.mkdir()
    cv2.imwrite(str(sub / "e.png"), np.full((6, 6), 50, np.uint8))
    images = load_images(tmp_path)
    # sorted by name (uppercase sorts first); subfolders only with recursive=True
    np.testing.assert_allclose(images[:, 0, 0] * 255, [20, 10, 30, 40], atol=1.5)
    images = load_images(tmp_path, recursive=True)
    np.testing.assert_allclose(images[:, 0, 0] * 255, [20, 10, 30, 40, 50], atol=1.5)


def test_list_of_paths_keeps_order_and_single_file(tmp_path):
    for value in (10, 200):
        cv2.imwrite(str(tmp_path / f"{value}.png"), np.full((5, 5), value, np.uint8))
    paths = [tmp_path / "200.png", str(tmp_path / "10.png")]
    np.testing.assert_allclose(load_images(paths)[:, 0, 0] * 255, [200, 10], atol=1e-3)
    assert load_images(tmp_path / "10.png").shape == (1, 5, 5)


def test_parallel_equals_serial(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(6):
        cv2.imwrite(str(tmp_path / f"{i}.png"), rng.integers(0, 256, (12, 9), dtype=np.uint8))
    np.testing.assert_array_equal(load_images(tmp_path, size=7, n_jobs=2),
                                  load_images(tmp_path, size=7))


def test_nothing_is_written(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), ramp())
    write_dicom(tmp_path / "b.dcm", ramp(dtype=np.uint16))
    before = sorted(os.listdir(tmp_path))
    load_images(tmp_path, size=4, n_jobs=2)
    assert sorted(os.listdir(tmp_path)) == before


def _jpeg_bytes(image):
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return bytearray(buffer.tobytes())


def _damaged_jpegs():
    """JPEGs that OpenCV decodes without an error (only libjpeg's stderr line)."""
    rng = np.random.default_rng(0)
    clean = _jpeg_bytes(np.clip(rng.normal(128, 40, (64, 64)), 0, 255).astype(np.uint8))
    early_end = bytearray(clean)
    early_end[400:402] = b"\xff\xd9"  # an end-of-image marker inside the scan data
    flipped = bytearray(clean)
    for i in range(1000, 1010):
        flipped[i] ^= 0x21  # bit errors in the entropy-coded data
    return {"early_end": early_end, "flipped": flipped, "truncated": clean[: len(clean) // 2]}


@pytest.mark.parametrize("damage", ["early_end", "flipped", "truncated"])
def test_damaged_jpeg_is_refused_with_its_name(tmp_path, damage):
    data = bytes(_damaged_jpegs()[damage])
    path = tmp_path / "film_017.jpeg"
    path.write_bytes(data)
    if damage != "truncated":  # what the reader used to do: an image, and a stderr line
        assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE) is not None
    with pytest.raises(ValueError, match=r"film_017\.jpeg' is a damaged JPEG"):
        read_image(path)
    (tmp_path / "ok.png").write_bytes(cv2.imencode(".png", np.zeros((64, 64), np.uint8))[1].tobytes())
    with pytest.raises(ValueError, match="film_017"):
        load_images(tmp_path)


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_pixels_are_opencvs_grayscale_decoding(tmp_path, channels):
    """The strict decoder changes no pixel of a valid file (both take libjpeg's Y)."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (40, 56, channels) if channels == 3 else (40, 56), dtype=np.uint8)
    path = tmp_path / "a.jpg"
    path.write_bytes(bytes(_jpeg_bytes(image)))
    expected = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255
    np.testing.assert_array_equal(read_image(path), expected)


def test_cmyk_jpeg_still_reads(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(np.full((16, 16, 4), 100, np.uint8), mode="CMYK").save(path)
    image = read_image(path)
    assert image.shape == (16, 16) and np.isfinite(image).all()
